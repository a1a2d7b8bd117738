"""The compiled pipelines carry the cluster settings: GPUs, tolerations, /dev/shm, secrets, retries, fan-out."""
from __future__ import annotations

import yaml

from augpaint_core.config import parse_config
from tests.conftest import tiny_dict

GPU_STAGES = {"train-ae", "train-ldm", "inpaint", "filter-synthetic", "train-seg-baseline", "train-seg-augpaint",
              "evaluate"}
RETRIED = {"train-ae", "train-ldm", "inpaint", "filter-synthetic", "train-seg-baseline", "train-seg-augpaint"}


def _cfg(**cluster):
    d = tiny_dict()
    d["inpaint"]["num_shards"] = 4
    d["cluster"] = {"node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, "shard_parallelism": 2,
                    "retries": 3, "shm_size": "4Gi", "minio_secret": "s3-creds", "mlflow_secret": "mlflow-creds",
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                                    {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
                    **cluster}
    return parse_config(d, "test")


def _compile(tmp_path, pipeline, cfg, monkeypatch):
    from pipelines.compile import compile_pipeline

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-in-the-spec-4711")
    out = compile_pipeline(tmp_path / f"{pipeline}.yaml", image="registry.example/augpaint:0.1.0-abc",
                           cfg=cfg, pipeline=pipeline)
    text = out.read_text()
    assert "never-in-the-spec-4711" not in text
    spec, platform = yaml.safe_load_all(text)
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _tasks(spec: dict) -> dict[str, dict]:
    """Every task of every DAG (root, exit handler, ParallelFor body), by task name."""
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    return {name: t for d in dags for name, t in d["tasks"].items()}


def _executor(spec: dict, task: dict) -> str:
    return spec["components"][task["componentRef"]["name"]]["executorLabel"]


def test_gpu_stages_request_gpus_with_tolerations_shm_and_secrets(tmp_path, monkeypatch):
    spec, k8s = _compile(tmp_path, "augpaint", _cfg(), monkeypatch)
    tasks = _tasks(spec)
    assert GPU_STAGES <= tasks.keys()
    for name in GPU_STAGES:
        ex = _executor(spec, tasks[name])
        acc = spec["deploymentSpec"]["executors"][ex]["container"]["resources"]["accelerator"]
        assert acc["resourceType"] == "nvidia.com/gpu" and acc["resourceCount"] == "1", name
        plat = k8s[ex]
        assert {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"} in plat["tolerations"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in plat["tolerations"]
        assert plat["nodeSelector"]["labels"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
        assert {"mountPath": "/dev/shm", "medium": "Memory", "sizeLimit": "4Gi", "volumeName": "dshm"} in \
            plat["emptyDirMounts"], name
        assert int(plat["activeDeadlineSeconds"]) > 0
    # Every task, GPU or not, reads its credentials from the secrets.
    for name, task in tasks.items():
        if "componentRef" not in task or "dag" in spec["components"][task["componentRef"]["name"]]:
            continue  # sub-DAGs (exit handler, ParallelFor) have no container
        envs = {(s["secretName"], e["envVar"]) for s in k8s[_executor(spec, task)]["secretAsEnv"]
                for e in s["keyToEnv"]}
        assert {("s3-creds", "AWS_ACCESS_KEY_ID"), ("s3-creds", "AWS_SECRET_ACCESS_KEY"),
                ("s3-creds", "AUGPAINT_S3_ENDPOINT"), ("mlflow-creds", "MLFLOW_TRACKING_URI")} <= envs, name
    # CPU-only stages do not hold a GPU.
    for name in ("preprocess", "start-tracking", "close-tracking", "merge-inpaint-shards"):
        res = spec["deploymentSpec"]["executors"][_executor(spec, tasks[name])]["container"].get("resources", {})
        assert "accelerator" not in res, name


def test_fan_out_retries_caching_and_parameter_docs(tmp_path, monkeypatch):
    spec, _ = _compile(tmp_path, "augpaint", _cfg(), monkeypatch)
    tasks = _tasks(spec)
    loops = [t for t in tasks.values() if "iteratorPolicy" in t]
    assert len(loops) == 1
    loop = loops[0]
    assert loop["iteratorPolicy"]["parallelismLimit"] == 2
    assert yaml.safe_load(loop["parameterIterator"]["items"]["raw"]) == [0, 1, 2, 3]
    body = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert "inpaint" in body  # one GPU pod per shard
    merge = tasks["merge-inpaint-shards"]
    assert merge["inputs"]["artifacts"]["shards"]["taskOutputArtifact"]["producerTask"] == \
        next(n for n, t in tasks.items() if t is loop)
    for name in RETRIED:
        assert tasks[name]["retryPolicy"]["maxRetryCount"] == 3, name
    for name in ("preprocess", "train-ae", "train-ldm", "train-seg-baseline", "train-seg-augpaint"):
        assert tasks[name]["cachingOptions"].get("enableCache") is True, name
    for name in ("evaluate", "start-tracking", "close-tracking"):
        assert not tasks[name]["cachingOptions"].get("enableCache"), name
    # Preprocess keys its cache on the data version.
    assert tasks["preprocess"]["inputs"]["parameters"]["data_version"]["componentInputParameter"].endswith("data_version")
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params.keys() >= {"config_yaml", "tracking_uri", "experiment", "input_dir", "data_version", "kfp_ui_url"}
    for name, p in params.items():
        assert len(p.get("description", "")) > 15, name
    assert parse_config(yaml.safe_load(params["config_yaml"]["defaultValue"])).inpaint.num_shards == 4


def test_one_shard_means_no_fan_out(tmp_path, monkeypatch):
    d = tiny_dict()
    spec, _ = _compile(tmp_path, "augpaint", parse_config(d), monkeypatch)
    assert not [t for t in _tasks(spec).values() if "iteratorPolicy" in t]
    assert "merge-inpaint-shards" not in _tasks(spec)


def test_expansion_pipeline_cluster_settings(tmp_path, monkeypatch):
    spec, k8s = _compile(tmp_path, "expansion", _cfg(), monkeypatch)
    tasks = _tasks(spec)
    gpu = {"expansion-ae", "expansion-ldm", "inpaint", "filter-synthetic", "train-seg-augpaint", "promote-segmenter"}
    assert gpu <= tasks.keys()
    for name in gpu:
        ex = _executor(spec, tasks[name])
        acc = spec["deploymentSpec"]["executors"][ex]["container"]["resources"]["accelerator"]
        assert acc["resourceType"] == "nvidia.com/gpu", name
        plat = k8s[ex]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in plat["tolerations"]
        assert any(m["mountPath"] == "/dev/shm" and m["medium"] == "Memory" for m in plat["emptyDirMounts"])
        assert {s["secretName"] for s in plat["secretAsEnv"]} == {"s3-creds", "mlflow-creds"}
    for name in ("expansion-ae", "expansion-ldm", "inpaint", "filter-synthetic", "train-seg-augpaint"):
        assert tasks[name]["retryPolicy"]["maxRetryCount"] == 3, name
    # Cached by the incoming data's fingerprint; registry reads, publishing and promotion never.
    assert tasks["prepare-dataset"]["cachingOptions"].get("enableCache") is True
    assert tasks["prepare-dataset"]["inputs"]["parameters"]["data_version"]["taskOutputParameter"] == \
        {"producerTask": "scan-incoming", "outputParameterKey": "fingerprint"}
    for name in ("expansion-ae", "expansion-ldm", "publish-dataset-version", "promote-segmenter", "scan-incoming"):
        assert not tasks[name]["cachingOptions"].get("enableCache"), name
    # Inpainting and everything after it only run when there are new labeled cases.
    cond = [t for t in tasks.values() if "triggerPolicy" in t and "condition" in t["triggerPolicy"]]
    assert len(cond) == 1 and "select-new-cases" in cond[0]["triggerPolicy"]["condition"]
    body = spec["components"][cond[0]["componentRef"]["name"]]["dag"]["tasks"]
    assert {"publish-dataset-version", "promote-segmenter", "merge-inpaint-shards"} <= body.keys()
    loops = [t for t in tasks.values() if "iteratorPolicy" in t]
    assert len(loops) == 1 and loops[0]["iteratorPolicy"]["parallelismLimit"] == 2
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"incoming_uri", "versions_uri", "retrain", "model_prefix"} <= params.keys()
    for name, p in params.items():
        assert len(p.get("description", "")) > 15, name
    assert spec["root"]["dag"]["tasks"]["close-tracking"]["triggerPolicy"]["strategy"] == \
        "ALL_UPSTREAM_TASKS_COMPLETED"
