"""Weight staging with the real tools: the tiny-model generator and the hub clients."""

from __future__ import annotations

import subprocess

import pytest

from servenest.errors import DownloadFailedError
from servenest.manifest import build_manifest
from servenest.spec import load_spec_data
from servenest.topology.local import TINY_MODEL_SCRIPT, LocalTopology
from tasks.retry import is_transient

pytestmark = pytest.mark.engine


def test_tiny_model_is_generated_deterministically(engine_python, tmp_path):
    for out in ("a", "b"):
        subprocess.run([engine_python, str(TINY_MODEL_SCRIPT), str(tmp_path / out), "--seed", "0"],
                       check=True, capture_output=True, timeout=300)
    a, b = build_manifest(tmp_path / "a", "a"), build_manifest(tmp_path / "b", "b")
    assert [f.path for f in a.files] == ["config.json", "generation_config.json", "model.safetensors",
                                         "tokenizer.json", "tokenizer_config.json"]
    assert a.digest == b.digest, "two generations of the tiny model differ"


def _hub_spec(source: str):
    return load_spec_data({
        "name": f"it-{source}", "model": "Qwen/Qwen3-0.6B", "topology": "local",
        "engine": {"max_model_len": 4096}, "weights": {"source": source},
        "access": {"api_key_secret": "unused"},
    })


def test_huggingface_client_is_called_and_its_failure_is_retryable(engine_python, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub is reachable from these machines
    with pytest.raises(DownloadFailedError, match="offline mode") as err:
        LocalTopology(_hub_spec("huggingface")).stage_weights()
    assert "huggingface:Qwen/Qwen3-0.6B" in str(err.value)
    assert is_transient(err.value)


def test_modelscope_client_is_called_and_its_failure_is_retryable(engine_python, monkeypatch):
    monkeypatch.setenv("MODELSCOPE_DOMAIN", "127.0.0.1:9")  # a closed local port
    with pytest.raises(DownloadFailedError, match="Connection") as err:
        LocalTopology(_hub_spec("modelscope")).stage_weights()
    assert "modelscope:Qwen/Qwen3-0.6B" in str(err.value)
    assert is_transient(err.value)


def test_a_corrupted_staged_model_is_regenerated(engine_python, make_spec):
    spec = make_spec("it-restage")
    topology = LocalTopology(spec)
    topology.provision()
    first = topology.stage_weights()
    assert topology.stage_weights().reused, "a verified copy was not reused"
    with open(f"{first.location}/model.safetensors", "ab") as fh:
        fh.write(b"torn write")
    again = topology.stage_weights()
    assert not again.reused
    assert again.digest == first.digest, "regeneration did not restore the same model"
