"""Shared by the benchmarks: independent splits of one preset."""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def split_runs(base, splits: int) -> Iterator[list[tuple[int, object, Path]]]:
    """(split, config with seed = split, scratch folder) for each split; the folders go away afterwards.

    Args:
        base: the preset's config; each split gets a copy whose seed (and so its patient split) is the split index.
        splits: how many independent splits.
    """
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for split in range(splits):
            cfg = base.model_copy(deep=True)
            cfg.seed = split
            if base.data.split_seed is not None:  # it wins over seed for the patient split
                cfg.data.split_seed = base.data.split_seed + split
            runs.append((split, cfg, Path(tmp) / f"split{split}"))
        yield runs
