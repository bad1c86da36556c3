"""Random oversampling of minority classes, applied inside a training fold only.

For each class ``c`` with ``n_c < ceil(ratio * n_max)`` clips, ``ceil(ratio * n_max) - n_c`` extra
indices are drawn uniformly with replacement from that class's clips. Validation folds are never
touched: callers pass the training fold's labels only (see :mod:`semimer.train.cv`).
"""

from __future__ import annotations

import math

import numpy as np


def oversample_indices(labels: np.ndarray, ratio: float = 1.0, seed: int = 0) -> np.ndarray:
    """Indices into ``labels`` (the originals, then the duplicates), in a shuffled order."""
    labels = np.asarray(labels)
    if not 0 < ratio <= 1:
        raise ValueError(f"oversample ratio must be in (0, 1], got {ratio}")
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels)
    target = math.ceil(ratio * counts.max())
    extra = []
    for c, n in enumerate(counts):
        if 0 < n < target:
            extra.append(rng.choice(np.flatnonzero(labels == c), size=target - n, replace=True))
    idx = np.concatenate([np.arange(len(labels))] + extra) if extra else np.arange(len(labels))
    return rng.permutation(idx)
