"""Stratified (optionally grouped), seeded K-fold assignment, saved to ``folds.csv`` so every run
can be audited; and the inner split of a training fold used to choose epochs without looking at
the fold being scored.

Groups (``data.group_column``: speaker, dialogue, session) are never split across folds: real
corpora need it, as speaker-dependent folds overstate scores by many points.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from semimer.io import read_csv, write_csv


def _splitter(n_folds: int, seed: int, grouped: bool):
    cls = StratifiedGroupKFold if grouped else StratifiedKFold
    return cls(n_splits=n_folds, shuffle=True, random_state=seed)


def assign_folds(labels: Sequence[int], n_folds: int = 5, seed: int = 0, groups: Sequence | None = None) -> np.ndarray:
    """Fold index (0..n_folds-1) per clip; each fold keeps the class proportions (as well as it
    can when ``groups`` are given: every group then lies in exactly one fold)."""
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    if (counts[counts > 0] < n_folds).any():
        rare = [int(c) for c in np.flatnonzero((counts > 0) & (counts < n_folds))]
        raise ValueError(f"class(es) {rare} have fewer than {n_folds} labeled clips; lower train.folds")
    if groups is not None:
        groups = np.asarray(groups)
        if len(groups) != len(labels):
            raise ValueError(f"{len(groups)} group ids for {len(labels)} labeled clips")
        n_groups = len(np.unique(groups))
        if n_groups < n_folds:
            raise ValueError(f"only {n_groups} distinct groups for {n_folds} folds; lower train.folds "
                             f"or choose another data.group_column")
    fold = np.empty(len(labels), dtype=np.int64)
    split = _splitter(n_folds, seed, groups is not None).split(np.zeros(len(labels)), labels, groups)
    for k, (_, val) in enumerate(split):
        fold[val] = k
    return fold


def inner_split(idx: np.ndarray, labels: Sequence[int], fraction: float, seed: int,
                groups: Sequence | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split the training clips ``idx`` (indices into ``labels``) into ``(fit, select)``: about
    ``fraction`` of them, stratified (and grouped), to choose the epoch on; the rest to train on.
    Never touches the clips of the fold being scored (they are not in ``idx``)."""
    idx = np.asarray(idx)
    if not 0.0 < fraction < 0.5:
        raise ValueError(f"train.inner_fraction must be in (0, 0.5), got {fraction}")
    y = np.asarray(labels)[idx]
    g = None if groups is None else np.asarray(groups)[idx]
    n_splits = max(2, int(round(1.0 / fraction)))
    n_units = len(idx) if g is None else len(np.unique(g))
    if n_units < 2:
        raise ValueError(f"only {n_units} {'clip' if g is None else 'group'}(s) in a training fold: too few for an "
                         f"inner split; set train.select=fixed or use more labeled clips")
    n_splits = min(n_splits, n_units)  # tiny sets: a larger selection share rather than no split
    # a class with fewer clips than n_splits cannot be stratified exactly; sklearn warns, we accept it
    import warnings

    from sklearn.model_selection import GroupKFold, KFold

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        try:
            fit, sel = next(_splitter(n_splits, seed, g is not None).split(np.zeros(len(idx)), y, g))
        except ValueError:  # every class smaller than n_splits (a handful of clips): unstratified
            splitter = GroupKFold(n_splits=n_splits) if g is not None else KFold(n_splits, shuffle=True, random_state=seed)
            fit, sel = next(splitter.split(np.zeros(len(idx)), y, g))
    return idx[np.sort(fit)], idx[np.sort(sel)]


def save_folds(path: str | os.PathLike, names: Sequence[str], labels: Sequence[int], fold: Sequence[int],
               classes: Sequence[str], groups: Sequence | None = None) -> None:
    if groups is None:
        write_csv(path, ["name", "discrete", "fold"], ((n, classes[int(y)], int(f)) for n, y, f in zip(names, labels, fold)))
    else:
        write_csv(path, ["name", "discrete", "fold", "group"],
                  ((n, classes[int(y)], int(f), g) for n, y, f, g in zip(names, labels, fold, groups)))


def load_folds(path: str | os.PathLike) -> dict[str, int]:
    return {r["name"]: int(r["fold"]) for r in read_csv(path)}
