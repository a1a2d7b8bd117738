"""Helpers every phase uses: seeding, tensor conversion, step budgets and index batches.

It sits below the phases (beside ``config``), so no phase imports another phase for a helper.
"""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator for the stage's own draws."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


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
