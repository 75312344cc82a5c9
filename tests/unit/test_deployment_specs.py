"""deployments/*.yaml: every committed spec validates, fits, and matches what the seeds describe.

Plain Python: no Prefect server, no cloud. Prices come from the cloud emulator's own
GetTemplateEstimateCost handler, fed the ROS template ServeNest would send for the spec.
"""

from __future__ import annotations

import pytest

from servenest.catalog import INSTANCE_TYPES, MODELS, get_instance_type
from servenest.cloud.ros_template import (
    render_ack_cluster_yaml,
    render_template_yaml,
    template_parameters,
)
from servenest.errors import SpecError
from servenest.fit import check_spec_fits, hardware_candidates
from servenest.rehearsal.cloud import DEFAULT_REGIONS, CloudEmulator
from servenest.spec import load_spec_file

from .conftest import DEPLOYMENTS_DIR

SPEC_FILES = sorted(DEPLOYMENTS_DIR.glob("*.yaml"))


def _load(path):
    try:
        return load_spec_file(path)
    except SpecError:
        return None  # reported by test_spec_file_validates_fits_and_is_named_after_its_file


SPECS = {path.stem: spec for path in SPEC_FILES if (spec := _load(path)) is not None}
CLOUD = sorted(name for name, spec in SPECS.items() if spec.topology != "local")

H20 = "ecs.ebmgn8v.48xlarge"
A10X4 = "ecs.gn7i-4x.8xlarge"
A10X8 = "ecs.gn7i-8x.16xlarge"

# name -> (model, topology, first instance type (None: from the catalog's seed types), TP, PP)
REQUIRED = {
    "qwen3-235b": ("Qwen/Qwen3-235B-A22B", "ecs-single", H20, None, None),
    "qwen3-32b": ("Qwen/Qwen3-32B", "ecs-single", H20, None, None),
    "qwq-32b-4xa10": ("Qwen/QwQ-32B", "ecs-single", A10X4, None, None),
    "qwq-32b-8xa10": ("Qwen/QwQ-32B", "ecs-single", A10X8, None, None),
    "qwen25-32b-instruct": ("Qwen/Qwen2.5-32B-Instruct", "ecs-single", None, None, None),
    "r1-distill-llama-70b": ("deepseek-ai/DeepSeek-R1-Distill-Llama-70B", "ecs-single", None, None, None),
    "r1-distill-qwen-32b": ("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", "ecs-single", None, None, None),
    "r1-distill-qwen-7b": ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "ecs-single", None, None, None),
    "deepseek-r1": ("deepseek-ai/DeepSeek-R1", "ecs-dual", H20, 8, 2),
    "deepseek-v3": ("deepseek-ai/DeepSeek-V3", "ecs-dual", H20, 8, 2),
    "ack-qwq-32b": ("Qwen/QwQ-32B", "ack", None, None, None),
    "ack-deepseek-r1": ("deepseek-ai/DeepSeek-R1", "ack", None, 8, 2),
}
# Seed 004's Qwen3 family, each on the smallest catalog type with the stated GPU memory.
QWEN3_FAMILY = {
    "qwen3-0-6b": "Qwen/Qwen3-0.6B",
    "qwen3-1-7b": "Qwen/Qwen3-1.7B",
    "qwen3-4b": "Qwen/Qwen3-4B",
    "qwen3-8b": "Qwen/Qwen3-8B",
    "qwen3-14b": "Qwen/Qwen3-14B",
    "qwen3-30b-a3b": "Qwen/Qwen3-30B-A3B",
}


def total_gpu_gib(itype: str) -> int:
    t = get_instance_type(itype)
    return t.gpu_count * t.gpu_memory_gib


def gpu_kind(spec, itype: str) -> str:
    return spec.cloud.gpu_kind if spec.topology == "ack" else get_instance_type(itype).gpu


def emulator_hourly(spec, itype: str) -> float:
    """What the emulator's GetTemplateEstimateCost quotes for the stack ServeNest would create."""
    if spec.topology == "ack":
        assert itype == spec.cloud.instance_types[0], "the emulator prices an ACK node pool's first type"
        body, parameters = render_ack_cluster_yaml(spec, at_max=True), {}  # the autoscaler's ceiling
    else:
        zone = spec.cloud.zones[0] if spec.cloud.zones else sorted(DEFAULT_REGIONS[spec.cloud.region])[0]
        body, parameters = render_template_yaml(spec, zone, itype), template_parameters(spec)
    params = {"TemplateBody": body}
    for i, (key, value) in enumerate(parameters.items(), start=1):
        params[f"Parameters.{i}.ParameterKey"] = key
        params[f"Parameters.{i}.ParameterValue"] = value
    resources = CloudEmulator(region_id=spec.cloud.region)._ros_GetTemplateEstimateCost(params)["Resources"]
    return round(sum(r["Result"]["Order"]["TradeAmount"] for r in resources.values()), 4)


# -- every file ------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.name)
def test_spec_file_validates_fits_and_is_named_after_its_file(path):
    spec = load_spec_file(path)
    assert spec.name == path.stem
    reports = check_spec_fits(spec)  # what `servenest validate` runs; raises when it does not fit
    assert reports and all(r.headroom_gib >= 0 for r in reports)
    assert spec.access.api_key_secret == f"{spec.name}-api-key"
    if spec.access.public:
        assert spec.access.allowed_cidrs, "a public endpoint names its allowed CIDRs"


def test_local_tiny_is_still_there():
    assert SPECS["local-tiny"].topology == "local"


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_required_spec(name):
    assert name in SPECS, f"deployments/{name}.yaml is missing"
    spec = SPECS[name]
    model, topology, itype, tp, pp = REQUIRED[name]
    assert (spec.model, spec.topology) == (model, topology)
    if itype is None and topology != "ack":
        itype = MODELS[model].seed_instance_types[0]
    if itype is not None:
        assert spec.cloud.instance_types[0] == itype
    if tp is not None:
        assert (spec.engine.tensor_parallel_size, spec.engine.pipeline_parallel_size) == (tp, pp)
        [hw] = {(h.devices_per_node, h.nodes) for h in hardware_candidates(spec)}
        assert hw == (tp, pp) and spec.cloud.nodes == pp
    assert spec.engine.kind == "vllm"  # the seeds' default engine for every one of these


def test_qwq_4xa10_failover_types_are_4xa10():
    for itype in SPECS["qwq-32b-4xa10"].cloud.instance_types:
        t = get_instance_type(itype)
        assert (t.gpu, t.gpu_count) == ("A10", 4)


def test_deepseek_dual_keeps_seed_001_engine_settings():
    for name in ("deepseek-r1", "deepseek-v3"):
        e = SPECS[name].engine
        assert e.gpu_memory_utilization == 0.98 and e.enable_chunked_prefill
        assert e.version == "0.8.2" and "sglang0.4.3" in (e.image or "")


def test_ack_specs_create_their_cluster_and_keep_weights_on_oss():
    for name in ("ack-qwq-32b", "ack-deepseek-r1"):
        spec = SPECS[name]
        assert spec.cloud.cluster_id is None and spec.cloud.zones and spec.cloud.instance_types
        assert spec.weights.source == "modelscope"
        assert spec.weights.oss_uri == f"oss://servenest-models/llm-model/{spec.model}"
        assert spec.cloud.gpu_kind == "H20"
    assert (SPECS["ack-qwq-32b"].cloud.nodes, SPECS["ack-qwq-32b"].cloud.gpus_per_node) == (1, 1)
    assert (SPECS["ack-deepseek-r1"].cloud.nodes, SPECS["ack-deepseek-r1"].cloud.gpus_per_node) == (2, 8)


@pytest.mark.parametrize("name", sorted(QWEN3_FAMILY))
def test_qwen3_family_on_the_smallest_type_with_the_seed_minimum(name):
    spec = SPECS[name]
    assert spec.model == QWEN3_FAMILY[name] and spec.topology == "ecs-single"
    minimum = MODELS[spec.model].min_gpu_memory_gib
    assert minimum, f"{spec.model} has no seed 004 minimum in the catalog"
    for itype in spec.cloud.instance_types:
        assert total_gpu_gib(itype) >= minimum, f"{itype} has less GPU memory than seed 004's {minimum} GiB"
    smallest = min(total_gpu_gib(t) for t in INSTANCE_TYPES if total_gpu_gib(t) >= minimum)
    assert total_gpu_gib(spec.cloud.instance_types[0]) == smallest


@pytest.mark.parametrize("name", ["qwen3-32b", "qwen3-235b"])
def test_qwen3_on_h20_meets_the_seed_minimum(name):
    spec = SPECS[name]
    assert total_gpu_gib(spec.cloud.instance_types[0]) >= MODELS[spec.model].min_gpu_memory_gib


@pytest.mark.parametrize("name", [n for n in CLOUD if SPECS[n].topology != "ack"])
def test_ecs_system_disk_holds_the_weights(name):
    from servenest.cloud.weights_cache import weights_disk

    spec = SPECS[name]
    weights = MODELS[spec.model].weight_gb
    if spec.weights.cache == "snapshot":  # the weights have their own data disk
        assert weights_disk(spec)["Size"] * 2**30 / 1e9 >= weights * 1.05
        assert spec.cloud.system_disk_gb >= 60  # OS and engine image
    else:
        assert spec.cloud.system_disk_gb >= weights + 60  # + OS and engine image


# -- budgets ---------------------------------------------------------------------------------------
def test_emulator_price_follows_the_template():
    assert emulator_hourly(SPECS["qwq-32b-8xa10"], A10X8) == pytest.approx(10.0)
    assert emulator_hourly(SPECS["deepseek-r1"], H20) == pytest.approx(20.0)  # two instances
    assert emulator_hourly(SPECS["ack-deepseek-r1"], H20) == pytest.approx(20.64)  # + ACK Pro


@pytest.mark.parametrize("name", CLOUD)
def test_hourly_budget_decides_the_redeploy_mode(name):
    spec = SPECS[name]
    budget = spec.cloud.hourly_budget
    assert budget is not None, f"{name}: every cloud spec sets cloud.hourly_budget"
    types = spec.cloud.instance_types[:1] if spec.topology == "ack" else spec.cloud.instance_types
    kinds = {gpu_kind(spec, itype) for itype in types}
    # Every candidate type of a spec falls on the same side of the rule.
    assert kinds <= {"H20"} or kinds <= {"A10", "L20"}, f"{name}: candidates mix H20 and A10/L20"
    for itype, hw in zip(types, hardware_candidates(spec), strict=True):
        price = emulator_hourly(spec, itype)
        assert price <= budget, f"{name} on {itype}: {price}/h is over its own budget {budget}"
        if gpu_kind(spec, itype) == "H20":  # in-place redeploy: one copy fits, two do not
            assert budget < 2 * price and budget == pytest.approx(1.3 * price, rel=0.01)
        else:  # at most 8 A10s or one L20/A10 instance: side by side, two copies fit
            assert spec.cloud.nodes == 1 and hw.devices <= 8
            assert budget >= 2 * price and budget == pytest.approx(2.2 * price, rel=0.01)


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.name)
def test_every_spec_plans_offline(path):
    """`servenest plan` (templates, host scripts, manifests) works for every shipped spec,
    ecs-dual's worker scripts included, whose head address is known only at launch."""
    from servenest.topology import open_topology

    plan = open_topology(load_spec_file(path)).plan()
    assert plan
