"""``augpaint run``: execute the compiled pipeline definition locally with kfp.local.

It is the same ``augpaint_pipeline`` a cluster runs; SubprocessRunner runs each
component as a subprocess of this Python environment (use_venv=False).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import sys
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Iterator, TextIO

from augpaint_core.config import AugPaintConfig
from augpaint_core.errors import AugPaintError
from augpaint_core.infra.tracking import resolve_uri
from augpaint_core.stages import RUN_KEY_ENV


ANSI = re.compile(r"\x1b\[[0-9;]*m")
STARTED = re.compile(r"Executing task '([^']+)'")
FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")


class StageLog(io.TextIOBase):
    """Stands in for sys.stdout/stderr while kfp.local runs: every line goes to the log file; a task's start and
    end become one summary line per stage on the terminal.

    kfp.local prints its own messages and the tasks' streamed output through ``print`` and ``logging`` on
    sys.stdout (warnings on sys.stderr), so replacing both objects catches everything.

    Args:
        log: the full log file (kept open while the pipeline runs).
        term: where the summary lines go (the real stdout).
        total: tasks expected (for the progress indicator; ParallelFor iterations may add more).
        tail: log lines kept for the failure message.
        names: task name -> display name (the experiment pipeline's ``s0 k1 train-seg-augpaint``).
    """

    def __init__(self, log: TextIO, term: TextIO, total: int, tail: int = 25,
                 names: dict[str, str] | None = None) -> None:
        super().__init__()
        self.log, self.term, self.total = log, term, max(1, total)
        self.names = names or {}
        self.tail = tail
        self.lines: deque[str] = deque(maxlen=tail)
        self.task_lines: dict[str, deque[str]] = {}  # per task, its last lines (the failure message shows them)
        self.current: str | None = None
        self.started: dict[str, float] = {}
        self.done = 0
        self.finished: set[str] = set()
        self.failed: str | None = None
        self._buf = ""
        self._lock = threading.Lock()  # ParallelFor iterations run in threads

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self.log.write(text)
            self._buf += text
            *lines, self._buf = self._buf.split("\n")
            for line in lines:
                self._line(ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self.log.flush()

    def _line(self, line: str) -> None:
        if m := STARTED.search(line):
            self.started[m.group(1)] = time.time()
            self.current = m.group(1)
            self.task_lines[self.current] = deque(maxlen=self.tail)
        elif m := FINISHED.search(line):
            self.finish(m.group(1), m.group(2))
        if line.strip():
            self.lines.append(line)
            if self.current in self.task_lines:
                self.task_lines[self.current].append(line)

    def finish(self, task: str, status: str) -> None:
        """Print the stage's summary line: progress, name, status, duration."""
        self.done += 1
        self.total = max(self.total, self.done)
        self.finished.add(task)
        secs = time.time() - self.started.pop(task, time.time())
        ok = status.upper() == "SUCCESS"
        if not ok:
            self.failed = task
        self._summary(task, "ok" if ok else "FAILED", f"{secs:7.1f} s")

    def finish_skipped(self) -> None:
        """After a successful run: one line for each task that never ran (a condition was false), so the
        progress ends at n/n and says why."""
        for task in self.names:
            if task not in self.finished:
                self.done += 1
                self.total = max(self.total, self.done)
                self.finished.add(task)
                self._summary(task, "skipped", "(condition false)")

    def _summary(self, task: str, status: str, tail: str) -> None:
        bar = "#" * round(10 * self.done / self.total)
        name = self.names.get(task, task)
        self.term.write(f"[{bar:<10}] {self.done:>2}/{self.total:<2} {name:<28} {status:<7} {tail}\n")
        self.term.flush()

    def running(self) -> list[str]:
        """Tasks started but not finished (the failing one when the pipeline raised)."""
        return list(self.started)


def task_names(func) -> dict[str, str]:
    """Task name -> display name of every executor task in a pipeline (a ParallelFor body counts once)."""
    spec = func.pipeline_spec
    comps = spec.components
    out: dict[str, str] = {}

    def walk(dag) -> None:
        for key, task in dag.tasks.items():
            comp = comps.get(task.component_ref.name)
            if comp is not None and comp.HasField("dag"):
                walk(comp.dag)
            else:
                out[key] = task.task_info.name or key

    walk(spec.root.dag)
    return out


def count_tasks(func) -> int:
    """Executor tasks in a compiled pipeline (a ParallelFor body counts once)."""
    return len(task_names(func))


@contextlib.contextmanager
def stage_lines(log_path: Path, total: int, names: dict[str, str] | None = None) -> Iterator[StageLog]:
    """Send kfp.local's output to ``log_path``; print one line per finished stage instead."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    term = sys.stdout
    root = logging.getLogger()
    # kfp.local swaps the root logger's handlers per task, from threads when tasks run in parallel, and logs
    # outside that swap too (logging.info then installs a handler on the current stderr): a handler bound to
    # this sink can outlive it and fail on the closed log file in the next run ("--- Logging error ---").
    handlers, level = root.handlers[:], root.level
    with open(log_path, "w") as log:
        sink = StageLog(log, term, total, names=names)
        old = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = sink
        try:
            yield sink
        finally:
            sys.stdout, sys.stderr = old
            root.handlers[:] = handlers
            root.setLevel(level)
            if sink._buf:
                sink.write("\n")


def failure_message(sink: StageLog, err: BaseException, log_path: Path, what: str = "pipeline") -> str:
    """The failing stage's last log lines and where the full log is (also printed)."""
    task = sink.failed or (sink.running()[-1] if sink.running() else None)
    if task and not sink.failed:
        sink.finish(task, "FAILURE")
    shown = sink.names.get(task, task) if task else None
    head = str(err).splitlines()[0] if str(err) else type(err).__name__
    lines = sink.task_lines.get(task) if task else None
    print(f"--- last lines of {'stage ' + task if lines else 'the log'} ({log_path}) ---")
    print("\n".join("  " + line.strip() for line in (lines or sink.lines)))
    print("---")
    return f"{what} failed in stage {shown or '?'}: {ANSI.sub('', head)} (full log: {log_path})"


def find_report(pipeline_root: Path, since: float) -> Path:
    """The evaluate task's report folder written by this run."""
    found = [p.parent for p in pipeline_root.rglob("metrics.json")
             if (p.parent / "report.md").is_file() and p.stat().st_mtime >= since]
    if not found:
        raise AugPaintError(f"{pipeline_root}: the pipeline finished but no evaluation report was written")
    return max(found, key=lambda p: p.stat().st_mtime)


def init_local(out: Path) -> tuple[Path, Path]:
    """Make ``out/pipeline_root`` and point kfp.local's subprocess runner at it; returns (out, root)."""
    from kfp import local

    out = out.resolve()
    root = out / "pipeline_root"
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    return out, root


def run_with_stage_lines(func, out: Path, root: Path, title: str, what: str, quiet: bool, **params) -> Path:
    """Run a pipeline function through kfp.local with one line per stage; the full log goes to a file.

    Tasks find the MLflow parent run by a run key (on a cluster: the pod's run-id label); subprocess tasks
    inherit it from this process's environment, so it is set for the run and restored afterwards.

    Args:
        func: the pipeline function (kfp.local must be initialised).
        out: run folder (the log is ``out/pipeline.log``).
        root: the pipeline root (named in the failure message).
        title: the header's first words, e.g. ``augpaint run``.
        what: the failure message's subject, e.g. ``expansion pipeline``.
        quiet: do not print the header.
        params: the pipeline's parameters.

    Returns:
        the log's path.
    """
    log_path = out / "pipeline.log"
    if not quiet:
        print(f"{title}: {count_tasks(func)} stages; full log: {log_path}")
    old_key = os.environ.get(RUN_KEY_ENV)
    os.environ[RUN_KEY_ENV] = f"local-{uuid.uuid4().hex}"
    try:
        with stage_lines(log_path, count_tasks(func), task_names(func)) as sink:
            try:
                func(**params)
                err = None
                sink.finish_skipped()
            except RuntimeError as e:
                err = e
    finally:
        if old_key is None:
            os.environ.pop(RUN_KEY_ENV, None)
        else:
            os.environ[RUN_KEY_ENV] = old_key
    if err is not None:
        raise AugPaintError(failure_message(sink, err, log_path, what) + f"; artifacts in {root}") from None
    return log_path


def run_local(cfg: AugPaintConfig, out: Path, tracking_uri: str | None = None, *, quiet: bool = False) -> dict:
    """Run the whole pipeline through kfp.local.

    Args:
        cfg: validated config.
        out: run folder; artifacts go under ``out/pipeline_root``.
        tracking_uri: MLflow URI (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).
        quiet: do not print the summary.

    Returns:
        the evaluation metrics, plus ``report_dir`` and ``tracking_uri``.
    """
    from pipelines.augpaint_pipeline import build_pipeline

    out, root = init_local(out)
    uri = tracking_uri if tracking_uri == "none" else resolve_uri(tracking_uri)
    t0 = time.time()
    func = build_pipeline(cfg)  # built for this config, so inpaint.num_shards fans out locally too
    log_path = run_with_stage_lines(func, out, root, "augpaint run", "pipeline", quiet, config_yaml=cfg.to_yaml(),
                                    tracking_uri=uri, experiment=cfg.tracking.experiment)
    elapsed = time.time() - t0
    report = find_report(root, t0)
    metrics = json.loads((report / "metrics.json").read_text())
    metrics.update(report_dir=str(report), tracking_uri=uri, elapsed_s=elapsed, log=str(log_path))
    if not quiet:
        print("\n" + (report / "report.md").read_text())
        print(f"Pipeline finished in {elapsed:.0f} s.")
        print(f"Artifacts:      {root}")
        print(f"Report:         {report / 'report.md'}")
        if (report / "report.html").is_file():
            print(f"Report page:    {report / 'report.html'}   (images of the inpainting and segmentations)")
        print(f"Full log:       {log_path}")
        if uri != "none" and uri.startswith("sqlite:"):
            print(f"MLflow UI:      .venv/bin/mlflow ui --backend-store-uri {uri} --port 5000   "
                  f"(then open http://127.0.0.1:5000)")
        elif uri != "none":
            print(f"MLflow:         {uri}")
    return metrics


def run_expansion_local(cfg: AugPaintConfig, incoming: str, versions_uri: str, out: Path,
                        tracking_uri: str | None = None, *, retrain: bool = False, model_prefix: str = "augpaint",
                        experiment: str = "augpaint-expansion", quiet: bool = False) -> dict:
    """Run one round of the expansion pipeline through kfp.local.

    Args:
        cfg: validated config.
        incoming: raw data prefix (s3:// or a folder) where new cases arrive.
        versions_uri: dataset versions root (s3:// or a folder).
        out: run folder; artifacts go under ``out/pipeline_root``.
        tracking_uri: MLflow URI (the registry needs a server or sqlite; default $MLFLOW_TRACKING_URI).
        retrain: retrain AE/LDM instead of reusing the registered ones.
        model_prefix: registered model name prefix.
        experiment: MLflow experiment of the parent run.
        quiet: do not print the summary.

    Returns:
        the latest version's manifest (the one this round published, unless there was nothing new),
        plus ``published`` (bool) and ``pipeline_root``.
    """
    from augpaint_core.infra import versions
    from pipelines.expansion_pipeline import build_pipeline

    out, root = init_local(out)
    uri = resolve_uri(tracking_uri)
    before = versions.latest_version(versions_uri)
    func = build_pipeline(cfg)
    run_with_stage_lines(func, out, root, "augpaint expand", "expansion pipeline", quiet, incoming_uri=incoming,
                         versions_uri=versions_uri, config_yaml=cfg.to_yaml(), retrain=retrain,
                         model_prefix=model_prefix, tracking_uri=uri, experiment=experiment)
    after = versions.latest_version(versions_uri)
    manifest = versions.read_manifest(versions_uri) if after else {}
    result = {**manifest, "published": after != before, "pipeline_root": str(root)}
    if not quiet:
        if result["published"]:
            print(f"expand: published version {after} (parent {manifest['parent']}) at "
                  f"{versions.version_uri(versions_uri, after)}: {json.dumps(manifest['counts'])}")
        else:
            print(f"expand: no new labeled cases in {incoming}; latest version stays {after}")
    return result


def run_experiment_pipeline_local(cfg: AugPaintConfig, out: Path, tracking_uri: str | None = None, *,
                                  splits: int = 3, labeled: list[int] | None = None,
                                  variants: list[str] | None = None, quiet: bool = False) -> Path:
    """Run the experiment pipeline through kfp.local; returns the summarize task's report folder.

    Args:
        cfg: validated base config.
        out: run folder; artifacts go under ``out/pipeline_root``, the log to ``out/pipeline.log``.
        tracking_uri: MLflow URI ('none' disables).
        splits: independent splits.
        labeled: labeled counts (default ``[cfg.data.num_labeled]``).
        variants: experiment variants (default: baseline, randaug, augpaint, cond_augpaint).
        quiet: do not print the table.
    """
    from pipelines.experiment_pipeline import build_pipeline

    func = build_pipeline(cfg, splits=splits, labeled=labeled, variants=variants)  # bad options: nothing written
    out, root = init_local(out)
    uri = tracking_uri if tracking_uri == "none" else resolve_uri(tracking_uri)
    t0 = time.time()
    run_with_stage_lines(func, out, root, "augpaint experiment pipeline", "experiment pipeline", quiet,
                         config_yaml=cfg.to_yaml(), tracking_uri=uri, experiment=cfg.tracking.experiment)
    found = [p.parent for p in root.rglob("table.md") if (p.parent / "results.json").is_file()
             and p.stat().st_mtime >= t0]
    if not found:
        raise AugPaintError(f"{root}: the experiment pipeline finished but wrote no table")
    report = max(found, key=lambda p: p.stat().st_mtime)
    if not quiet:
        print("\n" + (report / "table.md").read_text())
        print(f"Experiment pipeline finished in {time.time() - t0:.0f} s. Table: {report / 'table.md'}")
    return report
