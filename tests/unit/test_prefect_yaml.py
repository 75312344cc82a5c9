"""servenest/prefect_yaml.py: prefect.yaml is generated from deployments/*.yaml."""

from __future__ import annotations

import ast

import pytest
import yaml

from servenest.errors import SpecError
from servenest.prefect_yaml import WORK_POOL, nightly_cron, render, spec_files
from servenest.spec import load_spec_data, load_spec_file

from .conftest import DEPLOYMENTS_DIR, REPO_ROOT

ENTRYPOINTS = {
    "flows/provision.py:provision": "provision",
    "flows/launch.py:launch": "launch",
    "flows/health_gate.py:health_gate": "health-gate",
    "flows/benchmark.py:benchmark": "benchmark",
    "flows/teardown.py:teardown": "teardown",
    "flows/redeploy.py:redeploy": "redeploy",
    "flows/watch.py:watch": "watch",
    "flows/heal.py:heal": "heal",
}


def flow_name(entrypoint: str) -> str | None:
    """The name given to @flow(name=...) on the entrypoint's function, read without importing."""
    path, func = entrypoint.split(":")
    tree = ast.parse((REPO_ROOT / path).read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == func:
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and getattr(deco.func, "id", None) == "flow":
                    for kw in deco.keywords:
                        if kw.arg == "name":
                            return kw.value.value
    return None


@pytest.mark.parametrize("entrypoint, name", sorted(ENTRYPOINTS.items()))
def test_entrypoints_are_flows_with_the_names_the_readme_uses(entrypoint, name):
    assert flow_name(entrypoint) == name


def test_render_has_a_deployment_per_flow_per_spec_file():
    doc = yaml.safe_load(render(DEPLOYMENTS_DIR))
    assert doc["name"] == "servenest"
    files = spec_files(DEPLOYMENTS_DIR)
    assert files
    for path in files:
        spec = load_spec_file(path)
        entries = [d for d in doc["deployments"] if d["name"] == spec.name]
        assert sorted(d["entrypoint"] for d in entries) == sorted(ENTRYPOINTS)
        for d in entries:
            assert d["work_pool"] == {"name": WORK_POOL}
            assert d["tags"] == ["servenest", spec.topology]
        by_entry = {d["entrypoint"]: d for d in entries}
        provision = by_entry["flows/provision.py:provision"]
        # The spec parameter validates back to exactly the file's spec.
        assert load_spec_data(provision["parameters"]["spec"]) == spec
        assert by_entry["flows/launch.py:launch"]["parameters"] == {"name": spec.name, "engine": {}}
        assert by_entry["flows/health_gate.py:health_gate"]["parameters"] == {"name": spec.name}
        assert by_entry["flows/benchmark.py:benchmark"]["parameters"] == {"name": spec.name}
        assert by_entry["flows/teardown.py:teardown"]["parameters"] == {"name": spec.name}
        assert load_spec_data(by_entry["flows/redeploy.py:redeploy"]["parameters"]["spec"]) == spec
        assert by_entry["flows/watch.py:watch"]["parameters"] == {"name": spec.name}
        assert by_entry["flows/heal.py:heal"]["parameters"] == {"name": spec.name}
    sweeps = [d for d in doc["deployments"] if d["entrypoint"] == "flows/sweep.py:sweep"]
    assert len(doc["deployments"]) == len(ENTRYPOINTS) * len(files) + len(sweeps)


def test_each_cloud_region_gets_a_dry_run_sweep_that_is_off_until_turned_on(tmp_path, spec_dict):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(spec_dict("ecs", cloud={"region": "cn-beijing"})))
    doc = yaml.safe_load(render(tmp_path))
    sweeps = {d["name"]: d for d in doc["deployments"] if d["entrypoint"] == "flows/sweep.py:sweep"}
    assert sorted(sweeps) == ["cn-beijing", "cn-hangzhou"]
    for region, d in sweeps.items():
        assert d["parameters"] == {"region": region, "dry_run": True}
        assert d["schedules"] == [{"cron": "30 3 * * *", "timezone": "Asia/Shanghai", "active": False}]
    assert flow_name("flows/sweep.py:sweep") == "sweep"


def test_committed_prefect_yaml_equals_render():
    assert (REPO_ROOT / "prefect.yaml").read_text() == render(DEPLOYMENTS_DIR)


def test_render_of_another_directory(tmp_path, spec_dict):
    (tmp_path / "b-second.yaml").write_text(yaml.safe_dump(spec_dict("ecs", name="second")))
    (tmp_path / "a-first.yaml").write_text(yaml.safe_dump(spec_dict(name="first")))
    (tmp_path / "_draft.yaml").write_text("not: [a spec")  # drafts are skipped
    (tmp_path / "notes.txt").write_text("ignored")
    text = render(tmp_path)
    doc = yaml.safe_load(text)
    assert [d["name"] for d in doc["deployments"]] == (
        ["first"] * len(ENTRYPOINTS) + ["second"] * len(ENTRYPOINTS) + ["cn-hangzhou"])
    assert "&id" not in text and "*id" not in text  # no YAML aliases
    assert text == render(tmp_path)  # deterministic


def test_render_keeps_only_what_the_file_sets(tmp_path, spec_dict):
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(spec_dict()))
    doc = yaml.safe_load(render(tmp_path))
    assert doc["deployments"][0]["parameters"]["spec"] == spec_dict()


def test_render_refuses_an_invalid_spec_naming_the_file(tmp_path, spec_dict):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec_dict(engine={"extra_args": ["--port", "1"]})))
    with pytest.raises(SpecError) as info:
        render(tmp_path)
    assert str(bad) in str(info.value)


def test_redeploys_run_nightly_staggered_one_at_a_time_and_on_a_new_revision(tmp_path, spec_dict):
    for name in ["a", "b", "c"]:
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(spec_dict("ecs", name=name)))
    doc = yaml.safe_load(render(tmp_path))
    redeploys = [d for d in doc["deployments"] if d["entrypoint"] == "flows/redeploy.py:redeploy"]
    assert [d["schedules"] for d in redeploys] == [
        [{"cron": cron, "timezone": "Asia/Shanghai", "active": True}]
        for cron in ("0 2 * * *", "10 2 * * *", "20 2 * * *")]
    for d in redeploys:
        assert d["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
        (trigger,) = d["triggers"]
        assert trigger["match"] == {"prefect.resource.id": "servenest.model.Qwen/QwQ-32B"}
        assert trigger["expect"] == ["servenest.model.revision.published"]
        assert trigger["parameters"] == {"revision": "{{ event.payload.revision }}"}
    assert nightly_cron(30) == "0 7 * * *" and nightly_cron(150) == "0 3 * * *"  # wraps at midnight


def test_a_failed_provision_or_redeploy_triggers_that_deployments_teardown(tmp_path, spec_dict):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(spec_dict(name="alpha")))
    doc = yaml.safe_load(render(tmp_path))
    (teardown,) = [d for d in doc["deployments"] if d["entrypoint"] == "flows/teardown.py:teardown"]
    (trigger,) = teardown["triggers"]
    assert set(trigger["expect"]) == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed",
                                      "prefect.flow-run.Cancelled"}
    assert {"prefect.resource.role": "deployment", "prefect.resource.name": "alpha"} in trigger["match_related"]
    assert {"prefect.resource.role": "flow", "prefect.resource.name": ["provision", "redeploy"]} in trigger["match_related"]
    # Rendered from the event alone; teardown reads the deployment name from the run.
    assert trigger["parameters"] == {"failed_run_id": "{{ event.resource.id | replace('prefect.flow-run.', '') }}"}


def test_the_triggers_are_valid_prefect_deployment_triggers(tmp_path, spec_dict):
    from prefect.events import DeploymentEventTrigger

    (tmp_path / "a.yaml").write_text(yaml.safe_dump(spec_dict()))
    doc = yaml.safe_load(render(tmp_path))
    for d in doc["deployments"]:
        for trigger in d.get("triggers", []):
            DeploymentEventTrigger.model_validate({k: v for k, v in trigger.items() if k != "type"})


def test_every_provision_has_a_watch_on_a_schedule_off_for_local_unless_asked(tmp_path, spec_dict):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(spec_dict("ecs", name="cloudy")))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(spec_dict("local", name="here")))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(spec_dict(
        "local", name="asked", watch={"schedule": True, "every_minutes": 1})))
    deployments = yaml.safe_load(render(tmp_path))["deployments"]
    watches = {d["name"]: d for d in deployments if d["entrypoint"] == "flows/watch.py:watch"}
    provisions = {d["name"] for d in deployments if d["entrypoint"] == "flows/provision.py:provision"}
    assert set(watches) == provisions
    assert watches["cloudy"]["schedules"] == [{"interval": 300, "active": True}]
    assert watches["here"]["schedules"] == [{"interval": 300, "active": False}]
    assert watches["asked"]["schedules"] == [{"interval": 60, "active": True}]
    heals = {d["name"]: d for d in deployments if d["entrypoint"] == "flows/heal.py:heal"}
    # The down event arrives every pass while it is down: a second heal is cancelled, not queued.
    assert heals["cloudy"]["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}


def test_the_heal_automation_runs_the_heal_deployment_the_watchs_down_event_names():
    from prefect.events.schemas.automations import AutomationCore

    from servenest.events import ENDPOINT_DOWN, HEAL_ROLE, endpoint_resource_id

    automation = AutomationCore.model_validate(
        yaml.safe_load((REPO_ROOT / "deployments" / "automations" / "heal-on-down.yaml").read_text()))
    trigger = automation.trigger
    assert trigger.expect == {ENDPOINT_DOWN} and trigger.for_each == {"prefect.resource.id"}
    assert dict(trigger.match.root) == {"prefect.resource.id": "servenest.endpoint.*"}
    assert endpoint_resource_id("qwen3-8b") == "servenest.endpoint.qwen3-8b"
    assert dict(trigger.match_related.root) == {"prefect.resource.role": HEAL_ROLE}
    [action] = automation.actions
    assert (action.type, action.source) == ("run-deployment", "inferred")
