"""Experiment harness: the paper's comparison (Table 1 layout) over independent splits and labeled counts.

For every split (seed = ``cfg.seed + split``; ``data.split_seed + split`` too when the config sets it) and
labeled count k, in process (no KFP):

- preprocess the data with k labeled cases (the patient split depends on the split seed only, and the
  labeled cases of a smaller k are a subset of a larger k's);
- train the AE and the LDM(s) once per split on S^l + S^u (independent of k, so shared across k and
  variants): unconditional for AugPaint, conditional (``ldm.conditional``) for cond AugPaint;
- build the synthetic pools (AugPaint, cond AugPaint, Rand Aug x ``inpaint.samples_per_pair``) and filter each
  with the same scorer (trained once per split and k on S^l), keeping ``filter.keep_fraction``;
- train one segmenter per variant with the same ``seg`` budget and evaluate all on the same test cases.

Variants: ``baseline`` (U-Net on S^l), ``unimatch`` (S^l + UniMatch consistency on S^u), ``randaug``,
``augpaint``, ``cond_augpaint``, ``augpaint_unimatch`` (AugPaint pool + UniMatch, the paper's Table 3) and
``augpaint_strict`` (the AugPaint pool filtered with ``filter.reject_background`` and ``filter.ood_reject``).
``baseline_aug`` and ``augpaint_aug`` add on-the-fly augmentation (``seg.augment``, nnU-Net style) to the
segmenter training: does AugPaint add to standard augmentation? Controls: ``oracle_paste`` (the labeled boxes
pasted into real slices of other patients, chosen and labeled with the true labels: the ceiling for any
background generator) and the filter controls
``augpaint_random50``, ``augpaint_bottom50``, ``augpaint_all`` (the same AugPaint pool, a random half, the
worst-scored half, everything); ``augpaint_per_source`` filters the pool with ``filter.per_source`` (the top
half of each source slice's samples). Every variant gets the same segmenter budget.

Statistics: every gain is a paired difference per split (same test cases), with a seeded 95% percentile
bootstrap confidence interval over splits, and one over (split, test case) units; the record of every variant
splits its test errors into false positives outside the kept boxes and errors inside them.

Every variant is an MLflow run (tags ``augpaint.variant``, ``augpaint.split``, ``augpaint.labeled``) under one
parent run, so the compare view shows them side by side. Outputs: ``table.md`` / ``table.csv`` (mean ± std
over splits), ``results.json`` (every number), ``bar.png`` and ``overlays/*.png``. Stage artifacts go to
``work/``; an interrupted run continues from the completed ones.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .infra.artifacts import ARTIFACT_FILE, write_artifact_meta
from .config import AugPaintConfig
from .errors import AugPaintError
from .segmentation.metrics import CONVENTION

log = logging.getLogger(__name__)

VARIANTS = {  # name -> (table label, pool, semi-supervised)
    "baseline": ("U-Net", None, False),
    "unimatch": ("UniMatch", None, True),
    "randaug": ("Rand Aug", "randaug", False),
    "cond_augpaint": ("cond AugPaint", "cond", False),
    "augpaint": ("AugPaint", "augpaint", False),
    "augpaint_unimatch": ("AugPaint + UniMatch", "augpaint", True),
    "augpaint_strict": ("AugPaint, strict filter", "augpaint_strict", False),
    "baseline_aug": ("U-Net + aug", None, False),
    "augpaint_aug": ("AugPaint + aug", "augpaint", False),
    "oracle_paste": ("Oracle paste", "oracle", False),
    "augpaint_random50": ("AugPaint, random half", "augpaint_random", False),
    "augpaint_bottom50": ("AugPaint, bottom half", "augpaint_bottom", False),
    "augpaint_all": ("AugPaint, all samples", "augpaint_all", False),
    "augpaint_per_source": ("AugPaint, top half per source", "augpaint_per_source", False),
}
ONTHEFLY = {"baseline_aug", "augpaint_aug"}  # variants trained with seg.augment on
REFERENCES = {"augpaint_aug": "baseline_aug"}  # paired comparisons besides the one with the U-Net
CONTROL_POOLS = {"augpaint_random": "random", "augpaint_bottom": "bottom", "augpaint_all": "all"}
REFILTERED = {"augpaint_strict": ("reject_background", "ood_reject"), "augpaint_per_source": ("per_source",)}
AUGPAINT_POOLS = {"augpaint", *REFILTERED, *CONTROL_POOLS}
DEFAULT_VARIANTS = ("baseline", "randaug", "augpaint", "cond_augpaint")
COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def _done(path: Path) -> bool:
    return (path / ARTIFACT_FILE).is_file()


def _once(path: Path, fn: Callable[[], object]) -> Path:
    """Run a stage unless its artifact is already complete (resume)."""
    if not _done(path):
        if path.exists():
            shutil.rmtree(path)
        t0 = time.time()
        fn()
        log.info("experiment: %s in %.0f s", path.name, time.time() - t0)
    return path


def _truth_cfg(cfg: AugPaintConfig, dataset: Path) -> AugPaintConfig:
    """The config that preprocesses the same split with every training patient that has a label file labeled."""
    from .data.dataset import load_dataset

    recs = load_dataset(dataset).records
    c = cfg.model_copy(deep=True)
    c.data.num_labeled = len({r.get("patient_id") or r["case_id"] for r in recs
                              if r["split"] == "train" and (r.get("provenance") or {}).get("label_file")})
    return c


def _variant_cfg(cfg: AugPaintConfig, semi: bool, augment: bool = False) -> AugPaintConfig:
    c = cfg.model_copy(deep=True)
    c.seg.semi_supervised = "unimatch" if semi else "none"
    if augment:
        c.seg.augment.enabled = True
    return c


def split_config(cfg: AugPaintConfig, split: int) -> AugPaintConfig:
    """The config of split ``split``: ``seed`` and, when the config sets it, ``data.split_seed`` both offset.

    Offsetting only ``seed`` would leave a set ``data.split_seed`` (which wins for the patient split)
    the same for every split: three "independent" splits with one patient partition.

    Args:
        cfg: base config.
        split: split index (seed offset).
    """
    c = cfg.model_copy(deep=True)
    c.seed = cfg.seed + split
    if cfg.data.split_seed is not None:
        c.data.split_seed = cfg.data.split_seed + split
    return c


def control_pool(cfg: AugPaintConfig, synthetic: Path, filtered: Path, mode: str, out: Path) -> Path:
    """A filter control from the same pool and scores: a random subset, the worst-scored, or all samples.

    Args:
        cfg: config (``filter.keep_fraction`` sets the size, ``seed`` the random draw).
        synthetic: the unfiltered pool.
        filtered: the top-fraction filter output of that pool (its ``scores.json`` is reused).
        mode: ``random``, ``bottom`` or ``all``.
        out: output dataset artifact.
    """
    from .data.dataset import load_dataset, save_dataset
    from .infra.artifacts import atomic_dir

    syn = load_dataset(synthetic)
    scores = np.array([r["score"] for r in sorted(json.loads((filtered / "scores.json").read_text()),
                                                  key=lambda r: r["index"])])
    n = len(scores)
    k = max(1, int(np.ceil(cfg.filter.keep_fraction * n)))
    if mode == "all":
        keep = np.arange(n)
    elif mode == "bottom":
        keep = np.lexsort((np.arange(n), scores))[:k]
    elif mode == "random":
        keep = np.sort(np.random.default_rng(cfg.seed + 11).choice(n, k, replace=False))
    else:
        raise AugPaintError(f"control pool {mode!r}: choose random, bottom or all")
    kept = syn.select(keep)
    for r, i in zip(kept.records, keep):
        r["provenance"] = {**r["provenance"], "filter_score": float(scores[i]), "synthetic_index": int(i)}
    with atomic_dir(out) as tmp:
        save_dataset(kept, tmp)
        write_artifact_meta(tmp, kind="dataset", stage="filter-control", config=cfg.model_dump(mode="json"),
                            seed=cfg.seed, inputs={"synthetic": synthetic, "filtered": filtered},
                            extra={"selection": mode, "num_in": n, "num_kept": len(keep),
                                   "score_mean_kept": float(scores[keep].mean())})
    return out


def distinct_sources(records: list[dict]) -> int:
    """How many distinct source slices the synthetic records come from."""
    return len({(r.get("provenance") or {}).get("source_index") for r in records})


def error_split(pred: np.ndarray, labels: np.ndarray) -> dict:
    """Split a model's pixel errors into false positives outside the kept boxes and errors inside them.

    The kept box of a slice is what AugPaint would keep (union of the per-class boxes of its ground truth);
    outside it every error is a false positive, the part a better background could teach away.

    Args:
        pred: (N, H, W) predicted labels.
        labels: (N, H, W) ground truth.
    """
    from .generative.masks import box_mask

    boxes = np.stack([box_mask(np.asarray(y)) for y in labels])
    wrong = pred != labels
    out_fp = int((wrong & ~boxes).sum())
    inside = int((wrong & boxes).sum())
    total = out_fp + inside
    return {"fp_outside_boxes": out_fp, "errors_inside_boxes": inside, "errors_total": total,
            "outside_fraction": out_fp / total if total else 0.0,
            "slices_with_fp_outside": int((wrong & ~boxes).any((1, 2)).sum()), "num_slices": int(len(pred))}


def equal_size_fd(real: np.ndarray, synthetic: np.ndarray, seed: int = 0) -> dict:
    """Fréchet distance of synthetic to real features at equal set sizes, with real-vs-real for scale.

    FD is biased by the set size (fewer samples, larger distance), so both distances use ``n`` samples per
    side: two disjoint random halves of the real set give the real-vs-real value, one of them is also the
    real side of real-vs-synthetic.

    Args:
        real: (M, D) features of real slices (M >= 4).
        synthetic: (N, D) features of synthetic slices (N >= 2).
        seed: subsampling seed.
    """
    from .segmentation.quality import frechet_distance

    rng = np.random.default_rng(seed)
    n = min(len(synthetic), len(real) // 2)
    if n < 2:
        raise AugPaintError(f"equal_size_fd: need >= 2 synthetic and >= 4 real samples, got {len(synthetic)} "
                            f"and {len(real)}")
    perm = rng.permutation(len(real))
    a, b = real[perm[:n]], real[perm[n:2 * n]]
    syn = synthetic[np.sort(rng.choice(len(synthetic), n, replace=False))]
    return {"n": int(n), "fd_synthetic": frechet_distance(a, syn), "fd_real_real": frechet_distance(a, b)}


def bootstrap_ci(x: list[float] | np.ndarray, *, level: float = 0.95, n_boot: int = 10000, seed: int = 0
                 ) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of paired differences (seeded).

    Args:
        x: the paired differences (one per split, or per split and test case).
        level: coverage.
        n_boot: resamples.
        seed: resampling seed.
    """
    a = np.asarray(x, float)
    if len(a) == 0:
        return float("nan"), float("nan")
    means = a[np.random.default_rng(seed).integers(0, len(a), (n_boot, len(a)))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def run_split(cfg: AugPaintConfig, work: Path, split: int, labeled: list[int], variants: list[str],
              on_result: Callable[[str, int, int, dict, dict], None]) -> None:
    """All variants of one split, for every labeled count.

    Args:
        cfg: base config.
        work: this split's work folder.
        split: split index (seed offset).
        labeled: labeled case counts.
        variants: names from ``VARIANTS``.
        on_result: called with (variant, split, k, evaluation, extra) after each variant is evaluated.
    """
    from .segmentation.augment import rand_aug
    from .segmentation.evaluate import evaluate_model
    from .data.dataset import load_dataset
    from .segmentation.filter import filter_synthetic
    from .generative.inpaint import inpaint
    from .data.preprocess import preprocess
    from .generative.train_ae import train_ae
    from .generative.train_ldm import train_ldm
    from .segmentation.train_seg import predict, train_seg
    from .segmentation.segmenters import load_segmenter
    from .generative.oracle import oracle_paste

    base = split_config(cfg, split)
    pools = {VARIANTS[v][1] for v in variants} - {None}
    if pools & set(CONTROL_POOLS):  # the controls reuse the AugPaint pool and its scores
        pools.add("augpaint")
    shared: dict[str, Path] = {}
    for k in labeled:
        c = base.model_copy(deep=True)
        c.data.num_labeled = k
        d = work / f"k{k}"
        ds = _once(d / "dataset", lambda: preprocess(c, d / "dataset"))
        if pools & (AUGPAINT_POOLS | {"cond"}) and "ae" not in shared:
            # AE and LDMs see S^l + S^u only, the same slices for every k: train them once per split
            shared["ae"] = _once(work / "ae", lambda: train_ae(c, ds, work / "ae"))
        if pools & AUGPAINT_POOLS and "ldm" not in shared:
            shared["ldm"] = _once(work / "ldm", lambda: train_ldm(c, ds, shared["ae"], work / "ldm"))
        if "cond" in pools and "ldm_cond" not in shared:
            cc = c.model_copy(deep=True)
            cc.ldm.conditional = True
            shared["ldm_cond"] = _once(work / "ldm_cond", lambda: train_ldm(cc, ds, shared["ae"], work / "ldm_cond"))
        filtered: dict[str, Path] = {}
        scorer = None
        for pool in ("augpaint", "cond", "randaug", *REFILTERED, "oracle"):
            if pool not in pools:
                continue
            fc = c
            if pool in REFILTERED:  # the AugPaint pool, filtered again with optional filter rules switched on
                fc = c.model_copy(deep=True)
                for rule in REFILTERED[pool]:
                    setattr(fc.filter, rule, True)
            syn = d / f"syn_{'augpaint' if pool in REFILTERED else pool}"
            if pool == "randaug":
                _once(syn, lambda: rand_aug(c, ds, syn))
            elif pool == "oracle":  # backgrounds chosen and labeled with every training label (an oracle)
                truth = _once(d / "dataset_truth", lambda: preprocess(_truth_cfg(c, ds), d / "dataset_truth"))
                _once(syn, lambda: oracle_paste(c, ds, syn, truth=truth))
            else:
                ldm = shared["ldm_cond" if pool == "cond" else "ldm"]
                _once(syn, lambda: inpaint(c, ds, shared["ae"], ldm, syn))
            flt = d / f"flt_{pool}"
            _once(flt, lambda: filter_synthetic(fc, ds, syn, flt, scorer=scorer))
            scorer = scorer or flt / "scorer"  # one scorer per split and k: the same filter for every pool
            filtered[pool] = flt
        for pool, mode in CONTROL_POOLS.items():
            if pool in pools:
                flt = d / f"flt_{pool}"
                _once(flt, lambda: control_pool(c, d / "syn_augpaint", filtered["augpaint"], mode, flt))
                filtered[pool] = flt
        dsl = load_dataset(ds)
        test_idx = dsl.where(split="test")
        for v in variants:
            _, pool, semi = VARIANTS[v]
            vc = _variant_cfg(c, semi, v in ONTHEFLY)
            seg = d / f"seg_{v}"
            _once(seg, lambda: train_seg(vc, ds, seg, synthetic=filtered.get(pool), name=v))
            ev = evaluate_model(seg, dsl)
            extra = {"paths": {"dataset": str(ds), "segmenter": str(seg)},
                     "per_case_dice": {case: float(np.mean([m["dice"] for m in per.values()]))
                                       for case, per in ev.get("per_case", {}).items()}}
            if len(test_idx):
                pred = predict(load_segmenter(seg)[0], dsl.images[test_idx])
                extra["errors"] = error_split(pred, np.asarray(dsl.labels[test_idx]))
            if pool is not None:
                meta = json.loads((filtered[pool] / ARTIFACT_FILE).read_text())
                extra["quality"] = meta.get("quality") or {}
                extra["num_synthetic_kept"] = meta.get("num_kept")
                kept_records = load_dataset(filtered[pool]).records
                pool_dir = d / f"syn_{'augpaint' if pool in AUGPAINT_POOLS else pool}"
                extra["filter"] = {"selection": meta.get("selection", "top"),
                                   "num_in": meta.get("num_in"), "num_kept": len(kept_records),
                                   "distinct_sources_kept": distinct_sources(kept_records),
                                   "distinct_sources_pool": distinct_sources(load_dataset(pool_dir).records)}
            on_result(v, split, k, ev, extra)


def _mean_std(x: list[float]) -> tuple[float, float]:
    a = np.asarray(x, float)
    return float(a.mean()), float(a.std())


def paired_gain(results: list[dict], variant: str, reference: str, k: int, seed: int = 0) -> dict | None:
    """Paired Dice gain (points) of ``variant`` over ``reference``: per split, mean, std, 95% bootstrap CIs.

    ``ci95`` resamples splits; ``ci95_cases`` resamples (split, test case) units, pairing the two models on
    each test case (more units, so narrower, but cases of one split share its trained models).

    Args:
        results: experiment records.
        variant: the model compared.
        reference: the model it is compared with.
        k: labeled count.
        seed: bootstrap seed.
    """
    pairs = [(r, b) for r in results if r["variant"] == variant and r["labeled"] == k
             for b in results if b["variant"] == reference and b["labeled"] == k and b["split"] == r["split"]]
    if not pairs:
        return None
    pairs.sort(key=lambda p: p[0]["split"])
    g = [100 * (r["mean_dice"] - b["mean_dice"]) for r, b in pairs]
    m, s = _mean_std(g)
    cases = [100 * (r["per_case_dice"][c] - b["per_case_dice"][c]) for r, b in pairs
             for c in sorted(r.get("per_case_dice") or {}) if c in (b.get("per_case_dice") or {})]
    lo, hi = bootstrap_ci(g, seed=seed) if len(g) >= 2 else (None, None)  # one split has no interval
    return {"variant": variant, "reference": reference, "labeled": k, "gap_mean": m, "gap_std": s,
            "per_split": g, "splits": [r["split"] for r, _ in pairs], "ci95": [lo, hi], "ci95_low": lo,
            "ci95_high": hi,
            "ci95_cases": list(bootstrap_ci(cases, seed=seed)) if cases else None, "num_case_pairs": len(cases)}


def result_record(variant: str, split: int, labeled: int, ev: dict) -> dict:
    """One variant's result as the summary reads it (the in-process harness and the pipeline share it).

    Args:
        variant: experiment variant.
        split: split index.
        labeled: labeled count.
        ev: ``evaluate_model``'s result.
    """
    return {"variant": variant, "split": split, "labeled": labeled, "mean_dice": ev["mean"]["dice"],
            "mean_hd95": ev["mean"]["hd95"], "mean_over": ev["mean_over"], "hd95_unit": ev["hd95_unit"],
            "class_mean_dice": ev["class_mean"]["dice"], "per_class": ev["per_class"],
            "per_region": ev.get("per_region"), "num_test_cases": ev["num_cases"]}


def summarize(results: list[dict], variants: list[str], labeled: list[int]) -> dict:
    """Mean ± std over splits per variant and k, and the paired gains (with 95% bootstrap CIs) over the
    U-Net baseline, and of ``REFERENCES`` pairs (AugPaint + aug over U-Net + aug)."""
    out: dict = {"rows": [], "gaps": []}
    units = {r.get("hd95_unit", "px") for r in results}
    out["hd95_unit"] = units.pop() if len(units) == 1 else "mixed"
    out["mean_over"] = results[0].get("mean_over", "classes") if results else "classes"
    for v in variants:
        for k in labeled:
            rs = [r for r in results if r["variant"] == v and r["labeled"] == k]
            if not rs:
                continue
            dm, ds_ = _mean_std([100 * r["mean_dice"] for r in rs])
            hm, hs = _mean_std([r["mean_hd95"] for r in rs])
            out["rows"].append({"variant": v, "label": VARIANTS[v][0], "labeled": k, "n_splits": len(rs),
                                "dice_mean": dm, "dice_std": ds_, "hd95_mean": hm, "hd95_std": hs,
                                "dice_per_split": [100 * r["mean_dice"] for r in sorted(rs, key=lambda r: r["split"])]})
    for v in variants:
        for ref in ("baseline", REFERENCES.get(v)):
            if v == ref or ref is None or ref not in variants:
                continue
            for k in labeled:
                gain = paired_gain(results, v, ref, k)
                if gain is not None:
                    out["gaps"].append(gain)
    return out


def markdown(summary: dict, variants: list[str], labeled: list[int], title: str) -> str:
    """Table 1 layout: one row per method, one column per labeled count; Dice % then HD95 (unit in the summary)."""
    cell = {(r["variant"], r["labeled"]): r for r in summary["rows"]}
    head = "| Method | " + " | ".join(f"{k} case{'s' if k > 1 else ''}" for k in labeled) + " |"
    sep = "|---|" + "---|" * len(labeled)
    over = summary.get("mean_over", "classes")
    lines = [f"# {title}", "", f"Mean Dice (%) over the {over} ± std over splits:", "", head, sep]
    for v in variants:
        lines.append(f"| {VARIANTS[v][0]} | " + " | ".join(
            f"{cell[v, k]['dice_mean']:.2f} ± {cell[v, k]['dice_std']:.2f}" if (v, k) in cell else "-"
            for k in labeled) + " |")
    lines += ["", f"Mean HD95 ({summary.get('hd95_unit', 'px')}) ± std over splits:", "", head, sep]
    for v in variants:
        lines.append(f"| {VARIANTS[v][0]} | " + " | ".join(
            f"{cell[v, k]['hd95_mean']:.2f} ± {cell[v, k]['hd95_std']:.2f}" if (v, k) in cell else "-"
            for k in labeled) + " |")
    if summary["gaps"]:
        lines += ["", "Paired gain in Dice points: mean ± std of the per-split differences [95% bootstrap CI over "
                  "splits; needs 2+ splits] (per split):", "", head, sep]
        gap = {(g["variant"], g.get("reference", "baseline"), g["labeled"]): g for g in summary["gaps"]}
        for v, ref in dict.fromkeys((g["variant"], g.get("reference", "baseline")) for g in summary["gaps"]):
            lines.append(f"| {VARIANTS[v][0]} - {VARIANTS[ref][0]} | " + " | ".join(
                f"{gap[v, ref, k]['gap_mean']:+.2f} ± {gap[v, ref, k]['gap_std']:.2f} " + _ci_text(gap[v, ref, k])
                + " ("
                + ", ".join(f"{x:+.1f}" for x in gap[v, ref, k]["per_split"]) + ")" if (v, ref, k) in gap else "-"
                for k in labeled) + " |")
    lines += ["", "std: population standard deviation over splits (ddof 0). Each split is one seed: its own patient "
              "split (with the built-in phantom, its own generated patients) and model initialisations; all "
              "variants of a split share the test cases.", "",
              f"Convention: {CONVENTION}"]
    return "\n".join(lines) + "\n"


def _ci_text(g: dict) -> str:
    if g.get("ci95_low") is None:
        return "[CI n/a]"
    return f"[{g['ci95_low']:+.2f}, {g['ci95_high']:+.2f}]"


def csv_text(summary: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["variant", "method", "labeled", "n_splits", "dice_mean", "dice_std", "hd95_mean", "hd95_std",
                "dice_per_split"])
    for r in summary["rows"]:
        w.writerow([r["variant"], r["label"], r["labeled"], r["n_splits"], f"{r['dice_mean']:.4f}",
                    f"{r['dice_std']:.4f}", f"{r['hd95_mean']:.4f}", f"{r['hd95_std']:.4f}",
                    ";".join(f"{x:.4f}" for x in r["dice_per_split"])])
    return buf.getvalue()


def bar_plot(summary: dict, variants: list[str], labeled: list[int], path: Path) -> None:
    """Grouped bars of mean Dice per labeled count, one colour per variant, ±std whiskers (PIL, no matplotlib)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    cell = {(r["variant"], r["labeled"]): r for r in summary["rows"]}
    W, H, left, bottom, top = max(520, 140 + 60 * len(variants) * len(labeled)), 360, 50, 60, 20
    img = Image.new("RGB", (W, H), "white")
    g = ImageDraw.Draw(img)
    plot_h = H - bottom - top

    def y(v: float) -> float:
        return H - bottom - plot_h * max(0.0, min(100.0, v)) / 100

    for t in range(0, 101, 20):
        g.line([(left, y(t)), (W - 10, y(t))], fill=(225, 225, 225))
        g.text((8, y(t) - 6), f"{t}", fill="black", font=font)
    group_w = (W - left - 20) / max(1, len(labeled))
    bar_w = group_w * 0.8 / max(1, len(variants))
    for gi, k in enumerate(labeled):
        x0 = left + gi * group_w + group_w * 0.1
        for vi, v in enumerate(variants):
            if (v, k) not in cell:
                continue
            r = cell[v, k]
            xa = x0 + vi * bar_w
            g.rectangle([xa, y(r["dice_mean"]), xa + bar_w - 2, y(0)], fill=COLORS[vi % len(COLORS)])
            xm = xa + bar_w / 2 - 1
            g.line([(xm, y(r["dice_mean"] - r["dice_std"])), (xm, y(r["dice_mean"] + r["dice_std"]))], fill="black")
        g.text((x0 + group_w * 0.3, H - bottom + 6), f"{k} labeled", fill="black", font=font)
    for vi, v in enumerate(variants):
        xa = left + (vi % 3) * 150
        ya = H - bottom + 24 + (vi // 3) * 14
        g.rectangle([xa, ya, xa + 10, ya + 10], fill=COLORS[vi % len(COLORS)])
        g.text((xa + 14, ya - 1), VARIANTS[v][0], fill="black", font=font)
    g.text((left, 4), "mean Dice (%) ± std over splits", fill="black", font=font)
    img.save(path)


def overlay_figure(ds, preds: dict[str, np.ndarray], test_idx: np.ndarray, path: Path, n: int = 4) -> None:
    """Rows: test slices with the most foreground; columns: image, ground truth, each variant's prediction."""
    from PIL import Image, ImageDraw, ImageFont

    palette = np.array([(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                        (145, 30, 180), (70, 240, 240)], np.float32)
    fg = np.array([(np.asarray(ds.labels[i]) > 0).sum() for i in test_idx])
    rows = test_idx[np.argsort(-fg, kind="stable")[:n]]
    order = {int(i): k for k, i in enumerate(test_idx)}

    def over(img: np.ndarray, lab: np.ndarray) -> np.ndarray:
        col = palette[lab % len(palette)]
        a = (lab > 0)[..., None] * 0.5
        return (img * (1 - a) + col * a).astype(np.uint8)

    tiles = []
    for i in rows:
        img = np.asarray(ds.images[i]).astype(np.float32)
        tiles.append([img.astype(np.uint8), over(img, np.asarray(ds.labels[i]))] +
                     [over(img, p[order[int(i)]]) for p in preds.values()])
    s = ds.images.shape[1]
    scale = -(-96 // s)  # tiles of at least 96 px
    cols = 2 + len(preds)
    canvas = Image.new("RGB", (cols * s * scale, len(rows) * s * scale + 16), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for c, name in enumerate(["image", "ground truth", *preds]):
        draw.text((c * s * scale + 2, 2), name[: s * scale // 6], fill="black", font=font)
    for r, row in enumerate(tiles):
        for c, t in enumerate(row):
            canvas.paste(Image.fromarray(t).resize((s * scale, s * scale), Image.NEAREST),
                         (c * s * scale, 16 + r * s * scale))
    canvas.save(path)


def write_tables(out: Path, cfg: AugPaintConfig, results: list[dict], variants: list[str], labeled: list[int],
                 splits: int) -> dict:
    """``table.md``, ``table.csv``, ``gains.csv`` and ``bar.png`` from the per-variant results; returns the summary.

    Shared by the in-process harness and the experiment pipeline's summarize task, so both write the same table.
    """
    summary = summarize(results, variants, labeled)
    title = (f"AugPaint experiment: {cfg.name} ({splits} split{'s' if splits > 1 else ''}, test mean over "
             f"classes and cases)")
    (out / "table.md").write_text(markdown(summary, variants, labeled, title))
    (out / "table.csv").write_text(csv_text(summary))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["variant", "reference", "labeled", "gain_mean", "gain_std", "ci95_low", "ci95_high",
                "gain_per_split"])
    for g in summary["gaps"]:
        w.writerow([g["variant"], g.get("reference", "baseline"), g["labeled"], f"{g['gap_mean']:.4f}", f"{g['gap_std']:.4f}",
                    "" if g["ci95_low"] is None else f"{g['ci95_low']:.4f}",
                    "" if g["ci95_high"] is None else f"{g['ci95_high']:.4f}",
                    ";".join(f"{x:.4f}" for x in g["per_split"])])
    (out / "gains.csv").write_text(buf.getvalue())
    bar_plot(summary, variants, labeled, out / "bar.png")
    return summary


def run_experiment(cfg: AugPaintConfig, out: str | Path, *, splits: int = 3, labeled: list[int] | None = None,
                   variants: list[str] | None = None, tracking_uri: str | None = None, force: bool = False) -> Path:
    """Run every variant over ``splits`` splits and each labeled count; write the tables and figures.

    Args:
        cfg: base config (``data.num_labeled`` is replaced by each labeled count).
        out: output folder (``table.md``, ``table.csv``, ``results.json``, ``bar.png``, ``overlays/``,
            ``work/`` with the stage artifacts).
        splits: independent splits (seeds ``cfg.seed`` .. ``cfg.seed + splits - 1``).
        labeled: labeled case counts (default ``[cfg.data.num_labeled]``).
        variants: names from ``VARIANTS`` (default: baseline, randaug, augpaint, cond_augpaint).
        tracking_uri: MLflow URI; ``none`` disables tracking.
        force: replace a finished experiment in ``out`` (its work folder too).
    """
    from .data.dataset import load_dataset
    from .segmentation.segmenters import load_segmenter
    from .infra.tracking import Tracker, start_parent_run, stage_run
    from .segmentation.train_seg import predict

    labeled = sorted(set(labeled or [cfg.data.num_labeled]))
    variants = list(variants or DEFAULT_VARIANTS)
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise AugPaintError(f"unknown variant(s) {', '.join(bad)}; choose from {', '.join(VARIANTS)}")
    if splits < 1 or not labeled or min(labeled) < 1:
        raise AugPaintError(f"--splits {splits} and --labeled {labeled}: need at least one split and counts >= 1")
    out = Path(out)
    if (out / ARTIFACT_FILE).exists():
        if not force:
            raise AugPaintError(f"{out}: experiment already finished (pass --force to run it again)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / ARTIFACT_FILE).unlink(missing_ok=True)
    track = tracking_uri not in ("none", "off")
    parent = ""
    if track:
        parent = start_parent_run(tracking_uri, cfg.tracking.experiment, f"experiment {cfg.name}",
                                  tags={"augpaint.kind": "experiment"}, params=cfg.flat())
    results: list[dict] = []
    t0 = time.time()

    def on_result(v: str, split: int, k: int, ev: dict, extra: dict) -> None:
        rec = {**result_record(v, split, k, ev), **extra}
        results.append(rec)
        (out / "results.partial.json").write_text(json.dumps(results, indent=1))
        log.info("experiment: split %d, %d labeled, %s: Dice %.2f, HD95 %.2f", split, k, v, 100 * rec["mean_dice"],
                 rec["mean_hd95"])
        if track:
            with stage_run(tracking_uri, parent, f"{v} split{split} k{k}", cfg.flat()) as tr:
                tr.set_tags({"augpaint.variant": v, "augpaint.split": str(split), "augpaint.labeled": str(k)})
                m = {"mean_dice": rec["mean_dice"], "mean_hd95": rec["mean_hd95"]}
                for c, val in ev["per_class"].items():
                    m[f"{c}_dice"], m[f"{c}_hd95"] = val["dice"], val["hd95"]
                for c, val in (ev.get("per_region") or {}).items():
                    m[f"{c}_dice"], m[f"{c}_hd95"] = val["dice"], val["hd95"]
                m.update({f"quality_{q}": x for q, x in (extra.get("quality") or {}).items()
                          if isinstance(x, (int, float)) and not isinstance(x, bool)})
                if extra.get("num_synthetic_kept") is not None:
                    m["num_synthetic_kept"] = extra["num_synthetic_kept"]
                tr.log_metrics(m)

    try:
        for split in range(splits):
            run_split(cfg, out / "work" / f"split{split}", split, labeled, variants, on_result)
    except BaseException:
        if track:
            from .infra.tracking import _client, resolve_uri

            _client(resolve_uri(tracking_uri)).set_terminated(parent, status="FAILED")
        raise
    summary = write_tables(out, cfg, results, variants, labeled, splits)
    (out / "overlays").mkdir(exist_ok=True)
    for k in labeled:  # split 0: the same test slices through every variant
        first = [r for r in results if r["split"] == 0 and r["labeled"] == k]
        ds = load_dataset(first[0]["paths"]["dataset"])
        test_idx = ds.where(split="test")
        if len(test_idx) == 0:
            continue
        preds = {VARIANTS[r["variant"]][0]: predict(load_segmenter(r["paths"]["segmenter"])[0], ds.images[test_idx])
                 for r in first}
        overlay_figure(ds, preds, test_idx, out / "overlays" / f"split0_k{k}.png")
    (out / "results.json").write_text(json.dumps({"results": results, "summary": summary, "splits": splits,
                                                  "labeled": labeled, "variants": variants,
                                                  "seconds": time.time() - t0}, indent=1))
    (out / "results.partial.json").unlink(missing_ok=True)
    write_artifact_meta(out, kind="report", stage="experiment", config=cfg.model_dump(mode="json"), seed=cfg.seed,
                        extra={"splits": splits, "labeled": labeled, "variants": variants,
                               "gaps": summary["gaps"], "seconds": time.time() - t0})
    if track:
        from .infra.tracking import _client, resolve_uri

        client = _client(resolve_uri(tracking_uri))
        tr = Tracker(client, parent)
        for g in summary["gaps"]:
            vs = "" if g.get("reference", "baseline") == "baseline" else f"_vs_{g['reference']}"
            tr.log_metrics({f"gap_{g['variant']}{vs}_k{g['labeled']}": g["gap_mean"]})
        for r in summary["rows"]:
            tr.log_metrics({f"{r['variant']}_k{r['labeled']}_dice": r["dice_mean"]})
        for f in ("table.md", "table.csv", "bar.png"):
            tr.log_artifact(out / f)
        tr.log_artifact(out / "overlays", "overlays")
        client.set_terminated(parent, status="FINISHED")
    return out


# ----------------------------------------------------------------------------------------------
# The experiment as a KFP pipeline (pipelines/experiment_pipeline.py): the same stages, one task each.

SPLIT_OVERRIDE = "split="  # pipeline override "split=N": seed + N, like run_split


def pipeline_config(config_yaml: str, overrides: list[str]) -> AugPaintConfig:
    """One experiment-pipeline task's config: the run's config with this task's ``key=value`` overrides.

    Args:
        config_yaml: the pipeline's config parameter.
        overrides: ``key.path=value`` strings; ``split=N`` makes it split N's config (:func:`split_config`,
            as in-process).
    """
    from .config import config_from_yaml_text

    split = [int(o[len(SPLIT_OVERRIDE):]) for o in overrides if o.startswith(SPLIT_OVERRIDE)]
    cfg = config_from_yaml_text(config_yaml, [o for o in overrides if not o.startswith(SPLIT_OVERRIDE)])
    return split_config(cfg, split[-1]) if split else cfg


def run_pipeline_stage(stage: str, config_yaml: str, overrides: list[str], out: str, *, tags: dict[str, str],
                       tracking_uri: str = "", parent_run_id: str = "", run_name: str | None = None,
                       **inputs) -> Path:
    """Component entry point of the experiment pipeline: config with overrides, an MLflow run tagged with the
    variant, split and labeled count (the compare view lines them up), errors as one line and exit 2.

    Args:
        stage: a ``stages.STAGES`` key, ``evaluate-one`` or ``summarize``.
        config_yaml: the pipeline's config parameter.
        overrides: this task's overrides (see :func:`pipeline_config`).
        out: output artifact folder.
        tags: MLflow tags (``augpaint.variant``, ``augpaint.split``, ``augpaint.labeled``).
        tracking_uri: MLflow URI; ``none`` disables.
        parent_run_id: the pipeline's parent MLflow run.
        run_name: MLflow run name (default: the stage).
        inputs: the stage function's inputs.
    """
    import sys

    from .infra.tracking import stage_run
    from .stages import stage_function

    local = {"evaluate-one": evaluate_variant, "summarize": summarize_records}
    try:
        cfg = pipeline_config(config_yaml, overrides)
        fn = local[stage] if stage in local else stage_function(stage)
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        with stage_run(tracking_uri, parent_run_id, run_name or stage, cfg.flat()) as tracker:
            if tracker is not None and tags:
                tracker.set_tags(tags)
            return fn(cfg, out=out, force=True, tracker=tracker, **inputs)
    except AugPaintError as err:
        print(f"augpaint {stage}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def evaluate_variant(cfg: AugPaintConfig, dataset: str | Path, segmenter: str | Path, out: str | Path, *,
                     variant: str, split: int, labeled: int, filtered: str | Path | None = None,
                     force: bool = False, tracker=None) -> Path:
    """Evaluate one variant's segmenter on the test split; ``record.json`` holds the harness's result record.

    Args:
        cfg: config.
        dataset: the (relabeled) dataset the segmenter trained on.
        segmenter: the variant's segmenter.
        out: output folder.
        variant: a ``VARIANTS`` key.
        split: split index.
        labeled: labeled case count.
        filtered: the variant's filtered pool (for its quality numbers), if it has one.
        force: replace an existing output.
        tracker: optional MLflow stage tracker (gets the metrics the harness logs per variant).
    """
    from .data.dataset import load_dataset
    from .infra.artifacts import atomic_dir, read_artifact_meta
    from .segmentation.evaluate import evaluate_model

    if variant not in VARIANTS:
        raise AugPaintError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    ev = evaluate_model(segmenter, load_dataset(dataset))
    rec = result_record(variant, int(split), int(labeled), ev)
    if filtered is not None:
        meta = read_artifact_meta(filtered)
        rec["quality"] = meta.get("quality") or {}
        rec["num_synthetic_kept"] = meta.get("num_kept")
    with atomic_dir(out, force=force) as tmp:
        (tmp / "record.json").write_text(json.dumps(rec))
        write_artifact_meta(tmp, kind="report", stage="evaluate-one", config=cfg.model_dump(mode="json"),
                            seed=cfg.seed, inputs={"dataset": dataset, "segmenter": segmenter,
                                                   **({"filtered": filtered} if filtered else {})},
                            extra={"variant": variant, "split": int(split), "labeled": int(labeled)})
    if tracker:
        m = {"mean_dice": rec["mean_dice"], "mean_hd95": rec["mean_hd95"]}
        for c, val in ev["per_class"].items():
            m[f"{c}_dice"], m[f"{c}_hd95"] = val["dice"], val["hd95"]
        m.update({f"quality_{q}": x for q, x in (rec.get("quality") or {}).items()
                  if isinstance(x, (int, float)) and not isinstance(x, bool)})
        if rec.get("num_synthetic_kept") is not None:
            m["num_synthetic_kept"] = rec["num_synthetic_kept"]
        tracker.log_metrics(m)
    return Path(out)


def _record(r: str | dict) -> dict:
    """An evaluate-one record: a dict, JSON text, or ``b64:`` + base64 of the JSON (the pipeline's form)."""
    import base64

    if isinstance(r, dict):
        return r
    try:
        return json.loads(base64.b64decode(r[4:]) if r.startswith("b64:") else r)
    except ValueError as err:
        raise AugPaintError(f"summarize: an evaluate-one record is not valid ({err})") from None


def summarize_records(cfg: AugPaintConfig, out: str | Path, *, records: list[str | dict], variants: list[str],
                      labeled: list[int], splits: int, force: bool = False, tracker=None) -> Path:
    """The pipeline's summarize task: the harness's tables from the evaluate-one records, plus ``chart.html``.

    Args:
        cfg: config (its name titles the table).
        out: output folder (``table.md``, ``table.csv``, ``gains.csv``, ``bar.png``, ``chart.html``,
            ``results.json``).
        records: evaluate-one records (dicts, JSON text or ``b64:`` JSON), one per variant, split and labeled count.
        variants: variant order of the table.
        labeled: labeled counts.
        splits: number of splits.
        force: replace an existing output.
        tracker: optional MLflow stage tracker (gets the gains and the table files).
    """
    import base64

    from .infra.artifacts import atomic_dir

    results = [_record(r) for r in records]
    want = {(v, s, k) for v in variants for s in range(splits) for k in labeled}
    got = {(r["variant"], r["split"], r["labeled"]) for r in results}
    if got != want:
        raise AugPaintError(f"summarize: records for {sorted(want - got)} missing, {sorted(got - want)} unexpected")
    results.sort(key=lambda r: (r["split"], r["labeled"], variants.index(r["variant"])))  # the harness's order
    with atomic_dir(out, force=force) as tmp:
        summary = write_tables(tmp, cfg, results, variants, labeled, splits)
        png = base64.b64encode((tmp / "bar.png").read_bytes()).decode("ascii")
        import html as _html

        (tmp / "chart.html").write_text(
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>AugPaint experiment</title></head><body>"
            f'<img alt="mean Dice per variant and labeled count" src="data:image/png;base64,{png}">'
            f"<pre>{_html.escape((tmp / 'table.md').read_text())}</pre></body></html>\n")
        (tmp / "results.json").write_text(json.dumps({"results": results, "summary": summary, "splits": splits,
                                                      "labeled": labeled, "variants": variants}, indent=1))
        write_artifact_meta(tmp, kind="report", stage="summarize", config=cfg.model_dump(mode="json"),
                            seed=cfg.seed, extra={"splits": splits, "labeled": labeled, "variants": variants,
                                                  "gaps": summary["gaps"]})
    if tracker:
        for g in summary["gaps"]:
            tracker.log_metrics({f"gap_{g['variant']}_k{g['labeled']}": g["gap_mean"]})
        for r in summary["rows"]:
            tracker.log_metrics({f"{r['variant']}_k{r['labeled']}_dice": r["dice_mean"]})
        for f in ("table.md", "table.csv", "bar.png"):
            tracker.log_artifact(Path(out) / f)
    return Path(out)
