"""Synthetic-data quality: realism, diversity, memorization and the filter's acceptance.

- Realism: Fréchet distance between in-domain encoder features (the filter scorer's deepest features, pooled)
  of the real training slices and of the synthetic slices (all, and the kept ones). For scale, the same
  distance between two disjoint random subsets of the real slices is reported too. The estimator is biased
  upward for small sets (more so when the feature dimension exceeds the set size), so every distance of a
  report is taken at one sample size ``fd_sample_size``: random subsets of the larger sets, averaged over
  repeats (:func:`frechet_equal_size`).
- Diversity: mean pairwise MS-SSIM between samples of the same source slice (lower = more diverse), and the
  mean MS-SSIM of each sample to its source.
- Memorization: per sample, the nearest-neighbour distance (mean absolute difference in [0, 1] intensity) to
  the real training slices over the pixels *outside* the kept box, i.e. the generated part only; the source
  itself (flipped like the sample) is one of the candidates. For scale: the same distance from each real
  anchor to the real slices of other cases.
- Acceptance: kept / total, and how many samples each rejection rule removed.

Large sets are subsampled (``max_samples``, ``max_reference``) with a fixed seed so the cost stays bounded.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np
import torch

from ..generative.masks import box_mask

MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D) and (M, D).

    tr(sqrt(S1 S2)) is computed as the sum of sqrt-eigenvalues of the symmetric S1^1/2 S2 S1^1/2, which stays
    real and stable when the covariances are singular (fewer samples than feature dimensions).
    """
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    r1 = _psd_sqrt(s1)
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)).sum()
    return float(max(0.0, ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean))


def frechet_equal_size(a: np.ndarray, b: np.ndarray, n: int, repeats: int = 10,
                       rng: np.random.Generator | None = None) -> float:
    """Mean Fréchet distance between random ``n``-subsets of ``a`` and of ``b`` (without replacement).

    Comparing distances taken at different set sizes compares the estimator's bias, not the sets;
    subsets of one size make them comparable.

    Args:
        a: (N, D) features; b: (M, D) features; both need at least ``n`` rows.
        n: subset size (>= 2).
        repeats: subset draws averaged (one when both sets have exactly ``n`` rows).
        rng: source of the subsets (default: seed 0).
    """
    if n < 2 or n > min(len(a), len(b)):
        raise ValueError(f"subset size {n} needs 2 <= n <= {min(len(a), len(b))}")
    rng = rng if rng is not None else np.random.default_rng(0)
    reps = 1 if len(a) == len(b) == n else repeats
    return float(np.mean([frechet_distance(a[rng.choice(len(a), n, replace=False)],
                                           b[rng.choice(len(b), n, replace=False)]) for _ in range(reps)]))


def msssim_setup(size: int) -> tuple[int, tuple[float, ...]]:
    """Kernel size and scale weights that MONAI's MS-SSIM accepts for ``size`` px images.

    The standard 5 scales with an 11 px kernel need about 161 px; smaller images keep fewer scales (the
    standard weights, renormalised) and a smaller kernel, preferring a kernel of at least 7 px.
    """
    for min_kernel in (7, 3):
        for levels in (5, 4, 3, 2):
            for k in (11, 9, 7, 5, 3):
                if k >= min_kernel and size // max(1, levels - 1) ** 2 > k - 1:
                    w = np.array(MSSSIM_WEIGHTS[:levels])
                    return k, tuple((w / w.sum()).tolist())
    return 3, (1.0,)


def ms_ssim(a: np.ndarray, b: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """MS-SSIM (MONAI ``MultiScaleSSIMMetric``) between paired (N,H,W,3) uint8 images, one value per pair."""
    from monai.metrics import MultiScaleSSIMMetric

    if len(a) == 0:
        return np.zeros(0)
    k, w = msssim_setup(min(a.shape[1:3]))
    metric = MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, kernel_size=k, weights=w, reduction="none")
    out = []
    for i in range(0, len(a), batch_size):
        x = torch.from_numpy(np.asarray(a[i:i + batch_size])).permute(0, 3, 1, 2).float() / 255
        y = torch.from_numpy(np.asarray(b[i:i + batch_size])).permute(0, 3, 1, 2).float() / 255
        out.append(metric(x, y).mean(1).numpy())  # mean over channels
    return np.concatenate(out)


def _flip(img: np.ndarray, flip: str) -> np.ndarray:
    return img[:, ::-1] if flip == "h" else img[::-1] if flip == "v" else img


def masked_nn(queries: np.ndarray, masks: np.ndarray, reference: np.ndarray, extra: np.ndarray | None = None,
              chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Nearest neighbour of each query among ``reference`` by mean |difference| over the query's mask.

    Args:
        queries: (N,H,W,3) uint8.
        masks: (N,H,W) bool, the pixels that count.
        reference: (M,H,W,3) uint8.
        extra: optional (N,H,W,3) uint8, one more candidate per query (index M in the result).
        chunk: reference images per step.

    Returns:
        distances (N,) in [0, 1] and nearest indices (N,).
    """
    q = torch.from_numpy(np.asarray(queries)).float() / 255
    m = torch.from_numpy(np.asarray(masks)).float()[..., None]
    msum = (m.sum((1, 2, 3)) * 3).clamp(min=1)
    best = torch.full((len(q),), float("inf"))
    arg = torch.zeros(len(q), dtype=torch.long)
    for s in range(0, len(reference), chunk):
        r = torch.from_numpy(np.asarray(reference[s:s + chunk])).float() / 255
        d = torch.stack([((r - qi).abs() * mi).sum((1, 2, 3)) / ms for qi, mi, ms in zip(q, m, msum)])  # (N, c)
        v, i = d.min(1)
        better = v < best
        best, arg = torch.where(better, v, best), torch.where(better, i + s, arg)
    if extra is not None:
        e = torch.from_numpy(np.asarray(extra)).float() / 255
        v = ((e - q).abs() * m).sum((1, 2, 3)) / msum
        better = v < best
        best, arg = torch.where(better, v, best), torch.where(better, torch.full_like(arg, len(reference)), arg)
    return best.numpy(), arg.numpy()


def quality_report(*, real_images: np.ndarray, real_indices: np.ndarray, real_case_ids: Sequence[str],
                   real_features: np.ndarray,
                   syn_images: np.ndarray, syn_labels: np.ndarray, syn_features: np.ndarray,
                   provenance: list[dict], source_images: dict[int, np.ndarray], source_labels: dict[int, np.ndarray],
                   source_case_ids: dict[int, str], kept: np.ndarray, rejected: dict[str, int],
                   max_samples: int = 500, max_reference: int = 2000, seed: int = 0) -> dict:
    """The quality numbers of one synthetic set (see the module docstring).

    Args:
        real_images: (M,H,W,3) uint8 real training slices (the memorization reference).
        real_indices: their indices in the real dataset (``source_index`` refers to these).
        real_case_ids: case id of each real slice.
        real_features: (M', D) encoder features of real training slices.
        syn_images: (N,H,W,3) uint8 synthetic slices.
        syn_labels: (N,H,W) their labels (the kept boxes are recomputed from them).
        syn_features: (N, D) encoder features of the synthetic slices.
        provenance: per-sample provenance (``source_index``, ``flip``).
        source_images: real source slice by its index in the real dataset.
        source_labels: its label.
        source_case_ids: its case id.
        kept: (N,) bool, the filter's decision.
        rejected: samples removed by each rejection rule.
        max_samples: synthetic samples used for MS-SSIM to source and nearest neighbours.
        max_reference: real slices used as nearest-neighbour candidates.
        seed: subsampling seed.
    """
    rng = np.random.default_rng(seed)
    n = len(syn_images)
    out: dict = {"num_samples": n, "num_kept": int(kept.sum()), "acceptance_rate": float(kept.mean()),
                 "rejected": dict(rejected)}
    # realism, every distance at one sample size (the estimator's bias depends on it)
    m = len(real_features)
    n_fd = min(m // 2, n, int(kept.sum()))
    out["fd_sample_size"] = n_fd if n_fd >= 2 else None
    if n_fd >= 2:
        half = rng.permutation(m)
        out["fd_real_halves"] = frechet_equal_size(real_features[half[::2]], real_features[half[1::2]], n_fd,
                                                   rng=rng)
        out["fd_all"] = frechet_equal_size(real_features, syn_features, n_fd, rng=rng)
        out["fd_kept"] = frechet_equal_size(real_features, syn_features[kept], n_fd, rng=rng)
    else:
        out["fd_real_halves"] = out["fd_all"] = out["fd_kept"] = None
    # diversity
    by_source: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(provenance):
        by_source[int(p["source_index"])].append(i)
    pairs = [(a, b) for idx in by_source.values() for k, a in enumerate(idx) for b in idx[k + 1:]]
    if len(pairs) > 4 * max_samples:
        pairs = [pairs[i] for i in rng.choice(len(pairs), 4 * max_samples, replace=False)]
    if pairs:
        pa, pb = np.array(pairs).T
        out["msssim_within_source"] = float(ms_ssim(syn_images[pa], syn_images[pb]).mean())
    else:
        out["msssim_within_source"] = None
    sub = np.sort(rng.choice(n, min(n, max_samples), replace=False))
    src_imgs = np.stack([_flip(source_images[int(provenance[i]["source_index"])], provenance[i].get("flip", "none"))
                         for i in sub])
    out["msssim_to_source"] = float(ms_ssim(syn_images[sub], src_imgs).mean())
    # memorization: outside the kept boxes
    ref = np.sort(rng.choice(len(real_images), min(len(real_images), max_reference), replace=False))
    ref_imgs = np.asarray(real_images[ref])
    masks = np.stack([~box_mask(np.asarray(syn_labels[i])) for i in sub])
    dist, nn = masked_nn(syn_images[sub], masks, ref_imgs, extra=src_imgs)
    pos = {int(real_indices[r]): k for k, r in enumerate(ref)}
    src_ref = np.array([pos.get(int(provenance[i]["source_index"]), -1) for i in sub])
    is_source = (nn == len(ref)) | (nn == src_ref)
    out["nn_distance_mean"] = float(dist.mean())
    out["nn_distance_min"] = float(dist.min())
    out["nn_is_source_fraction"] = float(is_source.mean())
    # scale: real anchors vs real slices of other cases, outside their own boxes
    anchors = sorted(source_images)[:max_samples]
    ref_cases = np.asarray(real_case_ids)[ref]
    d_real = []
    for a in anchors:
        other = np.nonzero(ref_cases != source_case_ids[a])[0]
        if len(other):
            d, _ = masked_nn(source_images[a][None], ~box_mask(source_labels[a])[None], ref_imgs[other])
            d_real.append(float(d[0]))
    out["nn_distance_real_reference"] = float(np.mean(d_real)) if d_real else None
    return out
