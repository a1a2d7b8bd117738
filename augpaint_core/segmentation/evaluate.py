"""Evaluate: Dice and HD95 per class (and per region) on the test split, baseline vs AugPaint."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..infra.artifacts import atomic_dir, write_artifact_meta
from ..data.dataset import IndexedView, open_dataset
from ..config import AugPaintConfig
from ..errors import AugPaintError
from .metrics import CONVENTION, case_metrics, region_metrics
from .report import report_html
from .segmenters import load_segmenter
from ..runtime import DevicePolicy, device_policy
from .train_seg import predict


def hd95_unit(dataset, idx) -> str:
    """``mm`` when every slice of ``idx`` knows its source spacing (NIfTI), else ``px`` for all of them."""
    return "mm" if all(dataset.records[int(i)].get("spacing_mm") for i in idx) else "px"


def evaluate_model(model_path: str | Path, dataset, split: str = "test", policy: DevicePolicy | None = None
                   ) -> dict:
    """Per-class (and per-region) mean Dice/HD95 over the cases of ``split`` (slices stacked back into volumes).

    HD95 is in mm with each case's source spacing when every case has one, else in pixels
    (``hd95_unit``). With evaluation regions (BraTS WT/TC/ET) ``mean`` is the region mean, the
    numbers the paper reports; ``class_mean`` is the mean over the raw classes either way.
    One case is predicted and held at a time (its slices read from the memory-mapped shards).

    Args:
        model_path: segmenter artifact.
        dataset: the slice dataset (``open_dataset`` or in memory).
        split: which split to score.
        policy: device and precision (default: the ``runtime`` defaults).
    """
    policy = policy or device_policy(None)
    model, info = load_segmenter(model_path)
    model = model.to(policy.device)
    if info["num_classes"] != dataset.num_classes:
        raise AugPaintError(f"{model_path}: model has {info['num_classes']} classes, dataset "
                            f"{dataset.num_classes}")
    idx = dataset.where(split=split)
    if len(idx) == 0:
        raise AugPaintError(f"dataset has no {split} slices")
    unit = hd95_unit(dataset, idx)
    by_case: dict[str, list[int]] = defaultdict(list)
    for k, i in enumerate(idx):
        by_case[dataset.records[i]["case_id"]].append(k)
    per_case, per_case_region = {}, {}
    for case, ks in sorted(by_case.items()):
        ks = sorted(ks, key=lambda k: dataset.records[idx[k]]["slice_index"])
        rows = idx[ks]
        pred = predict(model, IndexedView([(dataset.images, rows)]), policy.batch_size, policy)
        gt = dataset.labels[rows]
        spacing = dataset.records[rows[0]]["spacing_mm"] if unit == "mm" else None
        per_case[case] = case_metrics(pred, gt, dataset.num_classes, spacing)
        if dataset.regions:
            per_case_region[case] = region_metrics(pred, gt, dataset.regions, spacing)
    out = {"per_class": {}, "per_case": {c: {dataset.class_names[k - 1]: v for k, v in m.items()}
                                          for c, m in per_case.items()}}
    for k, name in enumerate(dataset.class_names, start=1):
        d = [m[k]["dice"] for m in per_case.values()]
        h = [m[k]["hd95"] for m in per_case.values()]
        out["per_class"][name] = {"dice": float(np.mean(d)), "dice_std": float(np.std(d)),
                                  "hd95": float(np.mean(h)), "hd95_std": float(np.std(h))}
    out["class_mean"] = {"dice": float(np.mean([v["dice"] for v in out["per_class"].values()])),
                         "hd95": float(np.mean([v["hd95"] for v in out["per_class"].values()]))}
    out["mean"] = out["class_mean"]
    if dataset.regions:  # BraTS WT/TC/ET: unions of classes, scored like classes; the headline
        out["per_region"] = {
            name: {"dice": float(np.mean([m[name]["dice"] for m in per_case_region.values()])),
                   "hd95": float(np.mean([m[name]["hd95"] for m in per_case_region.values()]))}
            for name in dataset.regions}
        out["mean"] = {"dice": float(np.mean([v["dice"] for v in out["per_region"].values()])),
                       "hd95": float(np.mean([v["hd95"] for v in out["per_region"].values()]))}
    out["mean_over"] = "regions" if dataset.regions else "classes"
    out["hd95_unit"] = unit
    out["num_cases"] = len(per_case)
    return out


def markdown_table(results: dict[str, dict], class_names: list[str], unit: str = "px", key: str = "per_class",
                   mean: str = "mean") -> str:
    """Dice (%) and HD95 (``unit``) per class (or region, ``key``) and their mean, one row per method."""
    head = "| method | " + " | ".join(f"{c} Dice" for c in class_names) + " | mean Dice | " + \
           " | ".join(f"{c} HD95 ({unit})" for c in class_names) + f" | mean HD95 ({unit}) |"
    sep = "|" + "---|" * (2 * len(class_names) + 3)
    rows = [head, sep]
    for name, r in results.items():
        d = [f"{100 * r[key][c]['dice']:.2f}" for c in class_names]
        h = [f"{r[key][c]['hd95']:.2f}" for c in class_names]
        rows.append(f"| {name} | " + " | ".join(d) + f" | **{100 * r[mean]['dice']:.2f}** | " + " | ".join(h) +
                    f" | {r[mean]['hd95']:.2f} |")
    return "\n".join(rows)


def evaluate(cfg: AugPaintConfig, dataset: str | Path, baseline: str | Path, augpaint: str | Path,
             out: str | Path, *, force: bool = False, tracker=None, synthetic: str | Path | None = None,
             filtered: str | Path | None = None) -> Path:
    """Stage 7: evaluate both segmenters on the same test split.

    Args:
        cfg: config.
        dataset: real slice dataset artifact.
        baseline: segmenter trained on labeled data only.
        augpaint: segmenter trained on labeled + filtered synthetic data.
        out: output report folder (``metrics.json``, ``report.md``, ``report.html``).
        force: replace an existing output.
        tracker: optional MLflow stage tracker.
        synthetic: optional unfiltered synthetic dataset, for report.html's inpainting grid.
        filtered: optional filter output, for the grid's kept/rejected marks and the generator quality.
    """
    ds = open_dataset(dataset)  # memory-mapped: each case's slices are read when it is scored
    policy = device_policy(cfg.runtime)
    results = {"baseline": evaluate_model(baseline, ds, policy=policy),
               "augpaint": evaluate_model(augpaint, ds, policy=policy)}
    # With regions (BraTS) the headline mean and the gain are over the regions, as the paper reports them.
    gain = 100 * (results["augpaint"]["mean"]["dice"] - results["baseline"]["mean"]["dice"])
    unit = results["baseline"]["hd95_unit"]
    table = markdown_table(results, ds.class_names, unit, mean="class_mean")
    if ds.regions:
        table = ("Evaluation regions (" + ", ".join(f"{k} = {v}" for k, v in ds.regions.items()) +
                 "; their mean is the headline):\n\n" + markdown_table(results, list(ds.regions), unit, "per_region") +
                 "\n\nClasses:\n\n" + table)
    test_cases = sorted(results["baseline"]["per_case"])
    md = (f"# AugPaint evaluation: {cfg.name}\n\nTest split: {len(test_cases)} cases ({', '.join(test_cases)}), "
          f"the same for both models. Labeled training cases: {cfg.data.num_labeled}.\n\n{table}\n\n"
          f"AugPaint - baseline mean Dice: **{gain:+.2f}** points.\n\nConvention: {CONVENTION}\n")
    with atomic_dir(out, force=force) as tmp:
        (tmp / "metrics.json").write_text(json.dumps({**results, "dice_gain_points": gain,
                                                      "mean_over": results["baseline"]["mean_over"],
                                                      "hd95_unit": unit, "test_cases": test_cases,
                                                      "convention": CONVENTION}, indent=1))
        (tmp / "report.md").write_text(md)
        (tmp / "report.html").write_text(report_html(
            f"AugPaint evaluation: {cfg.name}", ds, results, {"baseline": baseline, "augpaint": augpaint},
            synthetic=synthetic, filtered=filtered, intro=f"Test split: {len(test_cases)} cases, the same for both "
            f"models. Labeled training cases: {cfg.data.num_labeled}. AugPaint - baseline mean Dice: {gain:+.2f}."))
        write_artifact_meta(tmp, kind="report", stage="evaluate", config=cfg.model_dump(mode="json"),
                            seed=cfg.seed, inputs={"dataset": dataset, "baseline": baseline, "augpaint": augpaint,
                                                   **({"synthetic": synthetic} if synthetic else {}),
                                                   **({"filtered": filtered} if filtered else {})},
                            extra={"runtime": policy.summary()})
    if tracker:
        m = {"dice_gain_points": gain}
        for name, r in results.items():
            m[f"{name}_mean_dice"] = r["mean"]["dice"]
            m[f"{name}_mean_hd95"] = r["mean"]["hd95"]
            m[f"{name}_class_mean_dice"] = r["class_mean"]["dice"]
            for c, v in {**r["per_class"], **r.get("per_region", {})}.items():
                m[f"{name}_{c}_dice"], m[f"{name}_{c}_hd95"] = v["dice"], v["hd95"]
        for t in (tracker, tracker.parent):  # final numbers also on the parent, for the runs compare view
            if t is not None:
                t.log_metrics(m)
                t.log_artifact(Path(out) / "report.md")
                t.log_artifact(Path(out) / "report.html")
    return Path(out)
