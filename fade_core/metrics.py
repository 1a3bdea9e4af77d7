"""Erasure metrics (paper 6.1 and Appendix B).

- Acc: the share of generations for concept prompts that an evaluator labels as the concept
  (lower is better).
- FID: Fréchet distance between feature distributions; here computed in the evaluator's feature
  space (the "FID-proxy"), since no Inception weights exist offline.
- CLIP similarity: prompt adherence; here the evaluator's accuracy on non-target prompts (the
  "CLIP-proxy"), since no CLIP weights exist offline.
- H: the harmonic mean of erasure E = 1 - Acc and fidelity
  F = 1/2 * (CLIP / CLIP_orig + max(FID_orig - (FID - FID_orig), 0) / FID_orig).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import linalg


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two (N, D) feature sets."""
    a = features_a.double().numpy()
    b = features_b.double().numpy()
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("the Fréchet distance needs at least two samples on each side")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():
        eps = np.eye(cov_a.shape[0]) * 1e-6
        root = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    distance = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2.0 * root.real)
    return float(max(distance, 0.0))


def fidelity(fid: float, clip: float, fid_orig: float, clip_orig: float) -> float:
    """F of Appendix B: 1 when FID and CLIP equal the original model's, less when they worsen."""
    clip_term = clip / clip_orig if clip_orig > 0 else 0.0
    fid_term = max(fid_orig - (fid - fid_orig), 0.0) / fid_orig if fid_orig > 0 else 0.0
    return 0.5 * (clip_term + fid_term)


def harmonic_mean(erasure: float, fidelity_score: float) -> float:
    """H = 2 E F / (E + F), with E = 1 - Acc."""
    if erasure + fidelity_score <= 0:
        return 0.0
    return 2.0 * erasure * fidelity_score / (erasure + fidelity_score)


def erasure_score(acc_concept: float, fid: float, clip: float, fid_orig: float, clip_orig: float) -> float:
    return harmonic_mean(1.0 - acc_concept, fidelity(fid, clip, fid_orig, clip_orig))
