"""Export a dataset artifact (plus kept synthetic pairs) as an nnU-Net v2 raw dataset.

Layout written into ``DatasetNNN_Name/``::

    dataset.json          channel_names, labels, numTraining, file_ending ".png" (nnU-Net's 2D natural-image reader)
    imagesTr/{id}_0000.png, labelsTr/{id}.png    labeled training slices + kept synthetic pairs
    imagesTs/{id}_0000.png, labelsTs/{id}.png    the test split; labelsTs is for scoring only, nnU-Net never reads it
    augpaint_cases.json   one record per exported case: its origin (synthetic: source case, slice, seed, sampler)
    splits_final.json     nnU-Net folds grouped by patient (copy into nnUNet_preprocessed/DatasetNNN_Name/)
    artifact.json         provenance: input hashes, counts, versions (written last)

Why PNG: the slices are already uint8, normalised and resampled to one square grid,
so PNG stores them losslessly and the source spacing no longer describes the pixels
(every case was rescaled by its own factor). nnU-Net reads ``.png`` with its 2D reader
(spacing 1 x 1) and plans only in-plane. If every real slice is gray (three equal
channels) the export has one gray channel; synthetic slices are then stored as their
channel mean (the decoder's three channels drift apart slightly; the pasted labeled box is
gray, so it stays bit-exact). Otherwise every slice is written as RGB (channels R, G, B).

The split stays honest: only labeled slices of training patients (and optionally
validation patients) go to ``imagesTr``; a synthetic pair must come from a labeled
training slice of this very dataset, otherwise the export stops.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AugPaintError
from ..infra.artifacts import atomic_dir, read_artifact_meta, write_artifact_meta
from .dataset import SliceDataset, open_dataset

NAME_RE = re.compile(r"^Dataset(\d{3,})_([A-Za-z0-9][A-Za-z0-9_\-]*)$")
CASES_FILE = "augpaint_cases.json"
CHUNK = 256  # slices read per step: a shard is memory-mapped, so this bounds memory, not I/O


def _safe(text: Any) -> str:
    """A case-id fragment nnU-Net and file systems accept (letters, digits, - and _)."""
    return re.sub(r"[^A-Za-z0-9_\-]", "-", str(text))


def _patient(r: dict) -> str:
    return str(r.get("patient_id", r["case_id"]))


def _check_synthetic(ds: SliceDataset, syn: SliceDataset, dataset: str | Path, synthetic: str | Path) -> None:
    """Every synthetic pair must be made from a labeled training slice of ``ds`` (no test/val patient, no other set)."""
    recorded = None
    try:
        recorded = read_artifact_meta(synthetic).get("inputs", {}).get("dataset", {}).get("content_sha256")
        mine = read_artifact_meta(dataset).get("content_sha256")
    except AugPaintError:
        mine = None  # an s3:// input: the per-record checks below still hold
    if recorded and mine and recorded != mine:
        raise AugPaintError(f"{synthetic}: made from another dataset (input hash {recorded[:12]}, --in has "
                            f"{mine[:12]})")
    for i, r in enumerate(syn.records):
        p = r.get("provenance", {})
        s = p.get("source_index")
        if s is None or not 0 <= int(s) < len(ds.records):
            raise AugPaintError(f"{synthetic}: synthetic slice {i} has no valid source_index ({s})")
        src = ds.records[int(s)]
        if p.get("source_case", src["case_id"]) != src["case_id"] or \
                int(p.get("source_slice", src["slice_index"])) != int(src["slice_index"]):
            raise AugPaintError(f"{synthetic}: synthetic slice {i} names source {p.get('source_case')} slice "
                                f"{p.get('source_slice')}, but --in has {src['case_id']} slice {src['slice_index']} "
                                f"there; was it made from another dataset?")
        if src["split"] != "train" or not src["labeled"]:
            raise AugPaintError(f"{synthetic}: synthetic slice {i} was made from {src['case_id']} slice "
                                f"{src['slice_index']} of the {src['split']} split (labeled={src['labeled']}); only "
                                f"labeled training slices may seed synthetic training data")


def _plan(ds: SliceDataset, syn: SliceDataset | None, include_val: bool) -> list[dict]:
    """One entry per exported case: its nnU-Net id, folder, the slice it comes from and its provenance."""
    train_splits = ("train", "val") if include_val else ("train",)
    plan: list[dict] = []
    for i, r in enumerate(ds.records):
        if r.get("source", "real") != "real":
            continue
        if r["split"] in train_splits and r["labeled"]:
            folder = "Tr"
        elif r["split"] == "test":
            folder = "Ts"
        else:
            continue  # unlabeled training slices (no labels) and, by default, the validation split
        plan.append({"id": f"{_safe(r['case_id'])}_z{int(r['slice_index']):03d}", "folder": folder, "set": "real",
                     "index": i, "source": "real", "split": r["split"], "case_id": r["case_id"],
                     "patient_id": _patient(r), "slice_index": int(r["slice_index"])})
    for i, r in enumerate(syn.records if syn is not None else []):
        p = dict(r.get("provenance", {}))
        src = ds.records[int(p["source_index"])]
        plan.append({"id": f"syn_{_safe(src['case_id'])}_z{int(src['slice_index']):03d}"
                           f"_n{int(p.get('sample_index', i)):02d}",
                     "folder": "Tr", "set": "synthetic", "index": i, "source": "synthetic", "split": "train",
                     "case_id": src["case_id"], "patient_id": _patient(src), "slice_index": int(src["slice_index"]),
                     "source_case": src["case_id"], "source_slice": int(src["slice_index"]),
                     "seed": p.get("seed"), "sampler": p.get("sampler"), "provenance": p})
    seen: dict[str, int] = {}
    for e in plan:
        seen[e["id"]] = seen.get(e["id"], 0) + 1
    dup = [k for k, v in seen.items() if v > 1]
    if dup:
        raise AugPaintError(f"export: {len(dup)} case names collide after making them file-safe (e.g. {dup[0]}); "
                            f"rename the cases")
    tr = {e["patient_id"] for e in plan if e["folder"] == "Tr"}
    ts = {e["patient_id"] for e in plan if e["folder"] == "Ts"}
    if tr & ts:  # the dataset splits by patient; this only trips on a broken manifest
        raise AugPaintError(f"export: patients {sorted(tr & ts)[:3]} are in both the training and the test split")
    return plan


def _is_gray(ds: SliceDataset, plan: list[dict]) -> bool:
    """True if every exported real slice has three equal channels: the data is gray, one PNG channel loses nothing."""
    idx = np.array([e["index"] for e in plan if e["set"] == "real"], np.int64)
    for a in range(0, len(idx), CHUNK):
        img = np.asarray(ds.images[idx[a:a + CHUNK]])
        if not (np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2])):
            return False
    return True


def to_gray(img: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (...) uint8 channel mean; exact where the three channels are equal."""
    return np.rint(img.astype(np.float32).mean(-1)).astype(np.uint8)


def _folds(plan: list[dict], k: int = 5) -> list[dict]:
    """nnU-Net folds over the training cases, grouped by patient: no patient's slices (or their synthetic
    children) on both sides of a fold. Fewer than two patients give no folds."""
    patients = sorted({e["patient_id"] for e in plan if e["folder"] == "Tr"})
    k = min(k, len(patients))
    if k < 2:
        return []
    fold_of = {p: j % k for j, p in enumerate(patients)}
    return [{"train": sorted(e["id"] for e in plan if e["folder"] == "Tr" and fold_of[e["patient_id"]] != f),
             "val": sorted(e["id"] for e in plan if e["folder"] == "Tr" and fold_of[e["patient_id"]] == f)}
            for f in range(k)]


def export_nnunet(dataset: str | Path, out: str | Path, *, synthetic: str | Path | None = None,
                  include_val: bool = False, force: bool = False) -> Path:
    """Write ``out`` (named ``DatasetNNN_Name``) as an nnU-Net v2 raw dataset; see the module docstring.

    Args:
        dataset: the slice dataset artifact (from preprocess).
        out: the new folder; its name must be ``DatasetNNN_Name`` so nnU-Net finds it by id.
        synthetic: kept synthetic pairs (a filter output, or inpaint/rand-aug output) made from ``dataset``.
        include_val: also put the labeled validation slices into ``imagesTr`` (off: nnU-Net then sees exactly
            the labeled slices AugPaint's own segmenter trained on).
        force: replace an existing ``out``.
    """
    from PIL import Image

    out = Path(out)
    m = NAME_RE.match(out.name)
    if not m:
        raise AugPaintError(f"--out {out}: the folder must be named DatasetNNN_Name (e.g. Dataset500_AugPaint); "
                            f"nnU-Net finds datasets by that name")
    ds = open_dataset(dataset)
    syn = None
    if synthetic is not None:
        syn = open_dataset(synthetic)
        if syn.class_names != ds.class_names:
            raise AugPaintError(f"{synthetic}: classes {syn.class_names} differ from --in's {ds.class_names}")
        _check_synthetic(ds, syn, dataset, synthetic)
    plan = _plan(ds, syn, include_val)
    n_tr = sum(e["folder"] == "Tr" for e in plan)
    if n_tr == 0:
        raise AugPaintError(f"{dataset}: no labeled training slices to export")
    sets = {"real": ds} | ({"synthetic": syn} if syn is not None else {})
    gray = _is_gray(ds, plan)
    channels = {"0": "image"} if gray else {"0": "R", "1": "G", "2": "B"}
    with atomic_dir(out, force=force) as tmp:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (tmp / sub).mkdir()
        for name, d in sets.items():
            todo = [e for e in plan if e["set"] == name]
            for a in range(0, len(todo), CHUNK):
                part = todo[a:a + CHUNK]
                idx = np.array([e["index"] for e in part], np.int64)
                imgs, labs = np.asarray(d.images[idx]), np.asarray(d.labels[idx])
                for e, img, lab in zip(part, imgs, labs):
                    Image.fromarray(to_gray(img) if gray else img).save(
                        tmp / f"images{e['folder']}" / f"{e['id']}_0000.png")
                    Image.fromarray(np.ascontiguousarray(lab)).save(tmp / f"labels{e['folder']}" / f"{e['id']}.png")
        counts = {"training": n_tr, "training_real": sum(e["folder"] == "Tr" and e["set"] == "real" for e in plan),
                  "training_synthetic": sum(e["set"] == "synthetic" for e in plan),
                  "test": sum(e["folder"] == "Ts" for e in plan),
                  "training_patients": len({e["patient_id"] for e in plan if e["folder"] == "Tr"}),
                  "test_patients": len({e["patient_id"] for e in plan if e["folder"] == "Ts"})}
        meta = {"name": m.group(2), "description": "AugPaint export: labeled training slices plus kept synthetic "
                                                   "inpainting pairs; the test split in imagesTs/labelsTs",
                "reference": "Hu & Shi, Inpainting is All You Need (AugPaint)",
                "channel_names": channels,
                "labels": {"background": 0, **{c: k + 1 for k, c in enumerate(ds.class_names)}},
                "numTraining": n_tr, "file_ending": ".png",
                # .png already maps to this reader; saying it keeps the choice explicit
                "overwrite_image_reader_writer": "NaturalImage2DIO"}
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=1))
        (tmp / CASES_FILE).write_text(json.dumps(
            [{k: v for k, v in e.items() if k not in ("set", "index")} | {"folder": f"images{e['folder']}"}
             for e in plan], indent=1))
        folds = _folds(plan)
        if folds:
            (tmp / "splits_final.json").write_text(json.dumps(folds, indent=1))
        write_artifact_meta(tmp, kind="export", stage="export", config=None, seed=None,
                            inputs={"dataset": dataset} | ({"synthetic": synthetic} if synthetic is not None else {}),
                            extra={"format": "nnunet", "dataset_id": int(m.group(1)), "dataset_name": m.group(2),
                                   "counts": counts,
                                   "channels": "gray (synthetic: channel mean)" if gray else "rgb",
                                   "include_val": include_val, "folds": len(folds)})
    return out


def export_stage(cfg: Any, *, out: str | Path, dataset: str | Path, synthetic: str | Path | None = None,
                 include_val: bool = False, force: bool = False, tracker: Any = None) -> Path:
    """The ``export`` stage for the stage registry (KFP component): export, then log the counts.

    Args:
        cfg: the run's config (the export itself needs none of it; kept for the registry's signature).
        out: the new ``DatasetNNN_Name`` folder.
        dataset, synthetic, include_val, force: as in :func:`export_nnunet`.
        tracker: the stage's MLflow run, or None.
    """
    path = export_nnunet(dataset, out, synthetic=synthetic, include_val=include_val, force=force)
    if tracker:
        counts = json.loads((path / "artifact.json").read_text())["counts"]
        tracker.log_metrics({f"export_{k}": v for k, v in counts.items()})
    return path
