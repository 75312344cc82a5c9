"""servenest/manifest.py: which files a staged model has, their sizes and sha256."""

from __future__ import annotations

import hashlib
import json

import pytest

from servenest.manifest import (
    MANIFEST_NAME,
    build_manifest,
    read_manifest,
    verified_manifest,
    verify,
    write_manifest,
)


@pytest.fixture
def model_dir(tmp_path):
    root = tmp_path / "model"
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "qwen2"}')
    (root / "model-00001.safetensors").write_bytes(b"\x01" * 4096)
    (root / "sub" / "tokenizer.json").write_text('{"vocab": {}}')
    return root


def test_build_lists_every_file_with_size_and_sha256(model_dir):
    m = build_manifest(model_dir, source="unit")
    by_path = {f.path: f for f in m.files}
    assert set(by_path) == {"config.json", "model-00001.safetensors", "sub/tokenizer.json"}
    weights = by_path["model-00001.safetensors"]
    assert weights.size == 4096
    assert weights.sha256 == hashlib.sha256(b"\x01" * 4096).hexdigest()
    assert m.total_bytes == sum((model_dir / p).stat().st_size for p in by_path)
    assert m.source == "unit"


def test_write_read_round_trip(model_dir):
    m = build_manifest(model_dir, source="modelscope:Qwen/Qwen3-8B@master")
    path = write_manifest(model_dir, m)
    assert path == model_dir / MANIFEST_NAME
    assert read_manifest(model_dir) == m
    assert json.loads(path.read_text())["source"] == "modelscope:Qwen/Qwen3-8B@master"
    # The manifest itself is not a model file.
    assert verify(model_dir, m) == []
    assert all(f.path != MANIFEST_NAME for f in build_manifest(model_dir, "x").files)


def test_write_read_round_trip_with_a_manifest_elsewhere(model_dir, tmp_path):
    target = tmp_path / "cache" / "manifests" / "model.json"
    m = build_manifest(model_dir, source="local")
    write_manifest(model_dir, m, target)
    assert target.is_file()
    assert not (model_dir / MANIFEST_NAME).exists()
    assert read_manifest(model_dir, target) == m
    assert read_manifest(model_dir) is None


def test_read_manifest_of_garbage_is_none(model_dir):
    (model_dir / MANIFEST_NAME).write_text("{not json")
    assert read_manifest(model_dir) is None
    (model_dir / MANIFEST_NAME).write_text('{"files": []}')
    assert read_manifest(model_dir) is None


def test_quick_verify_catches_a_missing_file(model_dir):
    m = build_manifest(model_dir, "unit")
    (model_dir / "sub" / "tokenizer.json").unlink()
    assert verify(model_dir, m, "quick") == ["missing sub/tokenizer.json"]


def test_quick_verify_catches_an_extra_file(model_dir):
    m = build_manifest(model_dir, "unit")
    (model_dir / "stray.bin").write_bytes(b"x")
    assert verify(model_dir, m, "quick") == ["unexpected file stray.bin"]


def test_quick_verify_catches_a_size_change(model_dir):
    m = build_manifest(model_dir, "unit")
    (model_dir / "model-00001.safetensors").write_bytes(b"\x01" * 4000)  # truncated download
    [problem] = verify(model_dir, m, "quick")
    assert "model-00001.safetensors" in problem and "4000" in problem and "4096" in problem


def test_full_verify_catches_same_size_corruption_that_quick_misses(model_dir):
    m = build_manifest(model_dir, "unit")
    data = bytearray((model_dir / "model-00001.safetensors").read_bytes())
    data[2048] ^= 0xFF
    (model_dir / "model-00001.safetensors").write_bytes(bytes(data))
    assert verify(model_dir, m, "quick") == []
    assert verify(model_dir, m, "full") == ["model-00001.safetensors: sha256 differs from the manifest"]


def test_empty_manifest_is_a_problem(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert verify(empty, build_manifest(empty, "unit")) == ["manifest lists no files"]


def test_digest_is_stable_and_changes_with_any_file(model_dir):
    first = build_manifest(model_dir, "unit").digest
    assert build_manifest(model_dir, "unit").digest == first
    assert build_manifest(model_dir, "another source").digest == first  # names the files only
    assert len(first) == 64
    (model_dir / "config.json").write_text('{"model_type": "qwen3"}')  # same size, new content
    changed = build_manifest(model_dir, "unit").digest
    assert changed != first
    (model_dir / "config.json").rename(model_dir / "config2.json")
    assert build_manifest(model_dir, "unit").digest not in (first, changed)


def test_verified_manifest_returns_the_manifest_when_all_is_well(model_dir):
    m = build_manifest(model_dir, "unit")
    write_manifest(model_dir, m)
    assert verified_manifest(model_dir, "quick") == m
    assert verified_manifest(model_dir, "full") == m


@pytest.mark.parametrize("damage", ["no manifest", "missing", "extra", "size", "content"])
def test_verified_manifest_is_none_when_anything_is_off(model_dir, damage):
    write_manifest(model_dir, build_manifest(model_dir, "unit"))
    weights = model_dir / "model-00001.safetensors"
    if damage == "no manifest":
        (model_dir / MANIFEST_NAME).unlink()
    elif damage == "missing":
        weights.unlink()
    elif damage == "extra":
        (model_dir / "sub" / "extra.bin").write_bytes(b"1")
    elif damage == "size":
        weights.write_bytes(b"\x01" * 10)
    elif damage == "content":
        weights.write_bytes(b"\x02" * 4096)
    mode = "full" if damage == "content" else "quick"
    assert verified_manifest(model_dir, mode) is None


def test_hub_partial_files_and_dirs_are_ignored(model_dir):
    m = build_manifest(model_dir, "unit")
    (model_dir / ".cache" / "huggingface" / "download").mkdir(parents=True)
    (model_dir / ".cache" / "huggingface" / "download" / "model.safetensors.metadata").write_text("x")
    (model_dir / "model-00002.safetensors.incomplete").write_bytes(b"partial")
    (model_dir / "model-00002.safetensors.lock").write_text("")
    (model_dir / "sub" / "nested.lock").write_text("")
    (model_dir / "sub" / ".cache").mkdir()
    (model_dir / "sub" / ".cache" / "junk").write_text("x")
    (model_dir / "._____temp").mkdir()
    (model_dir / "._____temp" / "part").write_text("x")
    assert verify(model_dir, m, "full") == []
    assert build_manifest(model_dir, "unit") == m
