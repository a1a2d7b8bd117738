"""The helpers every phase shares: seeding, tensor conversion, step budgets and index batches."""
import numpy as np
import torch

from augpaint_core.runtime import batches, num_steps, seed_everything, to_tensor, to_uint8


def test_uint8_round_trip_and_range():
    img = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    x = to_tensor(img)
    assert x.shape == (1, 3, 16, 16) and x.min() == -1 and x.max() == 1
    assert np.array_equal(to_uint8(x), img)


def test_step_budget_and_batches_cover_epochs():
    assert num_steps(10, 4, 2, None) == 6 and num_steps(10, 4, 2, 5) == 5
    seen = torch.cat(list(batches(10, 4, 3, torch.Generator().manual_seed(0))))
    assert sorted(seen.tolist()) == list(range(10))  # 3 steps of 4 over 10 items = one shuffled epoch
    assert len(list(batches(10, 4, 7, torch.Generator()))) == 7


def test_seed_everything_repeats_draws():
    g1 = seed_everything(5)
    a = (torch.rand(3), np.random.rand(), torch.rand(2, generator=g1))
    g2 = seed_everything(5)
    b = (torch.rand(3), np.random.rand(), torch.rand(2, generator=g2))
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and torch.equal(a[2], b[2])
