"""Weight manifests: which files a staged model has, their sizes and sha256.

Staging writes ``.servenest-manifest.json`` beside the weights once they are
complete; a later run that finds the files matching the manifest skips the work.
"quick" verification compares names and sizes (what a resumed download gets wrong);
"full" recomputes every sha256 (what a corrupted disk gets wrong).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

MANIFEST_NAME = ".servenest-manifest.json"
# Hub clients keep partial downloads and locks in these; they are not model files.
_IGNORED_DIRS = {".cache", ".git", ".huggingface", "._____temp", ".mdl", ".msc", ".mv"}


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    source: str
    files: tuple[FileEntry, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def digest(self) -> str:
        """One hash naming this exact set of files (recorded with the endpoint)."""
        h = hashlib.sha256()
        for f in self.files:
            h.update(f"{f.path}\0{f.size}\0{f.sha256}\n".encode())
        return h.hexdigest()

    def to_json(self) -> str:
        return json.dumps(
            {"source": self.source, "files": [asdict(f) for f in self.files]}, indent=1, sort_keys=True
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        return cls(source=data["source"], files=tuple(FileEntry(**f) for f in data["files"]))


def sha256_file(path: Path, chunk: int = 4 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _IGNORED_DIRS)
        for name in sorted(filenames):
            if name == MANIFEST_NAME or name.endswith((".incomplete", ".lock")):
                continue
            out.append(Path(dirpath) / name)
    return out


def build_manifest(root: Path, source: str) -> Manifest:
    files = tuple(
        FileEntry(path=p.relative_to(root).as_posix(), size=p.stat().st_size, sha256=sha256_file(p))
        for p in model_files(root)
    )
    return Manifest(source=source, files=files)


def write_manifest(root: Path, manifest: Manifest, target: Path | None = None) -> Path:
    target = target or root / MANIFEST_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(manifest.to_json())
    os.replace(tmp, target)
    return target


def read_manifest(root: Path, target: Path | None = None) -> Manifest | None:
    try:
        return Manifest.from_json((target or root / MANIFEST_NAME).read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None


def verify(root: Path, manifest: Manifest, mode: Literal["quick", "full"] = "quick") -> list[str]:
    """Problems found, empty when the directory holds exactly the manifest's files."""
    problems = []
    present = {p.relative_to(root).as_posix(): p for p in model_files(root)}
    for entry in manifest.files:
        path = present.pop(entry.path, None)
        if path is None:
            problems.append(f"missing {entry.path}")
            continue
        size = path.stat().st_size
        if size != entry.size:
            problems.append(f"{entry.path}: {size} bytes, manifest says {entry.size}")
        elif mode == "full" and sha256_file(path) != entry.sha256:
            problems.append(f"{entry.path}: sha256 differs from the manifest")
    problems.extend(f"unexpected file {name}" for name in sorted(present))
    if not manifest.files:
        problems.append("manifest lists no files")
    return problems


def mismatched(root: Path, manifest: Manifest, mode: Literal["quick", "full"] = "quick") -> list[Path]:
    """Files present but different from the manifest: a resuming hub client would keep them."""
    out = []
    for entry in manifest.files:
        path = root / entry.path
        if not path.is_file():
            continue
        if path.stat().st_size != entry.size or (mode == "full" and sha256_file(path) != entry.sha256):
            out.append(path)
    return out


def verified_manifest(
    root: Path, mode: Literal["quick", "full"] = "quick", target: Path | None = None
) -> Manifest | None:
    """The manifest of ``root`` if one exists and the files still match it."""
    manifest = read_manifest(root, target)
    if manifest is None or verify(root, manifest, mode):
        return None
    return manifest
