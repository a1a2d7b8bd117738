"""augpaint_core.infra.storage against a real S3 server (SeaweedFS ``weed mini``) and local paths."""
from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import os
import time
from pathlib import Path
from typing import Iterator

import pytest

from augpaint_core.infra import storage
from augpaint_core.errors import AugPaintError
from tests.services import free_port, local_http_server

ENDPOINT_VARS = storage.ENDPOINT_VARS


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUGPAINT_S3_BACKOFF_S", "0.01")
    monkeypatch.delenv("AUGPAINT_S3_RETRIES", raising=False)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- URIs

def test_split_join_is_s3() -> None:
    assert storage.split_s3("s3://bucket/a/b.txt") == ("bucket", "a/b.txt")
    assert storage.split_s3("s3://bucket") == ("bucket", "")
    for bad in ("s3://", "s3:///key", "s3://Bad_Bucket/x", "http://bucket/x", "bucket/x"):
        with pytest.raises(AugPaintError, match=f"^{bad}: "):
            storage.split_s3(bad)
    assert storage.join("s3://b/run1/", "/ae/", "model.pt") == "s3://b/run1/ae/model.pt"
    assert storage.join("/tmp/x", "a", "b") == "/tmp/x/a/b"
    assert storage.join("file:///tmp/x/", "a") == "file:///tmp/x/a"
    assert storage.is_s3("s3://b/k") and not storage.is_s3("/tmp/s3://") and not storage.is_s3(Path("x"))


# ----------------------------------------------------------------------------- S3

def test_upload_download_round_trip(s3_bucket: str, tmp_path: Path) -> None:
    # Above minio's 5 MiB part size, so this goes as a multipart upload.
    data = os.urandom(6 * 1024 * 1024 + 17)
    src = write(tmp_path / "src" / "big.bin", data)
    uri = f"s3://{s3_bucket}/run/big.bin"
    assert storage.upload_file(src, uri) == sha(data)
    assert storage.client().stat_object(s3_bucket, "run/big.bin").metadata["x-amz-meta-sha256"] == sha(data)
    out = storage.download(uri, tmp_path / "out" / "big.bin", sha256=sha(data))
    assert out == tmp_path / "out" / "big.bin" and out.read_bytes() == data
    assert sorted(os.listdir(out.parent)) == ["big.bin"]  # no temp file left
    assert storage.read_bytes(uri) == data


def test_download_wrong_sha_leaves_nothing(s3_bucket: str, tmp_path: Path) -> None:
    uri = f"s3://{s3_bucket}/x.bin"
    storage.upload_file(write(tmp_path / "x.bin", b"payload"), uri)
    dest = tmp_path / "out" / "x.bin"
    wrong = sha(b"other")
    with pytest.raises(AugPaintError, match=f"^{uri}: sha256 mismatch") as err:
        storage.download(uri, dest, sha256=wrong)
    assert wrong in str(err.value) and sha(b"payload") in str(err.value)
    assert not dest.exists() and os.listdir(dest.parent) == []


def test_download_checks_recorded_sha(s3_bucket: str, tmp_path: Path) -> None:
    # An object whose recorded digest does not match its bytes (e.g. corrupted) is refused.
    storage.client().put_object(s3_bucket, "bad.bin", io.BytesIO(b"abc"), 3, metadata={"sha256": "0" * 64})
    with pytest.raises(AugPaintError, match="sha256 mismatch"):
        storage.download(f"s3://{s3_bucket}/bad.bin", tmp_path / "bad.bin")
    assert not (tmp_path / "bad.bin").exists()


def test_read_range(s3_bucket: str, tmp_path: Path) -> None:
    data = bytes(range(256)) * 4
    uri = f"s3://{s3_bucket}/r.bin"
    storage.upload_file(write(tmp_path / "r.bin", data), uri)
    assert storage.read_range(uri, 0, 10) == data[:10]
    assert storage.read_range(uri, 300, 17) == data[300:317]
    assert storage.read_range(uri, 1000, 24) == data[1000:]
    assert storage.read_range(uri, 5, 0) == b""
    with pytest.raises(AugPaintError, match=f"^{uri}: byte range 1000..1030 is past the end"):
        storage.read_range(uri, 1000, 30)
    with pytest.raises(AugPaintError, match=f"^{uri}: byte range"):
        storage.read_range(uri, 5000, 1)


def test_list_and_exists(s3_bucket: str, tmp_path: Path) -> None:
    b = f"s3://{s3_bucket}"
    for key in ("run1/a.txt", "run1/sub/b.txt", "run10/c.txt"):
        storage.upload_file(write(tmp_path / "f", key.encode()), f"{b}/{key}")
    assert storage.list_uris(f"{b}/run1") == [f"{b}/run1/a.txt", f"{b}/run1/sub/b.txt"]
    assert storage.list_uris(f"{b}/run1/", recursive=False) == [f"{b}/run1/a.txt", f"{b}/run1/sub/"]
    assert storage.list_uris(b) == [f"{b}/run1/a.txt", f"{b}/run1/sub/b.txt", f"{b}/run10/c.txt"]
    assert storage.list_uris(f"{b}/nothing") == []
    assert storage.exists(f"{b}/run1/a.txt")
    assert storage.exists(f"{b}/run1")  # a folder, as for a local directory
    assert storage.exists(b)
    assert not storage.exists(f"{b}/run1/zzz.txt")
    assert not storage.exists(f"{b}/run")
    assert not storage.exists("s3://no-such-bucket-augpaint/x")


def test_upload_dir_download_dir_round_trip(s3_bucket: str, tmp_path: Path) -> None:
    src = tmp_path / "art"
    files = {"artifact.json": b"{}", "weights/model.pt": os.urandom(5000), "a/b/c.txt": b"deep",
             "empty.bin": b""}
    for rel, data in files.items():
        write(src / rel, data)
    uri = f"s3://{s3_bucket}/runs/art"
    uploaded = storage.upload_dir(src, uri)
    assert uploaded == sorted(f"{uri}/{rel}" for rel in files)
    dest = storage.download_dir(uri, tmp_path / "copy" / "art")
    assert tree(dest) == files
    assert os.listdir(dest.parent) == ["art"]  # no hidden temp folder left
    # Downloading again replaces the folder as a whole.
    write(dest / "stale.txt", b"old")
    assert tree(storage.download_dir(uri, dest)) == files


def test_download_dir_is_atomic(s3_bucket: str, tmp_path: Path) -> None:
    storage.upload_file(write(tmp_path / "ok.txt", b"ok"), f"s3://{s3_bucket}/d/ok.txt")
    storage.client().put_object(s3_bucket, "d/z.bin", io.BytesIO(b"abc"), 3, metadata={"sha256": "1" * 64})
    dest = tmp_path / "out" / "d"
    with pytest.raises(AugPaintError, match=f"s3://{s3_bucket}/d/z.bin: sha256 mismatch"):
        storage.download_dir(f"s3://{s3_bucket}/d", dest)
    assert not dest.exists() and os.listdir(dest.parent) == []
    with pytest.raises(AugPaintError, match=f"^s3://{s3_bucket}/nope: not found"):
        storage.download_dir(f"s3://{s3_bucket}/nope", dest)


def test_cached_copy_second_call_is_offline(s3_bucket: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"cached content"
    uri = f"s3://{s3_bucket}/m/image.nii.gz"
    storage.upload_file(write(tmp_path / "image.nii.gz", data), uri)
    cache = tmp_path / "cache"
    first = storage.cached_copy(uri, sha(data), cache_dir=cache)
    assert first.read_bytes() == data and first.name == "image.nii.gz" and cache in first.parents
    # Gone from S3 and the endpoint dead: only the cache can answer.
    storage.client().remove_object(s3_bucket, "m/image.nii.gz")
    monkeypatch.setenv("AUGPAINT_S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AUGPAINT_S3_RETRIES", "1")
    assert storage.cached_copy(uri, sha(data), cache_dir=cache) == first
    # A different digest is a cache miss and does need the (dead) endpoint.
    with pytest.raises(AugPaintError, match="unreachable"):
        storage.cached_copy(uri, sha(b"other"), cache_dir=cache)
    # The default cache root comes from $AUGPAINT_CACHE.
    monkeypatch.setenv("AUGPAINT_CACHE", str(cache))
    assert storage.cached_copy(uri, sha(data)) == first


def test_cached_copy_wrong_sha_caches_nothing(s3_bucket: str, tmp_path: Path) -> None:
    uri = f"s3://{s3_bucket}/w.bin"
    storage.upload_file(write(tmp_path / "w.bin", b"real"), uri)
    cache = tmp_path / "cache"
    with pytest.raises(AugPaintError, match="sha256 mismatch"):
        storage.cached_copy(uri, sha(b"claimed"), cache_dir=cache)
    assert [p for p in cache.rglob("*") if p.is_file()] == []
    with pytest.raises(AugPaintError, match=f"^{uri}: invalid sha256"):
        storage.cached_copy(uri, "nothex", cache_dir=cache)


def test_missing_object_and_bucket(s3_bucket: str, tmp_path: Path) -> None:
    uri = f"s3://{s3_bucket}/missing.bin"
    start = time.monotonic()
    with pytest.raises(AugPaintError, match=f"^{uri}: not found$"):
        storage.read_bytes(uri)
    with pytest.raises(AugPaintError, match=f"^{uri}: not found$"):
        storage.download(uri, tmp_path / "m.bin")
    assert not (tmp_path / "m.bin").exists()
    with pytest.raises(AugPaintError, match="^s3://no-such-bucket-augpaint/k: not found"):
        storage.read_bytes("s3://no-such-bucket-augpaint/k")
    assert time.monotonic() - start < 5  # not retried


def test_unreachable_endpoint_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AUGPAINT_S3_ENDPOINT", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.delenv("AUGPAINT_S3_BACKOFF_S")  # the real default backoff
    start = time.monotonic()
    with pytest.raises(AugPaintError) as err:
        storage.read_bytes("s3://some-bucket/k")
    elapsed = time.monotonic() - start
    assert str(err.value).startswith(f"s3://some-bucket/k: S3 endpoint {endpoint} unreachable after 4 attempts (")
    assert "\n" not in str(err.value) and elapsed < 15
    assert elapsed > 3  # the backoff did run: 0.5 + 1 + 2 s
    monkeypatch.setenv("AUGPAINT_S3_RETRIES", "2")
    monkeypatch.setenv("AUGPAINT_S3_BACKOFF_S", "0")
    with pytest.raises(AugPaintError, match="unreachable after 2 attempts"):
        storage.exists("s3://some-bucket/k")


@contextlib.contextmanager
def faulty_server(status: int | None) -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server that answers every request with ``status`` (an S3 SlowDown
    error body), or drops the connection when ``status`` is None; it records each request.

    weed cannot be told to fail on purpose, so this stands in for a struggling endpoint.
    """
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            if status is None:
                self.connection.shutdown(2)  # drop it without an answer
                return
            body = b"<?xml version='1.0'?><Error><Code>SlowDown</Code><Message>slow down</Message></Error>"
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with local_http_server(Handler) as url:
        yield url, hits


@pytest.mark.parametrize("status", [503, None])
def test_retries_5xx_and_dropped_connections(status: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_REGION", "us-east-1")  # no bucket-location lookup first
    monkeypatch.setenv("AUGPAINT_S3_RETRIES", "3")
    with faulty_server(status) as (endpoint, hits):
        monkeypatch.setenv("AUGPAINT_S3_ENDPOINT", endpoint)
        with pytest.raises(AugPaintError) as err:
            storage.read_bytes("s3://some-bucket/k")
    what = "kept failing after 3 attempts (HTTP 503 SlowDown)" if status else "unreachable after 3 attempts"
    assert str(err.value).startswith(f"s3://some-bucket/k: S3 endpoint {endpoint} {what}")
    # Exactly our attempts: urllib3 itself must not retry behind our back.
    assert hits == ["/some-bucket/k"] * 3


def test_missing_endpoint_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENDPOINT_VARS:
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(AugPaintError, match="^s3://b0b/k: S3 endpoint not configured: set AUGPAINT_S3_ENDPOINT"):
        storage.read_bytes("s3://b0b/k")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "127.0.0.1:9000")  # no scheme
    with pytest.raises(AugPaintError, match="AWS_ENDPOINT_URL=127.0.0.1:9000: S3 endpoint must look like"):
        storage.exists("s3://b0b/k")


def test_wrong_secret_key(s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"s3://{s3_bucket}/k.bin"
    storage.upload_file(write(tmp_path / "k.bin", b"k"), uri)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    for call in (lambda: storage.read_bytes(uri), lambda: storage.upload_file(tmp_path / "k.bin", uri),
                 lambda: storage.list_uris(f"s3://{s3_bucket}")):
        with pytest.raises(AugPaintError, match=f"^s3://{s3_bucket}/?[a-z.]*: access denied by S3 endpoint "
                                                 ".*check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"):
            call()
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(AugPaintError, match=f"^{uri}: S3 credentials: AWS_SECRET_ACCESS_KEY is not set"):
        storage.read_bytes(uri)


# ----------------------------------------------------------------------------- local paths

@pytest.mark.parametrize("as_file_uri", [False, True])
def test_local_equivalents(tmp_path: Path, as_file_uri: bool) -> None:
    data = bytes(range(200))
    path = write(tmp_path / "in" / "x.bin", data)
    uri = path.as_uri() if as_file_uri else str(path)
    assert storage.read_bytes(uri) == data
    assert storage.read_range(uri, 10, 5) == data[10:15]
    with pytest.raises(AugPaintError, match="past the end"):
        storage.read_range(uri, 190, 20)
    assert storage.exists(uri) and not storage.exists(uri + ".nope")
    out = storage.download(uri, tmp_path / "out" / "x.bin", sha256=sha(data))
    assert out.read_bytes() == data
    with pytest.raises(AugPaintError, match="sha256 mismatch"):
        storage.download(uri, tmp_path / "out2" / "x.bin", sha256=sha(b"no"))
    assert os.listdir(tmp_path / "out2") == []
    with pytest.raises(AugPaintError, match=r"x\.bin\.nope: not found$"):
        storage.read_bytes(uri + ".nope")
    assert storage.cached_copy(uri, sha(data)) == path


def test_local_dirs(tmp_path: Path) -> None:
    files = {"artifact.json": b"{}", "a/b.txt": b"b", "c.bin": os.urandom(100)}
    src = tmp_path / "src"
    for rel, data in files.items():
        write(src / rel, data)
    assert storage.list_uris(str(src)) == sorted(str(src / rel) for rel in files)
    assert storage.list_uris(str(src), recursive=False) == [str(src / "a") + "/", str(src / "artifact.json"),
                                                            str(src / "c.bin")]
    assert storage.list_uris(str(tmp_path / "none")) == []
    assert storage.upload_file(src / "c.bin", str(tmp_path / "up" / "c.bin")) == sha(files["c.bin"])
    storage.upload_dir(src, str(tmp_path / "up_dir"))
    assert tree(tmp_path / "up_dir") == files
    assert tree(storage.download_dir(src.as_uri(), tmp_path / "down")) == files
    with pytest.raises(AugPaintError, match="not found"):
        storage.download_dir(str(tmp_path / "none"), tmp_path / "x")
    with pytest.raises(AugPaintError, match=f"^{tmp_path / 'none.txt'}: not found"):
        storage.upload_file(tmp_path / "none.txt", str(tmp_path / "y"))
