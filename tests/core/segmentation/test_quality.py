import numpy as np
import pytest

from augpaint_core.segmentation.quality import frechet_distance, masked_nn, ms_ssim, msssim_setup, quality_report


def test_frechet_distance_of_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    b = rng.normal(size=(4000, 3)) + np.array([2.0, 0.0, 0.0])
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, b) == pytest.approx(4.0, abs=0.2)  # |mu1 - mu2|^2, equal covariances
    c = 3 * rng.normal(size=(4000, 3))  # sigma 3: 3 * (1 + 9 - 2 * 3) = 12
    assert frechet_distance(a, c) == pytest.approx(12.0, rel=0.1)
    assert np.isfinite(frechet_distance(a[:5], b[:7]))  # singular covariances stay finite


def test_msssim_setup_fits_monai_limits():
    for size in (32, 64, 256):
        k, w = msssim_setup(size)
        assert size // max(1, len(w) - 1) ** 2 > k - 1 and abs(sum(w) - 1) < 1e-6 and k >= 7
    assert len(msssim_setup(256)[1]) == 5  # large images keep the standard 5 scales


def test_ms_ssim_identical_is_one_and_noise_is_lower():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (3, 32, 32, 3)).astype(np.uint8)
    b = rng.integers(0, 255, (3, 32, 32, 3)).astype(np.uint8)
    assert np.allclose(ms_ssim(a, a), 1.0, atol=1e-4)
    assert (ms_ssim(a, b) < 0.5).all()


def test_masked_nn_ignores_the_kept_box_and_finds_copies():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 255, (5, 16, 16, 3)).astype(np.uint8)
    q = ref[[3]].copy()
    q[0, :8] = 0  # the kept box differs completely...
    mask = np.ones((1, 16, 16), bool)
    mask[0, :8] = False  # ...but only the generated part counts
    d, i = masked_nn(q, mask, ref, chunk=2)
    assert i[0] == 3 and d[0] == 0.0
    d2, i2 = masked_nn(q, np.ones((1, 16, 16), bool), ref)
    assert d2[0] > 0.1
    d3, i3 = masked_nn(q, mask, ref[:3], extra=ref[[3]])
    assert i3[0] == 3 and d3[0] == 0.0  # the extra candidate is index len(reference)


def test_quality_report_flags_copies_of_the_source():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 255, (6, 32, 32, 3)).astype(np.uint8)
    lab = np.zeros((32, 32), np.uint8)
    lab[8:16, 8:16] = 1
    copies = np.stack([real[2]] * 3)  # a "generator" that only copies its source
    prov = [{"source_index": 2, "flip": "none"}] * 3
    feats = rng.normal(size=(6, 4))
    q = quality_report(real_images=real, real_indices=np.arange(6), real_case_ids=list("aabbcc"),
                       real_features=feats, syn_images=copies, syn_labels=np.stack([lab] * 3),
                       syn_features=feats[[2, 2, 2]] + 0.01, provenance=prov, source_images={2: real[2]},
                       source_labels={2: lab}, source_case_ids={2: "b"}, kept=np.array([True, True, False]),
                       rejected={"background_structure": 0})
    assert q["nn_is_source_fraction"] == 1.0 and q["nn_distance_mean"] == 0.0
    assert q["msssim_within_source"] == pytest.approx(1.0, abs=1e-4)  # no diversity at all
    assert q["msssim_to_source"] == pytest.approx(1.0, abs=1e-4)
    assert q["nn_distance_real_reference"] > 0.1  # real slices of other cases are far apart
    assert q["acceptance_rate"] == pytest.approx(2 / 3)


def test_frechet_at_equal_sizes_removes_the_small_set_bias():
    """Defect 10: 'FD kept > FD all' appeared for kept samples drawn from the very same distribution, because the
    estimator grows as the set shrinks (here D = 48 > N). At one sample size the two agree, and a real shift
    still shows."""
    from augpaint_core.segmentation.quality import frechet_equal_size

    rng = np.random.default_rng(0)
    real, syn = rng.normal(size=(300, 48)), rng.normal(size=(120, 48))
    kept = np.zeros(120, bool)
    kept[rng.permutation(120)[:60]] = True
    assert frechet_distance(real, syn[kept]) > 1.5 * frechet_distance(real, syn)  # the artifact
    fd_all, fd_kept = (frechet_equal_size(real, s, 60, rng=rng) for s in (syn, syn[kept]))
    assert abs(fd_kept / fd_all - 1) < 0.15
    shifted = syn[kept] + 0.5
    assert frechet_equal_size(real, shifted, 60, rng=rng) > 1.5 * fd_all
    with pytest.raises(ValueError):
        frechet_equal_size(real, syn, 121)


def test_quality_report_takes_every_frechet_distance_at_one_size(monkeypatch):
    from augpaint_core.segmentation import quality

    rng = np.random.default_rng(0)
    real = rng.integers(0, 255, (6, 32, 32, 3)).astype(np.uint8)
    lab = np.zeros((32, 32), np.uint8)
    lab[8:16, 8:16] = 1
    syn = np.stack([real[2]] * 30)
    kept = np.zeros(30, bool)
    kept[:12] = True
    sizes = []
    orig = quality.frechet_distance
    monkeypatch.setattr(quality, "frechet_distance", lambda a, b: (sizes.append((len(a), len(b))), orig(a, b))[1])
    q = quality_report(real_images=real, real_indices=np.arange(6), real_case_ids=list("aabbcc"),
                       real_features=rng.normal(size=(50, 8)), syn_images=syn, syn_labels=np.stack([lab] * 30),
                       syn_features=rng.normal(size=(30, 8)), provenance=[{"source_index": 2, "flip": "none"}] * 30,
                       source_images={2: real[2]}, source_labels={2: lab}, source_case_ids={2: "b"}, kept=kept,
                       rejected={})
    assert q["fd_sample_size"] == 12  # min(50 // 2 real halves, 30 samples, 12 kept)
    assert sizes and set(sizes) == {(12, 12)}
    assert all(q[k] > 0 for k in ("fd_real_halves", "fd_all", "fd_kept"))
