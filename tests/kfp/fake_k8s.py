"""A read-only stand-in for the Kubernetes API on 127.0.0.1: serves recorded JSON by GET path.

Lists honour ``labelSelector`` (``k=v[,k=v]``); a missing path answers a 404 Status, a path in
``forbidden`` a 403 Status, as the API server does. Every request is recorded.
"""
from __future__ import annotations

import contextlib
import copy
import json
import urllib.parse
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Iterator

from tests.services import local_http_server

HEALTHY = Path(__file__).with_name("k8s_healthy.json")


class FakeK8s:
    def __init__(self, objects: dict[str, dict]) -> None:
        self.objects = copy.deepcopy(objects)
        self.forbidden: set[str] = set()
        self.requests: list[str] = []


def healthy() -> tuple[dict[str, dict], str]:
    """The recorded healthy namespace (path -> object) and the component image its pods ran."""
    rec = json.loads(HEALTHY.read_text())
    return rec["objects"], rec["image"]


def _status(code: int, reason: str, msg: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": msg,
            "reason": reason, "code": code}


def _handler(state: FakeK8s):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            url = urllib.parse.urlparse(self.path)
            state.requests.append(self.path)
            if url.path in state.forbidden:
                return self._send(403, _status(403, "Forbidden", f"forbidden: GET {url.path}"))
            obj = state.objects.get(url.path)
            if obj is None:
                return self._send(404, _status(404, "NotFound", f"{url.path} not found"))
            sel = urllib.parse.parse_qs(url.query).get("labelSelector", [""])[0]
            if sel and "items" in obj:
                want = dict(kv.split("=", 1) for kv in sel.split(","))
                obj = {**obj, "items": [i for i in obj["items"]
                                        if want.items() <= (i["metadata"].get("labels") or {}).items()]}
            return self._send(200, obj)

    return Handler


def kubeconfig(path: Path, server: str, namespace: str | None = None) -> Path:
    """A kubeconfig whose current context talks to ``server`` (plain HTTP, a dummy token)."""
    import yaml

    ctx = {"cluster": "fake", "user": "u", **({"namespace": namespace} if namespace else {})}
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "dummy"}}], "contexts": [{"name": "fake", "context": ctx}]}))
    return path


@contextlib.contextmanager
def fake_k8s(objects: dict[str, dict]) -> Iterator[tuple[str, FakeK8s]]:
    state = FakeK8s(objects)
    with local_http_server(_handler(state)) as url:
        yield url, state
