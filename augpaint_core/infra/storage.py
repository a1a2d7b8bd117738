"""Object storage by URI: ``s3://bucket/key`` through the ``minio`` SDK, or a local path.

Every function takes either form, so callers need not branch. The S3 endpoint
and keys come from the environment:

* endpoint: ``AUGPAINT_S3_ENDPOINT``, else ``AWS_ENDPOINT_URL_S3``,
  ``AWS_ENDPOINT_URL`` or ``MLFLOW_S3_ENDPOINT_URL`` (``http://`` or ``https://``);
* keys: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (optional
  ``AWS_SESSION_TOKEN``, ``AWS_REGION`` or ``AWS_DEFAULT_REGION``); with no keys
  the client refuses to run unless ``AUGPAINT_S3_ANONYMOUS=1`` asks for
  anonymous requests;
* retries: ``AUGPAINT_S3_RETRIES`` attempts (default 4) with a backoff of
  ``AUGPAINT_S3_BACKOFF_S`` seconds (default 0.5) doubling each time.

Writes are atomic: downloads land in a hidden temp file or folder beside the
destination and are renamed into place; uploads record the sha256 of the
content as object metadata (``x-amz-meta-sha256``) and downloads check it.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import shutil
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import certifi
import minio
import urllib3
from minio.error import InvalidResponseError, S3Error, ServerError

from ..errors import AugPaintError

ENDPOINT_VARS = ("AUGPAINT_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")
RETRIES = 4
BACKOFF_S = 0.5
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
CHUNK = 1 << 20
SHA256_META = "sha256"  # stored as x-amz-meta-sha256
# A folder upload sends this file last, so a half-uploaded artifact never looks complete.
MARKER_FILE = "artifact.json"

_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "NoSuchObject", "NotFound", "ResourceNotFound"}
_AUTH = {"AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken", "ExpiredToken",
         "AuthorizationHeaderMalformed", "InvalidSecurity", "MissingSecurityHeader"}
_TRANSIENT = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "OperationAborted",
              "ServerBusy"}
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")

T = TypeVar("T")
_clients: dict[tuple, minio.Minio] = {}
_clients_lock = threading.Lock()


# ----------------------------------------------------------------------------- URIs

_USERINFO_RE = re.compile(r"(?<=://)[^/@\s]+@")
ANONYMOUS_ENV = "AUGPAINT_S3_ANONYMOUS"


def redact(text: str | Path) -> str:
    """``text`` with the ``user:password@`` of every URL in it replaced by ``***@``.

    Use it wherever a URI (or an error message that may quote one) is logged or printed.
    """
    return _USERINFO_RE.sub("***@", str(text))


def is_s3(uri: str | Path) -> bool:
    """True for ``s3://`` URIs, False for local paths (plain or ``file://``)."""
    return isinstance(uri, str) and uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)``; the key may be empty.

    Args:
        uri: an ``s3://`` URI.
    """
    if not is_s3(uri):
        raise AugPaintError(f"{uri}: not an s3:// URI")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise AugPaintError(f"{uri}: invalid S3 URI (bucket name {bucket!r} must be 3-63 characters of "
                            "lowercase letters, digits, '.' and '-'); expected s3://bucket/key")
    return bucket, key


def join(uri: str, *parts: str) -> str:
    """Append path parts to an ``s3://``, ``file://`` or plain-path URI.

    Args:
        uri: base URI or path.
        parts: path parts; slashes at their ends are ignored, empty parts skipped.
    """
    uri = str(uri)
    parts = tuple(p.strip("/") for p in parts if p and p.strip("/"))
    if not parts:
        return uri
    if is_s3(uri) or uri.startswith("file://"):
        return uri.rstrip("/") + "/" + "/".join(parts)
    return str(Path(uri).joinpath(*parts))


def safe_relpath(rel: object, where: str) -> str:
    """``rel`` if it is a plain relative path that stays inside its folder, else a one-line error.

    Paths read from files (manifests, spool bundles) are untrusted: an absolute path, a ``..``
    part or a backslash would let them name a file outside the artifact.

    Args:
        rel: the path as found in the file.
        where: the file and field it came from, for the error.
    """
    if (not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel or rel.startswith("/")
            or any(part in ("", ".", "..") for part in rel.split("/"))):
        raise AugPaintError(f"{where}: path {str(rel)[:200]!r} leaves its folder (absolute or '..'); refusing it")
    return rel


def _local(uri: str | Path) -> Path:
    """The local path of a plain path or ``file://`` URI."""
    if isinstance(uri, Path):
        return uri
    if uri.startswith("file://"):
        parts = urllib.parse.urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise AugPaintError(f"{uri}: file:// URI with a remote host is not supported")
        return Path(urllib.parse.unquote(parts.path))
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", uri):
        raise AugPaintError(f"{uri}: unsupported URI scheme (use s3://bucket/key or a local path)")
    return Path(uri)


def _check_sha(where: str, sha256: str) -> str:
    sha = str(sha256).strip().lower()
    if not _SHA_RE.match(sha):
        raise AugPaintError(f"{where}: invalid sha256 {sha256!r} (expected 64 hex digits)")
    return sha


# ----------------------------------------------------------------------------- client

def _env_endpoint() -> tuple[str, str] | None:
    for var in ENDPOINT_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            return value, var
    return None


def _parse_endpoint(endpoint: str, source: str) -> tuple[str, bool]:
    """``http://host:port`` -> (``host:port``, secure)."""
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise AugPaintError(f"{source}={redact(endpoint)}: S3 endpoint must look like http://host:port or https://host")
    if parts.path.strip("/") or parts.query:
        raise AugPaintError(f"{source}={redact(endpoint)}: S3 endpoint must not contain a path")
    return parts.netloc, parts.scheme == "https"


def _credentials() -> tuple[str | None, str | None, str | None]:
    key = os.environ.get("AWS_ACCESS_KEY_ID") or None
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY") or None
    if bool(key) != bool(secret):
        missing = "AWS_SECRET_ACCESS_KEY" if key else "AWS_ACCESS_KEY_ID"
        raise AugPaintError(f"S3 credentials: {missing} is not set (set both AWS_ACCESS_KEY_ID and "
                            "AWS_SECRET_ACCESS_KEY)")
    if not key and os.environ.get(ANONYMOUS_ENV, "") != "1":
        # Unsigned requests would silently read (or write) whatever a public bucket allows.
        raise AugPaintError("S3 credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set (set "
                            f"{ANONYMOUS_ENV}=1 to send anonymous requests on purpose)")
    return key, secret, os.environ.get("AWS_SESSION_TOKEN") or None


def _endpoint_url(endpoint: str | None) -> tuple[str, str]:
    """The endpoint URL to use and where it came from (for error messages)."""
    if endpoint:
        return endpoint, "endpoint"
    found = _env_endpoint()
    if found is None:
        raise AugPaintError("S3 endpoint not configured: set AUGPAINT_S3_ENDPOINT "
                            "(e.g. http://127.0.0.1:9000) or AWS_ENDPOINT_URL")
    return found


def _make_client(url: str, source: str) -> minio.Minio:
    netloc, secure = _parse_endpoint(url, source)
    key, secret, token = _credentials()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    cache_key = (netloc, secure, key, secret, token, region)
    with _clients_lock:
        cli = _clients.get(cache_key)
        if cli is None:
            # retries=False: our own loop in _s3_call is the only retry; urllib3's
            # default would retry silently and make a dead endpoint hang for minutes.
            http = urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S),
                retries=False, maxsize=10, cert_reqs="CERT_REQUIRED",
                ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where())
            cli = minio.Minio(netloc, access_key=key, secret_key=secret, session_token=token,
                              secure=secure, region=region, http_client=http)
            _clients[cache_key] = cli
    return cli


def client(endpoint: str | None = None) -> minio.Minio:
    """A ``minio.Minio`` client for the endpoint, cached per (endpoint, credentials).

    Args:
        endpoint: ``http(s)://host:port``; default from the environment (see module doc).
    """
    return _make_client(*_endpoint_url(endpoint))


def _client_for(uri: str) -> tuple[minio.Minio, str]:
    """Client and endpoint URL for an s3:// URI; configuration errors name the URI."""
    try:
        url, source = _endpoint_url(None)
        return _make_client(url, source), redact(url.rstrip("/"))
    except AugPaintError as err:
        raise AugPaintError(f"{uri}: {err}") from None


# ----------------------------------------------------------------------------- retries and errors

def _retries() -> int:
    raw = os.environ.get("AUGPAINT_S3_RETRIES", "").strip()
    try:
        n = int(raw) if raw else int(RETRIES)
    except ValueError:
        raise AugPaintError(f"AUGPAINT_S3_RETRIES={raw}: not an integer") from None
    return max(1, n)


def _backoff() -> float:
    raw = os.environ.get("AUGPAINT_S3_BACKOFF_S", "").strip()
    try:
        return max(0.0, float(raw) if raw else float(BACKOFF_S))
    except ValueError:
        raise AugPaintError(f"AUGPAINT_S3_BACKOFF_S={raw}: not a number") from None


def _reason(err: BaseException) -> str:
    """One short line saying why a connection failed."""
    if isinstance(err, urllib3.exceptions.ConnectTimeoutError) and \
            not isinstance(err, urllib3.exceptions.NewConnectionError):
        return f"connect timed out after {CONNECT_TIMEOUT_S:g} s"
    if isinstance(err, urllib3.exceptions.ReadTimeoutError):
        return f"read timed out after {READ_TIMEOUT_S:g} s"
    text = str(err)
    # urllib3 prefixes "HTTPConnection(host=..., port=...): "; the endpoint is already in our message.
    for marker in ("Failed to establish a new connection: ", "Failed to resolve "):
        if marker in text:
            text = text[text.index(marker) + (len(marker) if marker.endswith(": ") else 0):]
            break
    text = " ".join(text.split())[:200]
    return text or type(err).__name__


def _status(err: BaseException) -> int | None:
    if isinstance(err, S3Error):
        return getattr(err.response, "status", None)
    if isinstance(err, ServerError):
        return err.status_code
    if isinstance(err, InvalidResponseError):
        return getattr(err, "_code", None)  # minio keeps the HTTP status only here
    return None


def _s3_error(uri: str, endpoint: str, err: S3Error) -> AugPaintError:
    """Translate a final (non-retried) S3 error into a one-line AugPaintError."""
    code = err.code or ""
    if code == "NoSuchBucket":
        return AugPaintError(f"{uri}: not found (bucket {err.bucket_name or split_s3(uri)[0]!r} does not exist "
                             f"at {endpoint})")
    if code in _NOT_FOUND or _status(err) == 404:
        return AugPaintError(f"{uri}: not found")
    if code in _AUTH or _status(err) == 403:
        if not os.environ.get("AWS_ACCESS_KEY_ID"):
            hint = "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are not set"
        else:
            hint = "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        return AugPaintError(f"{uri}: access denied by S3 endpoint {endpoint} ({code or 'HTTP 403'}): {hint}")
    return AugPaintError(f"{uri}: S3 endpoint {endpoint} refused the request ({code}: {err.message})")


def _s3_call(uri: str, endpoint: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` with retries on connection errors and 5xx/SlowDown; translate errors.

    Args:
        uri: the URI the call concerns (starts every error message).
        endpoint: endpoint URL, for error messages.
        fn: the S3 work; it must be safe to run again from the start.
    """
    attempts, backoff = _retries(), _backoff()
    unreachable, last = True, ""
    for attempt in range(attempts):
        try:
            return fn()
        except S3Error as err:
            status = _status(err) or 0
            if err.code not in _TRANSIENT and status < 500:
                raise _s3_error(uri, endpoint, err) from err
            unreachable, last = False, f"HTTP {status} {err.code}"
        except (ServerError, InvalidResponseError) as err:
            status = _status(err) or 0
            if status < 500:
                raise AugPaintError(f"{uri}: unexpected response from S3 endpoint {endpoint} "
                                    f"(HTTP {status}; is it an S3 server?)") from err
            unreachable, last = False, f"HTTP {status}"
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, ConnectionError) as err:
            unreachable, last = True, _reason(err)
        except ValueError as err:
            # minio validates names and arguments with ValueError.
            raise AugPaintError(f"{uri}: {err}") from err
        if attempt + 1 < attempts:
            time.sleep(backoff * 2 ** attempt)
    what = "unreachable" if unreachable else "kept failing"
    raise AugPaintError(f"{uri}: S3 endpoint {endpoint} {what} after {attempts} attempts ({last})")


def _local_error(path: str | Path, err: OSError) -> AugPaintError:
    if isinstance(err, FileNotFoundError):
        return AugPaintError(f"{path}: not found")
    if isinstance(err, IsADirectoryError):
        return AugPaintError(f"{path}: is a directory, expected a file")
    if isinstance(err, PermissionError):
        return AugPaintError(f"{path}: permission denied")
    return AugPaintError(f"{path}: {err.strerror or err}")


# ----------------------------------------------------------------------------- reads

def read_bytes(uri: str) -> bytes:
    """The whole content of an object or local file.

    Args:
        uri: ``s3://bucket/key`` or a local path.
    """
    if not is_s3(uri):
        try:
            return _local(uri).read_bytes()
        except OSError as err:
            raise _local_error(uri, err) from None
    bucket, key = split_s3(uri)
    cli, endpoint = _client_for(uri)

    def get() -> bytes:
        resp = cli.get_object(bucket, key)
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    return _s3_call(uri, endpoint, get)


def read_range(uri: str, offset: int, length: int) -> bytes:
    """Exactly ``length`` bytes from ``offset``; a range past the end is an error.

    Args:
        uri: ``s3://bucket/key`` or a local path.
        offset: first byte, >= 0.
        length: number of bytes, >= 0.
    """
    if offset < 0 or length < 0:
        raise AugPaintError(f"{uri}: invalid byte range (offset={offset}, length={length})")
    if length == 0:
        return b""  # minio treats length=0 as "to the end"
    if not is_s3(uri):
        try:
            with open(_local(uri), "rb") as f:
                f.seek(offset)
                data = f.read(length)
        except OSError as err:
            raise _local_error(uri, err) from None
    else:
        bucket, key = split_s3(uri)
        cli, endpoint = _client_for(uri)

        def get() -> bytes:
            resp = cli.get_object(bucket, key, offset=offset, length=length)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        try:
            data = _s3_call(uri, endpoint, get)
        except AugPaintError as err:
            if isinstance(err.__cause__, S3Error) and err.__cause__.code == "InvalidRange":
                data = b""
            else:
                raise
    if len(data) != length:
        raise AugPaintError(f"{uri}: byte range {offset}..{offset + length} is past the end of the object "
                            f"(got {len(data)} of {length} bytes)")
    return data


def exists(uri: str) -> bool:
    """True if the object / file exists, or if it is a folder (a prefix with objects under it).

    Args:
        uri: ``s3://bucket[/key]`` or a local path.
    """
    if not is_s3(uri):
        return _local(uri).exists()
    bucket, key = split_s3(uri)
    cli, endpoint = _client_for(uri)

    def check() -> bool:
        if not key:
            return cli.bucket_exists(bucket)
        if not key.endswith("/"):
            try:
                cli.stat_object(bucket, key)
                return True
            except S3Error as err:
                if err.code not in _NOT_FOUND:
                    raise
                if err.code == "NoSuchBucket":
                    return False
        # Folder semantics, as for a local directory.
        for _ in cli.list_objects(bucket, prefix=key.rstrip("/") + "/"):
            return True
        return False

    try:
        return _s3_call(uri, endpoint, check)
    except AugPaintError as err:
        if isinstance(err.__cause__, S3Error) and err.__cause__.code in _NOT_FOUND:
            return False
        raise


def _walk(prefix_uri: str, recursive: bool = True) -> list[tuple[str, str]]:
    """Sorted ``(uri, relative path)`` pairs under a folder-like prefix."""
    prefix_uri = str(prefix_uri)
    if not is_s3(prefix_uri):
        root = _local(prefix_uri)
        if not root.is_dir():
            return []
        try:
            if recursive:
                found = [(p.relative_to(root).as_posix(), False) for p in root.rglob("*") if p.is_file()]
            else:
                found = [(p.name, p.is_dir()) for p in root.iterdir()]
        except OSError as err:
            raise _local_error(prefix_uri, err) from None
        return sorted((join(prefix_uri, rel) + ("/" if is_dir else ""), rel + ("/" if is_dir else ""))
                      for rel, is_dir in found)
    bucket, key = split_s3(prefix_uri)
    prefix = key.rstrip("/") + "/" if key.strip("/") else ""
    cli, endpoint = _client_for(prefix_uri)

    def listing() -> list[str]:
        return [o.object_name for o in cli.list_objects(bucket, prefix=prefix or None, recursive=recursive)]

    names = _s3_call(prefix_uri, endpoint, listing)
    out = []
    for name in names:
        rel = name[len(prefix):]
        if not rel or (recursive and name.endswith("/")):
            continue  # folder-marker objects hold no data
        out.append((f"s3://{bucket}/{name}", rel))
    return sorted(out)


def list_uris(prefix_uri: str, recursive: bool = True) -> list[str]:
    """Sorted full URIs under a folder (``s3://b/run1`` lists ``s3://b/run1/...``, not ``run10``).

    Args:
        prefix_uri: ``s3://bucket/folder`` or a local folder; a missing folder gives [].
        recursive: all objects below; otherwise the direct children, subfolders ending in ``/``.
    """
    return [uri for uri, _ in _walk(prefix_uri, recursive)]


# ----------------------------------------------------------------------------- downloads

def _partial(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.partial-{os.getpid()}-{time.monotonic_ns()}"


@contextlib.contextmanager
def _atomic_file(dest: Path) -> Iterator[Path]:
    """A hidden temp file beside ``dest`` that replaces it only if the block succeeds."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _local_error(dest.parent, err) from None
    tmp = _partial(dest)
    try:
        yield tmp
        os.replace(tmp, dest)
    except OSError as err:
        raise _local_error(dest, err) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def download(uri: str, dest: str | Path, sha256: str | None = None) -> Path:
    """Copy an object or local file to ``dest`` atomically, checking its sha256.

    Without ``sha256`` the ``x-amz-meta-sha256`` recorded by :func:`upload_file` is
    checked when present. On a mismatch nothing is left at ``dest``.

    Args:
        uri: ``s3://bucket/key`` or a local path.
        dest: local file to write (parents are created; an existing file is replaced).
        sha256: expected hex digest, or None.
    """
    dest = Path(dest)
    expected = _check_sha(str(uri), sha256) if sha256 else None
    with _atomic_file(dest) as tmp:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            cli, endpoint = _client_for(uri)

            def fetch() -> tuple[str, str | None]:
                resp = cli.get_object(bucket, key)
                try:
                    h = hashlib.sha256()
                    with open(tmp, "wb") as f:  # "wb": a retry starts the file afresh
                        for block in resp.stream(CHUNK):
                            h.update(block)
                            f.write(block)
                    return h.hexdigest(), resp.headers.get(f"x-amz-meta-{SHA256_META}")
                finally:
                    resp.close()
                    resp.release_conn()

            got, recorded = _s3_call(uri, endpoint, fetch)
            if expected is None and recorded:
                expected = recorded.strip().lower()
        else:
            got = _copy_hashing(_local(uri), tmp, uri)
        if expected is not None and got != expected:
            raise AugPaintError(f"{uri}: sha256 mismatch (expected {expected}, got {got})")
    return dest


def _copy_hashing(src: Path, dst: Path, where: str | Path) -> str:
    """Copy ``src`` to ``dst``, returning the sha256 of the bytes copied."""
    h = hashlib.sha256()
    try:
        fin = open(src, "rb")
    except OSError as err:
        raise _local_error(where, err) from None
    with fin, open(dst, "wb") as fout:
        while block := fin.read(CHUNK):
            h.update(block)
            fout.write(block)
    shutil.copymode(src, dst)
    return h.hexdigest()


def _fill_dir(items: list[tuple[str, str]], dest: Path) -> Path:
    """Download ``(uri, rel)`` items into a hidden temp folder, then rename it to ``dest``."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _local_error(dest.parent, err) from None
    tmp = _partial(dest)
    tmp.mkdir()
    try:
        root = tmp.resolve()
        for uri, rel in items:
            target = (tmp / rel).resolve()
            if root not in target.parents:
                raise AugPaintError(f"{uri}: object name escapes the destination folder")
            download(uri, target)
        if dest.exists() or dest.is_symlink():
            # Move the old copy aside first so dest is never missing pieces of both.
            old = dest.parent / f".{dest.name}.old-{os.getpid()}-{time.monotonic_ns()}"
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
        else:
            os.replace(tmp, dest)
    except OSError as err:
        raise _local_error(dest, err) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def download_dir(prefix_uri: str, dest: str | Path) -> Path:
    """Copy every object under a folder-like prefix to ``dest``, atomically.

    Args:
        prefix_uri: ``s3://bucket/folder`` or a local folder.
        dest: local folder; replaced if it exists, and only once everything arrived.
    """
    items = _walk(prefix_uri, recursive=True)
    if not items:
        raise AugPaintError(f"{prefix_uri}: not found (no objects under this prefix)")
    return _fill_dir(items, Path(dest))


def cached_copy(uri: str, sha256: str, cache_dir: str | Path | None = None) -> Path:
    """Local path of a verified copy of ``uri``, from a content-addressed cache.

    A second call for the same sha256 does no network I/O. A local ``uri`` is
    returned as is.

    Args:
        uri: ``s3://bucket/key`` or a local path.
        sha256: expected hex digest; it keys the cache.
        cache_dir: cache root; default ``$AUGPAINT_CACHE`` or ``~/.cache/augpaint``.
    """
    if not is_s3(uri):
        path = _local(uri)
        if not path.is_file():
            raise AugPaintError(f"{uri}: not found")
        return path
    sha = _check_sha(uri, sha256)
    root = Path(cache_dir or os.environ.get("AUGPAINT_CACHE") or Path.home() / ".cache" / "augpaint")
    # Keep the object's file name: readers such as nibabel go by the extension.
    name = split_s3(uri)[1].rstrip("/").rsplit("/", 1)[-1] or "object"
    path = root / "sha256" / sha[:2] / sha / name
    if path.is_file():
        return path
    return download(uri, path, sha256=sha)


# ----------------------------------------------------------------------------- uploads

def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                h.update(block)
    except OSError as err:
        raise _local_error(path, err) from None
    return h.hexdigest()


def _existing(src: str | Path, folder: bool) -> Path:
    """``src`` as a Path, if it is an existing file (or folder)."""
    src = Path(src)
    if not (src.is_dir() if folder else src.is_file()):
        what = "directory" if folder else "file"
        raise AugPaintError(f"{src}: not found" if not src.exists() else f"{src}: not a {what}")
    return src


def upload_file(src: str | Path, uri: str) -> str:
    """Upload (or, for a local ``uri``, copy atomically) one file; return its sha256.

    On S3 the digest is also stored as ``x-amz-meta-sha256``; the object only
    appears once the whole upload has completed.

    Args:
        src: local file.
        uri: destination ``s3://bucket/key`` or local path.
    """
    src = _existing(src, folder=False)
    if not is_s3(uri):
        with _atomic_file(_local(uri)) as tmp:
            sha = _copy_hashing(src, tmp, src)
        return sha
    bucket, key = split_s3(uri)
    if not key or key.endswith("/"):
        raise AugPaintError(f"{uri}: destination must name an object, not a bucket or folder")
    sha = _sha256_file(src)
    cli, endpoint = _client_for(uri)
    _s3_call(uri, endpoint, lambda: cli.fput_object(bucket, key, str(src), metadata={SHA256_META: sha}))
    return sha


def _upload_order(rel: str) -> tuple:
    parts = rel.split("/")
    # Markers last, the top-level one last of all.
    return (parts[-1] == MARKER_FILE, -len(parts), rel)


def upload_dir(src: str | Path, uri: str) -> list[str]:
    """Upload every file under a local folder to ``uri``; return the destination URIs, sorted.

    Files named ``artifact.json`` go last, and a stale one at the destination is
    removed first, so an interrupted upload never looks like a complete artifact.
    A local ``uri`` is filled atomically as by :func:`download_dir`.

    Args:
        src: local folder.
        uri: destination ``s3://bucket/folder`` or local folder.
    """
    src = _existing(src, folder=True)
    items = _walk(str(src), recursive=True)
    if not is_s3(uri):
        _fill_dir(items, _local(uri))
        return sorted(join(uri, rel) for _, rel in items)
    bucket, key = split_s3(uri)
    cli, endpoint = _client_for(uri)
    for _, rel in items:
        if rel.split("/")[-1] == MARKER_FILE:
            marker_key = split_s3(join(uri, rel))[1]
            _s3_call(join(uri, rel), endpoint, lambda k=marker_key: cli.remove_object(bucket, k))
    done = []
    for path_str, rel in sorted(items, key=lambda item: _upload_order(item[1])):
        target = join(uri, rel)
        upload_file(path_str, target)
        done.append(target)
    return sorted(done)
