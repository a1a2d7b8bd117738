"""Preprocess: a raw dataset (any format in ``augpaint_core.ingest``, or the phantom) -> sharded slice dataset.

Cases are read in parallel worker processes and streamed into shards in a fixed
order, so the output does not depend on the number of workers and memory stays
at a few cases plus one shard, however many volumes there are. Splits are by
patient with the fractions of ``data.split`` (an official test set, as ISIC's,
replaces the test fraction); the first ``num_labeled`` training patients of the
seeded order that read cleanly keep their labels, the other training patients
become unlabeled data (their labels are not stored).
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import logging
import multiprocessing as mp
import os
import tempfile
import time
import zlib
from collections import deque
from pathlib import Path
from typing import Iterator

import numpy as np

from ..infra.artifacts import atomic_dir, write_artifact_meta
from ..config import AugPaintConfig
from .dataset import DatasetWriter, shard_hashes
from ..errors import AugPaintError
from .ingest import Case, Problem, Source, read_case, scan, slice_spacing
from .phantom import write_phantom

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def split_patients(patients: list[str], fractions: tuple[float, float, float], seed: int,
                   fixed_test: bool = False) -> tuple[dict[str, str], list[str]]:
    """Patient-level split.

    Args:
        patients: split units (patients; images for 2D data).
        fractions: train:val:test weights.
        seed: split seed.
        fixed_test: the dataset has its own test set; split only train:val.

    Returns:
        patient -> split, and the seeded order of the training patients (the
        first ones that read cleanly become the labeled ones).
    """
    ids = sorted(set(patients))
    rng = np.random.default_rng([seed, zlib.crc32(b"split")])
    order = [ids[i] for i in rng.permutation(len(ids))]
    f_train, f_val, f_test = fractions
    if fixed_test:
        f_test = 0.0
    total = f_train + f_val + f_test
    n = len(order)
    n_val = max(1, int(round(n * f_val / total)))
    n_test = max(1, int(round(n * f_test / total))) if f_test > 0 else 0
    if n - n_val - n_test < 1:
        raise AugPaintError(f"data.split: {n} labeled patients are too few for a {list(fractions)} split")
    n_train = n - n_val - n_test
    out = {p: "train" for p in order[:n_train]}
    out.update({p: "val" for p in order[n_train:n_train + n_val]})
    out.update({p: "test" for p in order[n_train + n_val:]})
    return out, order[:n_train]


def _read_job(job: tuple[str, Case, dict, int]) -> tuple[str, object]:
    """Worker entry: ("ok", (images, labels, spacing)) or ("error", message naming the file)."""
    fmt, case, reader, size = job
    try:
        return "ok", (*read_case(fmt, case, reader, size), slice_spacing(case, size))
    except AugPaintError as err:
        return "error", str(err)
    except Exception as err:  # an unexpected failure still names the case's files
        files = ", ".join(case.images + ((case.label,) if case.label else ()))
        return "error", f"{files}: {type(err).__name__}: {err}"


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core; intra-op threads would oversubscribe


def _ordered_results(jobs: list[tuple], workers: int) -> Iterator[tuple[str, object]]:
    """Results in job order, with at most 2 x workers cases in flight (bounded memory)."""
    if workers <= 1:
        for j in jobs:
            yield _read_job(j)
        return
    ctx = mp.get_context("spawn")  # fork after torch/OpenMP start-up can deadlock
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
        pending: deque = deque()
        it = iter(jobs)
        try:
            for j in it:
                pending.append(pool.submit(_read_job, j))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def num_workers(requested: int, num_jobs: int) -> int:
    """``requested``, or for 0 one process per core (at most 8); tiny datasets are not worth the start-up."""
    if requested > 0:
        return requested
    return 1 if num_jobs < 16 else max(1, min(8, os.cpu_count() or 1))


def _utf8(path: str) -> bool:
    """True if ``path`` is valid UTF-8 (a non-UTF-8 name decodes to lone surrogates)."""
    try:
        str(path).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def build_dataset(source: Source, cfg: AugPaintConfig, folder: Path, *, workers: int = 0, progress: bool = False
                  ) -> tuple[dict, dict]:
    """Read every case of ``source`` and stream the slices into a dataset folder.

    Args:
        source: what an adapter found (``ingest.scan``).
        cfg: config (``data`` section; ``data.split_seed`` or ``seed`` seeds the split).
        folder: output folder (the stage's temporary artifact folder).
        workers: reader processes; 1 reads in this process, 0 picks by core and case count.
        progress: show a progress bar (the CLI does).

    Returns:
        a report (counts, labeled cases, skipped files, timing) and the manifest.
    """
    d = cfg.data
    seed = cfg.seed if d.split_seed is None else d.split_seed
    skipped: list[dict] = []

    def problem(p: Problem) -> None:
        if d.on_error == "fail":
            raise AugPaintError(p.error + " (data.on_error=skip would skip it and go on)")
        log.warning("skipping %s", p.error)
        skipped.append({"case_id": p.case_id, "file": p.file, "error": p.error})

    for p in source.problems:
        problem(p)
    cases = []
    for c in source.cases:
        bad = next((f for f in c.images + ((c.label,) if c.label else ()) if not _utf8(f)), None)
        if bad is None:
            cases.append(c)
        else:  # such a name breaks the records, MLflow and evaluate's report much later; refuse it here
            shown = os.fsencode(bad).decode("utf-8", "backslashreplace")  # the raw bytes as \xff escapes
            problem(Problem(shown, os.fsencode(c.case_id).decode("utf-8", "backslashreplace"),
                            f"{shown}: file name is not valid UTF-8; rename it"))
    source = dataclasses.replace(source, cases=cases)
    labeled = [c for c in source.cases if c.label is not None]
    fixed = {c.patient_id: c.fixed_split for c in labeled if c.fixed_split}
    free = sorted({c.patient_id for c in labeled} - set(fixed))
    if not free:
        raise AugPaintError(f"{source.root}: no labeled cases to split")
    split, train_order = split_patients(free, d.split, seed, fixed_test=bool(fixed))
    split.update(fixed)
    if len(train_order) < d.num_labeled:
        raise AugPaintError(f"data.num_labeled: {d.num_labeled} labeled cases requested but the training split has "
                            f"only {len(train_order)} of {len(free) + len(fixed)} labeled cases")
    rank = {p: i for i, p in enumerate(train_order)}
    order = {"train": 0, "val": 1, "test": 2}
    labeled.sort(key=lambda c: (order[split[c.patient_id]], rank.get(c.patient_id, 0), c.patient_id, c.case_id))
    unlabeled = sorted((c for c in source.cases if c.label is None), key=lambda c: c.case_id)
    official_test = [c.case_id for c in unlabeled if c.param("official_test")]
    if not d.official_test_images:  # the paper trains solely on the training set
        unlabeled = [c for c in unlabeled if not c.param("official_test")]
    jobs = [(source.format, c, source.reader, d.image_size) for c in labeled + unlabeled]
    workers = num_workers(workers, len(jobs))

    writer = DatasetWriter(folder, source.class_names, d.image_size, shard_size=d.shard_size, regions=source.regions,
                           info={"dataset": source.name, "format": source.format})
    kept_patients: list[str] = []
    done_cases: list[str] = []
    t0 = time.perf_counter()
    bar = None
    results = _ordered_results(jobs, workers)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), unit="case", desc="preprocess", dynamic_ncols=True, disable=None)  # no TTY, no bar
    try:
        for (_, case, _, _), (status, payload) in zip(jobs, results):
            if bar:
                bar.update(1)
            if status == "error":
                problem(Problem(case.label or case.images[0], case.case_id, str(payload)))
                continue
            images, labels, spacing = payload  # type: ignore[misc]
            if case.label is None:
                sp, keep = "train", False
            else:
                sp = split[case.patient_id]
                keep = True
                if sp == "train":
                    if case.patient_id not in kept_patients and len(kept_patients) < d.num_labeled:
                        kept_patients.append(case.patient_id)
                    keep = case.patient_id in kept_patients
            if not keep:
                labels = np.zeros_like(labels)  # the labels of S^u are not stored at all
            prov = {"dataset": source.name, "format": source.format, "files": [Path(f).name for f in case.images],
                    "label_file": Path(case.label).name if case.label else None, **dict(case.params)}
            # spacing_mm (stacked slices: through-plane, row, column) lets evaluate report HD95 in mm
            extra = {"spacing_mm": spacing} if spacing is not None else {}
            writer.add(images, labels, [{"case_id": case.case_id, "patient_id": case.patient_id, "slice_index": s,
                                         "split": sp, "labeled": keep, "source": "real", "provenance": prov, **extra}
                                        for s in range(len(images))])
            done_cases.append(case.case_id)
    finally:
        results.close()  # on an error: cancel queued cases and stop the workers now
        if bar:
            bar.close()
    if len(kept_patients) < d.num_labeled:
        raise AugPaintError(f"data.num_labeled: only {len(kept_patients)} of the {d.num_labeled} requested labeled "
                            f"training cases could be read ({len(skipped)} skipped)")
    missing = [s for s in SPLITS if not any(r["split"] == s for r in writer.records)]
    if missing:
        raise AugPaintError(f"{source.root}: after skipping bad cases the {'/'.join(missing)} split is empty")
    manifest = writer.close()
    seconds = time.perf_counter() - t0
    recs = manifest["records"]
    report = {
        "format": source.format, "dataset": source.name, "root": source.root, "workers": workers,
        "cases_read": len(done_cases), "cases_skipped": len({s["case_id"] for s in skipped}), "skipped": skipped,
        "num_slices": len(recs), "seconds": round(seconds, 3), "slices_per_s": round(len(recs) / max(seconds, 1e-9), 2),
        "labeled_patients": kept_patients,
        "official_test_images": {"found": len(official_test), "used": d.official_test_images},
        "patients": {s: sorted({r["patient_id"] for r in recs if r["split"] == s}) for s in SPLITS},
        "slice_counts": {f"{s}_{'labeled' if lab else 'unlabeled'}":
                         sum(r["split"] == s and r["labeled"] == lab for r in recs)
                         for s in SPLITS for lab in (True, False)},
    }
    return report, manifest


def _source(cfg: AugPaintConfig, input_dir: str | Path | None, fmt: str | None, scratch: Path) -> Source:
    """Scan the input (a folder, an s3:// prefix or, with neither, a freshly written phantom)."""
    from ..infra import storage

    src = input_dir if input_dir is not None else cfg.data.path
    fmt = fmt or cfg.data.format
    if src is None:
        if fmt != "auto":
            raise AugPaintError(f"data.format is {fmt!r} but no raw data was given: pass --in DIR or set data.path "
                                f"(the built-in phantom is used only with data.format auto)")
        p = cfg.data.phantom
        src = write_phantom(scratch / "phantom", seed=cfg.seed, num_cases=p.num_cases, slices=p.slices_per_case,
                            size=p.size, vessels=p.vessels)
        fmt = "nnunet"
    elif storage.is_s3(str(src)):
        src = storage.download_dir(str(src), scratch / "raw")
    source = scan(src, fmt, cfg.data.channels)
    source.reader.update(ct_window=list(cfg.data.ct_window), mri_percentiles=list(cfg.data.mri_percentiles))
    return source


def preprocess(cfg: AugPaintConfig, out: str | Path, input_dir: str | Path | None = None, *, fmt: str | None = None,
               workers: int | None = None, progress: bool = False, force: bool = False, tracker=None) -> Path:
    """Stage 1: build the slice dataset artifact.

    Args:
        cfg: config; ``data.path`` / ``data.format`` name the raw data (unset: the built-in phantom).
        out: output artifact folder.
        input_dir: raw dataset folder or ``s3://`` prefix; overrides ``data.path``.
        fmt: raw format or ``auto``; overrides ``data.format``.
        workers: reader processes; overrides ``data.workers`` (0 = one per core, at most 8).
        progress: show a progress bar.
        force: replace an existing output.
        tracker: optional MLflow stage tracker.
    """
    out = Path(out)
    with tempfile.TemporaryDirectory() as scratch, atomic_dir(out, force=force) as tmp:
        source = _source(cfg, input_dir, fmt, Path(scratch))
        report, manifest = build_dataset(source, cfg, tmp, workers=cfg.data.workers if workers is None else workers,
                               progress=progress)
        (tmp / "preprocess_report.json").write_text(json.dumps(report, indent=1))
        raw = "phantom" if input_dir is None and cfg.data.path is None else str(input_dir or cfg.data.path)
        write_artifact_meta(tmp, kind="dataset", stage="preprocess", config=cfg.model_dump(mode="json"),
                            seed=cfg.seed, extra={"source": raw, "format": source.format,
                                                  "slice_counts": report["slice_counts"],
                                                  "patients": report["patients"],
                                                  "labeled_cases": report["labeled_patients"],
                                                  "class_names": source.class_names, "regions": source.regions,
                                                  "skipped": report["skipped"]},
                            known_hashes=shard_hashes(manifest))
    if report["skipped"]:
        log.warning("preprocess skipped %d case(s); see %s", report["cases_skipped"], out / "preprocess_report.json")
    if tracker:
        tracker.log_metrics({f"slices_{k}": v for k, v in report["slice_counts"].items()} |
                            {"cases_skipped": report["cases_skipped"], "slices_per_s": report["slices_per_s"]})
    return out
