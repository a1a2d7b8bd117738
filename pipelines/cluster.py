"""Kubernetes settings of the pipeline tasks, from the config's ``cluster`` section.

kfp.local ignores these (with a warning), so the same pipeline runs locally and
on a cluster. Every stage task gets the MinIO and MLflow secrets as env; GPU
stages also get the accelerator request, tolerations, the node selector and a
memory-backed /dev/shm (PyTorch DataLoader workers share tensors through it).
"""
from __future__ import annotations

from kfp import kubernetes
from kfp.dsl import PipelineTask

from augpaint_core.config import ClusterConfig

# Secret data key -> env var. The S3 endpoint goes to every name our clients read.
MINIO_ENV = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
             "AUGPAINT_S3_ENDPOINT": "AUGPAINT_S3_ENDPOINT"}
MINIO_ENDPOINT_ALIASES = {"AUGPAINT_S3_ENDPOINT": "MLFLOW_S3_ENDPOINT_URL"}
# AUGPAINT_MLFLOW_SPOOL: where stages keep tracking records while MLflow is down (an s3:// prefix in MinIO).
MLFLOW_ENV = {"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI", "AUGPAINT_MLFLOW_SPOOL": "AUGPAINT_MLFLOW_SPOOL"}
SHM_VOLUME = "dshm"
# KFP labels every task pod with its run id; stages read it (downward API) to find their MLflow parent run.
RUN_KEY_FIELD = "metadata.labels['pipeline/runid']"
# Tasks that only talk to MLflow or parse the config: small requests and limits.
SMALL_STAGES = ("start-tracking", "close-tracking", "stage-configs")


def retry_window_s(cluster: ClusterConfig, stage: str) -> int:
    """Seconds from the first attempt during which Argo may still retry: every attempt may run to the stage's
    timeout, plus the exponential backoffs (factor 2). KFP's default of 3600 s would stop retrying any stage
    that fails after its first hour."""
    timeout = cluster.timeout_s.get(stage, 24 * 3600)
    backoffs = sum(cluster.retry_backoff_s * 2 ** k for k in range(cluster.retries))
    return (cluster.retries + 1) * timeout + backoffs


def with_secrets(task: PipelineTask, cluster: ClusterConfig) -> PipelineTask:
    """MinIO and MLflow credentials from Kubernetes secrets, as env (never baked into the image or spec)."""
    kubernetes.use_secret_as_env(task, secret_name=cluster.minio_secret, secret_key_to_env=MINIO_ENV)
    kubernetes.use_secret_as_env(task, secret_name=cluster.minio_secret, secret_key_to_env=MINIO_ENDPOINT_ALIASES)
    kubernetes.use_secret_as_env(task, secret_name=cluster.mlflow_secret, secret_key_to_env=MLFLOW_ENV)
    return task


def stage_task(task: PipelineTask, cluster: ClusterConfig, stage: str, *, gpu: bool = False, retry: bool = False,
               cache: bool = True) -> PipelineTask:
    """Apply the cluster settings to one stage task.

    Args:
        task: the task.
        cluster: the config's cluster section.
        stage: stage name, keys ``cluster.timeout_s``.
        gpu: request a GPU, tolerate the GPU taint, select GPU nodes, mount /dev/shm.
        retry: retry on failure (training and inpainting: preemption, transient node faults).
        cache: let KFP reuse an earlier result (its key includes the data version parameter).
    """
    with_secrets(task, cluster)
    kubernetes.use_field_path_as_env(task, env_name="AUGPAINT_RUN_KEY", field_path=RUN_KEY_FIELD)
    task.set_caching_options(cache)
    if stage in cluster.timeout_s:
        kubernetes.set_timeout(task, cluster.timeout_s[stage])
    if retry and cluster.retries:
        task.set_retry(num_retries=cluster.retries, backoff_duration=f"{cluster.retry_backoff_s}s",
                       backoff_factor=2.0, backoff_max_duration=f"{retry_window_s(cluster, stage)}s")
    # Requests = what the scheduler reserves; without them a node can be overcommitted and the pod evicted.
    if gpu:
        task.set_cpu_request(cluster.cpu_request).set_memory_request(cluster.memory_request)
    elif stage == "preprocess":
        task.set_cpu_request(cluster.preprocess_cpu).set_cpu_limit(cluster.preprocess_cpu)
        task.set_memory_request(cluster.preprocess_memory).set_memory_limit(cluster.preprocess_memory)
    else:  # small tasks get limits too; the other CPU tasks (merge, scans, publishing) only requests
        task.set_cpu_request(cluster.small_cpu).set_memory_request(cluster.small_memory)
        if stage in SMALL_STAGES:
            task.set_cpu_limit(cluster.small_cpu).set_memory_limit(cluster.small_memory)
    if retry:  # training stages checkpoint into MinIO: a retried pod starts on a fresh disk
        task.set_env_variable("AUGPAINT_CHECKPOINT_ROOT", cluster.checkpoint_root)
    if gpu:
        task.set_accelerator_type(cluster.gpu_resource).set_accelerator_limit(cluster.gpus_per_task)
        task.set_cpu_limit(cluster.cpu_limit).set_memory_limit(cluster.memory_limit)
        for t in cluster.tolerations:
            kubernetes.add_toleration(task, key=t.key, operator=t.operator, value=t.value, effect=t.effect or None)
        for key, value in cluster.node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        kubernetes.empty_dir_mount(task, volume_name=SHM_VOLUME, mount_path="/dev/shm", medium="Memory",
                                   size_limit=cluster.shm_size)
    return task
