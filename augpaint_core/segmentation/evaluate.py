"""Evaluate: Dice and HD95 per class on the test split, baseline vs AugPaint."""
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
from .segmenters import load_segmenter
from ..runtime import DevicePolicy, device_policy
from .train_seg import predict


def evaluate_model(model_path: str | Path, dataset, split: str = "test", policy: DevicePolicy | None = None
                   ) -> dict:
    """Per-class mean Dice/HD95 over the cases of ``split`` (slices stacked back into volumes).

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
    by_case: dict[str, list[int]] = defaultdict(list)
    for k, i in enumerate(idx):
        by_case[dataset.records[i]["case_id"]].append(k)
    per_case, per_case_region = {}, {}
    for case, ks in sorted(by_case.items()):
        ks = sorted(ks, key=lambda k: dataset.records[idx[k]]["slice_index"])
        rows = idx[ks]
        pred = predict(model, IndexedView([(dataset.images, rows)]), policy.batch_size, policy)
        gt = dataset.labels[rows]
        per_case[case] = case_metrics(pred, gt, dataset.num_classes)
        if dataset.regions:
            per_case_region[case] = region_metrics(pred, gt, dataset.regions)
    out = {"per_class": {}, "per_case": {c: {dataset.class_names[k - 1]: v for k, v in m.items()}
                                          for c, m in per_case.items()}}
    for k, name in enumerate(dataset.class_names, start=1):
        d = [m[k]["dice"] for m in per_case.values()]
        h = [m[k]["hd95"] for m in per_case.values()]
        out["per_class"][name] = {"dice": float(np.mean(d)), "dice_std": float(np.std(d)),
                                  "hd95": float(np.mean(h)), "hd95_std": float(np.std(h))}
    out["mean"] = {"dice": float(np.mean([v["dice"] for v in out["per_class"].values()])),
                   "hd95": float(np.mean([v["hd95"] for v in out["per_class"].values()]))}
    if dataset.regions:  # BraTS WT/TC/ET: unions of classes, scored like classes
        out["per_region"] = {
            name: {"dice": float(np.mean([m[name]["dice"] for m in per_case_region.values()])),
                   "hd95": float(np.mean([m[name]["hd95"] for m in per_case_region.values()]))}
            for name in dataset.regions}
    out["num_cases"] = len(per_case)
    return out


def markdown_table(results: dict[str, dict], class_names: list[str]) -> str:
    """Dice (%) and HD95 (px) per class and mean, one row per method."""
    head = "| method | " + " | ".join(f"{c} Dice" for c in class_names) + " | mean Dice | " + \
           " | ".join(f"{c} HD95" for c in class_names) + " | mean HD95 |"
    sep = "|" + "---|" * (2 * len(class_names) + 3)
    rows = [head, sep]
    for name, r in results.items():
        d = [f"{100 * r['per_class'][c]['dice']:.2f}" for c in class_names]
        h = [f"{r['per_class'][c]['hd95']:.2f}" for c in class_names]
        rows.append(f"| {name} | " + " | ".join(d) + f" | **{100 * r['mean']['dice']:.2f}** | " + " | ".join(h) +
                    f" | {r['mean']['hd95']:.2f} |")
    return "\n".join(rows)


def evaluate(cfg: AugPaintConfig, dataset: str | Path, baseline: str | Path, augpaint: str | Path,
             out: str | Path, *, force: bool = False, tracker=None) -> Path:
    """Stage 7: evaluate both segmenters on the same test split.

    Args:
        cfg: config.
        dataset: real slice dataset artifact.
        baseline: segmenter trained on labeled data only.
        augpaint: segmenter trained on labeled + filtered synthetic data.
        out: output report folder (``metrics.json``, ``report.md``).
        force: replace an existing output.
        tracker: optional MLflow stage tracker.
    """
    ds = open_dataset(dataset)  # memory-mapped: each case's slices are read when it is scored
    policy = device_policy(cfg.runtime)
    results = {"baseline": evaluate_model(baseline, ds, policy=policy),
               "augpaint": evaluate_model(augpaint, ds, policy=policy)}
    gain = 100 * (results["augpaint"]["mean"]["dice"] - results["baseline"]["mean"]["dice"])
    table = markdown_table(results, ds.class_names)
    if ds.regions:
        regions = {k: {"per_class": r["per_region"], "mean": {
            "dice": float(np.mean([v["dice"] for v in r["per_region"].values()])),
            "hd95": float(np.mean([v["hd95"] for v in r["per_region"].values()]))}} for k, r in results.items()}
        table += "\n\nEvaluation regions (" + ", ".join(f"{k} = {v}" for k, v in ds.regions.items()) + "):\n\n" + \
            markdown_table(regions, list(ds.regions))
    test_cases = sorted(results["baseline"]["per_case"])
    md = (f"# AugPaint evaluation: {cfg.name}\n\nTest split: {len(test_cases)} cases ({', '.join(test_cases)}), "
          f"the same for both models. Labeled training cases: {cfg.data.num_labeled}.\n\n{table}\n\n"
          f"AugPaint - baseline mean Dice: **{gain:+.2f}** points.\n\nConvention: {CONVENTION}\n")
    with atomic_dir(out, force=force) as tmp:
        (tmp / "metrics.json").write_text(json.dumps({**results, "dice_gain_points": gain,
                                                      "test_cases": test_cases, "convention": CONVENTION},
                                                     indent=1))
        (tmp / "report.md").write_text(md)
        write_artifact_meta(tmp, kind="report", stage="evaluate", config=cfg.model_dump(mode="json"),
                            seed=cfg.seed, inputs={"dataset": dataset, "baseline": baseline, "augpaint": augpaint},
                            extra={"runtime": policy.summary()})
    if tracker:
        m = {"dice_gain_points": gain}
        for name, r in results.items():
            m[f"{name}_mean_dice"] = r["mean"]["dice"]
            m[f"{name}_mean_hd95"] = r["mean"]["hd95"]
            for c, v in r["per_class"].items():
                m[f"{name}_{c}_dice"], m[f"{name}_{c}_hd95"] = v["dice"], v["hd95"]
        for t in (tracker, tracker.parent):  # final numbers also on the parent, for the runs compare view
            if t is not None:
                t.log_metrics(m)
                t.log_artifact(Path(out) / "report.md")
    return Path(out)
