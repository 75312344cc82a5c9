"""servenest/register.py: the decisions `servenest register` makes, without a server."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest
import yaml

from servenest import register
from servenest.errors import ServeNestError
from servenest.prefect_api import SERVER_PID_FILE

from .conftest import DEPLOYMENTS_DIR, REPO_ROOT


def test_a_local_spec_needs_no_credentials_and_a_cloud_spec_names_its_block(spec_dict):
    assert register.credentials_needed({"spec": spec_dict("local")}) is None
    cloud = spec_dict("ecs")
    assert register.credentials_needed({"spec": cloud}) == "default"
    cloud["cloud"]["credentials_block"] = "prod-account"
    assert register.credentials_needed({"spec": cloud}) == "prod-account"


def test_a_sweep_needs_the_block_it_is_given_or_its_flows_default():
    schema = {"properties": {"credentials_block": {"default": "default", "type": "string"}}}
    assert register.credentials_needed({"region": "cn-beijing"}, schema) == "default"
    assert register.credentials_needed({"region": "cn-beijing", "credentials_block": "ops"}, schema) == "ops"
    # launch/health-gate/... carry only a name: no schedule of theirs depends on a block.
    assert register.credentials_needed({"name": "qwen3-8b"}, {"properties": {"name": {}}}) is None


def _schedule(name: str, active: bool, block: str | None) -> register.Schedule:
    return register.Schedule(name, uuid.uuid4(), uuid.uuid4(), active, block)


def test_only_active_cloud_schedules_without_their_block_are_paused():
    local = _schedule("redeploy/local-tiny", True, None)
    cloud = _schedule("redeploy/qwen3-8b", True, "default")
    other = _schedule("redeploy/ack-qwq-32b", True, "ack-account")
    already_off = _schedule("sweep/cn-hangzhou", False, "default")
    every = [local, cloud, other, already_off]
    assert register.schedules_to_pause(every, set()) == [cloud, other]
    assert register.schedules_to_pause(every, {"default"}) == [other]
    assert register.schedules_to_pause(every, {"default", "ack-account"}) == []


def test_every_shipped_cloud_redeploy_needs_credentials_and_local_tiny_does_not():
    doc = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    redeploys = {d["name"]: d for d in doc["deployments"] if d["entrypoint"] == "flows/redeploy.py:redeploy"}
    assert register.credentials_needed(redeploys.pop("local-tiny")["parameters"]) is None
    assert redeploys and all(register.credentials_needed(d["parameters"]) == "default" for d in redeploys.values())


def test_deployments_that_carry_only_a_name_need_what_their_spec_needs():
    doc = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["deployments"]
    entries = [(d["name"], d["parameters"], None) for d in doc]
    needs = dict(zip(((d["entrypoint"].split(":")[-1], d["name"]) for d in doc),
                     register.credentials_of(entries), strict=True))
    assert needs[("watch", "local-tiny")] is None and needs[("launch", "local-tiny")] is None
    assert needs[("watch", "qwen3-8b")] == "default" == needs[("redeploy", "qwen3-8b")]
    # Every scheduled deployment of a cloud spec is paused without credentials.
    cloud = {d["name"] for d in doc if d["parameters"].get("spec", {}).get("topology", "local") != "local"}
    for d, need in zip(doc, register.credentials_of(entries), strict=True):
        if d.get("schedules") and d["name"] in cloud:
            assert need == "default", d["entrypoint"]


def test_only_local_specs_get_a_made_up_key(tmp_path, spec_dict):
    for kind, name in (("local", "a"), ("ecs", "b"), ("local", "c")):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(spec_dict(kind, name=name, access={
            "api_key_secret": f"{name}-api-key"})))
    assert register.local_key_secrets(tmp_path) == ["a-api-key", "c-api-key"]
    assert register.local_key_secrets(DEPLOYMENTS_DIR) == ["local-tiny-api-key"]


def test_the_shipped_automations_load_and_a_broken_one_is_refused_by_file(tmp_path):
    shipped = {a.name: a for a in register.load_automations(DEPLOYMENTS_DIR / "automations")}
    assert len(shipped) == len(list((DEPLOYMENTS_DIR / "automations").glob("*.yaml")))
    assert shipped["servenest-crash-zombie-runs"].trigger.within.total_seconds() == 540
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: no-trigger\nactions: []\n")
    with pytest.raises(ServeNestError, match="bad.yaml: not a valid Prefect automation"):
        register.load_automations(tmp_path)


def test_client_env_points_children_at_the_api_with_its_auth(monkeypatch):
    from prefect.settings import PREFECT_API_AUTH_STRING, temporary_settings

    with temporary_settings(updates={PREFECT_API_AUTH_STRING: "user:s3cret"}):
        env = register.client_env("http://127.0.0.1:4321/api")
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:4321/api"
    assert env["PREFECT_API_AUTH_STRING"] == "user:s3cret"
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_AUTH_STRING}):
        assert "PREFECT_API_AUTH_STRING" not in register.client_env("http://x/api")


def wait_until_execd(pid_file, marker: str) -> None:
    """Until the child has exec'd its command (right after fork it is still this process)."""
    deadline = time.monotonic() + 10
    while register.running_pid(pid_file, marker) is None and time.monotonic() < deadline:
        time.sleep(0.01)


def test_running_pid_trusts_a_pid_file_only_for_a_live_process_with_the_marker(tmp_path):
    pid_file = tmp_path / "p.pid"
    assert register.running_pid(pid_file, "sleep") is None  # no file
    proc = subprocess.Popen(["sleep", "30"])
    try:
        pid_file.write_text(f"{proc.pid}\n")
        wait_until_execd(pid_file, "sleep")
        assert register.running_pid(pid_file, "sleep") == proc.pid
        assert register.running_pid(pid_file, "worker") is None  # a recycled pid: someone else's
    finally:
        proc.kill()
        proc.wait()
    assert register.running_pid(pid_file, "sleep") is None  # dead
    pid_file.write_text("garbage")
    assert register.running_pid(pid_file, "sleep") is None


def test_stop_ends_the_recorded_process_groups_and_forgets_them(tmp_path):
    from servenest import paths

    # Stand-ins named like the real commands, each leading its own session as they do.
    procs = {name: subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", name],
                                    start_new_session=True)
             for name in ("worker", "server")}
    try:
        (paths.home()).mkdir(parents=True, exist_ok=True)
        (paths.home() / register.WORKER_PID_FILE).write_text(str(procs["worker"].pid))
        (paths.home() / SERVER_PID_FILE).write_text(str(procs["server"].pid))
        for name, pid_file in (("worker", register.WORKER_PID_FILE), ("server", SERVER_PID_FILE)):
            wait_until_execd(paths.home() / pid_file, name)
        stopped = register.stop_started_processes()
        assert stopped == [f"worker (pid {procs['worker'].pid})", f"Prefect server (pid {procs['server'].pid})"]
        for p in procs.values():
            assert p.wait(timeout=10) == -15
        assert not (paths.home() / register.WORKER_PID_FILE).exists()
        assert register.stop_started_processes() == []
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


def test_the_summary_counts_schedules_and_says_how_to_turn_cloud_ones_on(tmp_path):
    local, cloud, sweep = (_schedule("redeploy/local-tiny", True, None), _schedule("redeploy/qwen3-8b", True, "default"),
                           _schedule("sweep/cn-hangzhou", False, "default"))
    result = register.Registration(api_url="http://127.0.0.1:4200/api", blocks=["a", "b"], deployments=116,
                                   schedules=[local, cloud, sweep], paused=[cloud], automations=["z"],
                                   keys_created=["local-tiny-api-key"],
                                   worker=register.WorkerProcess(42, tmp_path / "w.log", started=True))
    text = "\n".join(result.lines())
    assert "deployments: 116 (every one in prefect.yaml); schedules: 1 on, 1 paused for want of " \
           "credentials, 1 off as prefect.yaml says" in text
    assert "until an AlibabaCloudCredentials block exists (default)" in text
    assert "Secret block 'local-tiny-api-key'" in text and "started, pid 42" in text
    result.paused = []
    assert "AlibabaCloudCredentials" not in "\n".join(result.lines())
