"""servenest/status.py: one `servenest status` row from a registered block, without Prefect."""

from __future__ import annotations

import contextlib

from blocks.endpoint import ServeNestEndpoint
from servenest import cli, status
from servenest.status import status_row
from servenest.topology import EngineStatus

NOW = 1_700_000_000.0
HOUR = 3600.0


def endpoint(**fields) -> ServeNestEndpoint:
    base = dict(deployment="qwq", topology="ecs-single", base_url="http://10.0.0.5:8000",
                served_model_name="QwQ-32B", api_key_secret="qwq-key", spec={}, state={},
                registered_at=NOW - 2 * HOUR)
    return ServeNestEndpoint(**{**base, **fields})


def test_a_priced_benchmarked_endpoint():
    block = endpoint(
        instance="qwq-b", hourly_cost=22.55, currency="CNY",
        last_gate={"passed": True, "at": NOW - 2 * HOUR},
        last_benchmark={"p99_ttft_ms": 120.4, "p99_tpot_ms": 9.1, "output_throughput": 35.24,
                        "passed": True, "at": NOW - 2 * HOUR},
    )
    row = status_row(block, EngineStatus(running=True, detail="container up"), NOW)
    assert row == {
        "deployment": "qwq", "topology": "ecs-single", "instance": "qwq-b",
        "engine": "running container up", "base_url": "http://10.0.0.5:8000", "model": "QwQ-32B",
        "age": "2.0h", "hourly_cost": "22.55 CNY/h", "cost_so_far": "≈ 45.10 CNY",
        "last_gate": "passed 2.0h ago",
        "last_benchmark": "p99 TTFT 120 ms, 35.2 tok/s, passed 2.0h ago",
    }


def test_an_unpriced_unbenchmarked_endpoint_that_is_down():
    row = status_row(endpoint(), EngineStatus(running=False, exit_code=1, detail="exited 1"), NOW)
    assert row["instance"] == "qwq"  # no second slot: the deployment name
    assert row["engine"] == "DOWN exited 1"
    assert row["hourly_cost"] == row["cost_so_far"] == row["last_gate"] == row["last_benchmark"] == "-"


def test_partial_records_say_what_they_know():
    block = endpoint(hourly_cost=10.0, last_gate={"passed": False},
                     last_benchmark={"p99_ttft_ms": None, "output_throughput": 12.0, "passed": False,
                                     "at": NOW - 90})
    row = status_row(block, EngineStatus(running=True), NOW)
    assert row["hourly_cost"] == "10.00/h" and row["cost_so_far"] == "≈ 20.00"  # no currency recorded
    assert row["last_gate"] == "failed"
    assert row["last_benchmark"] == "12.0 tok/s, failed 1.5m ago"


def test_cli_prints_a_table_with_a_cost_and_verdict_line_per_deployment(monkeypatch, capsys):
    block = endpoint(hourly_cost=22.55, currency="CNY", last_gate={"passed": True, "at": NOW})
    rows = [status_row(block, EngineStatus(running=True, detail="pid 42"), NOW),
            status_row(endpoint(deployment="local-tiny", topology="local"), EngineStatus(running=False), NOW)]
    monkeypatch.setattr(cli, "prefect_api", lambda quiet=False: contextlib.nullcontext())
    monkeypatch.setattr(status, "live_deployments", lambda: rows)
    assert cli.cmd_status(None) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["DEPLOYMENT", "INSTANCE", "TOPOLOGY", "ENGINE", "MODEL", "BASE", "URL", "AGE"]
    assert lines[1].split()[:4] == ["qwq", "qwq", "ecs-single", "running"]
    assert lines[2] == ("    cost 22.55 CNY/h, ≈ 45.10 CNY so far | last gate passed 0s ago"
                        " | last benchmark -")
    assert lines[3].startswith("local-tiny") and "DOWN" in lines[3]
    assert lines[4] == "    cost - | last gate - | last benchmark -"
    # Columns line up: every row's model starts where the header's does.
    assert lines[1].index("QwQ-32B") == lines[3].index("QwQ-32B") == lines[0].index("MODEL")
