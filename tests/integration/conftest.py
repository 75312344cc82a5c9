"""Integration tests: the real vLLM server (CPU build) and one real Prefect server per session.

The engine environment is shared with the developer's (``~/.servenest/engines``, or
``SERVENEST_ENGINES_DIR``) because creating it takes about 80 s; everything else
(state, logs, weights) lives in a throw-away home.
"""

from __future__ import annotations

import os
import secrets
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


@pytest.fixture(scope="session")
def prefect_server_info(isolated_home, tmp_path_factory):
    """The session's ``prefect server start`` (SQLite, API auth on): a ``PrefectServer``."""
    from tests.integration.servers import prefect_server as start_prefect_server

    auth = f"servenest:{secrets.token_urlsafe(24)}"
    with start_prefect_server(tmp_path_factory.mktemp("prefect-home"), auth_string=auth) as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def prefect_server(prefect_server_info):
    """The session server's API URL; in-process clients and ``env=dict(os.environ)``
    subprocesses reach it (PREFECT_API_URL and PREFECT_API_AUTH_STRING are set in both
    Prefect's settings and ``os.environ`` for the session)."""
    import prefect.context

    from tests.integration.servers import drain_client_workers

    server = prefect_server_info
    mp = pytest.MonkeyPatch()
    for var, value in server.env.items():
        mp.setenv(var, value)
    try:
        # Also the process-global settings context, as prefect_test_harness does, for
        # contexts copied before this one (new threads start from the global one).
        with server.settings(), prefect.context._temporary_global_settings_context(
                prefect.context.get_settings_context()):
            yield server.api_url
            drain_client_workers()
    finally:
        mp.undo()


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
