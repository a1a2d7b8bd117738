"""Artifact folders: atomic writes and provenance records (the slice dataset format is in ``dataset``).

Every stage writes its output folder through :func:`atomic_dir`: the work goes
into a hidden sibling folder, ``artifact.json`` is written last and the folder is
renamed into place, so a crash never leaves a folder that looks complete.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Iterator


from ..errors import AugPaintError

SCHEMA_VERSION = 1
ARTIFACT_FILE = "artifact.json"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("augpaint", "torch", "diffusers", "monai", "numpy", "nibabel"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def artifact_hash(path: str | Path) -> str:
    """Content hash of an artifact folder, as recorded in its artifact.json."""
    meta = read_artifact_meta(path)
    if not isinstance(meta.get("content_sha256"), str):
        raise AugPaintError(f"{Path(path) / ARTIFACT_FILE}: field 'content_sha256' is missing")
    return meta["content_sha256"]


PARTIAL_TAG = ".partial-"


def _stale_partials(out: Path) -> list[Path]:
    """Hidden work folders of ``out`` (``.NAME.partial-PID-NS``) whose process is gone (killed runs)."""
    stale = []
    for p in out.parent.glob(f".{out.name}{PARTIAL_TAG}*"):
        try:
            pid = int(p.name[len(f".{out.name}{PARTIAL_TAG}"):].split("-")[0])
        except ValueError:
            continue  # not one of ours
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            stale.append(p)
        except PermissionError:
            pass  # alive, another user's
    return stale


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def disk_full_error(folder: Path, err: BaseException | None = None) -> AugPaintError:
    """One line naming the folder and its free space (ENOSPC / EDQUOT)."""
    try:
        free = _human(shutil.disk_usage(folder).free)
    except OSError:
        free = "unknown"
    what = "disk quota exceeded" if getattr(err, "errno", None) == errno.EDQUOT else "no space left on device"
    return AugPaintError(f"{folder}: {what} ({free} free); nothing was written there, free some space and re-run")


def is_disk_full(err: BaseException) -> bool:
    """True for ENOSPC/EDQUOT, also when torch wraps it in a RuntimeError."""
    text = str(err)
    if isinstance(err, OSError):
        # numpy reports a short write ("98304 requested and 65408 written") without an errno
        return err.errno in (errno.ENOSPC, errno.EDQUOT) or (err.errno is None and "requested and" in text
                                                               and "written" in text)
    return isinstance(err, RuntimeError) and ("No space left" in text or "file write failed" in text)


def _check_replaceable(out: Path) -> dict:
    """``out`` exists and --force was given: it must be a finished artifact of ours, else refuse."""
    if not out.is_dir() or not (out / ARTIFACT_FILE).is_file():
        raise AugPaintError(f"{out}: exists and is not a finished augpaint artifact (no {ARTIFACT_FILE}); --force "
                            f"only replaces an artifact, so nothing was deleted; choose another --out")
    try:
        meta = json.loads((out / ARTIFACT_FILE).read_text())
        if not isinstance(meta, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError):
        raise AugPaintError(f"{out / ARTIFACT_FILE}: unreadable; --force does not replace a folder it cannot "
                            f"identify, so nothing was deleted") from None
    return meta


@contextlib.contextmanager
def atomic_dir(out: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``out`` only if the block succeeds.

    Hidden work folders left by killed runs of the same output are removed first. The final
    rename refuses an ``out`` that another run finished meanwhile (without ``force``), so two
    runs into one new folder never both "succeed".

    Args:
        out: final folder. If it exists and is non-empty, ``force`` is required.
        force: replace an existing complete artifact made by the same stage (never any other folder).
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise AugPaintError(f"{out}: output already exists (pass --force to replace it)")
        _check_replaceable(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        for stale in _stale_partials(out):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = out.parent / f".{out.name}{PARTIAL_TAG}{os.getpid()}-{time.monotonic_ns()}"
        tmp.mkdir()
    except OSError as err:
        if is_disk_full(err):
            raise disk_full_error(out.parent, err) from None
        raise AugPaintError(f"{out.parent}: cannot create the output folder ({err.strerror or err})") from None
    try:
        try:
            yield tmp
        except (OSError, RuntimeError) as err:
            if is_disk_full(err):
                shutil.rmtree(tmp, ignore_errors=True)  # report the space as it is without our partial work
                raise disk_full_error(out.parent, err) from None
            raise
        if not (tmp / ARTIFACT_FILE).is_file():
            raise AugPaintError(f"{out}: internal error: stage wrote no {ARTIFACT_FILE}")
        _finish(tmp, out, force)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _finish(tmp: Path, out: Path, force: bool) -> None:
    """Rename ``tmp`` to ``out``; an ``out`` that appeared meanwhile is replaced only with ``force``."""
    clash = AugPaintError(f"{out}: another run wrote this output while this one was working; its result is kept "
                          f"and this run's is discarded (pass --force to replace it)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise clash
        old_meta = _check_replaceable(out)
        new_meta = json.loads((tmp / ARTIFACT_FILE).read_text())
        if (old_meta.get("kind"), old_meta.get("stage")) != (new_meta.get("kind"), new_meta.get("stage")):
            raise AugPaintError(f"{out}: holds a {old_meta.get('kind')} artifact from stage {old_meta.get('stage')!r}; "
                                f"--force only replaces one from the same stage ({new_meta.get('stage')!r}), so "
                                f"nothing was deleted")
        old = out.parent / f".{out.name}.replaced-{os.getpid()}-{time.monotonic_ns()}"
        os.rename(out, old)
        try:
            os.rename(tmp, out)
        except OSError:
            os.rename(old, out)  # put the previous artifact back
            raise clash from None
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        # rename(2) onto a non-empty folder fails atomically: the last check against a concurrent run.
        os.rename(tmp, out)
    except OSError as err:
        if err.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise clash from None
        raise


def write_artifact_meta(folder: Path, *, kind: str, stage: str, config: dict | None, seed: int | None,
                        inputs: dict[str, str] | None = None, extra: dict | None = None,
                        known_hashes: dict[str, str] | None = None) -> dict:
    """Write ``artifact.json`` last: kind, config, versions, input hashes and file hashes.

    Args:
        folder: the (temporary) artifact folder, already holding every other file.
        kind: ``dataset``, ``model`` or ``report``.
        stage: the stage that made it.
        config: the full config as a dict.
        seed: the stage's seed.
        inputs: name -> path of input artifacts; their content hashes are recorded.
        extra: anything else worth keeping.
        known_hashes: sha256 of files already hashed while writing (dataset shards), not read again.
    """
    files = {}
    known = known_hashes or {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != ARTIFACT_FILE:
            rel = str(p.relative_to(folder))
            files[rel] = known.get(rel) or sha256_file(p)
    content = files_digest(files)
    meta = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "stage": stage,
        "seed": seed,
        "config": config,
        "versions": versions(),
        "inputs": {k: {"path": str(v), "content_sha256": _try_hash(v)} for k, v in (inputs or {}).items()},
        "files": files,
        "content_sha256": content,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }
    (folder / ARTIFACT_FILE).write_text(json.dumps(meta, indent=1))
    return meta


def _try_hash(path: str | Path) -> str | None:
    try:
        return artifact_hash(path)
    except AugPaintError:
        return None


def files_digest(files: dict[str, str]) -> str:
    """The ``content_sha256`` of a file table (what :func:`write_artifact_meta` records)."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def verify_artifact(path: str | Path, kind: str | None = None, *, lazy: tuple[str, ...] = ("shards/",),
                    only: tuple[str, ...] | None = None) -> dict:
    """Read ``artifact.json`` and check the files it records against their sha256.

    Args:
        path: artifact folder.
        kind: expected kind, if any.
        lazy: path prefixes not hashed here (dataset shards: their reader checks each one on first use,
            against the manifest, itself checked here).
        only: check just these recorded files (others are left to their readers).

    Returns:
        the metadata.
    """
    p = Path(path)
    meta = read_artifact_meta(p, kind)
    files = meta.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise AugPaintError(f"{p / ARTIFACT_FILE}: field 'files' is missing or malformed")
    if files_digest(files) != meta.get("content_sha256"):
        raise AugPaintError(f"{p / ARTIFACT_FILE}: content_sha256 does not match its file table; the artifact "
                            f"was edited or is corrupt")
    for rel, digest in files.items():
        if rel.startswith(lazy) or (only is not None and rel not in only):
            continue
        from .storage import safe_relpath

        f = p / safe_relpath(rel, f"{p / ARTIFACT_FILE}: files")
        if not f.is_file():
            raise AugPaintError(f"{f}: missing; the artifact is incomplete")
        if sha256_file(f) != digest:
            raise AugPaintError(f"{f}: sha256 does not match {p / ARTIFACT_FILE}; the artifact was edited or is "
                                f"corrupt")
    return meta


def read_artifact_meta(path: str | Path, kind: str | None = None) -> dict:
    """Read and check ``artifact.json`` of a complete artifact folder."""
    p = Path(path)
    f = p / ARTIFACT_FILE
    if not p.is_dir():
        raise AugPaintError(f"{p}: artifact folder not found")
    if not f.is_file():
        raise AugPaintError(f"{p}: not a complete artifact (no {ARTIFACT_FILE}); was its stage interrupted?")
    try:
        meta = json.loads(f.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise AugPaintError(f"{f}: corrupt artifact metadata: {str(err)[:200]}") from None
    if not isinstance(meta, dict):
        raise AugPaintError(f"{f}: corrupt artifact metadata: expected a JSON object")
    if kind and meta.get("kind") != kind:
        raise AugPaintError(f"{p}: expected a {kind} artifact, found {meta.get('kind')!r} from stage {meta.get('stage')!r}")
    return meta
