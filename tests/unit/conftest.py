"""Shared helpers for the unit tests: spec factories, a throw-away ServeNest home, ports.

Unit tests are plain Python: no vLLM engine, no Prefect server, no network beyond
loopback. Every test runs with SERVENEST_HOME / SERVENEST_ENGINES_DIR /
SERVENEST_MODELS_DIR pointing into its own tmp_path, so nothing touches ~/.servenest.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import socket
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS_DIR = REPO_ROOT / "deployments"
LOCAL_TINY = DEPLOYMENTS_DIR / "local-tiny.yaml"

# Remove a key from the base dict when given as an override value.
DELETE = object()


def merge(base: dict, overrides: dict) -> dict:
    """Deep-merge ``overrides`` into a copy of ``base`` (dicts merge, anything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is DELETE:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


BASE_SPECS = {
    # The built-in tiny model on this machine's CPU engine.
    "local": {
        "name": "unit-test",
        "model": "servenest/tiny-qwen2",
        "topology": "local",
        "weights": {"source": "builtin"},
        "access": {"api_key_secret": "unit-test-api-key"},
    },
    # QwQ-32B on one 8xA10 ECS instance (a seed deployment).
    "ecs": {
        "name": "unit-test",
        "model": "Qwen/QwQ-32B",
        "topology": "ecs-single",
        "weights": {"source": "modelscope"},
        "access": {"api_key_secret": "unit-test-api-key"},
        "cloud": {"instance_types": ["ecs.gn7i-8x.16xlarge"]},
    },
    # QwQ-32B on one H20 pod of an existing ACK/ACS cluster, weights synced to OSS (seed 003).
    "ack": {
        "name": "unit-test",
        "model": "Qwen/QwQ-32B",
        "topology": "ack",
        "weights": {"source": "modelscope", "oss_uri": "oss://servenest-models/llm-model/qwq-32b"},
        "access": {"api_key_secret": "unit-test-api-key"},
        "cloud": {"cluster_id": "c0123456789abcdef0", "gpu_kind": "H20", "gpus_per_node": 1},
    },
}


@pytest.fixture
def spec_dict():
    """Factory: ``spec_dict(base="local"|"ecs", **overrides)`` -> a spec as a plain dict."""

    def make(base: str = "local", **overrides) -> dict:
        return merge(BASE_SPECS[base], overrides)

    return make


@pytest.fixture
def make_spec(spec_dict):
    """Factory: like ``spec_dict`` but validated through ``load_spec_data``."""
    from servenest.spec import load_spec_data

    def make(base: str = "local", **overrides):
        return load_spec_data(spec_dict(base, **overrides))

    return make


@pytest.fixture(autouse=True)
def servenest_home(tmp_path, monkeypatch) -> Path:
    """A throw-away SERVENEST_HOME (engines, models, logs, state) and no proxies."""
    home = tmp_path / "servenest-home"
    monkeypatch.setenv("SERVENEST_HOME", str(home))
    monkeypatch.setenv("SERVENEST_ENGINES_DIR", str(home / "engines"))
    monkeypatch.setenv("SERVENEST_MODELS_DIR", str(home / "models"))
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def listening_socket():
    """A socket listening on 127.0.0.1:<free port>; yields (socket, port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    try:
        yield sock, sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture
def process_groups():
    """Popen objects of the process groups a test starts; SIGKILLed at the end if still running."""
    started: list = []
    yield started
    for proc in started:
        if proc.poll() is None:  # not reaped, so its pid (and group id) is still ours
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def cloud(monkeypatch):
    """The cloud emulator with the SDK clients pointed at it and every wait shrunk 1000x.

    Hosts answer Cloud Assistant through ``cloud.command_handler`` (default: the
    ``FakeHosts`` below); tests that need real scripts run use EmulatedHosts."""
    from servenest.rehearsal.cloud import CloudEmulator

    hosts = FakeHosts()
    with CloudEmulator(seed=3, instance_address="auto", command_handler=hosts,
                       require_known_instances=True) as emu:
        emu.hosts = hosts
        monkeypatch.setenv("SERVENEST_CLOUD_EMULATOR", emu.endpoint)
        monkeypatch.setenv("SERVENEST_CLOUD_TIME_SCALE", "0.001")
        yield emu


class FakeHosts:
    """Answers the ServeNest host scripts the way a healthy GPU host would, and records them."""

    def __init__(self):
        self.scripts: list[tuple[str, str]] = []
        self.container = "running 0 0"
        self.staged: set[str] = set()
        self.fail: dict[str, tuple[int, str]] = {}  # script marker -> (exit code, output)

    def __call__(self, content: str, instance_id: str):
        self.scripts.append((instance_id, content))
        for marker, outcome in self.fail.items():
            if marker in content:
                return outcome
        if "ServeNest staging" in content:
            reused = instance_id in self.staged
            self.staged.add(instance_id)
            note = "match their manifest; skipping download" if reused else "staged 3 files"
            return 0, f"servenest: {note}\nservenest-weights: files=3 bytes=4096 digest={'d' * 64}\n"
        if "docker inspect" in content:
            return 0, self.container + "\n"
        if "docker logs" in content:
            return 0, "INFO engine log line\nERROR something broke\n"
        return 0, "ok\n"

    def named(self, marker: str) -> list[tuple[str, str]]:
        return [(i, c) for i, c in self.scripts if marker in c]
