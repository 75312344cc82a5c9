"""servenest/time_to_ready.py: the estimate per phase, the staging limit refused before any
spend, and where it shows (plan, price preview)."""

from __future__ import annotations

from pathlib import Path

import pytest

from servenest import time_to_ready
from servenest.errors import SpecError
from servenest.plan import render_plan
from servenest.spec import load_spec_file
from servenest.topology import Estimate, open_topology
from tasks.spend import price_markdown

REPO = Path(__file__).resolve().parents[2]
PHASES = ["instance creation", "bootstrap", "image pull", "weights", "engine load", "gate"]


def shipped(name: str):
    return load_spec_file(REPO / "deployments" / f"{name}.yaml")


def test_plan_shows_cold_and_warm_by_phase():
    plan = render_plan(shipped("qwen3-235b"))
    ttr = plan["time_to_ready"]
    assert [p["name"] for p in ttr["cold"]["phases"]] == PHASES
    assert [p["name"] for p in ttr["warm"]["phases"]] == PHASES
    assert ttr["warm"]["total_s"] < ttr["cold"]["total_s"] and ttr["seed_minutes"] == 30
    weights = next(p for p in ttr["cold"]["phases"] if p["name"] == "weights")
    assert "470 GB from ModelScope" in weights["basis"]


def test_every_shipped_ecs_spec_stages_within_its_limit():
    for path in sorted((REPO / "deployments").glob("*.yaml")):
        spec = load_spec_file(path)
        if spec.topology in ("ecs-single", "ecs-dual"):
            time_to_ready.check_staging_limit(spec)  # raises when over


def test_the_weights_phase_follows_the_bandwidth(make_spec):
    slow = make_spec("ecs", cloud={"bandwidth_mbps": 100})
    fast = make_spec("ecs", cloud={"bandwidth_mbps": 400})
    size = slow.model_info.weight_gb * 1e9
    hashing = size / time_to_ready.SHA256_BYTES_PER_S
    assert time_to_ready.weights_download(slow).seconds == pytest.approx(size / 12.5e6 + hashing)
    assert time_to_ready.weights_download(fast).seconds == pytest.approx(size / 50e6 + hashing)
    # No public IP: through the VPC's NAT gateway, of unknown bandwidth; never refused.
    nat = make_spec("ecs", model="Qwen/Qwen3-235B-A22B", cloud={"instance_types": ["ecs.ebmgn8v.48xlarge"],
                                                                 "image": "ubuntu_22_04_uefi"})
    assert "NAT gateway" in time_to_ready.weights_download(nat).basis
    time_to_ready.check_staging_limit(nat)


def test_a_too_slow_cold_staging_is_refused_before_any_cloud_call(make_spec):
    spec = make_spec("ecs", model="Qwen/Qwen3-235B-A22B",
                     cloud={"instance_types": ["ecs.ebmgn8v.48xlarge"], "image": "ubuntu_22_04_uefi",
                            "bandwidth_mbps": 100, "system_disk_gb": 600})
    with pytest.raises(SpecError) as err:
        # No emulator and no credentials here: the refusal comes before the first API call.
        open_topology(spec).preflight()
    text = str(err.value)
    assert "would take 10.7 h" in text and "470 GB from ModelScope at 100 Mbit/s" in text
    assert "raise cloud.bandwidth_mbps" in text and "OSS" in text and "Nothing was created" in text
    roomy = spec.with_section("weights", max_staging_hours=12)
    time_to_ready.check_staging_limit(roomy)


def test_essd_pl1_throughput_follows_alibabas_formula():
    assert time_to_ready.essd_pl1_bytes_per_s(200) == 220e6
    assert time_to_ready.essd_pl1_bytes_per_s(2000) == 350e6  # the PL1 ceiling


def test_the_price_preview_shows_the_table_for_ecs_only(make_spec):
    est = Estimate(10.0, "CNY", "1 x ecs.gn7i-8x.16xlarge in cn-hangzhou-i")
    md = price_markdown(shipped("qwq-32b-4xa10"), est)
    assert "## Time to ready" in md and "| weights |" in md and "about 10 min" in md
    assert "Time to ready" not in price_markdown(make_spec("local"), est)


def test_the_cache_case_and_the_sources_compared(make_spec):
    spec = shipped("qwen3-235b")
    assert spec.weights.cache == "snapshot"
    est = time_to_ready.estimate(spec)
    assert "cached" in est and est["cached"]["total_s"] < est["cold"]["total_s"]
    by_source = est["weights_by_source_s"]
    assert by_source["data-disk snapshot (chosen)"] < by_source["modelscope (no cache)"]
    assert "cached" not in time_to_ready.estimate(spec.with_section("weights", cache="none"))
