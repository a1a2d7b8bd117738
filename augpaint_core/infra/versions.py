"""Dataset versions in object storage (``s3://bucket/prefix`` or a local folder), published atomically.

Layout under a root URI::

    <root>/v000001/...          the version's files (any folder structure)
    <root>/v000001/VERSION.json the commit marker and manifest, written last

A version exists only once its ``VERSION.json`` exists. The manifest lists every
file with its sha256, so a reader ignores leftovers of a writer that was killed
midway and verifies each file it reads. S3 object writes are atomic, hence a
reader never sees a partial version. Publishing assumes one writer per root at
a time (the expansion pipeline's recurring run has ``max_concurrency=1``); a
second writer racing for the same number fails instead of overwriting.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from . import storage
from ..errors import AugPaintError

VERSION_FILE = "VERSION.json"
MANIFEST_SCHEMA = 1
_DIR_RE = re.compile(r"^v(\d{6})/?$")


def version_name(n: int) -> str:
    """Folder name of version ``n`` (``v000002``)."""
    return f"v{n:06d}"


def version_uri(root: str, n: int) -> str:
    """URI of version ``n``'s folder under ``root``."""
    return storage.join(str(root), version_name(n))


def _candidates(root: str) -> list[int]:
    found = []
    for uri in storage.list_uris(str(root), recursive=False):
        m = _DIR_RE.match(uri.rstrip("/").rsplit("/", 1)[-1] + "/")
        if m:
            found.append(int(m.group(1)))
    return sorted(found)


def list_versions(root: str) -> list[int]:
    """Committed version numbers under ``root``, ascending (folders without VERSION.json are not versions)."""
    return [n for n in _candidates(root) if storage.exists(storage.join(version_uri(root, n), VERSION_FILE))]


def latest_version(root: str) -> int | None:
    """The highest committed version, or None when there is none."""
    found = list_versions(root)
    return found[-1] if found else None


def read_manifest(root: str, version: int | None = None) -> dict:
    """The manifest of a version (default: the latest).

    Args:
        root: versions root URI.
        version: version number; None for the latest.
    """
    n = latest_version(root) if version is None else version
    if n is None:
        raise AugPaintError(f"{root}: no dataset version published yet")
    uri = storage.join(version_uri(root, n), VERSION_FILE)
    if not storage.exists(uri):
        raise AugPaintError(f"{root}: version {n} does not exist (or was never completed)")
    try:
        manifest = json.loads(storage.read_bytes(uri))
    except json.JSONDecodeError as err:
        raise AugPaintError(f"{uri}: not valid JSON ({err})") from None
    if manifest.get("version") != n or not isinstance(manifest.get("files"), dict):
        raise AugPaintError(f"{uri}: not a dataset version manifest")
    return manifest


def content_hash(files: dict[str, str]) -> str:
    """One sha256 over the sorted ``relative path -> sha256`` map (the version's identity)."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\0{files[rel]}\n".encode())
    return h.hexdigest()


def publish_version(src: str | Path, root: str, *, parent: int | None = None, counts: dict[str, int] | None = None,
                    info: dict[str, Any] | None = None) -> dict:
    """Upload a local folder as the next version under ``root``; return its manifest.

    Every file is uploaded (with its sha256 as metadata) before ``VERSION.json``,
    so the version becomes visible only once complete.

    Args:
        src: local folder holding the version's files.
        root: versions root (``s3://bucket/prefix`` or a local folder).
        parent: the version this one extends (recorded in the manifest).
        counts: e.g. ``{"labeled_cases": 3, "synthetic_slices": 120}``.
        info: more JSON-able facts to record (config hash, expanded case ids, ...).
    """
    src = Path(src)
    if not src.is_dir():
        raise AugPaintError(f"{src}: not a directory")
    files_local = sorted(p for p in src.rglob("*") if p.is_file())
    rels = [p.relative_to(src).as_posix() for p in files_local]
    if VERSION_FILE in rels:
        raise AugPaintError(f"{src}: {VERSION_FILE} is reserved for the version manifest")
    if not rels:
        raise AugPaintError(f"{src}: nothing to publish (empty folder)")
    known = list_versions(root)
    if parent is not None and parent not in known:
        raise AugPaintError(f"{root}: parent version {parent} does not exist")
    n = max(_candidates(root) + [0]) + 1  # past any abandoned folder too, so no stray object mixes in
    dest = version_uri(root, n)
    files: dict[str, str] = {}
    for path, rel in zip(files_local, rels):
        files[rel] = storage.upload_file(path, storage.join(dest, rel))
    manifest = {"schema": MANIFEST_SCHEMA, "version": n, "name": version_name(n), "parent": parent,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "counts": dict(counts or {}),
                "files": files, "content_sha256": content_hash(files), "info": dict(info or {})}
    marker = storage.join(dest, VERSION_FILE)
    if storage.exists(marker):
        raise AugPaintError(f"{root}: version {n} was published by another writer meanwhile")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / VERSION_FILE
        local.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        storage.upload_file(local, marker)  # the commit point
    return manifest


def download_version(root: str, dest: str | Path, version: int | None = None) -> tuple[Path, dict]:
    """Download a committed version to ``dest`` (atomically), each file checked against the manifest.

    Args:
        root: versions root URI.
        dest: local folder to create (replaced if it exists).
        version: version number; None for the latest.

    Returns:
        the local folder and the manifest.
    """
    manifest = read_manifest(root, version)
    base = version_uri(root, manifest["version"])
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.partial-{os.getpid()}-{time.monotonic_ns()}"
    try:
        for rel, sha in manifest["files"].items():
            storage.download(storage.join(base, rel), tmp / rel, sha256=sha)
        (tmp / VERSION_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest, manifest
