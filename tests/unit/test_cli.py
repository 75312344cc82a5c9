"""servenest/cli.py: the commands that need no Prefect server (validate, plan, catalog, deployments)."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from servenest import cli
from servenest.catalog import MODELS
from servenest.cli import main

from .conftest import REPO_ROOT


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)


def test_validate_local_tiny_prints_the_fit_summary(in_repo, capsys):
    assert main(["validate", "deployments/local-tiny.yaml"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("deployments/local-tiny.yaml: ok: servenest/tiny-qwen2 on this machine (CPU engine)")
    assert "GiB usable" in out and "TP 1 x PP 1" in out


def test_validate_several_files(tmp_path, spec_dict, capsys):
    paths = []
    for name in ("one", "two"):
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump(spec_dict("ecs", name=name)))
        paths.append(str(p))
    assert main(["validate", *paths]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":", 1)[0] for line in lines] == paths


def test_plan_json_is_one_object_with_the_sections(in_repo, capsys):
    assert main(["plan", "deployments/local-tiny.yaml", "--format", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)  # the whole output is one JSON document
    assert {"spec", "fit", "launch", "endpoint"} <= set(plan)
    assert plan["spec"]["name"] == "local-tiny"
    assert plan["endpoint"] == "http://127.0.0.1:8000/v1"
    assert plan["fit"][0]["summary"].startswith("servenest/tiny-qwen2 on this machine")
    assert "VLLM_API_KEY='<from Secret block local-tiny-api-key>'" in plan["launch"]


def test_plan_text_has_a_section_per_key(in_repo, capsys):
    assert main(["plan", "deployments/local-tiny.yaml"]) == 0
    out = capsys.readouterr().out
    for section in ("== spec", "== fit", "== launch", "== endpoint"):
        assert section in out


def test_plan_of_an_ecs_spec_renders_template_and_scripts_without_a_cloud(tmp_path, spec_dict, capsys, monkeypatch):
    monkeypatch.setenv("SERVENEST_CLOUD_EMULATOR", "127.0.0.1:9")  # nothing listens: any call fails
    p = tmp_path / "qwq.yaml"
    p.write_text(yaml.safe_dump(spec_dict("ecs")))
    assert main(["plan", str(p), "--format", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["fit"][0]["tensor_parallel_size"] == 8
    assert "ALIYUN::ECS::Instance" in plan["ros_template"]
    assert set(plan["scripts"]["single"]) == {"stage_weights", "launch", "teardown"}


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_malformed_spec_file_exits_2_naming_the_file(tmp_path, capsys, command):
    bad = tmp_path / "malformed.yaml"
    bad.write_text("name: x\nmodel: [unclosed\n")
    assert main([command, str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("servenest: error:")
    assert str(bad) in captured.err
    assert captured.out == ""


def test_invalid_spec_exits_2_with_the_field_path(tmp_path, spec_dict, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec_dict(engine={"extra_args": ["--api-key", "sk-x"]})))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "engine.extra_args" in err and str(bad) in err


def test_spec_that_does_not_fit_exits_2(tmp_path, spec_dict, capsys):
    p = tmp_path / "too-big.yaml"
    p.write_text(yaml.safe_dump(spec_dict("ecs", cloud={"instance_types": ["ecs.gn7i-c8g1.2xlarge"]})))
    assert main(["validate", str(p)]) == 2
    assert "does not fit" in capsys.readouterr().err


def test_catalog_lists_every_model(capsys):
    assert main(["catalog"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(rows) == set(MODELS)
    assert rows["Qwen/Qwen3-235B-A22B"].endswith("768 GiB")
    assert rows["Qwen/QwQ-32B"].rstrip().endswith("-")


def test_deployments_check_passes_on_the_repo_as_committed(capsys):
    assert main(["deployments", "--check"]) == 0
    assert "prefect.yaml matches deployments/" in capsys.readouterr().out


def test_deployments_check_fails_when_prefect_yaml_is_stale(tmp_path, monkeypatch, capsys):
    repo = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "deployments", repo / "deployments")
    (repo / "prefect.yaml").write_text((REPO_ROOT / "prefect.yaml").read_text() + "# edited\n")
    monkeypatch.setattr(cli, "REPO_ROOT", repo)
    assert main(["deployments", "--check"]) == 2
    assert "stale" in capsys.readouterr().err
    assert main(["deployments", "--write"]) == 0
    assert main(["deployments", "--check"]) == 0
    assert (repo / "prefect.yaml").read_text() == (REPO_ROOT / "prefect.yaml").read_text()


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


def test_plan_of_an_ecs_spec_holds_the_ros_template_and_host_scripts(tmp_path, capsys):
    import json

    import yaml

    from servenest.cli import main

    spec = tmp_path / "ecs.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "qwq-32b-8xa10", "model": "Qwen/QwQ-32B", "topology": "ecs-single",
        "engine": {"max_model_len": 16384}, "weights": {"source": "modelscope"},
        "access": {"api_key_secret": "qwq-key", "public": True, "allowed_cidrs": ["203.0.113.0/24"]},
        "cloud": {"zones": ["cn-hangzhou-i"], "instance_types": ["ecs.gn7i-8x.16xlarge"], "bandwidth_mbps": 100},
    }))
    assert main(["plan", str(spec), "--format", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    template = yaml.safe_load(plan["ros_template"])
    kinds = {r["Type"] for r in template["Resources"].values()}
    assert {"ALIYUN::ECS::VPC", "ALIYUN::ECS::SecurityGroup", "ALIYUN::ECS::Instance"} <= kinds
    launch = plan["scripts"]["single"]["launch"]
    assert "--tensor-parallel-size 8" in launch and "docker rm -f vllm" in launch
    assert plan["fit"][0]["tensor_parallel_size"] == 8


# -- servenest bench: the figures always come out; --strict makes an invalid run fail --------


@pytest.fixture
def failing_endpoint():
    from servenest.rehearsal.openai_noop import NoopServerProcess

    # Every third generation request gets an HTTP 500 (the pre-run probe is the first).
    with NoopServerProcess("--model", "tiny", "--fail-every", "3") as server:
        yield server


def _bench(server, tmp_path, *extra: str) -> list[str]:
    from .test_bench_tokenizer import make_tokenizer_dir

    tok = make_tokenizer_dir(tmp_path / "tok")
    return ["bench", "--base-url", server.url, "--model", "m/tiny", "--served-model-name", "tiny",
            "--tokenizer", str(tok), "--num-prompts", "9", "--random-input-len", "8",
            "--random-output-len", "4", "--save-result", "--result-dir", str(tmp_path),
            "--result-filename", "r.json", *extra]


def test_bench_prints_and_saves_an_invalid_run_with_its_failures_and_exits_0(
        failing_endpoint, tmp_path, capsys):
    # A send-lag limit of 0 ms makes any run invalid.
    assert main(_bench(failing_endpoint, tmp_path, "--max-send-lag-ms", "0")) == 0
    out = capsys.readouterr()
    assert "Serving Benchmark Result" in out.out and "INVALID: send lag p99" in out.out
    assert "3 of 9 requests failed; errors:" in out.out
    assert "      3 x HTTP 500 Internal Server Error" in out.out
    assert "WARNING: this run is INVALID" in out.err and "--strict" in out.err
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["completed"] == 6 and saved["failed"] == 3
    assert saved["servenest"]["valid"] is False
    assert sum(1 for e in saved["errors"] if e.startswith("HTTP 500")) == 3


def test_bench_strict_fails_an_invalid_run_after_saving_it(failing_endpoint, tmp_path, capsys):
    assert main(_bench(failing_endpoint, tmp_path, "--max-send-lag-ms", "0", "--strict")) == 3
    out = capsys.readouterr()
    assert "Exit status 3 (--strict)" in out.err and "Serving Benchmark Result" in out.out
    assert json.loads((tmp_path / "r.json").read_text())["servenest"]["valid"] is False


def test_bench_strict_passes_a_valid_run_even_with_failed_requests(failing_endpoint, tmp_path, capsys):
    # Failed requests are the server's result, not an invalid measurement. Spread over ~0.3 s
    # (a burst of nine is all client CPU, which alone would make the run invalid).
    assert main(_bench(failing_endpoint, tmp_path, "--max-send-lag-ms", "10000", "--strict",
                       "--request-rate", "30")) == 0
    out = capsys.readouterr()
    assert "valid" in out.out and "WARNING" not in out.err
    assert json.loads((tmp_path / "r.json").read_text())["servenest"]["valid"] is True


def test_bench_help_documents_strict_and_the_exit_status(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--strict" in text and "servenest.valid false" in text and "3 for an invalid run" in text

def test_stop_with_nothing_started_says_so(capsys):
    assert main(["stop"]) == 0
    assert "nothing to stop" in capsys.readouterr().out


def test_register_takes_an_optional_worker():
    parser = cli.build_parser()
    assert parser.parse_args(["register"]).worker is False
    assert parser.parse_args(["register", "--worker"]).worker is True
    assert parser.parse_args(["register"]).fn is cli.cmd_register


def test_demo_summary_keeps_registration_apart_from_everything_else():
    stages = [{"stage": "launch", "seconds": 10.0}, {"stage": "gate", "seconds": 5.0},
              {"stage": "validate", "seconds": 1.0}]
    summary = cli.demo_summary(stages, 100.0, 8.0, 2.0, register_s=40.0)
    assert summary["engine start-up, launch to gate passed (s)"] == 15.0
    assert summary["Prefect registration: blocks, pool, deployments, automations (s)"] == 40.0
    assert summary["everything else (s)"] == 37.0
    assert "Prefect registration" not in " ".join(cli.demo_summary(stages, 30.0, 0.0, None))
