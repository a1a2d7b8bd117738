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
    task.set_caching_options(cache)
    if stage in cluster.timeout_s:
        kubernetes.set_timeout(task, cluster.timeout_s[stage])
    if retry and cluster.retries:
        task.set_retry(num_retries=cluster.retries, backoff_duration=f"{cluster.retry_backoff_s}s",
                       backoff_factor=2.0)
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
