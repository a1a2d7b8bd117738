"""A small recording stand-in for the KFP v2beta1 REST API (kfp.Client needs a live server).

It answers the calls ``augpaint submit / schedule / runs`` make and keeps every
request body, so tests can assert on what a real server would have received.
"""
from __future__ import annotations

import contextlib
import json
import urllib.parse
from http.server import BaseHTTPRequestHandler
from typing import Iterator

from tests.services import local_http_server


class FakeKfp:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict]] = []
        self.experiments: list[dict] = []
        self.runs: list[dict] = []
        self.recurring: list[dict] = []
        self.fail_status: int | None = None  # answer every API call with this status
        # What GET /apis/v2beta1/healthz answers (the KFP API server writes tag_name from its TAG_NAME env).
        self.tag_name = "2.15.0"
        self.multi_user = False


def _handler(state: FakeKfp):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict:
            n = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(n) or b"{}") if n else {}

        def do_GET(self) -> None:  # noqa: N802
            url = urllib.parse.urlparse(self.path)
            q = urllib.parse.parse_qs(url.query)
            state.requests.append(("GET", url.path, {k: v[0] for k, v in q.items()}))
            if url.path.endswith("/healthz"):
                return self._send(200, {"commit_sha": "0123abc", "tag_name": state.tag_name,
                                        "multi_user": state.multi_user})
            if state.fail_status:
                return self._send(state.fail_status, {"error": "denied", "code": 7, "message": "denied"})
            if url.path == "/apis/v2beta1/experiments":
                flt = json.loads(q.get("filter", ["{}"])[0] or "{}")
                names = [p.get("string_value") or p.get("stringValue") for p in flt.get("predicates", [])]
                found = [e for e in state.experiments if not names or e["display_name"] in names]
                return self._send(200, {"experiments": found, "total_size": len(found)} if found else {})
            if url.path == "/apis/v2beta1/runs":
                exp = q.get("experiment_id", [None])[0]
                runs = [r for r in state.runs if exp is None or r["experiment_id"] == exp]
                return self._send(200, {"runs": runs, "total_size": len(runs)})
            return self._send(404, {"error": "not found", "code": 5, "message": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            path = urllib.parse.urlparse(self.path).path
            body = self._body()
            state.requests.append(("POST", path, body))
            if state.fail_status:
                return self._send(state.fail_status, {"error": "denied", "code": 7, "message": "denied"})
            if path == "/apis/v2beta1/experiments":
                exp = {"experiment_id": f"exp-{len(state.experiments) + 1}", "display_name": body["display_name"]}
                state.experiments.append(exp)
                return self._send(200, exp)
            if path == "/apis/v2beta1/runs":
                run = {"run_id": f"run-{len(state.runs) + 1}", "display_name": body.get("display_name"),
                       "experiment_id": body.get("experiment_id"), "state": "PENDING",
                       "created_at": "2026-11-26T03:00:00Z"}
                state.runs.append(run)
                return self._send(200, run)
            if path == "/apis/v2beta1/recurringruns":
                rr = {**body, "recurring_run_id": f"rr-{len(state.recurring) + 1}"}
                state.recurring.append(rr)
                return self._send(200, rr)
            return self._send(404, {"error": "not found", "code": 5, "message": "not found"})

    return Handler


@contextlib.contextmanager
def fake_kfp() -> Iterator[tuple[str, FakeKfp]]:
    """Serve a FakeKfp on a free 127.0.0.1 port; yield (host URL, state)."""
    state = FakeKfp()
    with local_http_server(_handler(state)) as url:
        yield url, state
