"""Helpers every phase uses: seeding, the device policy, CPU quota, tensor conversion, step budgets, index batches.

It sits below the phases (beside ``config``), so no phase imports another phase for a helper.

Device policy (``runtime`` config section): ``auto`` runs on CUDA when a GPU is visible, with bf16 autocast
where the GPU has it; batches travel to the device as uint8 (4x fewer bytes than float) and are converted
there; results come back to the host batch by batch. On CPU every operation is the one the code ran before
the policy existed, so CPU results are unchanged.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import AugPaintError

log = logging.getLogger(__name__)


def seed_everything(seed: int, deterministic: bool | None = None) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator for the stage's own draws.

    Args:
        seed: the stage's seed.
        deterministic: ``torch.use_deterministic_algorithms``; None = on without CUDA (bitwise-reproducible CPU
            runs and tests), off on a GPU, where deterministic kernels are slower (opt in with
            ``runtime.deterministic``).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic is None:
        deterministic = not torch.cuda.is_available()
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if deterministic and torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic GEMMs
    return torch.Generator().manual_seed(seed)


def cpu_quota(root: str | Path = "/sys/fs/cgroup") -> int | None:
    """CPUs the container may use, from cgroup v2 ``cpu.max`` (or v1 ``cpu.cfs_quota_us``); None = no limit.

    Args:
        root: cgroup mount point (a parameter so tests can point at a fake tree).
    """
    root = Path(root)
    try:
        if (root / "cpu.max").is_file():
            quota, period = (root / "cpu.max").read_text().split()[:2]
            if quota == "max":
                return None
            return max(1, int(-(-int(quota) // int(period))))
        q, p = root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"
        if q.is_file() and p.is_file():
            quota, period = int(q.read_text()), int(p.read_text())
            return None if quota <= 0 else max(1, -(-quota // period))
    except (OSError, ValueError):
        return None
    return None


def available_cpus() -> int:
    """CPUs this process may really use: the affinity mask, capped by the cgroup quota."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    q = cpu_quota()
    return min(n, q) if q else n


def apply_cpu_quota() -> int:
    """Set torch (intra-op) and OpenMP threads to the container's CPU quota; returns the thread count.

    A pod limited to 8 CPUs on a 128-core node would otherwise start 128 threads and spend its quota on
    contention. An explicit ``OMP_NUM_THREADS`` wins.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        n = int(os.environ["OMP_NUM_THREADS"])
    else:
        n = available_cpus()
        os.environ["OMP_NUM_THREADS"] = str(n)  # for libraries and subprocesses that read it later
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


@dataclass(frozen=True)
class DevicePolicy:
    """Where a stage's networks run and in which precision.

    Attributes:
        device: the torch device.
        bf16: autocast the forward passes to bf16 (CUDA only).
        deterministic: use_deterministic_algorithms for this stage.
        workers: DataLoader worker processes.
        batch_size: images per forward pass in prediction and scoring.
    """

    device: torch.device
    bf16: bool = False
    deterministic: bool = True
    workers: int = 0
    batch_size: int = 16

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def autocast(self):
        """Context for forward passes: bf16 autocast on a GPU that has it, else nothing."""
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def images(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N,H,W,3) uint8 (array or tensor) -> (N,3,H,W) float in [-1, 1] on the device (converted there)."""
        t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
        t = t.to(self.device, non_blocking=self.cuda)
        return t.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)

    def labels(self, y: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N,H,W) integer labels -> int64 on the device."""
        t = torch.from_numpy(np.ascontiguousarray(y)) if isinstance(y, np.ndarray) else y
        return t.to(self.device, non_blocking=self.cuda).long()

    def summary(self) -> dict:
        """What artifacts record about how they were computed."""
        return {"device": self.device.type, "precision": self.precision, "deterministic": self.deterministic,
                **({"gpu": torch.cuda.get_device_name(self.device)} if self.cuda else {})}


def device_policy(rcfg=None) -> DevicePolicy:
    """The device policy of a ``runtime`` config section (None = the defaults: auto everything).

    Args:
        rcfg: ``cfg.runtime``.
    """
    device = getattr(rcfg, "device", "auto")
    precision = getattr(rcfg, "precision", "auto")
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise AugPaintError("runtime.device is cuda but no CUDA GPU is visible")
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and cuda) else "cpu")
    gpu = dev.type == "cuda"
    if precision == "bf16" and not gpu:
        raise AugPaintError("runtime.precision bf16 needs a GPU (CPU runs in fp32); use auto or fp32")
    bf16 = gpu and precision in ("auto", "bf16") and torch.cuda.is_bf16_supported()
    det = getattr(rcfg, "deterministic", None)
    det = (not gpu) if det is None else bool(det)
    workers = getattr(rcfg, "loader_workers", None)
    if workers is None:  # workers pay off when a GPU waits for batches; on CPU they compete for the same cores
        workers = min(4, max(0, available_cpus() - 1)) if gpu else 0
    return DevicePolicy(dev, bf16, det, int(workers), int(getattr(rcfg, "eval_batch_size", 16)))


def policy_of(model: torch.nn.Module) -> DevicePolicy:
    """An fp32 policy on the device the model's parameters are on (for callers that pass no policy)."""
    p = next(model.parameters(), None)
    return DevicePolicy(p.device if p is not None else torch.device("cpu"))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N,H,W,3) uint8 -> (N,3,H,W) float in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N,3,H,W) float in [-1, 1] -> (N,H,W,3) uint8."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def num_steps(n_items: int, batch_size: int, epochs: int, max_steps: int | None) -> int:
    """Optimizer steps for an epoch budget, capped by max_steps when given."""
    per_epoch = max(1, -(-n_items // batch_size))
    return min(per_epoch * epochs, max_steps) if max_steps else per_epoch * epochs


def batches(n_items: int, batch_size: int, steps: int, gen: torch.Generator):
    """Yield index batches over shuffled epochs, exactly ``steps`` of them."""
    done = 0
    while done < steps:
        perm = torch.randperm(n_items, generator=gen)
        for i in range(0, n_items, batch_size):
            if done >= steps:
                return
            yield perm[i:i + batch_size]
            done += 1
