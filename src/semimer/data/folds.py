"""Stratified, seeded K-fold assignment, saved to ``folds.csv`` so every run can be audited."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from sklearn.model_selection import StratifiedKFold

from semimer.io import read_csv, write_csv


def assign_folds(labels: Sequence[int], n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold index (0..n_folds-1) per clip; each fold keeps the class proportions."""
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    if (counts[counts > 0] < n_folds).any():
        rare = [int(c) for c in np.flatnonzero((counts > 0) & (counts < n_folds))]
        raise ValueError(f"class(es) {rare} have fewer than {n_folds} labeled clips; lower train.folds")
    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold = np.empty(len(labels), dtype=np.int64)
    for k, (_, val) in enumerate(skf.split(np.zeros(len(labels)), labels)):
        fold[val] = k
    return fold


def save_folds(path: str | os.PathLike, names: Sequence[str], labels: Sequence[int], fold: Sequence[int],
               classes: Sequence[str]) -> None:
    write_csv(path, ["name", "discrete", "fold"], ((n, classes[int(y)], int(f)) for n, y, f in zip(names, labels, fold)))


def load_folds(path: str | os.PathLike) -> dict[str, int]:
    return {r["name"]: int(r["fold"]) for r in read_csv(path)}
