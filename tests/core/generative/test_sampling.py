"""Algorithm 1 itself, seen from inside the loop: a stub U-Net records what it is given at every call."""
import pytest
import torch
from types import SimpleNamespace

from augpaint_core.generative.sampling import LATENT_SAMPLERS, ItemNoise, augpaint_loop, make_scheduler
from augpaint_core.generative.models import build_train_scheduler
from augpaint_core.config import LDMConfig


class RecordingUNet(torch.nn.Module):
    """Predicts a fixed fraction of its input as eps and remembers every (input, t)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, int]] = []

    def forward(self, x, t):
        self.calls.append((x.clone(), int(t)))
        return SimpleNamespace(sample=0.1 * x[:, :3])


def _setup(batch: int = 2, c: int = 3, h: int = 8):
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(batch, c, h, h, generator=g)
    keep = torch.zeros(batch, 1, h, h)
    keep[:, :, 2:5, 3:6] = 1
    return z0, keep, [11, 12][:batch]


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 1.0), ("dpmsolver++", 0.0), ("unipc", 0.0)])
def test_kept_region_is_the_forward_noised_real_latent_at_every_step(sampler, eta):
    z0, keep, seeds = _setup()
    sched = make_scheduler(sampler, build_train_scheduler(LDMConfig()).config)
    unet = RecordingUNet()
    out = augpaint_loop(unet, sched, z0, keep, ItemNoise(seeds), steps=5, eta=eta)
    assert [t for _, t in unet.calls] == [int(t) for t in sched.timesteps] and len(unet.calls) == 5
    replay = ItemNoise(seeds)
    replay.randn(tuple(z0.shape[1:]))  # the initial latent is the first draw
    k = keep.bool().expand_as(z0)
    for x, t in unet.calls:
        eps_k = replay.randn(tuple(z0.shape[1:]))  # fresh noise: a new draw per step
        expected = sched.add_noise(z0, eps_k, torch.tensor([t] * len(z0)))
        assert torch.allclose(x[k], expected[k], atol=1e-6)
        if sampler == "ddim" and eta > 0:
            replay.randn(tuple(z0.shape[1:]))  # stochastic DDIM's step noise comes next from the same generator
    assert torch.equal(out[k], z0[k])
    # The generated region is the sampler's own: it is never overwritten by the real latent.
    assert not torch.allclose(out[~k], z0[~k])


@pytest.mark.parametrize("sampler", LATENT_SAMPLERS)
def test_the_solver_continues_from_the_replaced_sample(sampler, monkeypatch):
    """The sample a solver's update starts from has the known region the U-Net saw (UniPC's corrector used to
    rebuild it from the previous step and drop the replacement)."""
    z0, keep, seeds = _setup()
    sched = make_scheduler(sampler, build_train_scheduler(LDMConfig()).config)
    update = {"ddim": "step", "dpmsolver++": "multistep_dpm_solver_second_order_update",
              "unipc": "multistep_uni_p_bh_update"}[sampler]
    seen = []
    orig = getattr(sched, update)

    def record(*args, **kwargs):
        sample = kwargs.get("sample", args[2] if update == "step" else None)
        if sample is not None:
            seen.append(sample.clone())
        return orig(*args, **kwargs)

    monkeypatch.setattr(sched, update, record)
    if sampler == "dpmsolver++":  # its first step is first order; record both
        first = sched.dpm_solver_first_order_update
        monkeypatch.setattr(sched, "dpm_solver_first_order_update",
                            lambda *a, **kw: (seen.append(kw["sample"].clone()), first(*a, **kw))[1])
    unet = RecordingUNet()
    augpaint_loop(unet, sched, z0, keep, ItemNoise(seeds), steps=5)
    assert len(seen) == len(unet.calls) == 5
    k = keep.bool().expand_as(z0)
    for (x, _), s in zip(unet.calls, seen):
        assert torch.allclose(s[k], x[k], atol=1e-6)


@pytest.mark.parametrize("sampler", LATENT_SAMPLERS)
def test_fixed_known_noise_is_one_draw_and_fresh_is_new_each_step(sampler):
    z0, keep, seeds = _setup(batch=1)
    sched = make_scheduler(sampler, build_train_scheduler(LDMConfig()).config)
    k = keep.bool().expand_as(z0)
    for mode, same in (("fixed", True), ("fresh", False)):
        unet = RecordingUNet()
        augpaint_loop(unet, sched, z0, keep, ItemNoise(seeds), steps=4, known_noise=mode)
        # Recover the noise of the known region at each call: (x - sqrt(a) z0) / sqrt(1 - a).
        a = sched.alphas_cumprod
        eps = [((x - a[t].sqrt() * z0) / (1 - a[t]).sqrt())[k] for x, t in unet.calls]
        assert all(torch.allclose(eps[0], e, atol=1e-4) for e in eps[1:]) == same


@pytest.mark.parametrize("sampler", LATENT_SAMPLERS)
def test_conditional_path_concatenates_and_never_replaces(sampler):
    z0, keep, seeds = _setup()
    sched = make_scheduler(sampler, build_train_scheduler(LDMConfig()).config)
    unet = RecordingUNet()
    cond = torch.full_like(z0, 7.0)
    augpaint_loop(unet, sched, z0, keep, ItemNoise(seeds), steps=3, cond=cond)
    for x, _ in unet.calls:
        assert x.shape[1] == 2 * z0.shape[1]
        assert torch.equal(x[:, 3:], cond)
    # No replacement: the first input is pure initial noise, also inside the kept region.
    replay = ItemNoise(seeds).randn(tuple(z0.shape[1:])) * sched.init_noise_sigma
    assert torch.equal(unet.calls[0][0][:, :3], replay)
