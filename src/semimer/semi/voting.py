"""Multi-classifier weighted soft voting (method step 6).

``p = Σ_i w_i·p_i / Σ_i w_i`` over several classifiers' class probabilities: the heads of one
model, or several runs (seeds, feature sets, architectures). The weights are chosen to maximise
the WAF of the vote on **out-of-fold** (OOF) predictions only: :func:`fit_vote_weights` takes OOF
probabilities and true labels and nothing else, so candidate/test predictions can never influence
the weights.

Pure numpy + scikit-learn: nothing here needs torch.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from semimer.io import read_csv
from semimer.eval.metrics import scores
from semimer.eval.predictions import read_predictions

#: Two WAF values closer than this are a tie (then the weights closest to uniform win).
TIE_TOL = 1e-12

#: Refuse an exhaustive simplex grid bigger than this (use method="coordinate").
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


def fit_vote_weights(oof_list: Sequence[np.ndarray], y: Sequence[int], grid_step: float = 0.1,
                     method: str = "auto", seed: int = 0) -> tuple[np.ndarray, float]:
    """Weights maximising the WAF (sklearn ``f1_score(average="weighted")``) of the soft vote of
    out-of-fold probabilities ``oof_list`` (M arrays (N, K), rows aligned) against labels ``y``.

    It sees OOF predictions and labels only, so candidate/test predictions cannot leak into the
    weights.

    ``method``:
      * ``"grid"``: every point of the simplex {w : w_i ∈ {0, s, 2s, ..., 1}, Σ w_i = 1}, s = ``grid_step``;
      * ``"coordinate"``: coordinate ascent from equal weights (all 0.5, the grid value nearest it).
        Each step sets one weight to its best value in {0, s, ..., 1}, the others fixed (the vote
        normalises, so weights need not sum to 1 during the search; starting mid-range lets a weight
        rise relative to the others as well as fall); sweeps repeat until no weight changes. A local
        optimum, unlike the grid; once normalised, its weights are ratios of grid values, not
        necessarily multiples of ``grid_step``. Coordinates are visited
        in an order shuffled per sweep by ``seed`` (the only use of ``seed``);
      * ``"auto"`` (default): ``"grid"`` when M ≤ 4, else ``"coordinate"``.

    Ties (WAF within 1e-12) go to the normalised weights closest (Euclidean) to uniform, then to the
    lexicographically largest (earlier models first), so the result is deterministic.
    Returns ``(weights normalised to sum 1, OOF WAF of the vote)``.
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
    if method == "auto":
        method = "grid" if M <= 4 else "coordinate"
    if method not in ("grid", "coordinate"):
        raise ValueError(f"method must be 'auto', 'grid' or 'coordinate', got {method!r}")

    def waf(w: np.ndarray) -> float:
        return _waf_fast(y, np.tensordot(w, P, axes=1).argmax(axis=1), K)

    best = _Best(M)
    if M == 1:
        best.offer(waf(np.ones(1)), np.ones(1))
    elif method == "grid":
        n_points = math.comb(n + M - 1, M - 1)
        if n_points > MAX_GRID_POINTS:
            raise ValueError(f"a simplex grid of {M} models at step {grid_step} has {n_points} points; "
                             f"use method='coordinate' or a coarser grid_step")
        for w in _simplex_grid(M, n):
            best.offer(waf(w), w)
    else:
        rng = np.random.default_rng(seed)
        values = np.arange(n + 1) / n
        w = np.full(M, max(1, round(n / 2)) / n)  # equal weights at mid-range: each can go up or down
        best.offer(waf(w), w)
        for _ in range(100 * M):  # a hard cap; each move strictly improves (WAF, -distance), so it ends
            moved = False
            for i in rng.permutation(M):
                for v in values:
                    if v == w[i]:
                        continue
                    cand = w.copy()
                    cand[i] = v
                    if cand.sum() <= 0:
                        continue
                    if best.offer(waf(cand), cand):
                        moved = True
                w = best.w.copy()
            if not moved:
                break
    weights = best.w / best.w.sum()
    final = scores(y, np.tensordot(weights, P, axes=1).argmax(axis=1), K)["waf"]
    return weights, float(final)


# --------------------------------------------------------------------------------------------
# runs on disk
# --------------------------------------------------------------------------------------------


@dataclass
class VoteResult:
    """Output of :func:`vote_runs`. ``probs`` (n_candidates, K) and ``oof_probs`` (n_labeled, K) are
    aligned with ``names`` / ``oof_names`` (the first run's row order); ``run_waf[i]`` is run i's
    own OOF WAF, ``voted_waf`` the OOF WAF of the vote."""

    names: list[str]
    probs: np.ndarray
    classes: list[str]
    weights: np.ndarray
    run_waf: list[float]
    voted_waf: float
    oof_names: list[str]
    oof_probs: np.ndarray
    oof_labels: np.ndarray


def _read_run_file(path: Path, classes: list[str] | None) -> tuple[list[str], np.ndarray, list[str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (is {path.parent} a finished run folder?)")
    names, probs, file_classes, _ = read_predictions(path)
    if probs is None:
        raise ValueError(f"{path} has no prob_<class> columns; voting needs probabilities")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate clip names")
    if classes is not None:
        if sorted(file_classes) != sorted(classes):
            raise ValueError(f"{path} has classes {file_classes}, expected {classes}")
        probs = probs[:, [file_classes.index(c) for c in classes]]  # columns matched by class name
        file_classes = list(classes)
    return names, np.asarray(probs, dtype=np.float64), file_classes


def _align(per_run: list[tuple[list[str], np.ndarray]], run_dirs: list[Path], what: str) -> tuple[list[str], list[np.ndarray]]:
    """Reorder every run's rows to the first run's name order; the name sets must be equal."""
    ref_names = per_run[0][0]
    ref = set(ref_names)
    out = []
    for (names, probs), d in zip(per_run, run_dirs):
        if set(names) != ref:
            only_here = sorted(set(names) - ref)
            only_ref = sorted(ref - set(names))
            raise ValueError(f"{what}: runs {run_dirs[0]} and {d} cover different clips "
                             f"({len(only_ref)} only in {run_dirs[0]}, e.g. {only_ref[:3]}; "
                             f"{len(only_here)} only in {d}, e.g. {only_here[:3]})")
        pos = {n: i for i, n in enumerate(names)}
        out.append(probs[[pos[n] for n in ref_names]])
    return ref_names, out


def vote_runs(run_dirs: Sequence[str | os.PathLike], weights=None,
              y_labels: Mapping[str, int | str] | None = None, grid_step: float = 0.1,
              method: str = "auto", seed: int = 0) -> VoteResult:
    """Soft-vote several finished runs (folders written by :func:`semimer.train.cv.run_cv`).

    Reads each run's ``oof.csv`` (``name, discrete, prob_<class>..., true, fold``) and
    ``predictions.csv``; rows are matched **by name** (never by position) and probability columns
    by class name. The runs must cover the same clips, else ``ValueError`` naming the two runs.
    True labels come from ``y_labels`` (``{name: class index or word}``) when given, else from the
    ``true`` column of ``oof.csv`` (which must agree across runs). Weights are fitted on the OOF
    predictions only (:func:`fit_vote_weights`) unless given.
    """
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise ValueError("no run folders to vote over")
    oof_runs, cand_runs = [], []
    classes: list[str] | None = None
    trues: list[dict[str, str]] = []
    for d in dirs:
        names, probs, classes = _read_run_file(d / "oof.csv", classes)
        oof_runs.append((names, probs))
        if y_labels is None:
            rows = read_csv(d / "oof.csv")
            if "true" not in rows[0]:
                raise ValueError(f"{d / 'oof.csv'} has no 'true' column; pass y_labels")
            trues.append({r["name"]: r["true"].strip().lower() for r in rows})
    for d in dirs:
        names, probs, _ = _read_run_file(d / "predictions.csv", classes)
        cand_runs.append((names, probs))
    oof_names, oof_aligned = _align(oof_runs, dirs, "oof.csv")
    cand_names, cand_aligned = _align(cand_runs, dirs, "predictions.csv")

    index = {c.lower(): i for i, c in enumerate(classes)}

    def to_index(v, name):
        if isinstance(v, (int, np.integer)):
            if not 0 <= int(v) < len(classes):
                raise ValueError(f"label {v} of {name} outside 0..{len(classes) - 1}")
            return int(v)
        key = str(v).strip().lower()
        if key not in index:
            raise ValueError(f"label {v!r} of {name} is not one of {classes}")
        return index[key]

    if y_labels is not None:
        missing = [n for n in oof_names if n not in y_labels]
        if missing:
            raise ValueError(f"y_labels lacks {len(missing)} OOF clip(s), e.g. {missing[:3]}")
        y = np.array([to_index(y_labels[n], n) for n in oof_names], dtype=np.int64)
    else:
        for t, d in zip(trues[1:], dirs[1:]):
            diff = [n for n in oof_names if t[n] != trues[0][n]]
            if diff:
                raise ValueError(f"true labels differ between {dirs[0]} and {d} for {len(diff)} clip(s), e.g. {diff[:3]}")
        y = np.array([to_index(trues[0][n], n) for n in oof_names], dtype=np.int64)

    if weights is None:
        w, _ = fit_vote_weights(oof_aligned, y, grid_step=grid_step, method=method, seed=seed)
    else:
        w = _check_weights(weights, len(dirs))
        w = w / w.sum()
    K = len(classes)
    oof_vote = soft_vote(oof_aligned, w)
    run_waf = [scores(y, p.argmax(axis=1), K)["waf"] for p in oof_aligned]
    voted_waf = scores(y, oof_vote.argmax(axis=1), K)["waf"]
    return VoteResult(names=list(cand_names), probs=soft_vote(cand_aligned, w), classes=list(classes), weights=w,
                      run_waf=[float(v) for v in run_waf], voted_waf=float(voted_waf), oof_names=list(oof_names),
                      oof_probs=oof_vote, oof_labels=y)
