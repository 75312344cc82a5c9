"""Each failure path: a clear message, and nothing left running or recorded."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.exceptions import ParameterTypeError

from blocks.endpoint import ServeNestEndpoint
from flows.provision import provision
from flows.teardown import teardown
from servenest import process
from servenest.errors import (
    DoesNotFitError,
    GateFailedError,
    MissingSecretError,
    PortInUseError,
    SpecError,
)
from servenest.process import live_sigint
from servenest.spec import load_spec_file
from servenest.state import load_state
from tests.integration.conftest import REPO

pytestmark = pytest.mark.engine


def assert_nothing_left(name: str, port: int) -> None:
    assert load_state(name) is None, "a state record was left behind"
    assert process.port_is_free("127.0.0.1", port)
    with pytest.raises(ValueError, match="Unable to find block document"):
        ServeNestEndpoint.load(name)
    leftovers = [p for p in Path("/proc").iterdir() if p.name.isdigit()
                 and process._environ_has_mark(int(p.name), name)]
    assert not leftovers, f"processes of {name} still running: {leftovers}"


def test_engine_that_exits_at_start_fails_fast_with_its_log(make_spec):
    spec = make_spec("it-bad-arg", extra_args=["--max-num-seqs", "not-a-number"])
    started = time.monotonic()
    with pytest.raises(GateFailedError) as err:
        provision(spec)
    assert time.monotonic() - started < 90, "the gate waited for its deadline"
    assert "exited" in str(err.value) and "max-num-seqs" in str(err.value)
    assert_nothing_left(spec.name, spec.access.port)


def test_keep_on_failure_keeps_the_record_for_debugging(make_spec):
    spec = make_spec("it-keep", extra_args=["--max-num-seqs", "not-a-number"])
    with pytest.raises(GateFailedError):
        provision(spec, keep_on_failure=True)
    kept = load_state(spec.name)
    assert kept is not None and Path(kept.engine["log"]).exists()
    assert "max-num-seqs" in Path(kept.engine["log"]).read_text()
    assert teardown(spec.name)["torn_down"] is True
    assert_nothing_left(spec.name, spec.access.port)


def test_port_in_use_is_refused_before_launch(make_spec):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        spec = make_spec("it-port", port=port)
        with pytest.raises(PortInUseError, match=rf"port {port} .* in use by pid \d+"):
            provision(spec)
    assert_nothing_left(spec.name, port)


def test_unknown_model_is_refused_on_both_paths(make_spec, tmp_path):
    data = make_spec("it-unknown").model_dump(mode="json", exclude_unset=True)
    data["model"] = "Qwen/Qwen3-9B"
    with pytest.raises(ParameterTypeError, match="not in the catalog"):
        provision(spec=data)  # a Prefect parameter, as `prefect deployment run` sends it
    path = tmp_path / "unknown.yaml"
    import yaml

    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match="Qwen/Qwen3-9B.* not in the catalog"):
        load_spec_file(path)


def test_model_too_big_is_refused_before_anything_is_created(make_spec):
    data = make_spec("it-big").model_dump(mode="json", exclude_unset=True)
    data.update(model="Qwen/Qwen3-32B", weights={"source": "modelscope"})
    data["engine"] = {"served_model_name": "qwen3-32b", "max_model_len": 8192}
    from servenest.spec import load_spec_data

    with pytest.raises(DoesNotFitError, match=r"Qwen/Qwen3-32B on this machine .*GiB"):
        provision(load_spec_data(data))
    assert_nothing_left("it-big", data["access"]["port"])


def test_missing_api_key_secret_is_refused(make_spec):
    data = make_spec("it-nokey").model_dump(mode="json", exclude_unset=True)
    data["access"]["api_key_secret"] = "no-such-secret"
    from servenest.spec import load_spec_data

    with pytest.raises(MissingSecretError, match="'no-such-secret' does not exist"):
        provision(load_spec_data(data))
    assert_nothing_left("it-nokey", data["access"]["port"])


def test_malformed_spec_file_is_refused_by_the_cli(tmp_path, prefect_server):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: Bad Name\nmodel: Qwen/Qwen3-8B\nengine: {tensor_parallel_size: -1}\n")
    out = subprocess.run([sys.executable, "-m", "servenest.cli", "up", str(bad)],
                         capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "PREFECT_API_URL": prefect_server})
    assert out.returncode == 2
    assert "broken.yaml is invalid" in out.stderr
    for field in ("name:", "engine.tensor_parallel_size:", "access:"):
        assert field in out.stderr


def test_an_interrupted_provision_leaves_no_engine_running(make_spec, tmp_path, prefect_server):
    import contextlib
    import json
    import os
    import signal

    import yaml

    from servenest import paths
    from servenest.state import state_path

    spec = make_spec("it-interrupt")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_unset=True)))
    output = tmp_path / "up.log"  # what the interrupted run said: the failure message's evidence
    with output.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "servenest.cli", "up", str(path)], cwd=REPO,
                                env={**os.environ, "PREFECT_API_URL": prefect_server},
                                stdout=out, stderr=subprocess.STDOUT, preexec_fn=live_sigint)
    deadline = time.monotonic() + 120
    pgid = None
    while time.monotonic() < deadline and pgid is None:  # wait until the engine was launched
        with contextlib.suppress(OSError, ValueError, KeyError):
            pgid = json.loads(state_path(spec.name).read_text())["engine"].get("pgid")
        time.sleep(0.2)
    assert pgid, f"the engine was not launched (home {paths.home()})"
    time.sleep(2)  # inside the gate, while the engine loads
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert proc.wait(timeout=120) != 0
    said = output.read_text(errors="replace")[-4000:]
    assert not process.session_members(pgid), f"the engine outlived the interrupted run:\n{said}"
    assert_nothing_left(spec.name, spec.access.port)


def test_teardown_of_a_record_whose_spec_no_longer_validates(tmp_path):
    from servenest.state import DeploymentState, save_state

    proc = process.start_group(["bash", "-c", "sleep 300 & wait"],
                               {"PATH": "/usr/bin:/bin", process.MARK_ENV: "it-old"}, tmp_path / "e.log")
    spec = {"name": "it-old", "model": "servenest/tiny-qwen2", "topology": "local",
            "access": {"api_key_secret": "x"}, "field_from_an_older_version": True}
    save_state(DeploymentState("it-old", "local", spec=spec, engine={
        "pgid": proc.pid, "start_ticks": process.start_ticks(proc.pid), "host": "127.0.0.1", "port": 1}))
    result = teardown("it-old")
    assert result["torn_down"] is True
    assert proc.wait(timeout=10) is not None
    assert not process.session_members(proc.pid)
    assert load_state("it-old") is None
