"""Does the augmentation pay? The whole comparison of issue 17, in process, and its evidence.

Runs ``augpaint_core.experiment`` with 1 labeled patient over >= 5 splits on a preset (default: the demo on the
phantom) with the variants

    U-Net, U-Net + aug (seg.augment), Rand Aug, AugPaint, AugPaint + aug,
    oracle paste (real backgrounds: the ceiling for any generator),
    AugPaint with a random half / the bottom half / all samples (filter controls),

every one with the same segmenter budget, and prints

- the table: mean Dice per variant, and every paired gain (mean, 95% bootstrap CI over splits and over
  (split, test case) units, per split), with the issue's targets checked;
- generator quality per split: the AE's validation PSNR, the LDM's last loss, and the equal-size Fréchet
  distance (filter-scorer features) of the AugPaint and oracle pools to real slices, next to real-vs-real;
- filter statistics: samples in / kept and distinct source slices that survive each selection;
- where the baseline's errors are: false positives outside the kept boxes vs errors inside them;
- the time per stage kind and the projected time of the full run.

    .venv/bin/python benchmarks/evidence.py [--config configs/demo.yaml] [--splits 5] [--out runs/evidence]
        [--set KEY=VALUE ...] [--variants a,b,...]

``--reuse RUN`` copies the finished stages of an earlier run whose config they match (dataset, AE, LDM, the two
baselines), so a recipe change downstream of the generator (``--set inpaint.box_margin=8``, say) costs only
the inpainting, the filter and the AugPaint segmenters.

Designed for <= 90 minutes on 2 CPU cores at the demo budgets (5 splits x 9 segmenters); measure with
``--splits 1`` first: it prints the projection. An interrupted run continues from its finished stages.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from augpaint_core.config import AugPaintConfig, load_config
from augpaint_core.experiment import (VARIANTS, _truth_cfg, _variant_cfg, equal_size_fd, run_experiment,
                                     split_config)
from augpaint_core.infra.artifacts import ARTIFACT_FILE, read_artifact_meta
from augpaint_core.stages import STAGE_SECTIONS

DEFAULT_VARIANTS = ["baseline", "baseline_aug", "randaug", "augpaint", "augpaint_aug", "oracle_paste",
                    "augpaint_random50", "augpaint_bottom50", "augpaint_all"]
# More test patients than the demo's 15% (4 of 24): the paired differences need cases to be measured on.
DEFAULT_SETS = ["data.num_labeled=1", "data.split=[0.6,0.15,0.25]"]
TARGETS = [("augpaint", "baseline", 8.0), ("augpaint_aug", "baseline_aug", 3.0)]


class _StageTimes(logging.Handler):
    """Collects the experiment's 'experiment: <stage> in <s> s' lines, summed by stage kind."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seconds: dict[str, float] = defaultdict(float)

    def emit(self, record: logging.LogRecord) -> None:
        m = re.match(r"experiment: (\S+) in (\d+) s", record.getMessage())
        if m:
            kind = "segmenters (seg_*)" if m[1].startswith("seg_") else m[1]
            self.seconds[kind] += float(m[2])


def generator_quality(work: Path, k: int) -> list[dict]:
    """Per split: AE val PSNR, LDM last loss, equal-size FD of the AugPaint / oracle pools to real slices."""
    from augpaint_core.data.dataset import load_dataset
    from augpaint_core.segmentation.segmenters import load_segmenter
    from augpaint_core.segmentation.train_seg import predict_with_features

    rows = []
    for split_dir in sorted(work.glob("split*"), key=lambda p: int(p.name[5:])):
        row: dict = {"split": int(split_dir.name[5:])}
        if (split_dir / "ae").is_dir():
            row["ae_val_psnr"] = read_artifact_meta(split_dir / "ae").get("val_psnr")
        if (split_dir / "ldm").is_dir():
            hist = read_artifact_meta(split_dir / "ldm").get("history") or []
            row["ldm_last_loss"] = hist[-1]["loss"] if hist else None
        d = split_dir / f"k{k}"
        scorer = d / "flt_augpaint" / "scorer"
        if scorer.is_dir():
            model, info = load_segmenter(scorer)
            arch = info["seg_config"].get("arch", "unet")
            ds = load_dataset(d / "dataset")
            real = predict_with_features(model, arch, ds.images[ds.where(split="train")])[1]
            for pool in ("augpaint", "oracle"):
                if (d / f"syn_{pool}").is_dir():
                    syn = load_dataset(d / f"syn_{pool}")
                    row[f"fd_{pool}"] = equal_size_fd(real, predict_with_features(model, arch, syn.images)[1],
                                                      seed=row["split"])
        rows.append(row)
    return rows


def reuse_stages(src: Path, out: Path, cfg, splits: int, k: int) -> list[str]:
    """Copy stages of the run in ``src`` into ``out`` where their recorded config matches this run's.

    Only the sections that decide a stage's output are compared (``STAGE_SECTIONS``, and the seed), so an
    override that touches them makes the stage rerun.
    """
    copied = []
    for split in range(splits):
        c = split_config(cfg, split)
        c.data.num_labeled = k
        sw, dw = src / "work" / f"split{split}", out / "work" / f"split{split}"
        wants = {"ae": ("train-ae", c), "ldm": ("train-ldm", c), f"k{k}/dataset": ("preprocess", c),
                 f"k{k}/seg_baseline": ("train-seg", _variant_cfg(c, False)),
                 f"k{k}/seg_baseline_aug": ("train-seg", _variant_cfg(c, False, True))}
        if (sw / f"k{k}/dataset" / ARTIFACT_FILE).is_file():
            wants[f"k{k}/dataset_truth"] = ("preprocess", _truth_cfg(c, sw / f"k{k}/dataset"))
        for rel, (stage, want) in wants.items():
            a, b = sw / rel, dw / rel
            if b.exists() or not (a / ARTIFACT_FILE).is_file():
                continue
            # Through the schema, so that a field added since (at its default) still matches.
            had = AugPaintConfig.model_validate(read_artifact_meta(a)["config"]).model_dump(mode="json")
            need = want.model_dump(mode="json")
            if all(had.get(sec) == need[sec] for sec in STAGE_SECTIONS[stage]) and had.get("seed") == need["seed"]:
                b.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(a, b)
                copied.append(f"split{split}/{rel}")
    return copied


def seg_convergence(work: Path, k: int, variants: list[str]) -> list[dict]:
    """Per variant, over splits: is validation Dice still rising when the segmenter's budget ends?"""
    rows = []
    for v in variants:
        hists = [read_artifact_meta(p).get("history") or [] for p in sorted(work.glob(f"split*/k{k}/seg_{v}"))]
        hists = [[h["val_dice"] for h in hist if h.get("val_dice") is not None] for hist in hists]
        hists = [h for h in hists if len(h) >= 2]
        if hists:
            rows.append({"variant": v, "n": len(hists),
                         "best_at_last": sum(h[-1] >= max(h) for h in hists),
                         "last_half_gain": float(np.mean([h[-1] - h[len(h) // 2 - 1] for h in hists]) * 100)})
    return rows


def _f(x, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def report(out: Path, k: int, seconds: float, stage_times: dict[str, float]) -> str:
    res = json.loads((out / "results.json").read_text())
    results, summary, splits = res["results"], res["summary"], res["splits"]
    variants = res["variants"]
    lines = [f"## Evidence: {splits} split(s), {k} labeled patient(s), {time.strftime('%Y-%m-%d')}", ""]
    lines += ["| variant | mean Dice | per split |", "|---|---|---|"]
    for r in summary["rows"]:
        lines.append(f"| {r['label']} | {r['dice_mean']:.2f} ± {r['dice_std']:.2f} | "
                     + ", ".join(f"{x:.1f}" for x in r["dice_per_split"]) + " |")
    lines += ["", "Paired gains (Dice points): mean, 95% bootstrap CI over splits, over (split, test case), per split",
              "", "| comparison | mean | CI splits | CI cases (n) | per split |", "|---|---|---|---|---|"]
    gains = {(g["variant"], g["reference"]): g for g in summary["gaps"]}
    for g in summary["gaps"]:
        cc = g.get("ci95_cases")
        lines.append(f"| {VARIANTS[g['variant']][0]} - {VARIANTS[g['reference']][0]} | {g['gap_mean']:+.2f} | "
                     f"[{g['ci95'][0]:+.1f}, {g['ci95'][1]:+.1f}] | "
                     + (f"[{cc[0]:+.1f}, {cc[1]:+.1f}] ({g['num_case_pairs']})" if cc else "-") + " | "
                     + ", ".join(f"{x:+.1f}" for x in g["per_split"]) + " |")
    lines += ["", "Targets (issue 17, >= 5 splits):"]
    for v, ref, need in TARGETS:
        g = gains.get((v, ref))
        if g is None:
            lines.append(f"- {v} - {ref} >= {need}: not run")
            continue
        ok = g["gap_mean"] >= need and g["ci95"][0] > 0 and splits >= 5
        lines.append(f"- {VARIANTS[v][0]} - {VARIANTS[ref][0]} >= {need:+.0f} with the CI above 0: "
                     f"{'MET' if ok else 'NOT MET'} ({g['gap_mean']:+.2f}, CI [{g['ci95'][0]:+.1f}, "
                     f"{g['ci95'][1]:+.1f}], {splits} splits)")
    lines += ["", "Generator quality (equal-size FD on the filter scorer's features; real-vs-real for scale):", "",
              "| split | AE val PSNR (dB) | LDM last loss | n | FD AugPaint | FD oracle | FD real-real |",
              "|---|---|---|---|---|---|---|"]
    for q in generator_quality(out / "work", k):
        fa, fo = q.get("fd_augpaint") or {}, q.get("fd_oracle") or {}
        lines.append(f"| {q['split']} | {_f(q.get('ae_val_psnr'))} | {_f(q.get('ldm_last_loss'), '.4f')} | "
                     f"{fa.get('n', '-')} | {_f(fa.get('fd_synthetic'))} | {_f(fo.get('fd_synthetic'))} | "
                     f"{_f(fa.get('fd_real_real'))} |")
    lines += ["", "Filter statistics (mean over splits):", "",
              "| pool | selection | kept / in | distinct sources kept / pool | mean Dice |", "|---|---|---|---|---|"]
    for v in variants:
        rs = [r for r in results if r["variant"] == v and r["labeled"] == k and r.get("filter")]
        if not rs:
            continue
        f = [r["filter"] for r in rs]
        lines.append(f"| {VARIANTS[v][0]} | {f[0]['selection']} | {np.mean([x['num_kept'] for x in f]):.1f} / "
                     f"{np.mean([x['num_in'] or 0 for x in f]):.1f} | "
                     f"{np.mean([x['distinct_sources_kept'] for x in f]):.1f} / "
                     f"{np.mean([x['distinct_sources_pool'] for x in f]):.1f} | "
                     f"{100 * np.mean([r['mean_dice'] for r in rs]):.2f} |")
    lines += ["", "Where the test errors are (pixels, summed over splits): false positives outside the kept boxes "
              "(what a better background can teach away) vs errors inside them:", "",
              "| variant | FP outside boxes | errors inside boxes | outside share |", "|---|---|---|---|"]
    for v in variants:
        es = [r["errors"] for r in results if r["variant"] == v and r["labeled"] == k and r.get("errors")]
        if es:
            o, i = sum(e["fp_outside_boxes"] for e in es), sum(e["errors_inside_boxes"] for e in es)
            lines.append(f"| {VARIANTS[v][0]} | {o} | {i} | {o / max(1, o + i):.1%} |")
    lines += ["", "Segmenter budget: is validation Dice still rising at the last check?", "",
              "| variant | splits with the best check last | val Dice gain over the second half (points) |",
              "|---|---|---|"]
    for r in seg_convergence(out / "work", k, variants):
        lines.append(f"| {VARIANTS[r['variant']][0]} | {r['best_at_last']} / {r['n']} | {r['last_half_gain']:+.2f} |")
    oracle = [read_artifact_meta(p) for p in sorted((out / "work").glob(f"split*/k{k}/syn_oracle"))]
    if oracle:
        vis = sum(m.get("pairs_with_visible_background_foreground") or 0 for m in oracle)
        lines += ["", f"Oracle paste: {sum(m['num_samples'] for m in oracle)} pairs, "
                  + (f"{vis} with background structures left visible (labeled with their true class)"
                     if all(m.get("truth") for m in oracle) else "pasted blind (no truth labels)")]
    lines += ["", f"Time: {seconds:.0f} s for {splits} split(s) ({seconds / splits:.0f} s per split; "
              f"{5 * seconds / splits / 60:.0f} min projected for 5 splits). Stage seconds (all splits): "
              + ", ".join(f"{kk} {v:.0f}" for kk, v in sorted(stage_times.items(), key=lambda kv: -kv[1]))]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--labeled", type=int, default=1)
    ap.add_argument("--out", default="runs/evidence")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (after "
                    "the evidence defaults " + " ".join(DEFAULT_SETS) + ")")
    ap.add_argument("--force", action="store_true", help="replace a finished run in --out")
    ap.add_argument("--reuse", type=Path, help="an earlier run folder: copy its stages whose config matches")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    times = _StageTimes()
    exp_log = logging.getLogger("augpaint_core.experiment")
    exp_log.setLevel(logging.INFO)
    exp_log.addHandler(times)
    cfg = load_config(args.config, DEFAULT_SETS + [f"data.num_labeled={args.labeled}"] + args.set)
    out = Path(args.out)
    t0 = time.time()
    if args.reuse:
        got = reuse_stages(args.reuse, out, cfg, args.splits, args.labeled)
        print(f"reused {len(got)} stages from {args.reuse}: {', '.join(got) or 'none matched'}", flush=True)
    if not (out / "results.json").is_file() or args.force:
        run_experiment(cfg, out, splits=args.splits, labeled=[args.labeled], variants=args.variants.split(","),
                       tracking_uri="none", force=args.force)
    seconds = json.loads((out / "results.json").read_text()).get("seconds") or time.time() - t0
    text = report(out, args.labeled, seconds, times.seconds)
    (out / "evidence.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
