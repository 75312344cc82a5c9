"""The ECS topologies against the cloud emulator, through the real SDK clients."""

from __future__ import annotations

import json

import pytest

from servenest.cloud.ros import Stacks
from servenest.errors import (
    CapacityError,
    CloudCredentialsError,
    CloudInputError,
    CloudPermissionError,
    CloudTransientError,
    StackFailedError,
    WeightsError,
)
from servenest.state import DeploymentState, load_state, state_path
from servenest.topology import open_topology
from servenest.topology.ecs import EcsTopology, redact_keys

KEY = "sk-unit-secret-key-123"
ZONES = ["cn-hangzhou-i", "cn-hangzhou-j"]
TYPES = ["ecs.gn7i-8x.16xlarge", "ecs.gn7i-8x.32xlarge"]


@pytest.fixture
def ecs_spec(make_spec):
    def make(topology="ecs-single", **overrides):
        cloud = {"zones": ZONES, "instance_types": TYPES, **overrides.pop("cloud", {})}
        if topology == "ecs-dual":
            cloud["nodes"] = 2
        return make_spec("ecs", topology=topology, cloud=cloud, **overrides)
    return make


def fresh(spec) -> EcsTopology:
    return open_topology(spec, DeploymentState(spec.name, spec.topology))


def live_stacks(emu) -> list:
    return [s for s in emu.stacks.values() if s.status != "DELETE_COMPLETE"]


def bring_up(t: EcsTopology) -> None:
    t.preflight()
    t.provision()
    t.stage_weights()
    t.launch(KEY)


def test_single_lifecycle_end_to_end(cloud, ecs_spec):
    t = fresh(ecs_spec())
    pre = t.preflight()
    assert pre["candidates"][0] == "ecs.gn7i-8x.16xlarge@cn-hangzhou-i"
    est = t.estimate()
    assert est.hourly == 10.0 and est.currency == "CNY" and est.lines[0][0] == "Instance"
    assert not cloud.stacks, "nothing is created before provision"
    out = t.provision()
    assert out["resumed"] is False and out["zone"] == "cn-hangzhou-i" and out["attempts"] == 1
    [stack] = live_stacks(cloud)
    assert stack.name == "servenest-unit-test" and stack.status == "CREATE_COMPLETE"
    tags = {x["Key"]: x["Value"] for x in stack.tags}
    assert tags["servenest:deployment"] == "unit-test" and tags["servenest:managed"] == "true"
    staged = t.stage_weights()
    assert (staged.files, staged.bytes, staged.reused) == (3, 4096, False)
    t.launch(KEY)
    [inst] = t.instances
    assert t.endpoint().base_url == f"http://{inst['private_ip']}:8000"
    assert inst["private_ip"].startswith("127.0.0.")
    assert t.status().running
    # Key delivery: Base64, KeepCommand false, only to the serving host, never in the record.
    [key_call] = [c for c in cloud.calls_for("RunCommand") if c.params.get("Name") == "servenest-api-key"]
    assert key_call.params["KeepCommand"] == "False" and key_call.params["ContentEncoding"] == "Base64"
    assert KEY not in state_path("unit-test").read_text()
    launched = cloud.hosts.named("ServeNest launch")
    assert len(launched) == 1 and "docker rm -f vllm" in launched[0][1]
    torn = t.teardown()
    assert torn["stacks_deleted"] == [stack.stack_id] and not live_stacks(cloud)
    assert t.teardown()["stacks_deleted"] == []  # idempotent


def test_capacity_failover_moves_to_the_next_zone_and_records_each_attempt(cloud, ecs_spec):
    cloud.faults.update({"out_of_stock_zones": ["cn-hangzhou-i"]})
    t = fresh(ecs_spec())
    t.preflight()
    out = t.provision()
    assert (out["zone"], out["instance_type"], out["attempts"]) == ("cn-hangzhou-j", TYPES[0], 2)
    attempts = load_state("unit-test").resources["attempts"]
    assert [a["outcome"] for a in attempts] == ["no capacity", "created"]
    assert "NoStock" in attempts[0]["reason"]
    assert len(live_stacks(cloud)) == 1 and len(cloud.calls_for("CreateStack")) == 2


def test_failover_goes_on_to_the_next_instance_type(cloud, ecs_spec):
    cloud.faults.update({"out_of_stock_instance_types": [TYPES[0]]})
    t = fresh(ecs_spec())
    t.preflight()
    out = t.provision()
    assert out["instance_type"] == TYPES[1] and out["attempts"] == 3
    t.stage_weights()
    t.launch(KEY)
    # The scripts are rendered for the type actually placed (TP = its GPU count).
    assert "--tensor-parallel-size 8" in cloud.hosts.named("ServeNest launch")[0][1].replace(" \\\n  ", " ")


def test_no_capacity_anywhere_fails_with_every_attempt_and_leaves_nothing(cloud, ecs_spec):
    cloud.faults.update({"out_of_stock_zones": ZONES})
    t = fresh(ecs_spec())
    t.preflight()
    with pytest.raises(CapacityError) as err:
        t.provision()
    assert str(err.value).count("no capacity") == 4
    assert not live_stacks(cloud)


def test_a_failed_resource_is_reported_with_its_reason_and_not_routed_around(cloud, ecs_spec):
    cloud.faults.update({"fail_resources": {"SecurityGroup": "The security group quota is full."}})
    t = fresh(ecs_spec())
    t.preflight()
    with pytest.raises(StackFailedError) as err:
        t.provision()
    msg = str(err.value)
    assert "SecurityGroup (ALIYUN::ECS::SecurityGroup)" in msg and "quota is full" in msg
    assert len(cloud.calls_for("CreateStack")) == 1
    t.teardown()  # what the provision flow does after a failure
    assert not live_stacks(cloud)


def test_a_rerun_after_the_orchestrator_died_resumes_the_same_stack(cloud, ecs_spec, monkeypatch):
    spec = ecs_spec()
    first = fresh(spec)
    first.preflight()

    def die(*_):
        raise KeyboardInterrupt  # killed while waiting for the stack

    with monkeypatch.context() as m:
        m.setattr("servenest.cloud.ros.Stacks.wait_created", die)
        with pytest.raises(KeyboardInterrupt):
            first.provision()
    recorded = load_state(spec.name)
    assert recorded.resources["stack_id"] and recorded.resources["attempts"][0]["outcome"] == "creating"
    cloud.calls.clear()
    again = open_topology(spec)  # from the state record
    assert again.provision()["resumed"] is True
    assert not cloud.calls_for("CreateStack") and not cloud.calls_for("ListStacks")  # the record sufficed
    assert len(live_stacks(cloud)) == 1
    assert [a["outcome"] for a in load_state(spec.name).resources["attempts"]] == ["created"]


def test_a_stack_resumed_after_failover_launches_for_the_type_it_got(cloud, ecs_spec, monkeypatch):
    cloud.faults.update({"out_of_stock_instance_types": [TYPES[0]]})
    spec = ecs_spec(cloud={"instance_types": [TYPES[0], "ecs.gn7i-4x.16xlarge"]})
    first = fresh(spec)
    first.preflight()
    real_wait = Stacks.wait_created

    def die_on_the_fallback(self, sid, on_poll=None):
        if "4x.16xlarge" in str(cloud.stacks[sid].template):
            raise KeyboardInterrupt
        return real_wait(self, sid, on_poll)

    with monkeypatch.context() as m:
        m.setattr(Stacks, "wait_created", die_on_the_fallback)
        with pytest.raises(KeyboardInterrupt):
            first.provision()
    state_path(spec.name).unlink()  # and the record was lost too: the tags still tell
    again = fresh(spec)
    again.preflight()
    out = again.provision()
    assert out["resumed"] and out["instance_type"] == "ecs.gn7i-4x.16xlarge"
    again.stage_weights()
    again.launch(KEY)
    launch = cloud.hosts.named("ServeNest launch")[-1][1].replace(" \\\n  ", " ")
    assert "--tensor-parallel-size 4" in launch


def test_a_fallback_type_over_budget_is_skipped(cloud, ecs_spec):
    cloud.instance_prices = {TYPES[0]: 20.0, TYPES[1]: 40.0}
    cloud.faults.update({"out_of_stock_instance_types": [TYPES[0]]})
    t = fresh(ecs_spec(cloud={"hourly_budget": 30}))
    t.preflight()
    est = t.estimate()
    assert est.hourly == 20.0 and est.alternatives == ((TYPES[1], 40.0),)
    with pytest.raises(CapacityError) as err:
        t.provision()
    assert "over budget 40.00 CNY/hour" in str(err.value)
    assert all(c.params["TemplateBody"].count(TYPES[1]) == 0 for c in cloud.calls_for("CreateStack"))
    assert not live_stacks(cloud)


def test_a_stack_rolling_back_is_waited_out_before_it_is_replaced(cloud, ecs_spec):
    spec = ecs_spec()
    t = fresh(spec)
    t.preflight()
    t.provision()
    sid = t.state.resources["stack_id"]
    cloud.stacks[sid].status = "ROLLBACK_IN_PROGRESS"  # left mid-update by someone else
    cloud.stacks[sid].polls = 0
    states = []
    real_advance = cloud._advance

    def settle(stack):
        states.append(stack.status)
        if stack.status == "ROLLBACK_IN_PROGRESS" and len(states) > 2:
            stack.status = "ROLLBACK_COMPLETE"
        real_advance(stack)

    cloud._advance = settle
    again = fresh(spec)
    again.state.resources["stack_id"] = sid
    again.preflight()
    out = again.provision()
    assert out["resumed"] is False and states[:3] == ["ROLLBACK_IN_PROGRESS"] * 3
    assert len(live_stacks(cloud)) == 1


def test_a_rerun_with_the_state_record_lost_finds_the_stack_by_name(cloud, ecs_spec):
    spec = ecs_spec()
    t = fresh(spec)
    t.preflight()
    t.provision()
    state_path(spec.name).unlink()
    again = fresh(spec)
    again.preflight()
    assert again.provision()["resumed"] is True
    assert len(cloud.calls_for("CreateStack")) == 1


def test_a_lost_create_response_is_retried_with_the_same_token_and_makes_one_stack(cloud, ecs_spec):
    cloud.faults.update({"lost_response_rate": 1.0, "only_actions": ["CreateStack"]})
    t = fresh(ecs_spec())
    t.preflight()
    t.session.timings = type(t.session.timings)(scale=0.001, max_attempts=3)
    with pytest.raises(CloudTransientError):
        t.provision()
    calls = cloud.calls_for("CreateStack")
    assert len(calls) == 3 and len({c.params["ClientToken"] for c in calls}) == 1
    assert len(live_stacks(cloud)) == 1
    cloud.faults.update({"lost_response_rate": 0.0})
    assert fresh(t.spec).provision()["resumed"] is True  # and the rerun adopts it
    assert len(live_stacks(cloud)) == 1


def test_a_stuck_stack_times_out_as_a_transient_error_and_a_rerun_resumes(cloud, ecs_spec):
    cloud.faults.update({"stuck_stacks": ["*"]})
    t = fresh(ecs_spec())
    t.preflight()
    t.session.timings = type(t.session.timings)(scale=0.001, stack_timeout_s=60)
    with pytest.raises(CloudTransientError, match="still CREATE_IN_PROGRESS"):
        t.provision()
    cloud.faults.update({"stuck_stacks": []})
    assert open_topology(t.spec).provision()["resumed"] is True


@pytest.mark.parametrize("cloud_overrides, error, match", [
    ({"zones": ["cn-hangzhou-q"]}, CloudInputError, "cn-hangzhou-q are not in region"),
    ({"region": "cn-atlantis", "zones": []}, CloudInputError, "cn-atlantis"),
])
def test_bad_placements_fail_in_preflight(cloud, ecs_spec, cloud_overrides, error, match):
    with pytest.raises(error, match=match):
        fresh(ecs_spec(cloud=cloud_overrides)).preflight()
    assert not cloud.calls_for("CreateStack")


def test_an_instance_type_no_zone_offers_fails_in_preflight(cloud, ecs_spec):
    cloud.regions = {"cn-hangzhou": {z: ["ecs.gn7i-c8g1.2xlarge"] for z in ZONES}}
    with pytest.raises(CloudInputError, match="none of ecs.gn7i-8x.16xlarge"):
        fresh(ecs_spec()).preflight()


def test_a_key_without_permission_fails_in_preflight(cloud, ecs_spec):
    cloud.faults.update({"denied_access_keys": ["emulator-access-key"]})
    with pytest.raises(CloudPermissionError):
        fresh(ecs_spec()).preflight()


def test_a_missing_credentials_block_is_named(ecs_spec, monkeypatch):
    monkeypatch.delenv("SERVENEST_CLOUD_EMULATOR", raising=False)

    def missing(name):
        raise ValueError(f"Unable to find block document named {name}")

    monkeypatch.setattr("blocks.alibaba.AlibabaCloudCredentials.load", missing)
    with pytest.raises(CloudCredentialsError, match="no AlibabaCloudCredentials block named 'prod'"):
        fresh(ecs_spec(cloud={"credentials_block": "prod"})).preflight()


def test_status_reads_the_container_and_is_cached(cloud, ecs_spec):
    t = fresh(ecs_spec())
    assert not t.status().running and not cloud.calls  # nothing launched: no API call
    bring_up(t)
    cloud.hosts.container = "exited 137 0"
    st = t.status()
    assert (st.running, st.exit_code) == (False, 137)
    cloud.hosts.container = "running 0 0"
    before = len(cloud.calls_for("RunCommand"))
    t.session.timings = type(t.session.timings)(status_cache_s=3600)
    assert t.status().running is False and len(cloud.calls_for("RunCommand")) == before  # cached


def test_logs_come_from_docker_on_the_host(cloud, ecs_spec):
    t = fresh(ecs_spec())
    bring_up(t)
    assert t.logs(20) == ["INFO engine log line", "ERROR something broke"]
    assert "docker logs --tail 20 vllm" in cloud.hosts.named("docker logs")[-1][1]


def test_dual_stages_both_hosts_launches_master_first_and_reports_ray(cloud, make_spec):
    spec = make_spec("ecs", name="dual", model="deepseek-ai/DeepSeek-R1", topology="ecs-dual",
                     cloud={"nodes": 2, "instance_types": ["ecs.ebmgn8v.48xlarge"], "zones": ZONES,
                            "image": "m-uefi-gpu-image"})
    t = fresh(spec)
    bring_up(t)
    master, worker = t.instances
    assert (master["role"], worker["role"]) == ("master", "worker")
    staged = {i for i, _ in cloud.hosts.named("ServeNest staging")}
    assert staged == {master["instance_id"], worker["instance_id"]}
    launches = cloud.hosts.named("ServeNest launch")
    assert [i for i, _ in launches] == [master["instance_id"], worker["instance_id"]]
    assert f"--address={master['private_ip']}:6379" in launches[1][1]
    keys = [c for c in cloud.calls_for("RunCommand") if c.params.get("Name") == "servenest-api-key"]
    assert [c.params["InstanceId.1"] for c in keys] == [master["instance_id"]]
    diag = t.diagnostics()
    assert set(diag) == {"master", "worker", "ray"}


def test_hosts_that_disagree_on_the_weights_fail_staging(cloud, make_spec):
    spec = make_spec("ecs", name="dual", model="deepseek-ai/DeepSeek-R1", topology="ecs-dual",
                     cloud={"nodes": 2, "instance_types": ["ecs.ebmgn8v.48xlarge"], "zones": ZONES,
                            "image": "m-uefi-gpu-image"})
    t = fresh(spec)
    t.preflight()
    t.provision()
    worker = t.instances[1]["instance_id"]
    real = cloud.hosts.__call__

    def handler(content, iid):
        code, out = real(content, iid)
        return (code, out.replace("d" * 64, "e" * 64)) if iid == worker else (code, out)

    cloud.command_handler = handler
    with pytest.raises(WeightsError, match="disagree"):
        t.stage_weights()


def test_staging_reuses_a_verified_copy_and_reports_progress(cloud, ecs_spec):
    t = fresh(ecs_spec())
    t.preflight()
    t.provision()
    seen = []
    assert t.stage_weights(lambda pct, msg: seen.append(pct)).reused is False
    assert seen[-1] == 100.0 and all(0 <= p <= 100 for p in seen)
    assert t.stage_weights().reused is True


def test_a_failing_launch_script_raises_with_the_host_output(cloud, ecs_spec):
    from servenest.errors import HostCommandError

    t = fresh(ecs_spec())
    t.preflight()
    t.provision()
    t.stage_weights()
    cloud.hosts.fail["ServeNest launch"] = (1, "servenest: nvidia-smi is not installed on this image\n")
    with pytest.raises(HostCommandError, match="nvidia-smi is not installed"):
        t.launch(KEY)


def test_teardown_from_the_record_alone_deletes_tagged_stacks(cloud, ecs_spec):
    spec = ecs_spec()
    t = fresh(spec)
    t.preflight()
    t.provision()
    state = load_state(spec.name)
    state.resources.pop("stack_id")  # died before recording the id: the tag still finds it
    out = EcsTopology.teardown_recorded(state)
    assert len(out["stacks_deleted"]) == 1 and not live_stacks(cloud)


def test_plan_touches_no_cloud(ecs_spec, monkeypatch):
    monkeypatch.setenv("SERVENEST_CLOUD_EMULATOR", "127.0.0.1:9")
    plan = fresh(ecs_spec()).plan()
    assert plan["placement"]["zone"] == "cn-hangzhou-i"
    assert json.dumps(plan)  # serialisable for `servenest plan --format json`


def test_engine_logs_lose_any_api_key_before_they_are_shown(cloud, ecs_spec):
    t = fresh(ecs_spec())
    bring_up(t)
    cloud.hosts.fail["docker logs"] = (0, f"server_args=ServerArgs(api_key='{KEY}', port=8000)\n")
    assert KEY not in "\n".join(t.logs()) and KEY not in json.dumps(t.diagnostics())
    assert redact_keys(f"--api-key {KEY} --port 1") == "--api-key <redacted> --port 1"


def test_runtime_state_carries_docker_restarts_and_a_released_instance_is_gone(cloud, ecs_spec):
    t = fresh(ecs_spec())
    assert t.runtime_state().serving is False and not cloud.calls  # not launched: no API call
    bring_up(t)
    cloud.hosts.container = "running 0 3"
    rs = t.runtime_state()
    assert (rs.serving, rs.restarts, rs.gone) == (True, 3, False)
    cloud.hosts.container = "restarting 137 4"
    rs = t.runtime_state()
    assert (rs.serving, rs.restarts) == (False, 4) and "restarting" in rs.detail
    [iid] = list(cloud.instances)
    cloud.release_instance(iid)
    rs = t.runtime_state()
    assert (rs.serving, rs.gone) == (False, True) and iid in rs.detail


def test_restart_engine_restarts_the_container_on_every_host_master_first(cloud, make_spec):
    t = fresh(make_spec("ecs", topology="ecs-dual", cloud={"zones": ZONES, "instance_types": TYPES, "nodes": 2}))
    bring_up(t)
    before = len(cloud.hosts.named("docker restart"))
    out = t.restart_engine(KEY)
    restarts = cloud.hosts.named("docker restart")[before:]
    assert [iid for iid, _ in restarts] == [i["instance_id"] for i in t.instances]
    assert out["restarted"][0].startswith("master=")
    assert KEY not in str(restarts)  # the container reads its mounted key file again
