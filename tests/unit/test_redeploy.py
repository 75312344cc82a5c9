"""servenest/redeploy.py and servenest/slots.py: where a redeploy puts the new revision."""

from __future__ import annotations

import pytest

from servenest.errors import SpecError
from servenest.redeploy import (
    choose_placement,
    gpu_limit_name,
    scaling_demand,
    scaling_quota_problem,
)
from servenest.slots import deployment_of, other_slot, slot_names
from servenest.spec import load_spec_data
from servenest.topology import TOPOLOGIES, open_topology


def place(**kw):
    args = dict(allowed=True, budget=None, live_hourly=10.0, new_hourly=10.0, currency="CNY",
                demand={}, limits={})
    return choose_placement(**{**args, **kw})


def test_side_by_side_when_two_copies_fit_the_budget_and_the_quota():
    p = place(budget=25.0, demand={"A10": 8}, limits={"A10": 8})
    assert p.side_by_side and p.unguarded == ()
    assert "20.00 CNY/hour" in p.reason


def test_in_place_when_two_copies_exceed_the_budget():
    p = place(budget=15.0, live_hourly=10.0, new_hourly=10.0)
    assert not p.side_by_side
    assert "20.00 CNY/hour, over cloud.hourly_budget 15.00" in p.reason


def test_an_unknown_live_price_under_a_budget_is_not_a_licence_to_double_spend():
    assert not place(budget=100.0, live_hourly=None).side_by_side


def test_no_budget_means_only_the_quota_decides():
    assert place(budget=None, live_hourly=None).side_by_side


def test_in_place_when_the_quota_limit_is_smaller_than_a_copy():
    p = place(demand={"H20": 16}, limits={"H20": 8})
    assert not p.side_by_side
    assert "needs 16 H20 GPUs; the quota limit gpus-h20 allows 8" in p.reason


def test_a_missing_limit_is_reported_as_unguarded():
    p = place(demand={"H20": 8, "A10": 4}, limits={"A10": 8})
    assert p.side_by_side and p.unguarded == ("H20",)


def test_turned_off_is_in_place():
    assert not place(allowed=False).side_by_side


def test_limit_names_are_lowercase_prefect_names():
    assert gpu_limit_name("H20") == "gpus-h20" and gpu_limit_name("PPU") == "gpus-ppu"


def test_slots_alternate():
    assert slot_names("qwq") == ("qwq", "qwq-b")
    assert other_slot("qwq", "qwq") == "qwq-b"
    assert other_slot("qwq", "qwq-b") == "qwq"
    assert deployment_of("qwq-b") == "qwq" and deployment_of("qwq") == "qwq"
    # A deployment whose own name ends in -b is not mistaken for a slot of another.
    assert deployment_of("team-b", {"team-b"}) == "team-b"


def test_the_second_local_slot_listens_one_port_up(spec_dict):
    spec = load_spec_data(spec_dict(access={"api_key_secret": "k", "port": 8100}))
    second = TOPOLOGIES["local"].spec_for_slot(spec, "unit-test-b")
    assert (second.name, second.access.port) == ("unit-test-b", 8101)
    first = TOPOLOGIES["local"].spec_for_slot(spec, "unit-test")
    assert (first.name, first.access.port) == ("unit-test", 8100)


def test_a_cloud_slot_keeps_the_port_and_renames_the_resources(spec_dict):
    spec = load_spec_data(spec_dict("ecs"))
    second = TOPOLOGIES["ecs-single"].spec_for_slot(spec, "unit-test-b")
    assert second.name == "unit-test-b" and second.access.port == spec.access.port
    assert second.model_dump(exclude={"name"}) == spec.model_dump(exclude={"name"})


def test_a_slot_name_the_topology_refuses_is_a_spec_error(spec_dict):
    spec = load_spec_data(spec_dict("ack", name="a" * 24))  # ack allows 24 characters
    with pytest.raises(SpecError, match="slot"):
        TOPOLOGIES["ack"].spec_for_slot(spec, "a" * 24 + "-b")


def test_gpu_demand_per_topology(spec_dict):
    assert open_topology(load_spec_data(spec_dict())).gpu_demand() == {}
    # Capacity failover may pick any candidate type: the largest count is reserved.
    ecs = load_spec_data(spec_dict("ecs", cloud={"instance_types": ["ecs.gn7i-4x.8xlarge", "ecs.gn7i-8x.16xlarge"]}))
    assert open_topology(ecs).gpu_demand() == {"A10": 8}
    dual = load_spec_data(spec_dict("ecs", model="deepseek-ai/DeepSeek-R1", topology="ecs-dual",
                                    cloud={"nodes": 2, "instance_types": ["ecs.ebmgn8v.48xlarge"]}))
    assert open_topology(dual).gpu_demand() == {"H20": 16}
    ack = load_spec_data(spec_dict("ack", cloud={"gpus_per_node": 8, "nodes": 2}))
    assert open_topology(ack).gpu_demand() == {"H20": 16}


def test_a_deployment_may_not_be_named_like_a_second_slot(tmp_path, spec_dict):
    import yaml

    from servenest.prefect_yaml import render
    from servenest.slots import check_deployment_name

    assert check_deployment_name("team-bravo") == "team-bravo"
    with pytest.raises(SpecError, match="second slot of deployment 'team'"):
        check_deployment_name("team-b")
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(spec_dict(name="team-b")))
    with pytest.raises(SpecError, match="x.yaml"):
        render(tmp_path)


def test_a_rejected_revision_never_becomes_the_regression_baseline():
    from servenest.bench.gate import regressions

    base = {"load": "L", "valid": True, "median_ttft_ms": 100.0, "median_tpot_ms": 10.0,
            "median_itl_ms": 10.0, "output_throughput": 100.0}
    slow = {**base, "median_ttft_ms": 150.0}
    history = [base, {**slow, "passed": False}, {**slow, "passed": False}, {**slow, "passed": False}]
    # Three rejected slow candidates later, a fourth is still judged against the good runs.
    assert regressions(slow, history, margin=0.2)
    assert not regressions(slow, [base, {**slow}, {**slow}, {**slow}], margin=0.2)  # older rows: passed


# -- replicas.max against the spare GPU quota ------------------------------------------------------
def test_the_autoscaler_may_add_only_what_the_quota_spares(make_spec):
    spec = make_spec("ack", replicas={"min": 1, "max": 4}, cloud={"gpus_per_node": 2})
    assert scaling_demand(spec) == {"H20": 6}
    problem = scaling_quota_problem(spec, {"H20": 4})
    assert "replicas.max 4 may add 6 H20 GPUs" in problem and "gpus-h20 allows 4" in problem
    assert scaling_quota_problem(spec, {"H20": 6}) is None
    assert scaling_quota_problem(spec, {"H20": None}) is None  # no limit: nothing to check against
    assert scaling_demand(make_spec("ack")) == {}
