"""``augpaint`` command line: every stage, the whole pipeline, compile and the phantom.

``run`` and ``compile`` live in the KFP layer (``pipelines/``); they are loaded
by module name only when asked for, so the core never imports kfp.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from .config import FORMATS, load_config
from .errors import AugPaintError

STAGE_INPUTS = {
    "preprocess": [("--in", "input_dir", False, "raw dataset folder or s3:// prefix (default: data.path, else the "
                                                "built-in phantom)")],
    "train-ae": [("--in", "dataset", True, "slice dataset artifact")],
    "train-ldm": [("--in", "dataset", True, "slice dataset artifact"), ("--ae", "ae_path", True, "AE artifact")],
    "inpaint": [("--in", "dataset", True, "slice dataset artifact"), ("--ae", "ae_path", True, "AE artifact"),
                ("--ldm", "ldm_path", True, "LDM artifact")],
    "rand-aug": [("--in", "dataset", True, "slice dataset artifact")],
    "filter": [("--in", "dataset", True, "slice dataset artifact"),
               ("--synthetic", "synthetic", True, "synthetic dataset from inpaint (or rand-aug)"),
               ("--scorer", "scorer", False, "reuse a trained scorer (a filter output's scorer/ folder)")],
    "train-seg": [("--in", "dataset", True, "slice dataset artifact"),
                  ("--synthetic", "synthetic", False, "filtered synthetic dataset (omit for the baseline)")],
    "evaluate": [("--in", "dataset", True, "slice dataset artifact"),
                 ("--baseline", "baseline", True, "baseline segmenter"),
                 ("--augpaint", "augpaint", True, "AugPaint segmenter")],
}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML preset, e.g. configs/demo.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set inpaint.samples_per_pair=3")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="augpaint", description="AugPaint: diffusion inpainting augmentation")
    sub = ap.add_subparsers(dest="command", required=True)
    for stage, inputs in STAGE_INPUTS.items():
        p = sub.add_parser(stage, help=f"run the {stage} stage")
        _common(p)
        for flag, dest, req, help_ in inputs:
            p.add_argument(flag, dest=dest, required=req, help=help_)
        p.add_argument("--out", required=True, help="output artifact folder")
        p.add_argument("--force", action="store_true", help="replace an existing output")
        p.add_argument("--tracking-uri", default=None, help="MLflow URI (default $MLFLOW_TRACKING_URI or "
                                                           "sqlite:///mlflow.db; 'none' disables)")
        p.add_argument("--parent-run-id", default="", help="MLflow parent run")
        if stage == "train-seg":
            p.add_argument("--name", default=None, help="baseline or augpaint (for logs)")
        if stage == "preprocess":
            p.add_argument("--format", dest="fmt", default=None, choices=FORMATS,
                           help="raw layout (default data.format, auto-detected)")
            p.add_argument("--workers", type=int, default=None, help="reader processes (default data.workers; "
                                                                     "0 = one per core)")
            p.add_argument("--on-error", dest="on_error", default=None, choices=["fail", "skip"],
                           help="a bad case stops the run (fail, default) or is skipped and reported")
    p = sub.add_parser("run", help="run the whole pipeline locally through kfp.local")
    _common(p)
    p.add_argument("--out", default="runs/latest", help="run folder (pipeline root, artifacts)")
    p.add_argument("--tracking-uri", default=None)
    p = sub.add_parser("compile", help="compile the KFP pipeline to YAML")
    p.add_argument("--out", default="augpaint_pipeline.yaml")
    p.add_argument("--image", default=None, help="component base image (default $AUGPAINT_IMAGE)")
    p = sub.add_parser("experiment", help="baselines vs AugPaint over splits and labeled counts (Table 1 layout)")
    _common(p)
    p.add_argument("--out", required=True, help="output folder: table.md/csv, results.json, bar.png, overlays/")
    p.add_argument("--splits", type=int, default=3, help="independent splits (seeds seed..seed+splits-1)")
    p.add_argument("--labeled", default=None, help="labeled case counts, e.g. 1,2,5 (default data.num_labeled)")
    p.add_argument("--variants", default=None, help="comma list from baseline, unimatch, randaug, augpaint, "
                                                   "cond_augpaint, augpaint_unimatch, augpaint_strict (default: the first, "
                                                   "randaug, augpaint, cond_augpaint)")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI ('none' disables)")
    p.add_argument("--force", action="store_true", help="replace a finished experiment")
    p = sub.add_parser("make-phantom", help="write the built-in phantom in nnU-Net v2 raw format")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cases", type=int, default=20)
    p.add_argument("--slices", type=int, default=10)
    p.add_argument("--size", type=int, default=96)
    p = sub.add_parser("make-fixture", help="write a tiny fake dataset in a real raw layout (to try preprocess)")
    p.add_argument("--format", dest="fmt", required=True,
                   choices=["acdc", "msd_brats", "synapse", "isic", "nnunet", "nnunet_png"])
    p.add_argument("--out", required=True)
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    return ap


def _print_preprocess_report(out: Path) -> None:
    import json

    rep = json.loads((Path(out) / "preprocess_report.json").read_text())
    counts = ", ".join(f"{k} {v}" for k, v in rep["slice_counts"].items() if v)
    print(f"preprocess: {rep['format']} '{rep['dataset']}': {rep['cases_read']} cases, {rep['num_slices']} slices "
          f"({counts}) at {rep['slices_per_s']} slices/s with {rep['workers']} worker(s)")
    if rep["skipped"]:
        print(f"preprocess: skipped {rep['cases_skipped']} case(s) (listed in {Path(out) / 'preprocess_report.json'}):")
        for s in rep["skipped"]:
            print(f"  {s['error']}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in STAGE_INPUTS:
            from .stages import run_stage

            cfg = load_config(args.config, args.set)
            inputs = {dest: getattr(args, dest) for _, dest, _, _ in STAGE_INPUTS[args.command]}
            inputs = {k: v for k, v in inputs.items() if v is not None or k == "input_dir"}
            if args.command == "train-seg":
                inputs["name"] = args.name
            if args.command == "preprocess":
                if args.on_error:
                    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"on_error": args.on_error})})
                inputs.update(fmt=args.fmt, workers=args.workers, progress=True)
            out = run_stage(args.command, cfg, args.out, tracking_uri=args.tracking_uri,
                            parent_run_id=args.parent_run_id, force=args.force, **inputs)
            print(f"{args.command}: wrote {out}")
            if args.command == "preprocess":
                _print_preprocess_report(out)
        elif args.command == "experiment":
            import logging

            from .experiment import run_experiment

            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
            cfg = load_config(args.config, args.set)
            try:
                labeled = [int(x) for x in args.labeled.split(",")] if args.labeled else None
            except ValueError:
                raise AugPaintError(f"--labeled {args.labeled!r}: expected comma-separated integers") from None
            variants = [v.strip() for v in args.variants.split(",")] if args.variants else None
            out = run_experiment(cfg, args.out, splits=args.splits, labeled=labeled, variants=variants,
                                 tracking_uri=args.tracking_uri, force=args.force)
            print((Path(out) / "table.md").read_text())
            print(f"experiment: wrote {out}")
        elif args.command == "make-phantom":
            from .phantom import write_phantom

            out = write_phantom(args.out, seed=args.seed, num_cases=args.cases, slices=args.slices, size=args.size)
            print(f"make-phantom: wrote {out}")
        elif args.command == "make-fixture":
            from .fakedata import write_fake_dataset

            out = write_fake_dataset(args.fmt, args.out, num_cases=args.cases, seed=args.seed)
            print(f"make-fixture: wrote {out}")
        elif args.command == "run":
            cfg = load_config(args.config, args.set)  # fail fast, before kfp starts
            importlib.import_module("pipelines.local").run_local(cfg, Path(args.out), args.tracking_uri)
        elif args.command == "compile":
            out = importlib.import_module("pipelines.compile").compile_pipeline(args.out, image=args.image)
            print(f"compile: wrote {out}")
    except AugPaintError as err:
        print(f"augpaint {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
