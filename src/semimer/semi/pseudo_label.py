"""Self-training (method step 5): choose confident unlabeled clips as pseudo-labeled training clips.

A clip is kept iff its top-class probability reaches the threshold τ_c of its predicted class c
(``argmax``; ties go to the first index). Thresholds are either

* the published per-class values (:func:`published_thresholds`): 0.99 for neutral / angry / happy /
  sad and 0.85 for worried / surprise (Fan et al., MRAC @ ACM MM 2024, arXiv 2409.04447), or
* FlexMatch-style class-adaptive thresholds (:func:`adaptive_thresholds`).

Pseudo-labeled clips go into training folds only; the CV score stays on real labels (see
:mod:`semimer.train.cv`), and the recipe selects them per fold with that fold's own model
(:mod:`semimer.semi.recipe`). Every round's selection is appended to one CSV
(``name,discrete,confidence,round,fold``) by :func:`write_selection_csv`.

Pure numpy: nothing here needs torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from semimer.io import read_csv, write_csv
from semimer.semi.calibration import apply_temperature, fit_temperature  # noqa: F401  (re-exported)

#: Published thresholds by class name (Fan et al. 2024).
PUBLISHED_THRESHOLDS: dict[str, float] = {
    "neutral": 0.99, "angry": 0.99, "happy": 0.99, "sad": 0.99,
    "worried": 0.85, "surprise": 0.85,
}

#: A probability this far *below* a threshold still counts as reaching it. Prediction files are
#: read back as float32 with 6 decimals, and float32(0.7) = 0.69999999 < 0.7; without this slack a
#: clip written as exactly ``0.700000`` would miss τ = 0.7.
THRESHOLD_ATOL = 1e-7

#: Rows of a probability matrix must sum to 1 within this tolerance.
SUM_ATOL = 1e-3

SELECTION_COLUMNS = ("name", "discrete", "confidence", "round", "fold")


@dataclass
class Selection:
    """The clips kept in one round, in the input (row) order of ``probs``.

    ``labels`` are class indices, ``confidence`` the top-class probabilities,
    ``per_class_counts`` (K,) how many clips were kept per class (after the cap), and
    ``thresholds`` (K,) the τ_c actually used.
    """

    names: list[str]
    labels: np.ndarray
    confidence: np.ndarray
    per_class_counts: np.ndarray
    thresholds: np.ndarray

    def __len__(self) -> int:
        return len(self.names)


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def check_probs(probs: np.ndarray, num_classes: int | None = None, what: str = "probs") -> np.ndarray:
    """Return ``probs`` as a float64 (N, K) array, or raise ``ValueError`` saying what is wrong:
    not 2-D, wrong K, non-finite, negative, or a row not summing to 1 within ``SUM_ATOL``."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (N, K) array, got shape {p.shape}")
    if num_classes is not None and p.shape[1] != num_classes:
        raise ValueError(f"{what} has {p.shape[1]} columns, expected {num_classes} classes")
    if p.shape[1] < 1:
        raise ValueError(f"{what} has no class columns")
    if p.size == 0:
        return p
    bad = ~np.isfinite(p).all(axis=1)
    if bad.any():
        raise ValueError(f"{what}: {int(bad.sum())} row(s) contain NaN/inf, first at row {int(np.flatnonzero(bad)[0])}")
    neg = (p < 0).any(axis=1)
    if neg.any():
        raise ValueError(f"{what}: {int(neg.sum())} row(s) have negative probabilities, "
                         f"first at row {int(np.flatnonzero(neg)[0])}")
    sums = p.sum(axis=1)
    off = np.abs(sums - 1.0) > SUM_ATOL
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise ValueError(f"{what}: {int(off.sum())} row(s) do not sum to 1 (±{SUM_ATOL}); row {i} sums to "
                         f"{sums[i]:.6f} (pass probabilities, not logits)")
    return p


def _check_tau(tau: float, what: str) -> float:
    tau = float(tau)
    if not (np.isfinite(tau) and 0.0 < tau <= 1.0):
        raise ValueError(f"{what} must be in (0, 1], got {tau}")
    return tau


def _threshold_vector(thresholds, classes: Sequence[str]) -> np.ndarray:
    K = len(classes)
    if isinstance(thresholds, Mapping):
        unknown = [c for c in thresholds if c not in set(classes)]
        if unknown:
            raise ValueError(f"thresholds name unknown class(es) {unknown}; classes are {list(classes)}")
        missing = [c for c in classes if c not in thresholds]
        if missing:
            raise ValueError(f"thresholds give no value for class(es) {missing}")
        t = np.array([float(thresholds[c]) for c in classes], dtype=np.float64)
    else:
        t = np.asarray(thresholds, dtype=np.float64).reshape(-1) if np.ndim(thresholds) else \
            np.full(K, float(thresholds))
        if t.shape != (K,):
            raise ValueError(f"thresholds have shape {t.shape}, expected ({K},) for classes {list(classes)}")
    # 0 is allowed: FlexMatch gives T_c = 0 to a class with no confident prediction (β_c = 0).
    bad = ~np.isfinite(t) | (t < 0) | (t > 1)
    if bad.any():
        raise ValueError(f"thresholds must be in [0, 1]; got {dict(zip(np.asarray(classes)[bad].tolist(), t[bad].tolist()))}")
    return t


# --------------------------------------------------------------------------------------------
# thresholds
# --------------------------------------------------------------------------------------------


def published_thresholds(classes: Sequence[str], default: float | None = None) -> np.ndarray:
    """τ_c by class name: 0.99 for neutral/angry/happy/sad, 0.85 for worried/surprise (names are
    matched case-insensitively). A class not in that list raises ``ValueError`` unless ``default``
    is given, which it then gets."""
    out = []
    unknown = []
    for c in classes:
        key = str(c).strip().lower()
        if key in PUBLISHED_THRESHOLDS:
            out.append(PUBLISHED_THRESHOLDS[key])
        elif default is not None:
            out.append(_check_tau(default, "default threshold"))
        else:
            unknown.append(c)
    if unknown:
        raise ValueError(f"no published threshold for class(es) {unknown} (known: "
                         f"{', '.join(PUBLISHED_THRESHOLDS)}); pass default=... to use one value for them")
    return np.asarray(out, dtype=np.float64)


def adaptive_thresholds(probs: np.ndarray, base_tau: float, num_classes: int, mapping: str = "convex",
                        min_threshold: float = 0.0) -> np.ndarray:
    """FlexMatch class-adaptive thresholds ("Curriculum Pseudo Labeling"; Zhang et al., FlexMatch,
    NeurIPS 2021, arXiv 2110.08263, eqs. 6, 7, 11), computed from one prediction pass over the pool.

    With p_n the predicted distribution of clip n, ĉ_n = argmax p_n (first index on ties) and
    τ = ``base_tau``::

        σ_c      = #{n : max p_n ≥ τ  and  ĉ_n = c}          (confident clips "learned" as class c)
        N_unused = #{n : max p_n < τ} = N − Σ_c σ_c           (clips no class has learned yet)
        β_c      = σ_c / max(max_c' σ_c', N_unused)           (warm-up normalisation, eq. 11)
        T_c      = M(β_c) · τ
        M(x)     = x / (2 − x)   mapping="convex"  (the paper's default, eq. 7)
        M(x)     = x             mapping="linear"

    Variant implemented: the *threshold warm-up* one (eq. 11; ``thresh_warmup=True`` in the
    authors' TorchSSL code, where the "unused" count is the ``-1`` entry of the counter). Without
    warm-up FlexMatch divides by max_c σ_c only (eq. 6); the warm-up keeps thresholds low while
    most clips are still below τ. Differences from the paper, on purpose: σ counts a clip at
    max p ≥ τ (the paper writes ">"; ties are measure-zero for real scores, and ≥ matches how
    :func:`select_pseudo_labels` applies a threshold), and σ comes from the current predictions
    of the whole pool (offline self-training) instead of the per-sample history kept during
    online training.

    Consequences: the best-learned class gets T = τ whenever max_c σ_c ≥ N_unused; a class with
    σ_c = 0 gets T_c = 0 (every clip predicted as it passes). ``min_threshold`` (default 0, i.e.
    pure FlexMatch) floors every T_c, e.g. ``min_threshold=0.5`` for offline self-training where
    a zero threshold would admit that class's least confident predictions.

    Returns T (K,) as float64.
    """
    tau = _check_tau(base_tau, "base_tau")
    if mapping not in ("convex", "linear"):
        raise ValueError(f"mapping must be 'convex' or 'linear', got {mapping!r}")
    if not (0.0 <= float(min_threshold) <= 1.0):
        raise ValueError(f"min_threshold must be in [0, 1], got {min_threshold}")
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    p = check_probs(probs, num_classes)
    if len(p) == 0:
        raise ValueError("adaptive_thresholds needs at least one clip (no statistics from an empty pool)")
    conf = p.max(axis=1)
    pred = p.argmax(axis=1)
    confident = conf >= tau - THRESHOLD_ATOL
    sigma = np.bincount(pred[confident], minlength=num_classes).astype(np.float64)
    n_unused = float((~confident).sum())
    beta = sigma / max(sigma.max(), n_unused)  # > 0: N ≥ 1 so one of the two is ≥ 1
    mapped = beta / (2.0 - beta) if mapping == "convex" else beta
    return np.maximum(mapped * tau, float(min_threshold))


# --------------------------------------------------------------------------------------------
# selection
# --------------------------------------------------------------------------------------------


def select_pseudo_labels(probs: np.ndarray, names: Sequence[str], thresholds, classes: Sequence[str],
                         max_per_class: int = 0, exclude: Iterable[str] = ()) -> Selection:
    """Keep clip n iff ``max p_n ≥ thresholds[argmax p_n]`` (argmax ties → first index).

    ``thresholds``: (K,) array in class order, or a ``{class name: τ}`` dict covering every class.
    ``exclude``: names skipped before anything else (clips already labeled or pseudo-labeled in an
    earlier round). ``max_per_class`` > 0 caps each class to its most confident clips (ties by
    name, ascending, so the result never depends on row order); 0 = no cap.
    The selection keeps the input row order.
    """
    classes = list(classes)
    K = len(classes)
    if K == 0:
        raise ValueError("classes is empty")
    names = list(names)
    p = check_probs(probs, K)
    if len(names) != len(p):
        raise ValueError(f"{len(names)} names for {len(p)} probability rows")
    if len(set(names)) != len(names):
        seen, dup = set(), []
        for n in names:
            if n in seen:
                dup.append(n)
            seen.add(n)
        raise ValueError(f"duplicate clip names, e.g. {dup[:3]}")
    if int(max_per_class) < 0:
        raise ValueError(f"max_per_class must be >= 0 (0 = no cap), got {max_per_class}")
    t = _threshold_vector(thresholds, classes)
    excluded = set(exclude)
    if len(p):
        conf = p.max(axis=1)
        pred = p.argmax(axis=1)
    else:
        conf, pred = np.zeros(0), np.zeros(0, dtype=np.int64)
    keep = (conf >= t[pred] - THRESHOLD_ATOL) if len(p) else np.zeros(0, bool)
    if excluded:
        keep &= np.array([n not in excluded for n in names], dtype=bool)
    if max_per_class:
        for c in range(K):
            idx = np.flatnonzero(keep & (pred == c))
            if len(idx) > max_per_class:
                order = sorted(idx.tolist(), key=lambda i: (-conf[i], names[i]))
                keep[order[max_per_class:]] = False
    idx = np.flatnonzero(keep)
    labels = pred[idx].astype(np.int64)
    return Selection(names=[names[i] for i in idx], labels=labels, confidence=conf[idx].astype(np.float64),
                     per_class_counts=np.bincount(labels, minlength=K).astype(np.int64), thresholds=t)


def softmatch_weights(confidence: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    """SoftMatch's truncated Gaussian weight (Chen et al., ICLR 2023), offline form: 1 for a
    confidence ≥ ``mu``, else ``exp(-(c - mu)² / (2 sigma²))``; ``mu``/``sigma`` are the mean and std
    of the confidences of the whole pool under the model that made the pseudo-labels."""
    c = np.asarray(confidence, dtype=np.float64)
    sigma = max(float(sigma), 1e-6)
    return np.where(c >= mu, 1.0, np.exp(-((c - mu) ** 2) / (2 * sigma ** 2)))


def select_topk(probs: np.ndarray, names: Sequence[str], prior, n_total: int, classes: Sequence[str],
                min_confidence: float = 0.0, exclude: Iterable[str] = ()) -> Selection:
    """Class-balanced selection: class ``c`` gets ``round(n_total · prior[c])`` clips, the most
    confident among those predicted as ``c`` (ties by name) with confidence ≥ ``min_confidence``;
    clips in ``exclude`` are skipped. ``prior`` is the pool's estimated class prior, so the
    pseudo-labels follow the pool's class mix instead of whichever classes are easiest.
    The selection keeps the input row order; ``thresholds`` holds each class's lowest kept
    confidence (1.0 for a class that got none)."""
    classes = list(classes)
    K = len(classes)
    names = list(names)
    p = check_probs(probs, K)
    if len(names) != len(p):
        raise ValueError(f"{len(names)} names for {len(p)} probability rows")
    prior = np.asarray(prior, dtype=np.float64)
    if prior.shape != (K,) or (prior < 0).any() or not np.isclose(prior.sum(), 1.0, atol=1e-6):
        raise ValueError(f"prior must be ({K},) non-negative and sum to 1, got {prior}")
    if int(n_total) < 0:
        raise ValueError(f"n_total must be >= 0, got {n_total}")
    excluded = set(exclude)
    conf = p.max(axis=1) if len(p) else np.zeros(0)
    pred = p.argmax(axis=1) if len(p) else np.zeros(0, np.int64)
    ok = (conf >= float(min_confidence) - THRESHOLD_ATOL) & np.array([n not in excluded for n in names], dtype=bool)
    keep = np.zeros(len(p), bool)
    lowest = np.ones(K)
    for c in range(K):
        quota = int(round(int(n_total) * prior[c]))
        idx = sorted(np.flatnonzero(ok & (pred == c)).tolist(), key=lambda i: (-conf[i], names[i]))[:quota]
        keep[idx] = True
        if idx:
            lowest[c] = conf[idx].min()
    idx = np.flatnonzero(keep)
    labels = pred[idx].astype(np.int64)
    return Selection(names=[names[i] for i in idx], labels=labels, confidence=conf[idx].astype(np.float64),
                     per_class_counts=np.bincount(labels, minlength=K).astype(np.int64), thresholds=lowest)


# --------------------------------------------------------------------------------------------
# the pseudo-label file: one row per pseudo-labeled clip, every round in one CSV
# --------------------------------------------------------------------------------------------


@dataclass
class SelectionRecords:
    """Rows of a pseudo-label CSV (``name,discrete,confidence,round,fold``), in file order.
    ``fold`` is the CV fold whose training part the clip joins (its label came from that fold's
    model, which never trained on that fold's validation clips)."""

    names: list[str]
    discrete: list[str]
    confidence: np.ndarray
    rounds: np.ndarray
    folds: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    def labels(self, classes: Sequence[str]) -> np.ndarray:
        """Class indices of ``discrete`` in ``classes``; an unknown word raises ``ValueError``."""
        index = {str(c).lower(): i for i, c in enumerate(classes)}
        bad = sorted({d for d in self.discrete if d.lower() not in index})
        if bad:
            raise ValueError(f"pseudo-label file has class word(s) {bad} not in {list(classes)}")
        return np.array([index[d.lower()] for d in self.discrete], dtype=np.int64)

    def upto(self, round_index: int) -> "SelectionRecords":
        """Only the rows of rounds ≤ ``round_index``."""
        return self._rows(self.rounds <= int(round_index))

    def for_fold(self, fold: int) -> "SelectionRecords":
        """Only the rows of fold ``fold``."""
        return self._rows(self.folds == int(fold))

    def _rows(self, m: np.ndarray) -> "SelectionRecords":
        return SelectionRecords([n for n, k in zip(self.names, m) if k], [d for d, k in zip(self.discrete, m) if k],
                                self.confidence[m], self.rounds[m], self.folds[m])


def read_selection_csv(path: str | os.PathLike) -> SelectionRecords:
    """Read a file written by :func:`write_selection_csv` (header checked)."""
    rows = read_csv(path)
    if rows:
        cols = tuple(rows[0].keys())
    else:
        with open(path, encoding="utf-8-sig") as fh:
            cols = tuple(fh.readline().strip().split(","))
    if cols != SELECTION_COLUMNS:
        raise ValueError(f"{path}: expected columns {','.join(SELECTION_COLUMNS)}, got {','.join(cols)}")
    try:
        conf = np.array([float(r["confidence"]) for r in rows], dtype=np.float64)
        rounds = np.array([int(r["round"]) for r in rows], dtype=np.int64)
        folds = np.array([int(r["fold"]) for r in rows], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: bad confidence/round/fold value ({exc})") from exc
    return SelectionRecords([r["name"] for r in rows], [r["discrete"].strip().lower() for r in rows], conf, rounds, folds)


def write_selection_csv(path: str | os.PathLike, selection: Selection, classes: Sequence[str],
                        round_index: int, fold: int = 0) -> None:
    """Add round ``round_index``'s clips for CV fold ``fold`` to the pseudo-label CSV at ``path``
    (created if missing).

    The whole file is rewritten atomically (:func:`semimer.io.write_csv`), rows sorted by round,
    then fold (stable). Rows already in the file for the *same* round and fold are replaced, so
    re-running a killed round never duplicates it. A clip pseudo-labeled for the same fold in
    another round raises ``ValueError`` (pass earlier rounds' names as ``exclude`` to
    :func:`select_pseudo_labels`).
    """
    classes = list(classes)
    round_index, fold = int(round_index), int(fold)
    if round_index < 0 or fold < 0:
        raise ValueError(f"round_index and fold must be >= 0, got {round_index}, {fold}")
    if len(selection.labels) != len(selection.names) or len(selection.confidence) != len(selection.names):
        raise ValueError("selection names, labels and confidence differ in length")
    labels = np.asarray(selection.labels, dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(f"selection labels outside 0..{len(classes) - 1}")
    old = read_selection_csv(path) if os.path.exists(path) else SelectionRecords(
        [], [], np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64))
    kept = [row for row in zip(old.names, old.discrete, old.confidence, old.rounds, old.folds)
            if not (row[3] == round_index and row[4] == fold)]
    clash = sorted({row[0] for row in kept if row[4] == fold} & set(selection.names))
    if clash:
        raise ValueError(f"{path}: clip(s) already pseudo-labeled for fold {fold} in another round, e.g. {clash[:3]}")
    new = [(n, classes[int(y)], float(c), round_index, fold)
           for n, y, c in zip(selection.names, labels, selection.confidence)]
    rows = sorted(kept + new, key=lambda row: (int(row[3]), int(row[4])))
    write_csv(path, list(SELECTION_COLUMNS), ((n, d, f"{float(c):.6f}", int(r), int(f)) for n, d, c, r, f in rows))
