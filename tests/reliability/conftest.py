"""Helpers of the reliability table: run the CLI as a separate process and classify how it ended.

``cli`` has a fork server (a fresh interpreter that imported the CLI once) run ``augpaint_core.cli.main``
in a forked child with its stdout/stderr sent to files; an exception that escapes ``main`` is printed the way the
interpreter prints it (``Traceback ...``), so the child ends exactly as ``augpaint ...`` would, without
paying torch's and diffusers' import time once per case. ``cli_subprocess`` runs the real console
entry point for the few cases that must not depend on the fork.

Every case ends in one of (``outcome``):
  ``error``  - exit 2 and exactly one ``augpaint <cmd>: error: ...`` line, no traceback;
  ``ok``     - exit 0, no traceback (the case's own check decides whether the result is right);
  ``traceback`` / ``internal`` / ``other`` - failures.
Set ``AUGPAINT_RELIABILITY_LOG=path`` to append one JSON line per case (the before/after counts).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.startswith("augpaint ") and ": error: " in ln]

    @property
    def outcome(self) -> str:
        if "Traceback (most recent call last)" in self.err:
            return "traceback"
        if "internal error" in self.err:
            return "internal"
        if self.rc == 2 and len(self.error_lines) == 1 and self.err.rstrip().splitlines()[-1] == self.error_lines[0]:
            return "error"
        if self.rc == 0:
            return "ok"
        return "other"


# The fork server: a fresh interpreter that imports the CLI (torch, diffusers) once and forks one child per case.
# Forking the test process itself can deadlock: it holds threads (MLflow and HTTP test servers, torch pools)
# whose locks a forked child inherits locked. The server has no other threads when it forks.
_SERVER_CODE = r"""
import json, logging, os, sys, traceback
import torch
torch.set_num_threads(1)
from augpaint_core.cli import main
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        rc = 1
        try:
            fo = os.open(req["out"], os.O_WRONLY | os.O_CREAT)
            fe = os.open(req["err"], os.O_WRONLY | os.O_CREAT)
            os.dup2(fo, 1)
            os.dup2(fe, 2)
            sys.stdout = open(1, "w", closefd=False)
            sys.stderr = open(2, "w", closefd=False, errors="backslashreplace")
            os.environ.clear()
            os.environ.update(req["env"])
            if req["cwd"]:
                os.chdir(req["cwd"])
            logging.root.handlers[:] = []
            try:
                rc = main(req["args"])
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:
                traceback.print_exc()
                rc = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(rc if isinstance(rc, int) else 1)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
"""
_server: subprocess.Popen | None = None
CASE_TIMEOUT_S = 600


def _fork_server() -> subprocess.Popen:
    global _server
    if _server is None or _server.poll() is not None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
        _server = subprocess.Popen([sys.executable, "-c", _SERVER_CODE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   text=True, env=env, cwd=REPO)
    return _server


def cli(args: list[str], env: dict[str, str | None] | None = None, cwd: str | Path | None = None) -> Result:
    """``augpaint *args`` in a child forked by the fork server; env values of None unset a variable.

    The child gets this process's current environment (with the overrides), as a subprocess would.
    """
    import select

    full = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    for k, v in (env or {}).items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = v
    with tempfile.TemporaryDirectory() as td:
        out_f, err_f = Path(td) / "out", Path(td) / "err"
        server = _fork_server()
        req = {"args": [str(a) for a in args], "env": full, "cwd": str(cwd) if cwd else "", "out": str(out_f),
               "err": str(err_f)}
        server.stdin.write(json.dumps(req) + "\n")
        server.stdin.flush()
        ready, _, _ = select.select([server.stdout], [], [], CASE_TIMEOUT_S)
        if not ready:  # a hung case must fail the test, not the whole run
            server.kill()
            raise AssertionError(f"augpaint {' '.join(req['args'][:2])}: no result after {CASE_TIMEOUT_S} s")
        rc = int(server.stdout.readline())
        res = Result(rc, out_f.read_text(errors="backslashreplace") if out_f.exists() else "",
                     err_f.read_text(errors="backslashreplace") if err_f.exists() else "")
    _log(args, res)
    return res


def cli_subprocess(args: list[str], env: dict[str, str] | None = None, timeout: int = 600) -> Result:
    """The real ``python -m augpaint_core.cli`` in a new interpreter."""
    e = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    p = subprocess.run([sys.executable, "-m", "augpaint_core.cli", *map(str, args)], capture_output=True, text=True,
                       errors="backslashreplace", env=e, timeout=timeout, cwd=REPO)
    res = Result(p.returncode, p.stdout, p.stderr)
    _log(args, res)
    return res


def _log(args: list, res: Result) -> None:
    path = os.environ.get("AUGPAINT_RELIABILITY_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"case": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0],
                                "args": [str(a) for a in args][:2], "outcome": res.outcome, "rc": res.rc,
                                "last": (res.err.strip().splitlines() or [""])[-1][:300]}) + "\n")


def expect_error(res: Result, *names: str) -> str:
    """Assert the one-line error outcome and that the line names each of ``names``; returns the line."""
    assert res.outcome == "error", f"rc={res.rc}\n--- stderr ---\n{res.err[-3000:]}"
    line = res.error_lines[0]
    for n in names:
        assert str(n) in line, f"{n!r} not named in: {line}"
    return line


def expect_ok(res: Result) -> None:
    assert res.outcome == "ok", f"rc={res.rc}\n--- stderr ---\n{res.err[-3000:]}"


def tree_digest(path: Path) -> str:
    """Hash of every file (name and content) below ``path``: 'nothing was changed or deleted'."""
    h = hashlib.sha256()
    for p in sorted(Path(path).rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def copy_art(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def reseal(folder: Path) -> None:
    """Recompute artifact.json's file table after an edit, as an attacker (or a careless tool) would."""
    from augpaint_core.infra.artifacts import ARTIFACT_FILE, sha256_file

    meta = json.loads((folder / ARTIFACT_FILE).read_text())
    files = {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != ARTIFACT_FILE}
    meta["files"] = files
    meta["content_sha256"] = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    (folder / ARTIFACT_FILE).write_text(json.dumps(meta))


def edit_manifest(folder: Path, fn, *, seal: bool = True) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    fn(m)
    (folder / "manifest.json").write_text(json.dumps(m))
    if seal:
        reseal(folder)


@pytest.fixture(scope="session")
def tiny_yaml(tmp_path_factory) -> Path:
    """The tiny test config as a YAML file for the CLI."""
    import yaml

    from tests.conftest import tiny_dict

    p = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    p.write_text(yaml.safe_dump(tiny_dict()))
    return p


@pytest.fixture(scope="session")
def raw_nnunet(tmp_path_factory) -> Path:
    """A small fake nnU-Net raw dataset (NIfTI) to break in many ways."""
    from augpaint_core.data.fakedata import write_fake_dataset

    return Path(write_fake_dataset("nnunet", tmp_path_factory.mktemp("raw") / "raw", num_cases=6, seed=0))
