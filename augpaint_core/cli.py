"""``augpaint`` command line: every stage, the whole pipeline, compile, export and the phantom.

``run`` and ``compile`` live in the KFP layer (``pipelines/``); they are loaded
by module name only when asked for, so the core never imports kfp.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from .config import FORMATS, load_config
from .errors import AugPaintError

STAGE_INPUTS = {
    "preprocess": [("--in", "input_dir", False, "raw dataset folder or s3:// prefix (default: data.path, else the "
                                                "built-in phantom)")],
    "relabel": [("--in", "dataset", True, "preprocessed dataset with at least data.num_labeled labeled cases")],
    "train-ae": [("--in", "dataset", True, "slice dataset artifact")],
    "train-ldm": [("--in", "dataset", True, "slice dataset artifact"), ("--ae", "ae_path", True, "AE artifact")],
    "train-pixel": [("--in", "dataset", True, "slice dataset artifact")],
    "inpaint": [("--in", "dataset", True, "slice dataset artifact"),
                ("--ae", "ae_path", False, "AE artifact (not used by inpaint.sampler=repaint)"),
                ("--ldm", "ldm_path", True, "LDM artifact, or the train-pixel model for inpaint.sampler=repaint")],
    "merge-shards": [],
    "rand-aug": [("--in", "dataset", True, "slice dataset artifact")],
    "filter": [("--in", "dataset", True, "slice dataset artifact"),
               ("--synthetic", "synthetic", True, "synthetic dataset from inpaint (or rand-aug)"),
               ("--scorer", "scorer", False, "reuse a trained scorer (a filter output's scorer/ folder)")],
    "train-seg": [("--in", "dataset", True, "slice dataset artifact"),
                  ("--synthetic", "synthetic", False, "filtered synthetic dataset (omit for the baseline)")],
    "evaluate": [("--in", "dataset", True, "slice dataset artifact"),
                 ("--baseline", "baseline", True, "baseline segmenter"),
                 ("--augpaint", "augpaint", True, "AugPaint segmenter"),
                 ("--synthetic", "synthetic", False, "inpaint output, for report.html's inpainting grid"),
                 ("--filtered", "filtered", False, "filter output, for the grid's kept/rejected marks and quality")],
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
        if stage == "inpaint":
            p.add_argument("--shard", type=int, default=0, help="which shard of the work to do (0-based)")
            p.add_argument("--num-shards", type=int, default=1, help="shards the work is cut into")
        if stage == "merge-shards":
            p.add_argument("--in", dest="shard_dirs", action="append", required=True,
                           help="an inpaint shard artifact (repeat for every shard)")
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
    p = sub.add_parser("expand", help="one dataset-expansion round locally through kfp.local")
    _common(p)
    p.add_argument("--incoming", required=True, help="raw data prefix (s3:// or folder) where new cases arrive")
    p.add_argument("--versions", required=True, help="dataset versions root (s3:// or folder)")
    p.add_argument("--out", default="runs/expand", help="run folder (pipeline root)")
    p.add_argument("--tracking-uri", default=None, help="MLflow (also the model registry)")
    p.add_argument("--retrain", action="store_true", help="retrain AE/LDM instead of reusing the registered ones")
    p.add_argument("--model-prefix", default="augpaint")
    p = sub.add_parser("compile", help="compile the KFP pipeline to YAML")
    p.add_argument("--out", default="augpaint_pipeline.yaml")
    p.add_argument("--image", default=None, help="component base image (default $AUGPAINT_IMAGE)")
    _cluster_args(p)
    _experiment_args(p)
    for name, help_ in (("submit", "create a KFP run on a cluster"),
                        ("schedule", "create a recurring KFP run (6-field cron, one at a time, no catch-up)")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--host", required=True, help="KFP API URL (token from $KFP_TOKEN if needed)")
        _cluster_args(p)
        p.add_argument("--package", default=None, help="compiled pipeline YAML (default: compile now)")
        p.add_argument("--image", default=None, help="component image when compiling here")
        p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="pipeline parameter")
        p.add_argument("--experiment", default="augpaint", help="KFP experiment")
        p.add_argument("--namespace", default=None, help="Kubeflow profile namespace")
        if name == "submit":
            p.add_argument("--run-name", default=None)
        else:
            p.add_argument("--cron", required=True, help="seconds first, e.g. '0 0 3 * * 1' (Mondays 03:00)")
            p.add_argument("--name", required=True, help="recurring run name")
    p = sub.add_parser("runs", help="list the newest KFP runs")
    p.add_argument("--host", required=True)
    p.add_argument("--experiment", default=None)
    p.add_argument("--namespace", default=None)
    p.add_argument("--limit", type=int, default=20)
    p = sub.add_parser("doctor", help="check a Kubeflow profile namespace before submitting (one line per check)")
    p.add_argument("--namespace", default=None, help="profile namespace (default: the kubeconfig context's)")
    p.add_argument("--host", default=None, help="KFP API URL, to ask it its version (default: read the "
                                                "kubeflow/ml-pipeline deployment)")
    p.add_argument("--config", default=None, help="preset whose cluster section the pipeline is compiled with")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--image", default=None, help="component image (default $AUGPAINT_IMAGE or the components' "
                                                 "default)")
    p.add_argument("--kubeconfig", default=None, help="default $KUBECONFIG, ~/.kube/config, else in-cluster")
    p.add_argument("--context", default=None, help="kubeconfig context")
    p = sub.add_parser("sync-tracking", help="replay MLflow records kept while the server was down")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--spool", default=None, help="spool folder or s3:// prefix (default $AUGPAINT_MLFLOW_SPOOL)")
    p = sub.add_parser("experiment", help="baselines vs AugPaint over splits and labeled counts (Table 1 layout)")
    _common(p)
    p.add_argument("--out", required=True, help="output folder: table.md/csv, results.json, bar.png, overlays/")
    p.add_argument("--splits", type=int, default=3, help="independent splits (seeds seed..seed+splits-1)")
    p.add_argument("--labeled", default=None, help="labeled case counts, e.g. 1,2,5 (default data.num_labeled)")
    p.add_argument("--variants", default=None, help="comma list from baseline, unimatch, randaug, augpaint, "
                                                   "cond_augpaint, augpaint_unimatch, augpaint_strict, baseline_aug, "
                                                   "augpaint_aug, oracle_paste, augpaint_random50, augpaint_bottom50, "
                                                   "augpaint_all, augpaint_per_source (default: baseline, randaug, "
                                                   "augpaint, cond_augpaint; --kfp runs the first nine)")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI ('none' disables)")
    p.add_argument("--force", action="store_true", help="replace a finished experiment")
    p.add_argument("--kfp", action="store_true", help="run the experiment pipeline through kfp.local (one task per "
                                                     "stage; the table lands in the summarize task's output)")
    p = sub.add_parser("export", help="write a dataset (+ kept synthetic pairs) as an nnU-Net v2 raw dataset")
    p.add_argument("--format", dest="fmt", default="nnunet", choices=["nnunet"], help="target layout")
    p.add_argument("--in", dest="dataset", required=True, help="slice dataset artifact")
    p.add_argument("--synthetic", default=None, help="kept synthetic pairs (a filter output) made from --in")
    p.add_argument("--out", required=True, help="new folder named DatasetNNN_Name")
    p.add_argument("--include-val", action="store_true", help="also put the labeled validation slices in imagesTr")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p = sub.add_parser("make-phantom", help="write the built-in phantom in nnU-Net v2 raw format")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cases", type=int, default=20)
    p.add_argument("--slices", type=int, default=10)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--vessels", type=int, default=0, choices=range(5), metavar="0..4",
                   help="great vessels per patient, at most (hard negatives outside the heart)")
    p = sub.add_parser("make-fixture", help="write a tiny fake dataset in a real raw layout (to try preprocess)")
    p.add_argument("--format", dest="fmt", required=True,
                   choices=["acdc", "msd_brats", "synapse", "isic", "nnunet", "nnunet_png"])
    p.add_argument("--out", required=True)
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    return ap


def _cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="preset: its cluster section shapes the tasks; it is also the "
                                                  "config_yaml parameter's default")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--pipeline", default=None, choices=["augpaint", "expansion", "experiment"],
                   help="which pipeline (default: augpaint; expansion for schedule; experiment: the paper's "
                        "comparison, shaped by --splits/--labeled/--variants)")


def _experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--splits", type=int, default=3, help="experiment pipeline: independent splits")
    p.add_argument("--labeled", default=None, help="experiment pipeline: labeled counts, e.g. 1,2,5 "
                                                  "(default data.num_labeled)")
    p.add_argument("--variants", default=None, help="experiment pipeline: comma list of variants (default: "
                                                   "baseline, randaug, augpaint, cond_augpaint)")


def _experiment_options(args: argparse.Namespace) -> dict:
    """--splits/--labeled/--variants as experiment pipeline options."""
    try:
        labeled = [int(x) for x in args.labeled.split(",")] if args.labeled else None
    except ValueError:
        raise AugPaintError(f"--labeled {args.labeled!r}: expected comma-separated integers") from None
    variants = [v.strip() for v in args.variants.split(",")] if args.variants else None
    return {"splits": args.splits, "labeled": labeled, "variants": variants}


def _kfp_command(args: argparse.Namespace) -> None:
    """compile / submit / schedule / runs / sync-tracking (the kfp layer is imported only here)."""
    cfg = load_config(args.config, args.set) if getattr(args, "config", None) else None
    if getattr(args, "set", None) and cfg is None:
        raise AugPaintError("--set needs --config")
    if args.command == "compile":
        options = _experiment_options(args) if args.pipeline == "experiment" else {}
        out = importlib.import_module("pipelines.compile").compile_pipeline(
            args.out, image=args.image, cfg=cfg, pipeline=args.pipeline or "augpaint", **options)
        print(f"compile: wrote {out}")
        return
    if args.command == "sync-tracking":
        from .infra.tracking import sync_spool

        print(f"sync-tracking: replayed {sync_spool(args.tracking_uri, args.spool)} bundle(s)")
        return
    client = importlib.import_module("pipelines.client")
    if args.command == "runs":
        rows = client.list_runs(args.host, experiment=args.experiment, namespace=args.namespace, limit=args.limit)
        for r in rows:
            print(f"{r['run_id']}  {r['state']:<10}  {r['created_at']:<26}  {r['name']}")
        if not rows:
            print("runs: none")
        return
    kw = dict(cfg=cfg, package=args.package, params=client.parse_params(args.param), experiment=args.experiment,
              namespace=args.namespace, image=args.image)
    if args.command == "submit":
        run_id = client.submit(args.host, pipeline=args.pipeline or "augpaint", run_name=args.run_name, **kw)
        from .infra.storage import redact

        print(f"submit: created run {run_id} ({redact(args.host.rstrip('/'))}/#/runs/details/{run_id})")
    else:
        rid = client.schedule(args.host, cron=args.cron, name=args.name, pipeline=args.pipeline or "expansion", **kw)
        print(f"schedule: created recurring run {rid} (cron '{args.cron}', max_concurrency 1, no catch-up)")


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
            inputs = {k: v for k, v in inputs.items() if v is not None or k in ("input_dir", "ae_path")}
            if args.command == "train-seg":
                inputs["name"] = args.name
            if args.command == "inpaint":
                inputs.update(shard=args.shard, num_shards=args.num_shards, progress=None)
            if args.command == "merge-shards":
                inputs["shard_dirs"] = args.shard_dirs
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
            if args.kfp:
                importlib.import_module("pipelines.local").run_experiment_pipeline_local(
                    cfg, Path(args.out), args.tracking_uri, splits=args.splits, labeled=labeled, variants=variants)
                return 0
            out = run_experiment(cfg, args.out, splits=args.splits, labeled=labeled, variants=variants,
                                 tracking_uri=args.tracking_uri, force=args.force)
            print((Path(out) / "table.md").read_text())
            print(f"experiment: wrote {out}")
        elif args.command == "export":
            import json

            from .data.export import export_nnunet

            out = export_nnunet(args.dataset, args.out, synthetic=args.synthetic, include_val=args.include_val,
                                force=args.force)
            c = json.loads((Path(out) / "artifact.json").read_text())["counts"]
            print(f"export: wrote {out} ({c['training']} training cases: {c['training_real']} real + "
                  f"{c['training_synthetic']} synthetic from {c['training_patients']} patient(s); {c['test']} test "
                  f"cases from {c['test_patients']} patient(s))")
        elif args.command == "make-phantom":
            from .data.phantom import write_phantom

            out = write_phantom(args.out, seed=args.seed, num_cases=args.cases, slices=args.slices, size=args.size,
                                vessels=args.vessels)
            print(f"make-phantom: wrote {out}")
        elif args.command == "make-fixture":
            from .data.fakedata import write_fake_dataset

            out = write_fake_dataset(args.fmt, args.out, num_cases=args.cases, seed=args.seed)
            print(f"make-fixture: wrote {out}")
        elif args.command == "run":
            cfg = load_config(args.config, args.set)  # fail fast, before kfp starts
            importlib.import_module("pipelines.local").run_local(cfg, Path(args.out), args.tracking_uri)
        elif args.command == "expand":
            cfg = load_config(args.config, args.set)
            importlib.import_module("pipelines.local").run_expansion_local(
                cfg, args.incoming, args.versions, Path(args.out), args.tracking_uri, retrain=args.retrain,
                model_prefix=args.model_prefix)
        elif args.command == "doctor":
            cfg = load_config(args.config, args.set) if args.config else None
            if args.set and cfg is None:
                raise AugPaintError("--set needs --config")
            return importlib.import_module("pipelines.doctor").doctor(
                args.namespace, cfg=cfg, host=args.host, image=args.image, kubeconfig=args.kubeconfig,
                context=args.context)
        elif args.command in ("compile", "submit", "schedule", "runs", "sync-tracking"):
            _kfp_command(args)
    except AugPaintError as err:
        print(f"augpaint {args.command}: error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as err:
        from .infra.artifacts import disk_full_error, is_disk_full

        if not is_disk_full(err) or os.environ.get("AUGPAINT_DEBUG"):
            return _last_resort(args.command, err)
        where = Path(getattr(args, "out", None) or ".").resolve()
        print(f"augpaint {args.command}: error: {disk_full_error(where.parent)}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001
        return _last_resort(args.command, err)
    return 0


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _last_resort(command: str, err: BaseException) -> int:
    """An exception no stage turned into an AugPaintError: one line (a bug to report), the traceback on request."""
    if os.environ.get("AUGPAINT_DEBUG"):
        raise err
    print(f"augpaint {command}: internal error: {type(err).__name__}: {_one_line(str(err))[:300]} (a bug: please "
          f"report it; AUGPAINT_DEBUG=1 shows the traceback)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
