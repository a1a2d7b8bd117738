"""The experiment pipeline: DAG shape when compiled, and a kfp.local run that gives the in-process table."""
import collections
import re

import pytest
import yaml

from augpaint_core.config import parse_config
from augpaint_core.errors import AugPaintError
from tests.conftest import tiny_dict

GPU_STAGES = {"exp-train-ae", "exp-train-ldm", "exp-inpaint", "exp-filter", "exp-train-seg", "evaluate-one"}


def _tasks(spec: dict) -> list[tuple[str, str]]:
    """(component kind, display name) of every executor task, sub-DAGs walked."""
    comps, out = spec["components"], []

    def walk(dag: dict) -> None:
        for t in dag["tasks"].values():
            ref = t["componentRef"]["name"]
            if "dag" in comps[ref]:
                walk(comps[ref]["dag"])
            else:
                out.append((re.sub(r"-\d+$", "", ref[len("comp-"):]), t["taskInfo"]["name"]))

    walk(spec["root"]["dag"])
    return out


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from pipelines.compile import compile_pipeline

    path = compile_pipeline(tmp_path_factory.mktemp("c") / "exp.yaml", pipeline="experiment", splits=3,
                            labeled=[1, 2, 5])
    docs = list(yaml.safe_load_all(path.read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


def test_dag_shape_per_split_and_labeled_count(compiled):
    spec, _ = compiled
    tasks = _tasks(spec)
    kinds = collections.Counter(k for k, _ in tasks)
    # per split: preprocess, AE, LDM, cond LDM; per split and k: relabel, 3 pools, 3 filters, 4 x (train-seg, eval)
    assert kinds == {"exp-preprocess": 3, "exp-train-ae": 3, "exp-train-ldm": 6, "relabel": 9, "exp-inpaint": 18,
                     "rand-aug": 9, "exp-filter": 27, "exp-train-seg": 36, "evaluate-one": 36,
                     "summarize-experiment": 1, "start-tracking": 1, "close-tracking": 1}
    assert len(tasks) == 150
    names = {n for _, n in tasks}
    for s in range(3):
        for k in (1, 2, 5):
            assert sum(n.startswith(f"s{s} k{k} ") for n in names) == 1 + 3 + 3 + 8
            for v in ("baseline", "randaug", "augpaint", "cond_augpaint"):
                assert f"s{s} k{k} evaluate-{v}" in names
    assert "ParallelFor" not in str(spec) and "iteratorPolicy" not in str(spec)


def test_gpu_stages_request_a_gpu_and_cpu_stages_do_not(compiled):
    spec, _ = compiled
    comps, execs = spec["components"], spec["deploymentSpec"]["executors"]
    seen = set()
    for ref, comp in comps.items():
        if "executorLabel" not in comp:
            continue
        kind = re.sub(r"-\d+$", "", ref[len("comp-"):])
        res = execs[comp["executorLabel"]]["container"].get("resources", {})
        gpu = res.get("accelerator", {})
        if kind in GPU_STAGES:
            assert gpu.get("resourceType") == "nvidia.com/gpu" and str(gpu.get("resourceCount", gpu.get("count"))) \
                == "1", (ref, res)
            seen.add(kind)
        else:
            assert not gpu, (ref, res)
    assert seen == GPU_STAGES


def test_scorer_is_trained_once_per_split_and_k(compiled):
    spec, _ = compiled
    comps = spec["components"]
    filters = []

    def walk(dag):
        for t in dag["tasks"].values():
            ref = t["componentRef"]["name"]
            if "dag" in comps[ref]:
                walk(comps[ref]["dag"])
            elif ref.startswith("comp-exp-filter"):
                filters.append(t)

    walk(spec["root"]["dag"])
    with_scorer = [t for t in filters if "scorer" in t["inputs"].get("artifacts", {})]
    assert len(filters) == 27 and len(with_scorer) == 27 - 9


def test_bad_variant_fails_at_compile_time():
    from pipelines.experiment_pipeline import build_pipeline

    with pytest.raises(AugPaintError, match="unknown variant"):
        build_pipeline(None, splits=1, labeled=[1], variants=["baseline", "segformer"])


@pytest.mark.parametrize("variant", ["oracle_paste", "augpaint_random50", "augpaint_per_source"])
def test_an_in_process_only_control_is_refused_with_one_line(variant, tmp_path, capsys):
    """The evidence controls are wired in run_split only; the pipeline used to fail with an internal KeyError."""
    from augpaint_core.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_dict()))
    rc = main(["experiment", "--kfp", "--config", str(cfg), "--out", str(tmp_path / "o"), "--tracking-uri", "none",
               "--variants", f"baseline,{variant}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and f"{variant}: not in the experiment pipeline" in err and "\n" not in err
    assert "internal error" not in err and not (tmp_path / "o").exists()


def test_cli_kfp_experiment_rejects_a_bad_variant_before_writing(tmp_path, capsys):
    from augpaint_core.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_dict()))
    rc = main(["experiment", "--kfp", "--config", str(cfg), "--out", str(tmp_path / "o"), "--tracking-uri", "none",
               "--variants", "baseline,segformer"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "segformer" in err and "\n" not in err and not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def pipeline_and_harness(tmp_path_factory):
    """The tiny config through the kfp.local pipeline and through the in-process harness: 2 splits, 2 variants."""
    import os
    import time

    from augpaint_core.experiment import run_experiment
    from pipelines.local import run_experiment_pipeline_local

    d = tmp_path_factory.mktemp("expkfp")
    cfg = parse_config(tiny_dict(), "tiny")
    opts = dict(splits=2, labeled=[1], variants=["baseline", "augpaint"])
    old = os.getcwd()
    os.chdir(d)  # components run with this working folder
    try:
        t0 = time.time()
        report = run_experiment_pipeline_local(cfg, d / "run", f"sqlite:///{d / 'mlflow.db'}", quiet=True, **opts)
        seconds = time.time() - t0
    finally:
        os.chdir(old)
    harness = run_experiment(cfg, d / "harness", tracking_uri="none", **opts)
    return report, harness, seconds, d


def test_local_run_writes_the_table(pipeline_and_harness):
    import json

    report, _, seconds, d = pipeline_and_harness
    print(f"kfp.local experiment pipeline (2 splits, 2 variants, tiny): {seconds:.0f} s")
    md = (report / "table.md").read_text()
    assert "| U-Net |" in md and "| AugPaint |" in md and "AugPaint - U-Net" in md and "95% bootstrap CI" in md
    res = json.loads((report / "results.json").read_text())
    assert sorted((r["variant"], r["split"]) for r in res["results"]) == \
        [("augpaint", 0), ("augpaint", 1), ("baseline", 0), ("baseline", 1)]
    assert (report / "chart.html").read_text().count("data:image/png;base64,") == 1
    assert (report / "table.csv").read_text().count("\n") == 3 and (report / "gains.csv").is_file()
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{d / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name("augpaint").experiment_id])
    tagged = {(r.data.tags["augpaint.variant"], r.data.tags["augpaint.split"], r.data.tags["augpaint.labeled"])
              for r in runs if r.info.run_name.startswith(("baseline split", "augpaint split"))}
    assert tagged == {(v, str(s), "1") for v in ("baseline", "augpaint") for s in (0, 1)}


def test_pipeline_and_in_process_harness_give_the_same_table(pipeline_and_harness):
    report, harness, _, _ = pipeline_and_harness
    assert (report / "table.md").read_text() == (harness / "table.md").read_text()
    assert (report / "table.csv").read_text() == (harness / "table.csv").read_text()
