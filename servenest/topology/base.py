"""The one interface every topology implements.

The flows call these methods in the same order for every topology and never branch on
which one it is (SkyPilot's ``sky/provision`` has the same shape: one small interface,
one implementation per cloud).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from servenest.commands import CommandRunner, subprocess_runner
from servenest.engines import EngineAdapter, adapter_for
from servenest.spec import DeploymentSpec
from servenest.state import DeploymentState, load_state, save_state


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    served_model_name: str
    public: bool


@dataclass(frozen=True)
class EngineStatus:
    running: bool
    exit_code: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class RuntimeState:
    """What the runtime under the engine says, for the watch and the heal ladder."""

    serving: bool  # the engine's process, container or pods are up
    detail: str = ""
    restarts: int = 0  # restarts the runtime made on its own (docker's policy, the kubelet)
    gone: bool = False  # the machines themselves are gone: only a reprovision can help


@dataclass(frozen=True)
class Estimate:
    """What the deployment costs per hour while it runs, before anything is created."""

    hourly: float
    currency: str
    placement: str
    lines: tuple[tuple[str, str, float], ...] = ()  # (resource, type, hourly amount)
    alternatives: tuple[tuple[str, float], ...] = ()  # (fallback instance type, hourly)
    note: str = ""  # where the figure comes from and when billing starts


@dataclass(frozen=True)
class StagedWeights:
    location: str
    files: int
    bytes: int
    digest: str
    reused: bool


class Topology(ABC):
    name: ClassVar[str]

    def __init__(
        self, spec: DeploymentSpec, state: DeploymentState | None = None,
        run: CommandRunner = subprocess_runner,
    ):
        self.spec = spec
        self.state = state or load_state(spec.name) or DeploymentState(spec.name, spec.topology)
        self.run = run

    @property
    def engine(self) -> EngineAdapter:
        return adapter_for(self.spec)

    @classmethod
    def spec_for_slot(cls, spec: DeploymentSpec, instance: str) -> DeploymentSpec:
        """``spec`` as run in slot ``instance`` (``servenest.slots``): resources carry the
        slot's name. Overridden where two slots would collide on something else."""
        from servenest.spec import load_spec_data

        data = spec.model_dump(mode="json")
        data["name"] = instance
        return load_spec_data(data, origin=f"{spec.name} in slot {instance}")

    def gpu_demand(self) -> dict[str, int]:
        """Accelerators this deployment holds while it runs, by GPU kind (for quota limits)."""
        return {}

    def save(self) -> None:
        # The spec travels with the state so that teardown needs nothing else.
        self.state.spec = self.spec.model_dump(mode="json")
        save_state(self.state)

    @abstractmethod
    def plan(self) -> dict:
        """What provision and launch would create and run, touching nothing."""

    @abstractmethod
    def preflight(self) -> dict:
        """Every check that can be made before money is spent (credentials, region, zones,
        instance types, template); raises a clear error, creates nothing."""

    @abstractmethod
    def estimate(self) -> Estimate:
        """The hourly price of what provision would create."""

    @abstractmethod
    def provision(self) -> dict:
        """Create (or find) the machines and the engine runtime; idempotent."""

    def prepare_hosts(self) -> dict:
        """Make the machines able to run the engine (driver, container runtime) and prove
        they are; idempotent, fast on a ready host. Nothing to do where the platform
        provides the runtime (local, ACK)."""
        return {}

    def check_hosts(self) -> dict:
        """Prove the machines can serve this spec before anything is staged on them (GPUs,
        runtime, disk, node-to-node ports); raises naming each host's problem."""
        return {}

    @abstractmethod
    def stage_weights(self, progress: Callable[[float, str], None] | None = None) -> StagedWeights:
        """Put verified weights where the engine reads them; skip a verified copy.
        ``progress(percent, message)`` is called as staging goes on."""

    @abstractmethod
    def launch(self, api_key: str) -> dict:
        """Start the engine, replacing one already running for this deployment."""

    @abstractmethod
    def endpoint(self) -> Endpoint:
        """Where clients reach the engine."""

    @abstractmethod
    def logs(self, lines: int = 40) -> list[str]:
        """The engine's last log lines."""

    @abstractmethod
    def status(self) -> EngineStatus:
        """Whether the engine process is running."""

    def runtime_state(self) -> RuntimeState:
        """The watch's view of the runtime (overridden where the runtime says more)."""
        st = self.status()
        return RuntimeState(st.running, st.detail)

    @abstractmethod
    def restart_engine(self, api_key: str) -> dict:
        """Restart the engine as it was launched (same arguments, no restaging): the
        heal ladder's first rung. Raises when there is nothing to restart."""

    def diagnostics(self) -> dict:
        """What helps a person see why a gate failed (overridden where there is more)."""
        return {"status": self.status().detail, "logs": self.logs(40)}

    @abstractmethod
    def teardown(self) -> dict:
        """Remove what this deployment created; safe to run twice."""

    @classmethod
    @abstractmethod
    def teardown_recorded(cls, state: DeploymentState) -> dict:
        """Teardown from the state record alone, for a recorded spec that no longer validates
        (written by an older ServeNest): nothing may stay running because a schema moved."""
