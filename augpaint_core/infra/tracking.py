"""MLflow tracking: one parent run per pipeline run, one nested child per stage.

The embedded default is ``sqlite:///mlflow.db`` in the working folder;
``MLFLOW_TRACKING_URI`` overrides it. An empty URI (or ``none``) turns tracking off.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import AugPaintError

DEFAULT_URI = "sqlite:///mlflow.db"
# Fail in seconds, not minutes, when a tracking server is down.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def resolve_uri(uri: str | None) -> str:
    """The tracking URI to use: explicit, else $MLFLOW_TRACKING_URI, else the embedded sqlite file."""
    if uri is None or uri == "":
        uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # Make relative sqlite paths absolute: KFP tasks run in other working folders.
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment_id(client, uri: str, name: str) -> str:
    try:
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if uri.startswith("sqlite:///"):
            # Keep artifacts beside the database, wherever the process runs.
            location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
        return client.create_experiment(name, artifact_location=location)
    except Exception as err:
        raise _unreachable(uri, err) from None


class TrackingAccessDenied(AugPaintError):
    """MLflow answered 401/403: a setup error, never spooled."""


def _denied(uri: str, err: BaseException) -> AugPaintError | None:
    """An HTTP 401/403 answer as a one-line access error (None for anything else).

    A 403 comes from an Istio sidecar's RBAC, MLflow's --allowed-hosts or its auth: the server is
    up and refusing us, so spooling would only hide a setup error until every record is stale.
    """
    if isinstance(err, TrackingAccessDenied):
        return err
    code = str(getattr(err, "error_code", "") or "")
    text = str(err)
    m = re.search(r"error code (40[13])\b", text)
    if code not in ("PERMISSION_DENIED", "UNAUTHENTICATED") and not m:
        return None
    status = m.group(1) if m else ("401" if code == "UNAUTHENTICATED" else "403")
    body = re.search(r"Response body: '([^']*)", text)
    why = " ".join((body.group(1) if body else text).split())[:120]
    return TrackingAccessDenied(f"MLflow at {uri}: access denied (HTTP {status}: {why}); nothing was spooled: "
                                "check the server's --allowed-hosts, that its pod has sidecar.istio.io/inject: "
                                "\"false\" (or an AuthorizationPolicy admits pipeline pods), and the credentials")


OFFLINE_PREFIX = "offline-"
SPOOL_ENV = "AUGPAINT_MLFLOW_SPOOL"
SPOOL_RECORDS = "records.jsonl"
SPOOL_SYNCED = "synced.json"
log = logging.getLogger(__name__)


def spool_uri() -> str:
    """Where runs logged while MLflow is down are kept: $AUGPAINT_MLFLOW_SPOOL (a folder or s3:// prefix)."""
    return os.environ.get(SPOOL_ENV) or str(Path.home() / ".cache" / "augpaint" / "mlflow-spool")


class Spool:
    """Tracking records kept while the server is unreachable, flushed as one bundle under :func:`spool_uri`.

    A bundle is ``<spool>/<time>-<id>/``: the files it refers to (images, artifacts) and
    ``records.jsonl``, written last, so :func:`sync_spool` never replays half a bundle.
    """

    def __init__(self, uri: str | None = None):
        self.uri = uri or spool_uri()
        self.bundle = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        self.records: list[dict] = []
        self.down = False
        self._tmp: Path | None = None

    def went_down(self, err: BaseException) -> None:
        denied = _denied(os.environ.get("MLFLOW_TRACKING_URI", "the tracking server"), err)
        if denied is not None:  # refused, not down: fail loudly instead of spooling
            raise denied from None
        if not self.down:
            log.warning("MLflow unreachable (%s: %s); keeping tracking records in %s until it is back",
                        type(err).__name__, str(err).splitlines()[0][:200] if str(err) else "", self.uri)
        self.down = True

    def add(self, run_id: str, record: dict) -> None:
        self.records.append({"run": run_id, **record})

    def _folder(self) -> Path:
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="augpaint-spool-"))
        return self._tmp

    def keep_image(self, image: np.ndarray, name: str) -> str:
        from PIL import Image

        rel = f"files/{len(self.records):05d}-{Path(name).name}"
        (self._folder() / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(image)).save(self._folder() / rel, format="PNG")
        return rel

    def keep_file(self, path: str | Path) -> str:
        rel = f"files/{len(self.records):05d}-{Path(path).name}"
        (self._folder() / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, self._folder() / rel)
        return rel

    def flush(self) -> str | None:
        """Write the bundle (if anything was kept) and return its URI."""
        from . import storage

        if not self.records:
            return None
        folder = self._folder()
        (folder / SPOOL_RECORDS).write_text("".join(json.dumps(r) + "\n" for r in self.records))
        local = str(Path.home() / ".cache" / "augpaint" / "mlflow-spool")
        for root in dict.fromkeys([self.uri, local]):  # the spool's store down too: keep them on local disk
            dest = storage.join(root, self.bundle)
            try:
                if (folder / "files").is_dir():
                    storage.upload_dir(folder / "files", storage.join(dest, "files"))
                storage.upload_file(folder / SPOOL_RECORDS, storage.join(dest, SPOOL_RECORDS))  # last: commit point
                break
            except AugPaintError as err:
                if root == local:
                    raise
                log.warning("MLflow spool %s unusable (%s); keeping the records in %s", root, err, local)
        shutil.rmtree(folder, ignore_errors=True)
        self._tmp, self.records = None, []
        log.warning("MLflow records kept in %s; replay them with `augpaint sync-tracking` once the server is back",
                    dest)
        return dest


class Tracker:
    """Thin wrapper over one MLflow run (explicit client, no global fluent state).

    Each call that fails to reach the server is kept in a :class:`Spool` instead
    (when one is attached), so a stage finishes while MLflow is down and its
    metrics are replayed by :func:`sync_spool` later.
    """

    def __init__(self, client, run_id: str, parent: "Tracker | None" = None, spool: "Spool | None" = None):
        self.client, self.run_id, self.parent, self.spool = client, run_id, parent, spool

    @property
    def offline(self) -> bool:
        return self.run_id.startswith(OFFLINE_PREFIX)

    def _do(self, record: dict, fn, keep=None) -> None:
        """Send ``record`` with ``fn``; on failure (or offline) spool it, with ``keep()``'s files added."""
        if self.spool is None or not (self.offline or self.spool.down):
            try:
                fn()
                return
            except Exception as err:  # noqa: BLE001 - any failure to log: keep the record, go on
                if self.spool is None:
                    raise
                self.spool.went_down(err)
        if keep is not None:
            record.update(keep())
        self.spool.add(self.run_id, record)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]

        def send() -> None:
            for i in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[i:i + 100])

        self._do({"op": "params", "params": {p.key: p.value for p in items}}, send)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric
        import time

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if np.isfinite(v)]

        def send() -> None:
            for i in range(0, len(items), 500):
                self.client.log_batch(self.run_id, metrics=items[i:i + 500])

        self._do({"op": "metrics", "metrics": [[m.key, m.value, m.timestamp, m.step] for m in items]}, send)

    def log_image(self, image: np.ndarray, name: str) -> None:
        self._do({"op": "image", "name": name}, lambda: self.client.log_image(self.run_id, image, artifact_file=name),
                 keep=lambda: {"file": self.spool.keep_image(image, name)})

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self._do({"op": "artifact", "folder": folder}, lambda: self.client.log_artifact(self.run_id, str(path), folder),
                 keep=lambda: {"file": self.spool.keep_file(path)})

    def set_tags(self, tags: dict[str, str]) -> None:
        def send() -> None:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, v)

        self._do({"op": "tags", "tags": dict(tags)}, send)

    def terminate(self, status: str) -> None:
        self._do({"op": "terminate", "status": status},
                 lambda: self.client.set_terminated(self.run_id, status=status))


def _unreachable(uri: str, err: BaseException) -> AugPaintError:
    denied = _denied(uri, err)
    if denied is not None:
        return denied
    return AugPaintError(f"MLflow at {uri}: unreachable or failing ({type(err).__name__}: "
                         f"{(str(err).splitlines() or [''])[0][:200]})")


def start_parent_run(uri: str | None, experiment: str, run_name: str, tags: dict[str, str] | None = None,
                     params: dict[str, Any] | None = None, *, offline_ok: bool = False) -> str:
    """Create the pipeline's parent run (or reuse $MLFLOW_RUN_ID) and return its id.

    Args:
        uri: tracking URI.
        experiment: experiment name (created if missing).
        run_name: the parent run's name (the KFP run name).
        tags: e.g. ``kfp.pipeline_run_id`` and ``kfp.pipeline_run_url``.
        params: the flattened config, logged on the parent for the compare view.
        offline_ok: if the server is unreachable, spool the run and return an ``offline-`` id
            (replayed by :func:`sync_spool`) instead of failing.
    """
    uri = resolve_uri(uri)
    client = _client(uri)
    try:
        if os.environ.get("MLFLOW_RUN_ID"):
            run_id = os.environ["MLFLOW_RUN_ID"]
        else:
            exp = _experiment_id(client, uri, experiment)
            run_id = client.create_run(exp, run_name=run_name, tags=tags or {}).info.run_id
    except AugPaintError as err:
        if not offline_ok:
            raise
        spool = Spool()
        spool.went_down(err)
        run_id = OFFLINE_PREFIX + uuid.uuid4().hex
        spool.add(run_id, {"op": "create", "experiment": experiment, "name": run_name, "tags": tags or {},
                           "parent": ""})
        if params:
            Tracker(client, run_id, spool=spool).log_params(params)
        spool.flush()
        return run_id
    if params:
        spool = Spool()
        Tracker(client, run_id, spool=spool if offline_ok else None).log_params(params)
        spool.flush()
    return run_id


def close_parent_runs(uri: str | None, experiment: str, kfp_run_id: str, status: str = "FINISHED", *,
                      offline_ok: bool = False, tags: dict[str, str] | None = None) -> int:
    """Close the parent run(s) tagged with this KFP run id; returns how many were closed.

    Records spooled while the server was down are replayed first. With ``offline_ok`` an
    unreachable server spools the close itself (-1 is returned).

    Args:
        uri: tracking URI.
        experiment: experiment of the parent run.
        kfp_run_id: the ``kfp.pipeline_run_id`` tag value.
        status: FINISHED, FAILED or KILLED.
        offline_ok: spool instead of failing when the server is unreachable.
        tags: set on each closed run first (e.g. ``kfp.final_state``; not kept when spooled).
    """
    uri = resolve_uri(uri)
    client = _client(uri)
    try:
        sync_spool(uri)
        exp = client.get_experiment_by_name(experiment)
        runs = [] if exp is None else client.search_runs(
            [exp.experiment_id], filter_string=f"tags.`kfp.pipeline_run_id` = '{kfp_run_id}'")
        for r in runs:
            if r.info.status == "RUNNING":
                for k, v in (tags or {}).items():
                    client.set_tag(r.info.run_id, k, v)
                client.set_terminated(r.info.run_id, status=status)
        return len(runs)
    except Exception as err:  # noqa: BLE001
        if not offline_ok or _denied(uri, err) is not None:
            raise _unreachable(uri, err) from None
        spool = Spool()
        spool.went_down(err)
        spool.add("", {"op": "close", "experiment": experiment, "kfp_run_id": kfp_run_id, "status": status})
        spool.flush()
        return -1


@contextlib.contextmanager
def stage_run(uri: str | None, parent_run_id: str | None, stage: str, params: dict[str, Any] | None = None
              ) -> Iterator[Tracker | None]:
    """A nested child run for one stage; yields ``None`` when tracking is off.

    When the server cannot be reached (at the start or midway), the stage still runs:
    its records go to a :class:`Spool`, flushed at the end, and :func:`sync_spool`
    replays them later under the right parent.

    Args:
        uri: tracking URI ("none" disables tracking).
        parent_run_id: the pipeline's parent run (maybe an ``offline-`` id); empty makes a top-level run.
        stage: stage name, used as run name.
        params: flattened config logged as params.
    """
    if uri in ("none", "off"):
        yield None
        return
    uri = resolve_uri(uri)
    client = _client(uri)
    spool = Spool()
    tags = {"augpaint.stage": stage}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run_id = ""
    missing_parent = False
    if not (parent_run_id or "").startswith(OFFLINE_PREFIX):
        try:
            exp = None
            if parent_run_id:
                try:
                    exp = client.get_run(parent_run_id).info.experiment_id
                except Exception as err:  # noqa: BLE001
                    if not _is_not_found(err):
                        raise
                    missing_parent = True
            elif not missing_parent:
                exp = _experiment_id(client, uri, "augpaint")
            if exp is not None:
                run_id = client.create_run(exp, run_name=stage, tags=tags).info.run_id
        except Exception as err:  # noqa: BLE001 - unreachable, 5xx, timeouts: go offline
            spool.went_down(err)
    if missing_parent:
        raise AugPaintError(f"MLflow at {uri}: parent run {parent_run_id} not found")
    if not run_id:
        run_id = OFFLINE_PREFIX + uuid.uuid4().hex
        spool.add(run_id, {"op": "create", "experiment": "augpaint", "name": stage, "tags": tags,
                           "parent": parent_run_id or ""})
    parent = Tracker(client, parent_run_id, spool=spool) if parent_run_id else None
    tracker = Tracker(client, run_id, parent, spool=spool)
    if params:
        tracker.log_params(params)
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    finally:
        tracker.terminate(status)
        spool.flush()


def _is_not_found(err: BaseException) -> bool:
    code = getattr(err, "error_code", "") or ""
    return "RESOURCE_DOES_NOT_EXIST" in str(code) or "RESOURCE_DOES_NOT_EXIST" in str(err)


def pending_bundles(spool: str | None = None) -> list[str]:
    """Spooled bundles not yet replayed, oldest first."""
    from . import storage

    root = spool or spool_uri()
    out = []
    for uri in storage.list_uris(root, recursive=False):
        if not uri.endswith("/") and not Path(uri).is_dir():
            continue
        b = uri.rstrip("/")
        if storage.exists(storage.join(b, SPOOL_RECORDS)) and not storage.exists(storage.join(b, SPOOL_SYNCED)):
            out.append(b)
    return sorted(out)


def _replay(client, uri: str, bundle: str, rec: dict, ids: dict[str, str], made: dict[str, str], tmp: str) -> None:
    """Send one spooled record to the server (offline run ids mapped through ``ids``)."""
    from mlflow.entities import Metric, Param

    from . import storage

    b = bundle
    run = ids.get(rec["run"], rec["run"])
    op = rec["op"]
    if op == "create":
        parent = ids.get(rec["parent"], rec["parent"])
        tags = dict(rec["tags"])
        if parent:
            tags["mlflow.parentRunId"] = parent
            exp = client.get_run(parent).info.experiment_id
        else:
            exp = _experiment_id(client, uri, rec["experiment"])
        new = client.create_run(exp, run_name=rec["name"], tags={**tags, "augpaint.synced": "true"})
        ids[rec["run"]] = made[rec["run"]] = new.info.run_id
    elif op == "params":
        items = [Param(k, v) for k, v in rec["params"].items()]
        for i in range(0, len(items), 100):
            client.log_batch(run, params=items[i:i + 100])
    elif op == "metrics":
        items = [Metric(k, v, ts, st) for k, v, ts, st in rec["metrics"]]
        for i in range(0, len(items), 500):
            client.log_batch(run, metrics=items[i:i + 500])
    elif op == "tags":
        for k, v in rec["tags"].items():
            client.set_tag(run, k, v)
    elif op in ("image", "artifact"):
        local = Path(tmp) / rec["file"]
        storage.download(storage.join(b, rec["file"]), local)
        if op == "image":
            named = Path(tmp) / "named" / Path(rec["name"]).name
            named.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, named)
            folder = str(Path(rec["name"]).parent)
            client.log_artifact(run, str(named), None if folder == "." else folder)
        else:
            named = Path(tmp) / "named" / local.name.split("-", 1)[1]
            named.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, named)
            client.log_artifact(run, str(named), rec["folder"])
    elif op == "terminate":
        client.set_terminated(run, status=rec["status"])
    elif op == "close":
        exp = client.get_experiment_by_name(rec["experiment"])
        if exp is not None:
            for r in client.search_runs([exp.experiment_id], filter_string=(
                    f"tags.`kfp.pipeline_run_id` = '{rec['kfp_run_id']}'")):
                if r.info.status == "RUNNING":
                    client.set_terminated(r.info.run_id, status=rec["status"])


def sync_spool(uri: str | None, spool: str | None = None) -> int:
    """Replay spooled tracking records into the server; return how many bundles were replayed.

    Offline runs are created (under their parent, itself mapped if it was offline too),
    their params, metrics, tags, images and artifacts logged with the original steps and
    times, and their final status set. Each replayed bundle gets ``synced.json`` with the
    id mapping, so nothing is replayed twice and nothing is deleted.

    Args:
        uri: tracking URI.
        spool: spool folder or s3:// prefix (default :func:`spool_uri`).
    """
    from . import storage

    root = spool or spool_uri()
    bundles = pending_bundles(root)
    if not bundles:
        return 0
    uri = resolve_uri(uri)
    client = _client(uri)
    ids: dict[str, str] = {}
    for b in storage.list_uris(root, recursive=False):  # mappings made by earlier syncs
        done = storage.join(b.rstrip("/"), SPOOL_SYNCED)
        if storage.exists(done):
            ids.update(json.loads(storage.read_bytes(done)).get("ids", {}))
    for b in bundles:
        made: dict[str, str] = {}
        with tempfile.TemporaryDirectory() as tmp:
            records = [json.loads(line) for line in storage.read_bytes(storage.join(b, SPOOL_RECORDS)).decode()
                       .splitlines() if line.strip()]
            errors = []
            for rec in records:
                try:
                    _replay(client, uri, b, rec, ids, made, tmp)
                except Exception as err:  # noqa: BLE001
                    try:  # the server went away: keep the bundle pending, try again later
                        client.search_experiments(max_results=1)
                    except Exception:  # noqa: BLE001
                        raise _unreachable(uri, err) from None
                    # A record the server refuses for good is noted, so it cannot block later bundles.
                    errors.append({"op": rec.get("op"), "error": f"{type(err).__name__}: {str(err)[:300]}"})
                    log.warning("sync-tracking: %s: record %s refused (%s)", b, rec.get("op"), err)
            marker = Path(tmp) / SPOOL_SYNCED
            marker.write_text(json.dumps({"ids": made, "synced": time.time(), "tracking_uri": uri,
                                          "errors": errors}))
            storage.upload_file(marker, storage.join(b, SPOOL_SYNCED))
    return len(bundles)


# ----------------------------------------------------------------------------- model registry

def register_model(uri: str | None, name: str, folder: str | Path, run_id: str, *, alias: str | None = None,
                   tags: dict[str, str] | None = None) -> int:
    """Log a model artifact folder to a run and register it as a new version of ``name``.

    Args:
        uri: tracking URI (a server; the registry needs one).
        name: registered model name, e.g. ``augpaint-ae``.
        folder: the model artifact folder (with its artifact.json).
        run_id: the run that made it.
        alias: set this alias (e.g. ``current``) to the new version.
        tags: model version tags.

    Returns:
        the new version number.
    """
    uri = resolve_uri(uri)
    client = _client(uri)
    try:
        client.log_artifacts(run_id, str(folder), "model")
        try:
            client.create_registered_model(name)
        except Exception as err:  # noqa: BLE001
            if "RESOURCE_ALREADY_EXISTS" not in str(getattr(err, "error_code", "")) + str(err):
                raise
        source = client.get_run(run_id).info.artifact_uri.rstrip("/") + "/model"
        mv = client.create_model_version(name, source, run_id=run_id, tags=tags or {})
        if alias:
            client.set_registered_model_alias(name, alias, mv.version)
        return int(mv.version)
    except AugPaintError:
        raise
    except Exception as err:  # noqa: BLE001
        raise _unreachable(uri, err) from None


def model_by_alias(uri: str | None, name: str, alias: str):
    """The ModelVersion that ``name@alias`` points at, or None if the model or alias does not exist."""
    uri = resolve_uri(uri)
    client = _client(uri)
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception as err:  # noqa: BLE001
        if _is_not_found(err) or "INVALID_PARAMETER_VALUE" in str(err):
            return None
        raise _unreachable(uri, err) from None


def set_alias(uri: str | None, name: str, alias: str, version: int) -> None:
    """Point ``name@alias`` at ``version``."""
    uri = resolve_uri(uri)
    try:
        _client(uri).set_registered_model_alias(name, alias, str(version))
    except Exception as err:  # noqa: BLE001
        raise _unreachable(uri, err) from None


def download_model(uri: str | None, name: str, alias: str, dest: str | Path) -> Path | None:
    """Download the model folder ``name@alias`` to ``dest`` (atomically); None if there is none.

    Args:
        uri: tracking URI.
        name: registered model name.
        alias: alias, e.g. ``current`` or ``champion``.
        dest: local folder to create.
    """
    import mlflow.artifacts

    uri = resolve_uri(uri)
    mv = model_by_alias(uri, name, alias)
    if mv is None:
        return None
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        got = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(tmp),
                                                       tracking_uri=uri))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(got, dest)
    except AugPaintError:
        raise
    except Exception as err:  # noqa: BLE001
        raise _unreachable(uri, err) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
