"""Prior-shift adaptation: estimate the class prior of unlabeled clips by EM and correct posteriors.

Saerens, Latinne & Decaestecker, "Adjusting the Outputs of a Classifier to New a Priori
Probabilities: A Simple Procedure", Neural Computation 14(1), 2002. With posteriors ``p(c|x_i)``
of a classifier trained under prior ``π_train`` and unlabeled clips drawn under an unknown prior
``π``, iterate::

    p_s(c|x_i) = (π_s[c] / π_train[c]) · p(c|x_i) / Σ_c' (π_s[c'] / π_train[c']) · p(c'|x_i)
    π_{s+1}[c] = mean_i p_s(c|x_i)

from ``π_0 = π_train``; each step does not decrease the likelihood of the unlabeled clips. The
posteriors must be calibrated for the estimate to mean anything.

In the recipe ``π_train`` is the mean out-of-fold posterior on the labeled clips, i.e. the prior the
models behave as if trained under (oversampling and pseudo-labels change it away from the label
counts). No label of any clip is used.
"""

from __future__ import annotations

import numpy as np


def adjust_to_prior(probs: np.ndarray, train_prior: np.ndarray, new_prior: np.ndarray) -> np.ndarray:
    """Posteriors re-weighted from ``train_prior`` to ``new_prior`` (rows renormalised)."""
    p = np.asarray(probs, dtype=np.float64)
    w = np.asarray(new_prior, dtype=np.float64) / np.clip(np.asarray(train_prior, dtype=np.float64), 1e-12, None)
    q = p * w
    return q / np.clip(q.sum(1, keepdims=True), 1e-300, None)


def em_prior(probs: np.ndarray, train_prior: np.ndarray, max_iter: int = 1000,
             tol: float = 1e-8) -> tuple[np.ndarray, np.ndarray, int]:
    """EM estimate of the prior of the clips behind ``probs`` (N, K).

    Returns ``(prior (K,), adjusted posteriors (N, K), iterations run)``.
    """
    p = np.asarray(probs, dtype=np.float64)
    pt = np.asarray(train_prior, dtype=np.float64)
    if p.ndim != 2 or len(p) == 0 or pt.shape != (p.shape[1],):
        raise ValueError(f"em_prior needs (N, K) posteriors and a (K,) prior, got {p.shape} and {pt.shape}")
    if not np.isfinite(p).all() or (p < 0).any() or (pt <= 0).any():
        raise ValueError("posteriors must be finite and >= 0, and the training prior > 0 for every class")
    pt = pt / pt.sum()
    prior = pt.copy()
    it = 0
    for it in range(1, max_iter + 1):
        new = adjust_to_prior(p, pt, prior).mean(0)
        done = np.abs(new - prior).max() < tol
        prior = new
        if done:
            break
    return prior, adjust_to_prior(p, pt, prior), it
