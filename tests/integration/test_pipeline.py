"""provision -> gate -> relaunch -> teardown on the real vLLM server, through Prefect flows.

The tests run in file order against one module-scoped deployment (each engine start costs
about 45 s on these machines); each test still asserts one behaviour.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort
from pydantic import SecretStr

from blocks.endpoint import ServeNestEndpoint
from flows.health_gate import health_gate
from flows.launch import launch
from flows.provision import provision
from flows.teardown import teardown
from servenest import process
from servenest.engines import environment
from servenest.errors import GateFailedError
from servenest.state import load_state, state_path
from servenest.topology import open_topology
from tasks.gate import gate_target
from tests.integration.conftest import TEST_KEY

pytestmark = pytest.mark.engine
NAME = "it-serve"


@pytest.fixture(scope="module")
def served(make_spec):
    spec = make_spec(NAME)
    result = provision(spec, load_check=True)
    yield spec, result
    teardown(NAME)


def _models(spec) -> dict:
    r = httpx.get(f"http://127.0.0.1:{spec.access.port}/v1/models",
                  headers={"Authorization": f"Bearer {TEST_KEY}"}, trust_env=False)
    r.raise_for_status()
    return r.json()["data"][0]


def _artifact(key: str):
    """The newest artifact under ``key`` (a key keeps every version as history)."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                      sort=ArtifactSort.CREATED_DESC, limit=1)
    assert found, f"no artifact {key}"
    return found[0]


def test_provision_registers_a_gated_endpoint(served):
    spec, result = served
    assert result["gate_passed"] is True
    block = ServeNestEndpoint.load(NAME)
    assert block.base_url == f"http://127.0.0.1:{spec.access.port}"
    assert block.served_model_name == "tiny"
    assert [s["name"] for s in block.last_gate["stages"]] == [
        "process alive", "/health 200", "API key required", "/v1/models lists served name",
        "streamed chat completion", "/metrics idle",
    ]
    state = load_state(NAME)
    members = process.group_members(state.engine["pgid"], NAME, state.engine["start_ticks"])
    # API server, engine core and worker: the children renamed themselves (setproctitle)
    # and still count as the engine's.
    assert len(members) >= 3, f"engine session has {members}"
    assert [r["stage"] for r in result["stages"]][:8] == [
        "validate", "preflight", "price", "provision", "bootstrap hosts", "check hosts", "stage weights",
        "launch"]


def test_key_never_on_the_engine_command_line(served):
    state = load_state(NAME)
    for pid in process.session_members(state.engine["pgid"]):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        assert TEST_KEY not in cmdline
    assert TEST_KEY not in state_path(NAME).read_text()
    assert TEST_KEY not in str(ServeNestEndpoint.load(NAME).model_dump())


def test_artifacts_show_a_masked_card_and_stage_timings(served):
    card = _artifact(f"connection-{NAME}").data
    assert TEST_KEY not in card
    assert "sk-…6789" in card
    assert "/v1/chat/completions" in card and "Chatbox" in card
    timings = _artifact(f"stage-timings-{NAME}")
    assert "stage weights" in str(timings.data) and "gate" in str(timings.data)


def test_connection_card_snippets_work_as_shown(served, prefect_server_info):
    card = _artifact(f"connection-{NAME}").data
    bash_blocks = re.findall(r"```bash\n(.*?)```", card, re.S)
    python_block = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    # The server's URL and API auth string (PREFECT_API_URL, PREFECT_API_AUTH_STRING).
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
           **prefect_server_info.env, "HOME": str(Path.home())}
    # The card's own "get the key" line, then its curl command, exactly as shown.
    out = subprocess.run(["bash", "-c", "set -euo pipefail\n" + "\n".join(bash_blocks)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "data: " in out.stdout and "data: [DONE]" in out.stdout
    # The OpenAI SDK snippet, with the engine environment's openai package.
    out = subprocess.run([str(environment.managed_python()), "-c", python_block],
                         env={**env, "SERVENEST_API_KEY": TEST_KEY}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip(), "the OpenAI snippet printed no tokens"


def test_health_gate_flow_passes(served):
    result = health_gate(NAME)
    assert result["passed"] is True
    assert ServeNestEndpoint.load(NAME).last_gate["passed"] is True


def test_status_lists_the_live_deployment(served):
    from servenest.status import live_deployments

    rows = {r["deployment"]: r for r in live_deployments()}
    assert rows[NAME]["engine"].startswith("running")
    assert rows[NAME]["model"] == "tiny"
    assert rows[NAME]["last_gate"].startswith("passed")


def test_wrong_key_fails_the_gate_with_401(served):
    spec, _ = served
    topology = open_topology(spec, load_state(NAME))
    with pytest.raises(GateFailedError, match="401"):
        from servenest.health import run_gate

        run_gate(gate_target(topology, SecretStr("sk-wrong-key-000000")), deadline_s=20)
    assert topology.status().running, "a failed gate must not stop a serving engine"


def test_benchmark_flow_measures_gates_and_keeps_history(served):
    from flows.benchmark import benchmark

    # The engine shares this 2-core machine with the client, which it can starve for tens
    # of milliseconds; send-lag validity is tested on its own (test_bench_run.py).
    small = {"num_prompts": 30, "request_rate": 30.0, "random_input_len": 32, "random_output_len": 16,
             "max_send_lag_ms": 2000.0}
    first = benchmark(NAME, overrides=small)
    second = benchmark(NAME, overrides=small)
    for result in (first, second):
        assert result["valid"] is True and result["violations"] == []
        assert result["row"]["completed"] == 30 and result["row"]["failed"] == 0
    history = json.loads(_artifact(f"bench-{NAME}").data)
    assert [r["date"] for r in history][-2:] == [first["row"]["date"], second["row"]["date"]]
    requests = json.loads(_artifact(f"bench-requests-{NAME}").data)
    assert len(requests) == 30 and all(r["output_len"] == 16 for r in requests)


def test_benchmark_refuses_bad_input_before_running(served):
    from servenest.bench.run import BenchSettings, run_benchmark
    from servenest.errors import BenchmarkInputError

    spec, _ = served
    base = dict(base_url=f"http://127.0.0.1:{spec.access.port}", model="servenest/tiny-qwen2",
                served_model_name="tiny", tokenizer=load_state(NAME).weights["dir"],
                num_prompts=5, random_input_len=16, random_output_len=4)
    with pytest.raises(BenchmarkInputError, match="rejected the API key"):
        run_benchmark(BenchSettings(**base, api_key="sk-wrong-000000000"))
    with pytest.raises(BenchmarkInputError, match="tiny"):
        run_benchmark(BenchSettings(**{**base, "served_model_name": "not-served"}, api_key=TEST_KEY))
    with pytest.raises(BenchmarkInputError, match="request-rate"):
        run_benchmark(BenchSettings(**base, request_rate=0, api_key=TEST_KEY))
    with pytest.raises(BenchmarkInputError):
        run_benchmark(BenchSettings(**{**base, "base_url": "http://127.0.0.1:9"}, api_key=TEST_KEY))


def test_bench_cli_takes_vllms_flags_and_saves_vllms_json(served, prefect_server_info, tmp_path):
    sharegpt = tmp_path / "sharegpt.json"
    sharegpt.write_text(json.dumps([
        {"id": f"c{i}", "conversations": [
            {"from": "human", "value": f"Question {i}: " + "tell me about serving models " * (i % 7 + 1)},
            {"from": "gpt", "value": "Serving models is about latency and throughput. " * (i % 5 + 1)}]}
        for i in range(40)
    ] + [{"id": "short", "conversations": [{"from": "human", "value": "hi"}]}]))
    out = subprocess.run(
        [str(Path(sys.executable).parent / "servenest"), "bench", "--deployment", NAME,
         "--dataset-name", "sharegpt", "--dataset-path", str(sharegpt), "--num-prompts", "20",
         "--request-rate", "20", "--sharegpt-output-len", "8", "--ignore-eos", "--temperature", "0",
         "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
         # The engine shares the 2 cores with this client (see the flow test above).
         "--max-send-lag-ms", "2000",
         "--save-result", "--result-dir", str(tmp_path), "--result-filename", "r.json"],
        capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", **prefect_server_info.env, "HOME": str(Path.home())},
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Serving Benchmark Result" in out.stdout and "Successful requests:" in out.stdout
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["completed"] == 20 and saved["total_output_tokens"] == 20 * 8
    for key in ("request_throughput", "output_throughput", "median_ttft_ms", "p99_itl_ms",
                "p50_e2el_ms", "mean_tpot_ms", "max_concurrent_requests", "model_id"):
        assert key in saved


def test_relaunch_changes_engine_arguments_without_restaging(served):
    spec, _ = served
    before = load_state(NAME)
    result = launch(NAME, {"max_model_len": 512})
    after = load_state(NAME)
    assert _models(spec)["max_model_len"] == 512
    assert after.engine["pid"] != before.engine["pid"]
    assert not process.session_members(before.engine["pgid"]), "old engine still running"
    assert after.weights == before.weights
    assert "stage weights" not in [r["stage"] for r in result["stages"]]


def test_relaunch_with_bad_arguments_restores_the_previous_ones(served):
    spec, _ = served
    with pytest.raises(Exception, match="max-num-seqs"):
        launch(NAME, {"extra_args": ["--max-num-seqs", "not-a-number"]})
    assert _models(spec)["max_model_len"] == 512, "previous arguments were not restored"
    assert ServeNestEndpoint.load(NAME).spec["engine"]["max_model_len"] == 512


def test_teardown_stops_everything_and_is_safe_twice(served):
    spec, _ = served
    pgid = load_state(NAME).engine["pgid"]
    first = teardown(NAME)
    assert first["torn_down"] is True
    assert not process.session_members(pgid), "engine processes left after teardown"
    assert process.port_is_free("127.0.0.1", spec.access.port)
    assert load_state(NAME) is None
    with pytest.raises(ValueError, match="Unable to find block document"):
        ServeNestEndpoint.load(NAME)
    assert teardown(NAME)["torn_down"] is False
