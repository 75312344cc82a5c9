"""Fluid objects validate against Fluid's own CRD schemas and hold no secret."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from servenest.k8s.fluid import (
    cache_quota_gib,
    dataload,
    fluid_objects,
    revision_tag,
    runtime_replicas,
)

CRDS = Path(__file__).resolve().parents[1] / "data" / "crds"
OSS = "oss://servenest-models/llm-model/deepseek-ai/DeepSeek-R1"


@functools.cache  # the LWS CRD alone is 1.3 MB of YAML: parse each file once per run
def crd_schema(kind: str) -> dict:
    for path in sorted(CRDS.glob("*.yaml")):
        doc = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        if doc["spec"]["names"]["kind"] == kind:
            [version] = [v for v in doc["spec"]["versions"] if v.get("storage")]
            return version["schema"]["openAPIV3Schema"]
    raise KeyError(kind)


@pytest.fixture
def ack_spec(make_spec):
    return make_spec("ack", model="deepseek-ai/DeepSeek-R1", cloud={"gpu_kind": "H20", "gpus_per_node": 8, "nodes": 2})


def test_every_object_validates_against_its_crd(ack_spec):
    for obj in fluid_objects(ack_spec, "llm-model", OSS):
        jsonschema.validate(obj, crd_schema(obj["kind"]))
        assert obj["metadata"]["namespace"] == "llm-model"


def test_a_schema_violation_is_caught(ack_spec):
    bad = fluid_objects(ack_spec, "llm-model", OSS)[1]
    bad["spec"]["tieredstore"]["levels"][0]["mediumtype"] = "FLOPPY"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, crd_schema("JindoRuntime"))


def test_credentials_are_referenced_never_inline(ack_spec):
    text = json.dumps(fluid_objects(ack_spec, "llm-model", OSS))
    assert "secretKeyRef" in text and "LTAI" not in text


def test_cache_is_sized_to_the_weights(ack_spec):
    quota = cache_quota_gib(ack_spec)
    assert quota >= ack_spec.model_info.weight_gb * 1e9 / 2**30
    assert runtime_replicas(ack_spec) * 128 >= quota


def test_the_dataload_name_follows_the_revision(ack_spec, make_spec):
    again = dataload(ack_spec, "llm-model", OSS)["metadata"]["name"]
    assert again == dataload(ack_spec, "llm-model", OSS)["metadata"]["name"]  # same revision: same load
    assert revision_tag(ack_spec, OSS) != revision_tag(ack_spec, OSS + "-v2")


def test_a_bucket_name_oss_refuses_is_an_error(ack_spec):
    with pytest.raises(ValueError, match="bucket"):
        fluid_objects(ack_spec, "llm-model", "oss://Bad_Bucket/x")
