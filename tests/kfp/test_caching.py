"""KFP caching hits: a cached task's inputs are only what determines its output.

The compiled pipeline is resolved the way KFP computes cache keys (input parameter values and the identity of
input artifacts): pipeline parameters are filled in, the stage-configs task is really run, the MLflow parent
run id and the KFP run id differ per run, and an artifact is identified by the resolved inputs of the task that
made it (a cache hit upstream hands over the same artifact).
"""
from __future__ import annotations

import json

import yaml

from augpaint_core.config import parse_config
from tests.conftest import tiny_dict
from tests.kfp.test_cluster_compile import _compile, _tasks

CACHED_GENERATIVE = ("preprocess", "train-ae", "train-ldm", "inpaint")
SEG = ("filter-synthetic", "train-seg-baseline", "train-seg-augpaint")


def _resolve(spec: dict, cfg, run_id: str) -> dict[str, str]:
    """Task name -> a canonical JSON of its resolved inputs (what KFP's cache key is made of)."""
    from components.configs import stage_configs

    params = {"config_yaml": cfg.to_yaml(), "tracking_uri": "http://mlflow:5000", "experiment": "augpaint",
              "input_dir": "", "data_version": "v1", "kfp_ui_url": ""}
    split = stage_configs.python_func(config_yaml=params["config_yaml"])._asdict()
    tasks = _tasks(spec)
    memo: dict[str, str] = {}

    def value(name: str, src: dict):
        if "componentInputParameter" in src:
            key = src["componentInputParameter"].removeprefix("pipelinechannel--")
            return params.get(key, f"<loop:{key}>")
        if "taskOutputParameter" in src:
            p = src["taskOutputParameter"]
            if p["producerTask"] == "stage-configs":
                return split[p["outputParameterKey"]]
            return f"{p['producerTask']}@{run_id}"  # start-tracking: a new MLflow run id every run
        if "runtimeValue" in src:
            c = src["runtimeValue"]["constant"]
            return run_id if "PIPELINE_JOB_ID" in str(c) or "{{$.pipeline_job" in str(c) else c
        if "taskOutputArtifact" in src:
            a = src["taskOutputArtifact"]
            return f"{a['outputArtifactKey']}<-{key_of(a['producerTask'])}"
        return json.dumps(src, sort_keys=True)

    def key_of(task: str) -> str:
        if task not in memo:
            t = tasks[task]
            ins = t.get("inputs", {})
            memo[task] = json.dumps({"component": t["componentRef"]["name"],
                                     "parameters": {k: value(k, v) for k, v in ins.get("parameters", {}).items()},
                                     "artifacts": {k: value(k, v) for k, v in ins.get("artifacts", {}).items()}},
                                    sort_keys=True)
        return memo[task]

    return {name: key_of(name) for name in tasks if "componentRef" in tasks[name]}


def _cfg(lr: float):
    d = tiny_dict()
    d["seg"]["lr"] = lr
    return parse_config(d, "cache")


def test_changing_seg_lr_and_run_id_reuses_preprocess_ae_ldm_and_inpaint(tmp_path, monkeypatch):
    a_cfg, b_cfg = _cfg(5e-4), _cfg(1e-3)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    spec_a, _ = _compile(tmp_path / "a", "augpaint", a_cfg, monkeypatch)
    spec_b, _ = _compile(tmp_path / "b", "augpaint", b_cfg, monkeypatch)
    run1 = _resolve(spec_a, a_cfg, "run-1")
    run2 = _resolve(spec_b, b_cfg, "run-2")
    for task in CACHED_GENERATIVE:
        assert run1[task] == run2[task], task
        assert "run-1" not in run1[task] and "start-tracking" not in run1[task], task
        assert _tasks(spec_a)[task]["cachingOptions"].get("enableCache") is True, task
    for task in SEG:  # the seg section changed: these must rerun
        assert run1[task] != run2[task], task
    # The same config in a new run: every cached task hits.
    again = _resolve(spec_a, a_cfg, "run-3")
    for task in CACHED_GENERATIVE + SEG:
        assert again[task] == run1[task], task


def test_changing_the_ae_reruns_everything_downstream(tmp_path, monkeypatch):
    d = tiny_dict()
    d["ae"]["lr"] = 2e-3
    other = parse_config(d, "cache")
    base = _cfg(5e-4)
    spec, _ = _compile(tmp_path, "augpaint", base, monkeypatch)
    r1, r2 = _resolve(spec, base, "run-1"), _resolve(spec, other, "run-1")
    assert r1["preprocess"] == r2["preprocess"]
    for task in ("train-ae", "train-ldm", "inpaint", "filter-synthetic", "train-seg-augpaint"):
        assert r1[task] != r2[task], task
    assert r1["train-seg-baseline"] == r2["train-seg-baseline"]  # the baseline does not use the AE


def test_cached_pods_read_the_run_key_and_retry_for_their_whole_timeout(tmp_path, monkeypatch):
    cfg = _cfg(5e-4)
    spec, executors = _compile(tmp_path, "augpaint", cfg, monkeypatch)
    tasks = _tasks(spec)
    for name, t in tasks.items():
        comp = spec["components"][t["componentRef"]["name"]] if "componentRef" in t else {}
        if "executorLabel" not in comp:  # the exit handler's DAG, not a pod
            continue
        ex = executors[comp["executorLabel"]]
        assert {"name": "AUGPAINT_RUN_KEY", "fieldPath": "metadata.labels['pipeline/runid']"} in \
            ex.get("fieldPathAsEnv", []), name
    ae = tasks["train-ae"]["retryPolicy"]
    window = int(ae["backoffMaxDuration"].rstrip("s"))
    assert window >= (cfg.cluster.retries + 1) * cfg.cluster.timeout_s["train-ae"]
    yaml.safe_dump(spec)  # the spec stays plain data


def test_every_task_requests_cpu_and_memory(tmp_path, monkeypatch):
    for pipeline in ("augpaint", "expansion"):
        spec, _ = _compile(tmp_path, pipeline, _cfg(5e-4), monkeypatch)
        for name, ex in spec["deploymentSpec"]["executors"].items():
            res = ex["container"].get("resources", {})
            assert res.get("cpuRequest") and res.get("memoryRequest"), (pipeline, name, res)
