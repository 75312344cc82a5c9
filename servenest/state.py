"""What a deployment has created, persisted as it happens.

Each step records its resources here before it returns (the engine's pid before the
gate starts, a stack id before polling), so a teardown from another process, or after
the orchestrator died, finds everything to remove. The same record travels in the
registered endpoint block.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from servenest import paths


@dataclass
class DeploymentState:
    name: str
    topology: str
    spec: dict = field(default_factory=dict)
    resources: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)
    engine: dict = field(default_factory=dict)
    updated_at: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DeploymentState:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def state_path(name: str) -> Path:
    return paths.state_dir() / f"{name}.json"


def load_state(name: str) -> DeploymentState | None:
    try:
        return DeploymentState.from_dict(json.loads(state_path(name).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def save_state(state: DeploymentState) -> None:
    state.updated_at = time.time()
    target = state_path(state.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(state.to_dict(), indent=1, sort_keys=True))
    os.replace(tmp, target)


def delete_state(name: str) -> None:
    state_path(name).unlink(missing_ok=True)


def recorded_deployments() -> list[str]:
    return sorted(p.stem for p in paths.state_dir().glob("*.json"))
