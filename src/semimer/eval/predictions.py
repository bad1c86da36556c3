"""Prediction files: ``name,discrete,prob_<class>...`` one row per clip, names always explicit.

The first two columns are the MER2024 submission format (``name,discrete``); the probability
columns let ensembles, voting and self-training reuse a run without re-running it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from semimer.io import read_csv, write_csv


def write_predictions(path: str | os.PathLike, names: Sequence[str], probs: np.ndarray,
                      classes: Sequence[str], extra: dict[str, Sequence] | None = None) -> None:
    probs = np.asarray(probs)
    if probs.shape != (len(names), len(classes)):
        raise ValueError(f"probabilities have shape {probs.shape}, expected ({len(names)}, {len(classes)})")
    extra = extra or {}
    header = ["name", "discrete", *[f"prob_{c}" for c in classes], *extra]
    pred = probs.argmax(1)
    rows = ([n, classes[int(k)], *[f"{p:.6f}" for p in row], *[extra[e][i] for e in extra]]
            for i, (n, k, row) in enumerate(zip(names, pred, probs)))
    write_csv(path, header, rows)


def write_submission(path: str | os.PathLike, names: Sequence[str], probs: np.ndarray, classes: Sequence[str]) -> None:
    """The bare challenge file: ``name,discrete``."""
    write_csv(path, ["name", "discrete"], ((n, classes[int(k)]) for n, k in zip(names, np.asarray(probs).argmax(1))))


def read_predictions(path: str | os.PathLike) -> tuple[list[str], np.ndarray | None, list[str], list[str]]:
    """``(names, probs or None, classes from prob columns, predicted labels)``."""
    rows = read_csv(path)
    if not rows:
        raise ValueError(f"{path} has no rows")
    cols = list(rows[0].keys())
    if "name" not in cols or "discrete" not in cols:
        raise ValueError(f"{path} must have columns name,discrete (got {', '.join(cols)})")
    names = [r["name"] for r in rows]
    pcols = [c for c in cols if c.startswith("prob_")]
    probs = np.array([[float(r[c]) for c in pcols] for r in rows], dtype=np.float32) if pcols else None
    return names, probs, [c[5:] for c in pcols], [r["discrete"].strip().lower() for r in rows]


def check_submission(path: str | os.PathLike, candidates: Sequence[str], classes: Sequence[str]) -> None:
    """Raise if the file does not cover every candidate exactly once with a valid class word."""
    names, _, _, labels = read_predictions(path)
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate names")
    missing = set(candidates) - set(names)
    if missing:
        raise ValueError(f"{path}: {len(missing)} candidate clip(s) missing, e.g. {sorted(missing)[:3]}")
    bad = [lab for lab in labels if lab not in set(classes)]
    if bad:
        raise ValueError(f"{path}: unknown class word(s) {sorted(set(bad))[:3]}")
