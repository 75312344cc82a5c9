"""servenest/spec.py: the one validated deployment spec (files and parameters alike)."""

from __future__ import annotations

import pytest

from servenest.catalog import MODELS
from servenest.engines import ADAPTERS
from servenest.errors import SpecError
from servenest.spec import DeploymentSpec, load_spec_data, load_spec_file

from .conftest import DEPLOYMENTS_DIR, LOCAL_TINY


def spec_error(data) -> str:
    with pytest.raises(SpecError) as info:
        load_spec_data(data)
    return str(info.value)


def error_lines(message: str) -> list[str]:
    """The '  - field.path: message' lines of a SpecError."""
    return [line[4:] for line in message.splitlines() if line.startswith("  - ")]


# -- shipped files ---------------------------------------------------------------------
def test_shipped_deployment_files_all_load():
    files = sorted(DEPLOYMENTS_DIR.glob("*.yaml"))
    assert files, "deployments/ has no spec files"
    names = []
    for path in files:
        spec = load_spec_file(path)
        assert isinstance(spec, DeploymentSpec)
        names.append(spec.name)
    assert len(names) == len(set(names)), f"two spec files share a deployment name: {names}"


def test_local_tiny_file_values():
    spec = load_spec_file(LOCAL_TINY)
    assert spec.name == "local-tiny"
    assert spec.topology == "local"
    assert spec.served_model_name == "tiny"
    assert spec.max_model_len == 1024
    assert spec.weights.source == "builtin"
    assert spec.access.api_key_secret == "local-tiny-api-key"


def test_defaults_are_derived_from_the_catalog(make_spec):
    spec = make_spec("ecs")
    assert spec.served_model_name == "Qwen/QwQ-32B"
    assert spec.max_model_len == MODELS["Qwen/QwQ-32B"].context_length
    assert spec.weights_repo == "Qwen/QwQ-32B"
    assert spec.access.port == 8000
    assert spec.access.public is False


# -- files: YAML problems name the file --------------------------------------------------
def test_malformed_yaml_names_the_file(tmp_path):
    bad = tmp_path / "broken-spec.yaml"
    bad.write_text("name: x\nmodel: [unclosed\n  access: {\n")
    with pytest.raises(SpecError) as info:
        load_spec_file(bad)
    assert str(bad) in str(info.value)
    assert "not valid YAML" in str(info.value)


def test_yaml_that_is_not_a_mapping_names_the_file(tmp_path):
    bad = tmp_path / "list.yaml"
    bad.write_text("- name: x\n- model: y\n")
    with pytest.raises(SpecError) as info:
        load_spec_file(bad)
    assert str(bad) in str(info.value)
    assert "mapping" in str(info.value)


def test_missing_file_names_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        load_spec_file(missing)
    assert str(missing) in str(info.value)


def test_invalid_file_error_names_the_file_and_the_field(tmp_path, spec_dict):
    import yaml

    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(spec_dict(engine={"max_model_lenn": 512})))
    with pytest.raises(SpecError) as info:
        load_spec_file(path)
    assert str(path) in str(info.value)
    assert "engine.max_model_lenn" in str(info.value)


# -- unknown fields -----------------------------------------------------------------------
def test_unknown_top_level_field_is_named(spec_dict):
    msg = spec_error(spec_dict(replicas=2))
    assert any(line.startswith("replicas:") for line in error_lines(msg)), msg


@pytest.mark.parametrize(
    "section, field",
    [("engine", "max_len"), ("access", "api_key"), ("weights", "sha"), ("cloud", "zone"),
     ("local", "python"), ("health", "deadline"), ("benchmark", "rps")],
)
def test_unknown_nested_field_is_named_with_its_path(spec_dict, section, field):
    msg = spec_error(spec_dict(**{section: {field: 1}}))
    assert any(line.startswith(f"{section}.{field}:") for line in error_lines(msg)), msg


def test_every_problem_is_listed_with_its_field_path(spec_dict):
    msg = spec_error(
        spec_dict(bogus=1, engine={"extra_args": ["--port", "9000"]}, access={"port": 80})
    )
    starts = {line.split(":", 1)[0] for line in error_lines(msg)}
    assert {"bogus", "engine.extra_args", "access.port"} <= starts, msg


def test_missing_api_key_secret_is_refused(spec_dict):
    data = spec_dict()
    del data["access"]["api_key_secret"]
    msg = spec_error(data)
    assert "access.api_key_secret" in msg


def test_non_mapping_data_is_refused():
    with pytest.raises(SpecError, match="expected a mapping"):
        load_spec_data(["name", "x"])


# -- models ---------------------------------------------------------------------------------
def test_unknown_model_suggests_a_close_match(spec_dict):
    msg = spec_error(spec_dict(model="Qwen/Qwen3-8b", weights={"source": "modelscope"}))
    assert "'Qwen/Qwen3-8b' is not in the catalog" in msg
    assert "Did you mean Qwen/Qwen3-8B" in msg
    assert "model_facts" in msg  # the way out for a model outside the catalog


def test_model_outside_catalog_with_model_facts_is_accepted(spec_dict):
    facts = {
        "id": "acme/Foo-1B", "params_b": 1.0, "weight_gb": 2.0, "weight_dtype": "bf16",
        "context_length": 8192, "num_layers": 16, "num_attention_heads": 16,
        "num_kv_heads": 4, "head_dim": 64,
    }
    spec = load_spec_data(
        spec_dict(model="acme/Foo-1B", model_facts=facts, weights={"source": "modelscope"})
    )
    assert spec.model_info.context_length == 8192
    msg = spec_error(
        spec_dict(model="acme/Bar-1B", model_facts=facts, weights={"source": "modelscope"})
    )
    assert "model_facts.id must equal model" in msg


def test_max_model_len_above_the_models_context_is_refused(spec_dict):
    ctx = MODELS["Qwen/QwQ-32B"].context_length
    msg = spec_error(spec_dict("ecs", engine={"max_model_len": ctx + 1}))
    assert "engine.max_model_len" in msg
    assert str(ctx) in msg
    assert load_spec_data(spec_dict("ecs", engine={"max_model_len": ctx})).max_model_len == ctx


# -- engine: managed flags and secrets -----------------------------------------------------
@pytest.mark.parametrize(
    "args, flag, instead",
    [
        (["--api-key", "sk-123"], "--api-key", "access.api_key_secret"),
        (["--api-key=sk-123"], "--api-key", "access.api_key_secret"),
        (["--port", "9000"], "--port", "access.port"),
        (["--port=9000"], "--port", "access.port"),
        (["--max-model-len", "4096"], "--max-model-len", "engine.max_model_len"),
        (["--enforce-eager", "-tp", "2"], "-tp", "engine.tensor_parallel_size"),
        (["--host", "0.0.0.0"], "--host", "access.public"),
    ],
)
def test_managed_flags_in_extra_args_are_refused_with_the_field_to_use(spec_dict, args, flag, instead):
    msg = spec_error(spec_dict(engine={"extra_args": args}))
    lines = [line for line in error_lines(msg) if line.startswith("engine.extra_args:")]
    assert lines, msg
    assert flag in lines[0]
    assert f"use {instead}" in lines[0]


@pytest.mark.parametrize("args", [["--api_key", "sk-123"], ["--api_key=sk-123"]])
def test_api_key_flag_spelled_with_underscore_is_refused(spec_dict, args):
    # vLLM's FlexibleArgumentParser turns `--api_key` into `--api-key`, so this spelling
    # would put the key on the engine's command line just the same.
    msg = spec_error(spec_dict(engine={"extra_args": args}))
    assert "engine.extra_args" in msg


def test_unmanaged_extra_args_are_kept(make_spec):
    spec = make_spec(engine={"extra_args": ["--enforce-eager", "--seed=3"]})
    assert spec.engine.extra_args == ["--enforce-eager", "--seed=3"]


def test_vllm_api_key_in_engine_env_is_refused(spec_dict):
    msg = spec_error(spec_dict(engine={"env": {"VLLM_API_KEY": "sk-123", "OMP_NUM_THREADS": "2"}}))
    lines = [line for line in error_lines(msg) if line.startswith("engine.env:")]
    assert lines and "VLLM_API_KEY" in lines[0], msg
    assert "sk-123" not in msg  # the refused secret is not echoed back


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
def test_every_engines_key_variable_is_refused_in_engine_env(spec_dict, kind):
    key_env = ADAPTERS[kind].key_env
    msg = spec_error(spec_dict(engine={"kind": kind, "env": {key_env: "sk-123"}}))
    assert "engine.env" in msg and key_env in msg


def test_harmless_engine_env_is_kept(make_spec):
    assert make_spec(engine={"env": {"OMP_NUM_THREADS": "2"}}).engine.env == {"OMP_NUM_THREADS": "2"}


# -- access ---------------------------------------------------------------------------------
def test_public_access_without_allowed_cidrs_is_refused(spec_dict):
    msg = spec_error(spec_dict(access={"public": True}))
    assert "access.allowed_cidrs" in msg
    assert "0.0.0.0/0" in msg  # tells how to open it on purpose


def test_public_access_with_cidrs_is_accepted_and_normalised(make_spec):
    spec = make_spec(access={"public": True, "allowed_cidrs": ["10.0.0.0/8", "0.0.0.0/0"]})
    assert spec.access.allowed_cidrs == ["10.0.0.0/8", "0.0.0.0/0"]


@pytest.mark.parametrize("cidr", ["10.0.0.1/33", "10.0.0.1/8", "not-a-cidr", "300.0.0.0/8"])
def test_invalid_cidr_is_refused(spec_dict, cidr):
    msg = spec_error(spec_dict(access={"public": True, "allowed_cidrs": [cidr]}))
    lines = [line for line in error_lines(msg) if line.startswith("access.allowed_cidrs:")]
    assert lines and repr(cidr) in lines[0], msg


@pytest.mark.parametrize("port", [80, 1023, 65536])
def test_port_outside_range_is_refused(spec_dict, port):
    assert "access.port" in spec_error(spec_dict(access={"port": port}))


# -- weights and topology consistency --------------------------------------------------------
def test_builtin_weights_with_a_catalog_model_are_refused(spec_dict):
    msg = spec_error(spec_dict(model="Qwen/Qwen3-0.6B", weights={"source": "builtin"}))
    assert "builtin" in msg and "servenest/tiny-qwen2" in msg


def test_tiny_model_needs_builtin_weights(spec_dict):
    assert "weights.source: builtin" in spec_error(spec_dict(weights={"source": "modelscope"}))


def test_local_weights_need_a_path(spec_dict):
    msg = spec_error(spec_dict(model="Qwen/Qwen3-0.6B", weights={"source": "local"}))
    assert "weights.path" in msg


def test_oss_weights_need_an_oss_uri(spec_dict):
    msg = spec_error(spec_dict("ecs", weights={"source": "oss", "oss_uri": "s3://bucket/x"}))
    assert "weights.oss_uri" in msg


def test_cloud_topology_refuses_local_weights(spec_dict):
    msg = spec_error(spec_dict("ecs", weights={"source": "local", "path": "/models/qwq"}))
    assert "ecs-single" in msg and "weights.source" in msg


def test_ecs_single_without_instance_types_is_refused(spec_dict):
    msg = spec_error(spec_dict("ecs", cloud={"instance_types": []}))
    assert "cloud.instance_types" in msg


def test_ecs_single_with_two_nodes_is_refused(spec_dict):
    assert "cloud.nodes" in spec_error(spec_dict("ecs", cloud={"nodes": 2}))


@pytest.mark.parametrize("nodes", [1, 3])
def test_ecs_dual_needs_exactly_two_nodes(spec_dict, make_spec, nodes):
    msg = spec_error(spec_dict("ecs", topology="ecs-dual", cloud={"nodes": nodes}))
    assert "cloud.nodes: 2" in msg
    assert make_spec("ecs", topology="ecs-dual", cloud={"nodes": 2}).cloud.nodes == 2


def test_ack_without_gpu_kind_is_refused(spec_dict, make_spec):
    msg = spec_error(spec_dict("ack", cloud={"gpu_kind": None, "gpus_per_node": 4}))
    assert "cloud.gpu_kind" in msg
    assert make_spec("ack", cloud={"gpu_kind": "H20", "gpus_per_node": 4}).cloud.gpu_kind == "H20"


@pytest.mark.parametrize("uri, complaint", [
    ("oss://Bad_Bucket/x", "not a bucket name OSS accepts"),
    ("oss://ab/x", "not a bucket name OSS accepts"),  # under 3 characters
    ("oss://-leading/x", "not a bucket name OSS accepts"),
    ("oss://" + "a" * 64 + "/x", "not a bucket name OSS accepts"),
    ("s3://bucket/x", "must look like oss://"),
    ("oss://bucket//x", "empty path segment"),
])
def test_ack_refuses_a_bucket_oss_would_refuse(spec_dict, uri, complaint):
    msg = spec_error(spec_dict("ack", weights={"source": "oss", "oss_uri": uri}))
    assert complaint in msg, msg


def test_ack_needs_an_oss_location_and_a_cluster(spec_dict, make_spec):
    assert "weights.oss_uri" in spec_error(spec_dict("ack", weights={"source": "modelscope", "oss_uri": None}))
    assert "cloud.cluster_id" in spec_error(spec_dict("ack", cloud={"cluster_id": None}))
    assert "ModelScope into OSS" in spec_error(spec_dict("ack", weights={"source": "huggingface"}))
    assert "not a Kubernetes namespace" in spec_error(spec_dict("ack", cloud={"namespace": "LLM_Model"}))
    assert "not an ACK/ACS cluster id" in spec_error(spec_dict("ack", cloud={"cluster_id": "c-1;rm"}))
    assert make_spec("ack").cloud.namespace == "llm-model"  # seed 003's
    assert "starting with a letter" in spec_error(spec_dict("ack", name="1abc"))
    assert "at most 24 characters" in spec_error(spec_dict("ack", name="a" * 25))
    msg = spec_error(spec_dict("ack", access={"public": True, "allowed_cidrs": ["203.0.113.0/24"]}))
    assert "cannot filter clients" in msg


# -- names ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["Local-Tiny", "a" * 41, "-leading", "trailing-", "under_score", "", "dot.ted"]
)
def test_bad_names_are_refused(spec_dict, name):
    msg = spec_error(spec_dict(name=name))
    assert any(line.startswith("name:") for line in error_lines(msg)), msg


@pytest.mark.parametrize("name", ["a", "local-tiny", "q3-8b-2", "a" * 40])
def test_good_names_are_accepted(make_spec, name):
    assert make_spec(name=name).name == name


# -- one validation for files and parameters -----------------------------------------------------
@pytest.mark.parametrize(
    "overrides",
    [
        {"engine": {"extra_args": ["--api-key", "x"]}},
        {"model": "Qwen/Qwen3-8b"},
        {"access": {"public": True}},
        {"cloud": {"nodes": 0}, "extra": True},
    ],
)
def test_load_spec_data_and_load_spec_file_fail_identically(tmp_path, spec_dict, overrides):
    import yaml

    data = spec_dict(**overrides)
    path = tmp_path / "same.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as from_file:
        load_spec_file(path)
    with pytest.raises(SpecError) as from_data:
        load_spec_data(data)
    with pytest.raises(SpecError) as from_data_as_file:
        load_spec_data(data, origin=str(path))
    file_msg, data_msg = str(from_file.value), str(from_data.value)
    assert file_msg.splitlines()[1:] == data_msg.splitlines()[1:]
    assert error_lines(file_msg)
    assert file_msg == str(from_data_as_file.value)


def test_load_spec_data_and_file_give_equal_specs(tmp_path):
    import yaml

    data = yaml.safe_load(LOCAL_TINY.read_text())
    assert load_spec_data(data) == load_spec_file(LOCAL_TINY)


def test_load_spec_data_passes_a_spec_through(make_spec):
    spec = make_spec()
    assert load_spec_data(spec) is spec


# -- with_engine ----------------------------------------------------------------------------------
def test_with_engine_changes_only_engine_fields(make_spec):
    spec = make_spec(engine={"max_model_len": 1024, "served_model_name": "tiny"})
    changed = spec.with_engine(max_model_len=512)
    assert changed.max_model_len == 512
    assert changed.served_model_name == "tiny"
    assert spec.max_model_len == 1024  # the original is untouched
    assert changed.model_dump(exclude={"engine"}) == spec.model_dump(exclude={"engine"})


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"extra_args": ["--api-key", "x"]}, "engine.extra_args"),
        ({"env": {"VLLM_API_KEY": "x"}}, "engine.env"),
        ({"max_model_len": 10**6}, "engine.max_model_len"),
        ({"gpu_memory_utilization": 1.5}, "engine.gpu_memory_utilization"),
        ({"no_such_field": 1}, "engine.no_such_field"),
    ],
)
def test_with_engine_revalidates(make_spec, changes, field):
    spec = make_spec()
    with pytest.raises(SpecError) as info:
        spec.with_engine(**changes)
    assert field in str(info.value)


@pytest.mark.parametrize("var", ["HF_TOKEN", "MODELSCOPE_API_TOKEN", "ALIBABA_CLOUD_ACCESS_KEY_ID",
                                 "MY_SERVICE_PASSWORD", "OPENAI_API_KEY"])
def test_credentials_in_engine_env_are_refused_by_pattern(spec_dict, var):
    data = spec_dict()
    data["engine"] = {**data.get("engine", {}), "env": {var: "x"}}
    with pytest.raises(SpecError, match=var):
        load_spec_data(data)


@pytest.mark.parametrize("flag", ["--api-k", "--api-ke=x", "--served-model"])
def test_abbreviations_of_managed_flags_are_refused(spec_dict, flag):
    data = spec_dict()
    data["engine"] = {**data.get("engine", {}), "extra_args": [flag, "v"]}
    with pytest.raises(SpecError, match="is set by ServeNest"):
        load_spec_data(data)


def test_the_local_topology_refuses_sglang(spec_dict):
    data = spec_dict()
    data["engine"] = {**data.get("engine", {}), "kind": "sglang"}
    with pytest.raises(SpecError, match="local topology runs vLLM"):
        load_spec_data(data)


# -- cloud placement ----------------------------------------------------------------------------
@pytest.mark.parametrize("region", ["hangzhou", "CN-HANGZHOU", "cn_hangzhou", ""])
def test_a_malformed_region_is_refused(spec_dict, region):
    assert "cloud.region" in spec_error(spec_dict("ecs", cloud={"region": region}))


def test_a_zone_of_another_region_is_refused(spec_dict):
    msg = spec_error(spec_dict("ecs", cloud={"region": "cn-beijing", "zones": ["cn-hangzhou-i"]}))
    assert "cn-hangzhou-i" in msg and "cn-beijing" in msg


def test_an_unknown_instance_type_gets_a_suggestion(make_spec):
    from servenest.fit import check_spec_fits

    with pytest.raises(SpecError, match="Did you mean ecs.gn7i-8x.16xlarge"):
        check_spec_fits(make_spec("ecs", cloud={"instance_types": ["ecs.gn7i-8x.16xlarg"]}))


def test_budget_and_approval_fields(make_spec, spec_dict):
    spec = make_spec("ecs", cloud={"hourly_budget": 50, "require_approval": True})
    assert spec.cloud.hourly_budget == 50 and spec.cloud.require_approval
    assert "cloud.hourly_budget" in spec_error(spec_dict("ecs", cloud={"hourly_budget": -1}))


@pytest.mark.parametrize("source, extra", [("huggingface", {}), ("oss", {"oss_uri": "oss://bucket-a/models/x"})])
def test_ecs_stages_from_modelscope_only(spec_dict, source, extra):
    msg = spec_error(spec_dict("ecs", weights={"source": source, **extra}))
    assert "ModelScope" in msg


# -- replicas and autoscaling (ack) ------------------------------------------------------------------
def test_replicas_default_to_one_and_are_not_autoscaled(make_spec):
    spec = make_spec("ack")
    assert (spec.replicas.min, spec.replicas.max, spec.autoscaled) == (1, 1, False)
    assert spec.scale_targets == {"vllm:num_requests_waiting": 5.0}


@pytest.mark.parametrize(("overrides", "message"), [
    ({"replicas": {"min": 3, "max": 2}}, r"replicas.max \(2\) is below replicas.min \(3\)"),
    ({"replicas": {"min": 0, "max": 2}}, "replicas.min"),
    ({"replicas": {"max": 4}, "autoscaling": {"targets": {"vllm:num_requests_queued": 5}}},
     "vLLM 0.7 does not expose a per-pod gauge 'vllm:num_requests_queued'"),
    ({"replicas": {"max": 4}, "engine": {"kind": "sglang"},
      "autoscaling": {"targets": {"vllm:num_requests_waiting": 5}}},
     "sglang does not expose a per-pod gauge 'vllm:num_requests_waiting'"),
    ({"replicas": {"max": 4}, "autoscaling": {"targets": {"vllm:gpu_cache_usage_perc": 0.8}}},
     "must include the queue depth vllm:num_requests_waiting"),
    ({"replicas": {"max": 4}, "autoscaling": {"targets": {"vllm:num_requests_waiting": 5,
                                                          "vllm:gpu_cache_usage_perc": 80}}},
     "is a fraction"),
    # The default image runs vLLM 0.7.2, from before the KV-cache gauge's rename (0.9) ...
    ({"replicas": {"max": 4}, "autoscaling": {"targets": {"vllm:num_requests_waiting": 5,
                                                          "vllm:kv_cache_usage_perc": 0.8}}},
     r"vLLM 0.7 does not expose a per-pod gauge 'vllm:kv_cache_usage_perc'.*vllm:gpu_cache_usage_perc"),
    # ... and 0.12 removed the old name.
    ({"replicas": {"max": 4}, "engine": {"version": "0.12.0"},
      "autoscaling": {"targets": {"vllm:num_requests_waiting": 5, "vllm:gpu_cache_usage_perc": 0.8}}},
     "vLLM 0.12 does not expose a per-pod gauge 'vllm:gpu_cache_usage_perc'"),
    ({"replicas": {"max": 4}, "autoscaling": {"targets": {"vllm:num_requests_waiting": 0}}}, "greater than 0"),
    ({"replicas": {"max": 4}, "autoscaling": {"autoscaler": "keda"}}, "set autoscaling.prometheus_url"),
    ({"replicas": {"max": 4}, "autoscaling": {"prometheus_url": "prometheus:9090"}}, "must be an http"),
])
def test_bad_scaling_input_is_refused_before_anything_is_made(spec_dict, overrides, message):
    with pytest.raises(SpecError, match=message):
        load_spec_data(spec_dict("ack", **overrides))


def test_only_ack_autoscales(spec_dict):
    assert "topology ack" in spec_error(spec_dict("ecs", replicas={"max": 2}))


def test_sglang_scales_on_its_own_queue_metric(make_spec):
    spec = make_spec("ack", engine={"kind": "sglang"}, replicas={"max": 3},
                     autoscaling={"targets": {"sglang:num_queue_reqs": 4, "sglang:token_usage": 0.9}})
    assert spec.autoscaled and spec.scale_targets == {"sglang:num_queue_reqs": 4, "sglang:token_usage": 0.9}


@pytest.mark.parametrize(("engine", "version"), [
    ({}, (0, 7)), ({"version": "0.10.1"}, (0, 10)), ({"image": "vllm/vllm-openai:v0.11.0"}, (0, 11)),
    ({"image": "registry.example/team/engine:latest"}, None)])
def test_the_vllm_version_a_pod_runs(make_spec, engine, version):
    assert make_spec("ack", engine=engine).vllm_version == version


def test_the_default_image_version_is_the_default_images_tag():
    from servenest.cloud.scripts import DEFAULT_IMAGES
    from servenest.spec import DEFAULT_VLLM_IMAGE_VERSION

    assert DEFAULT_IMAGES["vllm"].rsplit(":", 1)[1].startswith(DEFAULT_VLLM_IMAGE_VERSION + "-")
