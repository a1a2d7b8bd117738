"""Oracle paste: the ceiling for any background generator (a control of the experiment, not a method).

Every labeled anchor slice's kept region (the same one inpaint keeps: ``inpaint.mask``, ``box_margin``,
``big_box``) is pasted into a real training slice of another patient, at the same place. The background is
real anatomy by construction, so a segmenter trained on these pairs shows what AugPaint could reach with a
perfect generator on the same data: if the oracle does not beat the labeled-only U-Net, no generator will.

The background slice comes from a random other training patient, at the nearest relative slice position,
so the anatomy around the box is plausible for that level. A real slice of another patient has that
patient's own structures, and where they lie outside the pasted region they would be labeled background:
wrong labels no generator is meant to make. So the oracle takes ``truth``, the same slices with every
training label (an oracle may see them; the method never does): it prefers background slices whose own
structures are all hidden under the pasted region, and labels any that remain with their true class.
Without ``truth`` it pastes blind (the first version of this control, which measured below the U-Net).
"""
from __future__ import annotations

import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..config import AugPaintConfig, InpaintConfig
from ..data.dataset import SliceDataset, load_dataset, save_dataset
from ..errors import AugPaintError
from ..infra.artifacts import atomic_dir, write_artifact_meta
from .inpaint import anchors, kept_region


def _patient(r: dict) -> str:
    return str(r.get("patient_id") or r["case_id"])


def oracle_paste_dataset(ds: SliceDataset, copies: int, seed: int, icfg: InpaintConfig,
                         truth: SliceDataset | None = None) -> SliceDataset:
    """``copies`` oracle pairs per labeled anchor slice with foreground.

    Args:
        ds: the real slice dataset.
        copies: pairs per anchor (``inpaint.samples_per_pair``, like the inpainting pool).
        seed: draws the background patients and slices.
        icfg: the inpaint section (which region is kept).
        truth: ``ds``'s slices with every training label (None: paste blind, background labeled 0).

    Returns:
        an in-memory synthetic dataset; provenance names the source, the background slice, and how many of
        the background's own foreground pixels stay visible (``background_foreground_px``; None when blind).
    """
    if truth is not None and [(r["case_id"], r["slice_index"]) for r in truth.records] != [
            (r["case_id"], r["slice_index"]) for r in ds.records]:
        raise AugPaintError("oracle-paste: the truth dataset does not hold the same slices as the dataset")
    src, _ = anchors(ds)
    if not src:
        raise AugPaintError("oracle-paste: no labeled training slice has foreground")
    by_case: dict[str, list[int]] = defaultdict(list)
    for i in ds.where(split="train"):
        by_case[ds.records[i]["case_id"]].append(int(i))
    rel = {}  # relative slice position within its case, 0..1
    for idx in by_case.values():
        idx.sort(key=lambda i: ds.records[i]["slice_index"])
        for k, i in enumerate(idx):
            rel[i] = k / max(1, len(idx) - 1)
    images, labels, records = [], [], []
    for s in src:
        me = _patient(ds.records[s])
        cases = sorted(c for c, idx in by_case.items() if _patient(ds.records[idx[0]]) != me)
        if not cases:
            raise AugPaintError("oracle-paste: needs training slices of at least one other patient")
        img, lab = np.asarray(ds.images[s]), np.asarray(ds.labels[s])
        keep, kind = kept_region(lab, icfg)

        seen: dict[int, int] = {}  # per source: each candidate's count is needed by every copy

        def visible(i: int) -> int:  # the background's own foreground pixels left outside the pasted region
            if i not in seen:
                seen[i] = 0 if truth is None else int(np.count_nonzero(np.asarray(truth.labels[i])[~keep]))
            return seen[i]

        for j in range(copies):
            item_seed = zlib.crc32(f"oracle:{seed}:{s}:{j}".encode()) & 0x7FFFFFFF
            rng = np.random.default_rng(item_seed)
            case = cases[int(rng.integers(0, len(cases)))]
            bg = min(by_case[case], key=lambda i: (visible(i) > 0, abs(rel[i] - rel.get(s, 0.5)), i))
            images.append(np.where(keep[..., None], img, np.asarray(ds.images[bg])))
            labels.append(lab if truth is None else np.where(keep, lab, np.asarray(truth.labels[bg])).astype(lab.dtype))
            r = ds.records[s]
            records.append({"case_id": r["case_id"], "slice_index": r["slice_index"], "split": "train",
                            "labeled": True, "source": "synthetic",
                            "provenance": {"source_index": s, "sample_index": j, "seed": item_seed,
                                           "sampler": "oracle_paste", "steps": 0, "conditional": False,
                                           "flip": "none", "kept_region": kind, "background_index": bg,
                                           "background_case": ds.records[bg]["case_id"],
                                           "background_foreground_px": None if truth is None else visible(bg)}})
    return SliceDataset(np.stack(images), np.stack(labels), records, ds.class_names, ds.regions)


def oracle_paste(cfg: AugPaintConfig, dataset: str | Path, out: str | Path, *, truth: str | Path | None = None,
                 copies: int | None = None, force: bool = False) -> Path:
    """The oracle control's pool (``inpaint.samples_per_pair`` pairs per anchor); filter it like inpaint's.

    Args:
        cfg: config (``seed``, ``inpaint``).
        dataset: real slice dataset artifact.
        out: output synthetic dataset artifact.
        truth: the same data preprocessed with every training patient labeled (see the module docstring).
        copies: override the pairs per anchor.
        force: replace an existing output.
    """
    ds = load_dataset(dataset)
    n = copies or cfg.inpaint.samples_per_pair
    syn = oracle_paste_dataset(ds, n, cfg.seed, cfg.inpaint, load_dataset(truth) if truth else None)
    with atomic_dir(out, force=force) as tmp:
        save_dataset(syn, tmp)
        write_artifact_meta(tmp, kind="dataset", stage="oracle-paste", config=cfg.model_dump(mode="json"),
                            seed=cfg.seed, inputs={"dataset": dataset, **({"truth": truth} if truth else {})},
                            extra={"num_samples": len(syn.records), "copies": n, "truth": bool(truth),
                                   "pairs_with_visible_background_foreground": sum(
                                       bool(r["provenance"]["background_foreground_px"]) for r in syn.records)})
    return Path(out)
