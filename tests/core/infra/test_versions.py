"""Dataset versions on a real S3 server (weed mini): atomic publish, manifests, checksums."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from augpaint_core.infra import storage, versions
from augpaint_core.errors import AugPaintError
from tests.conftest import REPO


def _make_folder(root: Path, n_files: int, size: int = 64) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        p = root / f"shards/part-{i:04d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(size))
    (root / "manifest.json").write_text(json.dumps({"n": n_files}))
    return root


def test_publish_and_read_versions(s3_bucket: str, tmp_path: Path) -> None:
    root = f"s3://{s3_bucket}/datasets/acdc"
    assert versions.list_versions(root) == [] and versions.latest_version(root) is None
    with pytest.raises(AugPaintError, match="no dataset version published yet"):
        versions.read_manifest(root)
    m1 = versions.publish_version(_make_folder(tmp_path / "a", 3), root, counts={"labeled_cases": 1})
    m2 = versions.publish_version(_make_folder(tmp_path / "b", 4), root, parent=1, counts={"labeled_cases": 2},
                                  info={"expanded_cases": ["p1", "p2"]})
    assert (m1["version"], m2["version"]) == (1, 2)
    assert versions.list_versions(root) == [1, 2]
    m = versions.read_manifest(root)
    assert m["parent"] == 1 and m["counts"] == {"labeled_cases": 2} and m["info"]["expanded_cases"] == ["p1", "p2"]
    assert len(m["files"]) == 5 and m["content_sha256"] == versions.content_hash(m["files"])
    local, man = versions.download_version(root, tmp_path / "got")
    for rel, sha in man["files"].items():
        assert storage._sha256_file(local / rel) == sha
        assert (local / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    with pytest.raises(AugPaintError, match="parent version 7 does not exist"):
        versions.publish_version(tmp_path / "a", root, parent=7)


def test_corrupted_object_fails_the_read(s3_bucket: str, tmp_path: Path) -> None:
    root = f"s3://{s3_bucket}/ds"
    src = _make_folder(tmp_path / "a", 2)
    versions.publish_version(src, root)
    # Replace one object behind the manifest's back (a foreign writer, bit rot): the read must fail.
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not the original")
    storage.upload_file(bad, storage.join(versions.version_uri(root, 1), "shards/part-0000.bin"))
    with pytest.raises(AugPaintError, match="sha256 mismatch"):
        versions.download_version(root, tmp_path / "got")
    assert not (tmp_path / "got").exists()


def test_reader_never_sees_a_partial_version(s3_bucket: str, tmp_path: Path, monkeypatch) -> None:
    """A reader looks at the latest version after every single upload of a publish: it sees v1 whole until
    the commit point, then v2 whole; never a mix (a reader in a thread could miss every window)."""
    root = f"s3://{s3_bucket}/live"
    versions.publish_version(_make_folder(tmp_path / "v1", 2), root)
    seen: list[tuple[int, int]] = []
    upload = versions.storage.upload_file

    def upload_then_read(*args, **kwargs):
        out = upload(*args, **kwargs)
        m = versions.read_manifest(root)  # the latest, as any reader would ask
        local, _ = versions.download_version(root, tmp_path / f"r{len(seen)}", m["version"])
        seen.append((m["version"], sum(1 for p in local.rglob("*") if p.is_file())))
        return out

    monkeypatch.setattr(versions.storage, "upload_file", upload_then_read)
    versions.publish_version(_make_folder(tmp_path / "v2", 40), root, parent=1)
    # v1 has 2 shards + manifest.json + VERSION.json, v2 has 40 + 2: v1 until the very last upload.
    assert len(seen) == 42
    assert seen[:-1] == [(1, 4)] * 41 and seen[-1] == (2, 42)


def test_writer_killed_midway_leaves_no_visible_version(s3_server: dict, s3_bucket: str, tmp_path: Path) -> None:
    root = f"s3://{s3_bucket}/killed"
    versions.publish_version(_make_folder(tmp_path / "v1", 1), root)
    big = _make_folder(tmp_path / "v2", 400, size=256)
    script = ("import sys; from augpaint_core.infra import versions; "
              "versions.publish_version(sys.argv[1], sys.argv[2], parent=1)")
    proc = subprocess.Popen([sys.executable, "-c", script, str(big), root], cwd=REPO,
                            env={**os.environ, **s3_server["env"]})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if len(storage.list_uris(versions.version_uri(root, 2))) >= 20:
                break
            assert proc.poll() is None, "the writer finished before it could be killed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(10)
    written = storage.list_uris(versions.version_uri(root, 2))
    assert 20 <= len(written) < 401  # killed midway: some objects there, but no marker
    assert versions.list_versions(root) == [1] and versions.latest_version(root) == 1
    with pytest.raises(AugPaintError, match="version 2 does not exist"):
        versions.read_manifest(root, 2)
    # The next publish skips the abandoned folder, so no leftover object can mix in.
    m = versions.publish_version(_make_folder(tmp_path / "v3", 2), root, parent=1)
    assert m["version"] == 3 and versions.list_versions(root) == [1, 3]


def test_local_root_works_the_same(tmp_path: Path) -> None:
    root = str(tmp_path / "versions")
    versions.publish_version(_make_folder(tmp_path / "a", 2), root)
    (Path(root) / "v000002" / "shards").mkdir(parents=True)  # an abandoned folder without a marker
    assert versions.list_versions(root) == [1]
    m = versions.publish_version(_make_folder(tmp_path / "b", 2), root, parent=1)
    assert m["version"] == 3
