"""The helpers every phase shares: seeding, tensor conversion, step budgets and index batches."""
import numpy as np
import pytest
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


def test_cpu_quota_reads_cgroup_v2_and_v1(tmp_path):
    from augpaint_core.runtime import cpu_quota

    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert cpu_quota(tmp_path) == 3  # 2.5 CPUs round up
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cpu_quota(v1) == 4
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert cpu_quota(v1) is None


def test_apply_cpu_quota_sets_torch_threads(monkeypatch):
    from augpaint_core.runtime import apply_cpu_quota

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        assert apply_cpu_quota() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_device_policy_on_cpu_and_its_errors():
    import pytest

    from augpaint_core.config import RuntimeConfig
    from augpaint_core.errors import AugPaintError
    from augpaint_core.runtime import device_policy

    if torch.cuda.is_available():
        pytest.skip("checks the CPU policy; the test suite runs with CUDA_VISIBLE_DEVICES=''")
    p = device_policy(RuntimeConfig())
    assert p.device.type == "cpu" and not p.bf16 and p.deterministic and p.workers == 0
    img = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    assert torch.equal(p.images(img), to_tensor(img))  # the same conversion as before the policy
    with pytest.raises(AugPaintError, match="runtime.device is cuda"):
        device_policy(RuntimeConfig(device="cuda"))
    with pytest.raises(AugPaintError, match="runtime.precision bf16"):
        device_policy(RuntimeConfig(precision="bf16"))
    assert device_policy(RuntimeConfig(deterministic=False, loader_workers=2)).workers == 2


def test_seed_everything_deterministic_default_follows_the_device():
    seed_everything(0)
    assert torch.are_deterministic_algorithms_enabled() == (not torch.cuda.is_available())
    seed_everything(0, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()
    seed_everything(0, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()


@pytest.mark.gpu
def test_device_policy_uses_the_gpu_with_bf16():
    from augpaint_core.config import RuntimeConfig
    from augpaint_core.runtime import device_policy

    p = device_policy(RuntimeConfig())
    assert p.cuda and p.bf16 == torch.cuda.is_bf16_supported() and not p.deterministic
    x = p.images(np.zeros((1, 4, 4, 3), np.uint8))
    assert x.is_cuda and x.dtype == torch.float32
