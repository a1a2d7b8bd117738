"""Artifact folders: atomic writes and provenance records (the slice dataset format is in ``dataset``).

Every stage writes its output folder through :func:`atomic_dir`: the work goes
into a hidden sibling folder, ``artifact.json`` is written last and the folder is
renamed into place, so a crash never leaves a folder that looks complete.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Iterator


from ..errors import AugPaintError

SCHEMA_VERSION = 1
ARTIFACT_FILE = "artifact.json"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("augpaint", "torch", "diffusers", "monai", "numpy", "nibabel"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def artifact_hash(path: str | Path) -> str:
    """Content hash of an artifact folder, as recorded in its artifact.json."""
    meta = read_artifact_meta(path)
    return meta["content_sha256"]


@contextlib.contextmanager
def atomic_dir(out: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``out`` only if the block succeeds.

    Args:
        out: final folder. If it exists and is non-empty, ``force`` is required.
        force: replace an existing complete artifact.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise AugPaintError(f"{out}: output already exists (pass --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir()
    try:
        yield tmp
        if not (tmp / ARTIFACT_FILE).is_file():
            raise AugPaintError(f"{out}: internal error: stage wrote no {ARTIFACT_FILE}")
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_artifact_meta(folder: Path, *, kind: str, stage: str, config: dict | None, seed: int | None,
                        inputs: dict[str, str] | None = None, extra: dict | None = None,
                        known_hashes: dict[str, str] | None = None) -> dict:
    """Write ``artifact.json`` last: kind, config, versions, input hashes and file hashes.

    Args:
        folder: the (temporary) artifact folder, already holding every other file.
        kind: ``dataset``, ``model`` or ``report``.
        stage: the stage that made it.
        config: the full config as a dict.
        seed: the stage's seed.
        inputs: name -> path of input artifacts; their content hashes are recorded.
        extra: anything else worth keeping.
        known_hashes: sha256 of files already hashed while writing (dataset shards), not read again.
    """
    files = {}
    known = known_hashes or {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != ARTIFACT_FILE:
            rel = str(p.relative_to(folder))
            files[rel] = known.get(rel) or sha256_file(p)
    content = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    meta = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "stage": stage,
        "seed": seed,
        "config": config,
        "versions": versions(),
        "inputs": {k: {"path": str(v), "content_sha256": _try_hash(v)} for k, v in (inputs or {}).items()},
        "files": files,
        "content_sha256": content,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }
    (folder / ARTIFACT_FILE).write_text(json.dumps(meta, indent=1))
    return meta


def _try_hash(path: str | Path) -> str | None:
    try:
        return artifact_hash(path)
    except AugPaintError:
        return None


def read_artifact_meta(path: str | Path, kind: str | None = None) -> dict:
    """Read and check ``artifact.json`` of a complete artifact folder."""
    p = Path(path)
    f = p / ARTIFACT_FILE
    if not p.is_dir():
        raise AugPaintError(f"{p}: artifact folder not found")
    if not f.is_file():
        raise AugPaintError(f"{p}: not a complete artifact (no {ARTIFACT_FILE}); was its stage interrupted?")
    try:
        meta = json.loads(f.read_text())
    except json.JSONDecodeError as err:
        raise AugPaintError(f"{f}: corrupt artifact metadata: {err}") from None
    if kind and meta.get("kind") != kind:
        raise AugPaintError(f"{p}: expected a {kind} artifact, found {meta.get('kind')!r} from stage {meta.get('stage')!r}")
    return meta
