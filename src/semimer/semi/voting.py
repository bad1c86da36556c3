"""Multi-classifier weighted soft voting (method step 6), scored out of sample.

``p = Σ_i w_i·p_i / Σ_i w_i`` over several classifiers' class probabilities: the heads of one
model, or several runs (seeds, feature sets, architectures). The weights maximise the WAF of the
vote on **out-of-fold** (OOF) predictions over a simplex grid (:func:`fit_vote_weights`; the grid
includes every single member, so "submit the best member" is one of its points).

Fitting weights on OOF predictions and then scoring the vote on the same OOF predictions is
optimistic. :func:`nested_vote` therefore fits fold ``k``'s weights on the *other* folds' OOF rows
only and applies them to fold ``k``'s rows: the nested OOF score is out of sample, and it is what
the recipe reports for the vote. The weights applied to the candidates are fitted on all OOF rows
(the procedure the nested score estimates).

Pure numpy + scikit-learn: nothing here needs torch.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np

from semimer.eval.metrics import scores

#: Two WAF values closer than this are a tie (then the weights closest to uniform win).
TIE_TOL = 1e-12

#: Refuse an exhaustive simplex grid bigger than this (use a coarser grid_step).
MAX_GRID_POINTS = 200_000


# --------------------------------------------------------------------------------------------
# the vote
# --------------------------------------------------------------------------------------------


def _check_weights(weights, m: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != (m,):
        raise ValueError(f"{len(w)} weights for {m} probability arrays")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"weights must be finite and >= 0, got {w.tolist()}")
    if w.sum() <= 0:
        raise ValueError(f"weights must have a positive sum, got {w.tolist()}")
    return w


def _stack(prob_list: Sequence[np.ndarray], what: str = "probability arrays") -> np.ndarray:
    if len(prob_list) == 0:
        raise ValueError(f"no {what} to vote over")
    arrs = [np.asarray(p, dtype=np.float64) for p in prob_list]
    shape = arrs[0].shape
    if len(shape) != 2:
        raise ValueError(f"{what} must be 2-D (N, K), got shape {shape}")
    for i, a in enumerate(arrs):
        if a.shape != shape:
            raise ValueError(f"{what}: array {i} has shape {a.shape}, array 0 has {shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"{what}: array {i} contains NaN/inf")
    return np.stack(arrs)  # (M, N, K)


def soft_vote(prob_list: Sequence[np.ndarray], weights=None) -> np.ndarray:
    """``Σ_i w_i·p_i / Σ_i w_i`` (float64, shape (N, K)); ``weights=None`` = equal weights.
    Weights must be ≥ 0 with a positive sum."""
    P = _stack(prob_list)
    w = np.ones(len(P)) if weights is None else _check_weights(weights, len(P))
    return np.tensordot(w / w.sum(), P, axes=1)


# --------------------------------------------------------------------------------------------
# weight fitting
# --------------------------------------------------------------------------------------------


def _waf_fast(y: np.ndarray, pred: np.ndarray, K: int) -> float:
    """``f1_score(y, pred, labels=range(K), average="weighted", zero_division=0)`` in numpy
    (the search evaluates hundreds of weight vectors; the final score is re-checked with sklearn)."""
    cm = np.bincount(y * K + pred, minlength=K * K).reshape(K, K)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    denom = support + predicted  # 2TP + FP + FN
    f1 = np.divide(2 * tp, denom, out=np.zeros(K), where=denom > 0)
    return float((f1 * support).sum() / support.sum())


def _simplex_grid(m: int, n: int) -> np.ndarray:
    """All weight vectors with m entries in {0, 1/n, ..., 1} summing to 1 (stars and bars),
    in lexicographic order of the integer compositions."""
    pts = []
    for bars in itertools.combinations(range(n + m - 1), m - 1):
        edges = (-1, *bars, n + m - 1)
        pts.append([edges[i + 1] - edges[i] - 1 for i in range(m)])
    return np.asarray(pts, dtype=np.float64) / n


def _steps(grid_step: float) -> int:
    step = float(grid_step)
    if not (0 < step <= 1):
        raise ValueError(f"grid_step must be in (0, 1], got {grid_step}")
    n = round(1.0 / step)
    if abs(n * step - 1.0) > 1e-9:
        raise ValueError(f"grid_step must divide 1 exactly (e.g. 0.1, 0.05, 0.25), got {grid_step}")
    return n


class _Best:
    """Keep the best (WAF, closeness to uniform, lexicographic) candidate; all comparisons are
    on normalised weights, so the outcome does not depend on visiting order."""

    def __init__(self, m: int):
        self.uniform = np.full(m, 1.0 / m)
        self.score = -math.inf
        self.dist = math.inf
        self.w: np.ndarray | None = None

    def better(self, score: float, w: np.ndarray) -> bool:
        wn = w / w.sum()
        dist = float(np.linalg.norm(wn - self.uniform))
        if self.w is None or score > self.score + TIE_TOL:
            return True
        if score < self.score - TIE_TOL:
            return False
        if dist < self.dist - TIE_TOL:
            return True
        if dist > self.dist + TIE_TOL:
            return False
        cur = self.w / self.w.sum()
        return tuple(np.round(wn, 12)) > tuple(np.round(cur, 12))  # last resort: favour earlier models

    def offer(self, score: float, w: np.ndarray) -> bool:
        if self.better(score, w):
            wn = w / w.sum()
            self.score, self.dist, self.w = score, float(np.linalg.norm(wn - self.uniform)), w.copy()
            return True
        return False


def fit_vote_weights(oof_list: Sequence[np.ndarray], y: Sequence[int], grid_step: float = 0.1) -> tuple[np.ndarray, float]:
    """Weights maximising the WAF (sklearn ``f1_score(average="weighted")``) of the soft vote of
    out-of-fold probabilities ``oof_list`` (M arrays (N, K), rows aligned) against labels ``y``,
    over every point of the simplex {w : w_i ∈ {0, s, 2s, ..., 1}, Σ w_i = 1}, s = ``grid_step``.

    Ties (WAF within 1e-12) go to the weights closest (Euclidean) to uniform, then to the
    lexicographically largest (earlier models first), so the result is deterministic.
    Returns ``(weights summing to 1, WAF of the vote on these rows)`` — an in-sample number; see
    :func:`nested_vote` for the out-of-sample one.
    """
    P = _stack(oof_list, "OOF probability arrays")
    M, N, K = P.shape
    y = np.asarray(y)
    if y.shape != (N,):
        raise ValueError(f"y has shape {y.shape}, expected ({N},) to match the OOF arrays")
    if N == 0:
        raise ValueError("no OOF rows to fit vote weights on")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must hold integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= K:
        raise ValueError(f"y has labels outside 0..{K - 1}")
    n = _steps(grid_step)
    n_points = math.comb(n + M - 1, M - 1)
    if n_points > MAX_GRID_POINTS:
        raise ValueError(f"a simplex grid of {M} models at step {grid_step} has {n_points} points; "
                         f"use a coarser recipe.vote_grid_step")
    best = _Best(M)
    for w in (_simplex_grid(M, n) if M > 1 else np.ones((1, 1))):
        best.offer(_waf_fast(y, np.tensordot(w, P, axes=1).argmax(axis=1), K), w)
    weights = best.w / best.w.sum()
    final = scores(y, np.tensordot(weights, P, axes=1).argmax(axis=1), K)["waf"]
    return weights, float(final)


def nested_vote(oof_list: Sequence[np.ndarray], y: Sequence[int], fold: Sequence[int],
                grid_step: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-sample soft vote of OOF predictions: the rows of fold ``k`` are voted with weights
    fitted on the other folds' rows only. Returns ``(voted probabilities (N, K), weights (F, M))``
    with one weight row per fold (in fold order ``0..F-1``)."""
    P = _stack(oof_list, "OOF probability arrays")
    y, fold = np.asarray(y), np.asarray(fold)
    if fold.shape != y.shape:
        raise ValueError(f"fold has shape {fold.shape}, labels {y.shape}")
    folds = np.unique(fold)
    if len(folds) < 2:
        raise ValueError("a nested vote needs at least two folds")
    out = np.zeros(P.shape[1:], dtype=np.float64)
    weights = np.zeros((len(folds), len(P)))
    for i, k in enumerate(folds):
        rest, here = fold != k, fold == k
        weights[i], _ = fit_vote_weights([p[rest] for p in P], y[rest], grid_step)
        out[here] = soft_vote([p[here] for p in P], weights[i])
    return out, weights


def _candidates(P: np.ndarray, y: np.ndarray, grid_step: float, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Ensembles to choose from, each as weights fitted on ``(P, y)``: the grid vote, equal
    weights, and every member alone."""
    M = len(P)
    out = {"vote": fit_vote_weights(list(P), y, grid_step)[0], "equal": np.full(M, 1.0 / M)}
    for i, n in enumerate(names):
        out[n] = np.eye(M)[i]
    return out


def _nested_scores(P: np.ndarray, y: np.ndarray, fold: np.ndarray, grid_step: float,
                   names: Sequence[str]) -> dict[str, float]:
    """Out-of-sample WAF of each candidate on these rows (weights fitted without the scored fold)."""
    K = P.shape[2]
    voted = {c: np.zeros(P.shape[1:]) for c in ["vote", "equal", *names]}
    for k in np.unique(fold):
        rest, here = fold != k, fold == k
        for c, w in _candidates(P[:, rest], y[rest], grid_step, names).items():
            voted[c][here] = soft_vote(list(P[:, here]), w)
    return {c: _waf_fast(y, v.argmax(1), K) for c, v in voted.items()}


def choose_ensemble(oof_list: Sequence[np.ndarray], y: Sequence[int], fold: Sequence[int], names: Sequence[str],
                    grid_step: float = 0.1) -> tuple[str, np.ndarray, dict[str, float]]:
    """Pick, among the grid vote, equal weights and each member alone, the ensemble with the best
    nested OOF WAF on these rows (ties: that order), and fit its weights on all of them. A vote
    that does not beat its best member out of sample is thus never chosen over it.
    Returns ``(chosen, weights, nested WAF per candidate)``."""
    P = _stack(oof_list, "OOF probability arrays")
    y, fold = np.asarray(y), np.asarray(fold)
    if len(np.unique(fold)) < 2:
        raise ValueError("choosing an ensemble needs at least two folds")
    nested = _nested_scores(P, y, fold, grid_step, list(names))
    chosen = max(nested, key=lambda c: (nested[c] - TIE_TOL * list(nested).index(c)))
    return chosen, _candidates(P, y, grid_step, list(names))[chosen], nested


def nested_choice(oof_list: Sequence[np.ndarray], y: Sequence[int], fold: Sequence[int], names: Sequence[str],
                  grid_step: float = 0.1) -> tuple[np.ndarray, list[str]]:
    """Out-of-sample score of :func:`choose_ensemble` itself: fold ``k``'s rows get the ensemble
    chosen *and* fitted on the other folds only (the choice is nested inside them). Needs ≥ 3 folds.
    Returns ``(voted OOF probabilities, the choice made for each fold)``."""
    P = _stack(oof_list, "OOF probability arrays")
    y, fold = np.asarray(y), np.asarray(fold)
    folds = np.unique(fold)
    if len(folds) < 3:
        raise ValueError("a nested choice needs at least three folds")
    out = np.zeros(P.shape[1:])
    chosen = []
    for k in folds:
        rest, here = fold != k, fold == k
        c, w, _ = choose_ensemble(list(P[:, rest]), y[rest], fold[rest], names, grid_step)
        out[here] = soft_vote(list(P[:, here]), w)
        chosen.append(c)
    return out, chosen
