"""Integration tests: the real vLLM server (CPU build) and one Prefect server per session.

The engine environment is shared with the developer's (``~/.servenest/engines``, or
``SERVENEST_ENGINES_DIR``) because creating it takes about 80 s; everything else
(state, logs, weights) lives in a throw-away home.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from servenest.spec import DeploymentSpec, load_spec_file

REPO = Path(__file__).resolve().parents[2]
TEST_KEY = "sk-integration-test-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session", autouse=True)
def isolated_home(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("servenest-home")
    mp.setenv("SERVENEST_HOME", str(home))
    mp.setenv(
        "SERVENEST_ENGINES_DIR",
        os.environ.get("SERVENEST_ENGINES_DIR", str(Path.home() / ".servenest" / "engines")),
    )
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        mp.delenv(var, raising=False)
    mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    yield home
    mp.undo()


@pytest.fixture(scope="session", autouse=True)
def prefect_server(isolated_home):
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def api_key_secret(prefect_server) -> str:
    from prefect.blocks.system import Secret

    Secret(value=TEST_KEY).save("it-api-key", overwrite=True)
    return "it-api-key"


@pytest.fixture(scope="session")
def make_spec(api_key_secret):
    """The shipped local-tiny spec under another name, on a free port."""

    def make(name: str, port: int | None = None, **engine) -> DeploymentSpec:
        data = load_spec_file(REPO / "deployments" / "local-tiny.yaml").model_dump(
            mode="json", exclude_unset=True
        )
        data["name"] = name
        data["access"] = {**data["access"], "api_key_secret": api_key_secret,
                          "port": port or free_port()}
        data["engine"] = {**data["engine"], **engine}
        return DeploymentSpec.model_validate(data)

    return make


@pytest.fixture(scope="session")
def engine_python() -> str:
    """The managed engine environment's python, created here if it is missing."""
    from servenest.commands import subprocess_runner
    from servenest.engines import environment

    with environment.creation_lock():
        if not environment.is_ready():
            subprocess_runner(environment.create_commands(), None)
    return str(environment.managed_python())
