"""redeploy on the emulated cloud (ecs-single, no-op engine behind each emulated instance):
beside the live copy in the other slot's stack when the budget allows, in place when it
does not, and the registered endpoint moves only to a copy that passed."""

from __future__ import annotations

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

from blocks.endpoint import ServeNestEndpoint
from servenest.errors import BenchmarkGateError
from servenest.rehearsal.ecs import emulated_cloud
from servenest.state import load_state
from tests.integration.test_ecs_rehearsal import ecs_spec, live, tiny_tokenizer  # noqa: F401

NAME = "it-roll-ecs"


@pytest.fixture
def a10_quota(prefect_server):
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="gpus-a10", limit=1))
    yield
    with get_client(sync_client=True) as client:
        client.delete_global_concurrency_limit_by_name("gpus-a10")


def test_redeploy_beside_then_in_place_then_a_failure_keeps_the_endpoint(
        api_key_secret, tiny_tokenizer, a10_quota, tmp_path):  # noqa: F811
    from flows.provision import provision
    from flows.redeploy import redeploy
    from flows.teardown import teardown

    bench = {"num_prompts": 6, "request_rate": 4.0, "random_input_len": 16, "random_output_len": 8,
             "tokenizer": tiny_tokenizer, "max_send_lag_ms": 2000, "regression_margin": 5.0}
    # The emulator prices an instance at 10/hour: two copies fit under 25.
    spec = ecs_spec(NAME, api_key_secret, cloud={"hourly_budget": 25.0}, benchmark=bench)
    with emulated_cloud("noop", root=tmp_path / "hosts") as emu:
        first = provision(spec)
        old_stack = load_state(NAME).resources["stack_id"]
        assert ServeNestEndpoint.load(NAME).hourly_cost == pytest.approx(10.0)

        beside = redeploy(spec, revision="r2")
        assert beside["side_by_side"] and (beside["from"], beside["to"]) == (NAME, f"{NAME}-b")
        block = ServeNestEndpoint.load(NAME)
        assert block.instance_name == f"{NAME}-b" and block.base_url != first["base_url"]
        assert block.last_benchmark["passed"] is True
        assert [s.name for s in live(emu)] == [f"servenest-{NAME}-b"]
        assert emu.stacks[old_stack].status == "DELETE_COMPLETE"
        assert httpx.get(block.base_url + "/v1/models", trust_env=False, timeout=10).status_code == 401  # serving, key required

        # Two copies would cost 20 > 15: the next revision replaces the live one in place.
        tight = spec.with_section("cloud", hourly_budget=15.0)
        in_place = redeploy(tight, revision="r3")
        assert not in_place["side_by_side"] and "over cloud.hourly_budget 15.00" in in_place["placement"]
        assert in_place["to"] == f"{NAME}-b"
        assert [s.name for s in live(emu)] == [f"servenest-{NAME}-b"]
        assert ServeNestEndpoint.load(NAME).spec["weights"]["revision"] == "r3"

        # A revision that misses its SLO (beside, in the first slot again): its stack goes,
        # the endpoint stays where it was.
        before = ServeNestEndpoint.load(NAME)
        with pytest.raises(BenchmarkGateError, match="p99"):
            redeploy(spec.with_section("benchmark", slo_p99_ttft_ms=0.001), revision="r4")
        after = ServeNestEndpoint.load(NAME)
        assert (after.instance_name, after.base_url) == (before.instance_name, before.base_url)
        assert after.last_benchmark == before.last_benchmark
        assert [s.name for s in live(emu)] == [f"servenest-{NAME}-b"]
        assert load_state(NAME) is None

        teardown(NAME)
        assert not live(emu)
