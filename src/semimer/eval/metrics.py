"""Scores: weighted average F-score (WAF, the MER2024 metric), accuracy, macro-F1, per-class F1,
confusion matrix, and fold summaries as mean ± std.

WAF is ``sklearn.metrics.f1_score(average="weighted")``: per-class F1 weighted by true-class
support. We call scikit-learn rather than re-deriving it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score


def scores(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int,
           classes: Sequence[str] | None = None) -> dict:
    """Keys: ``waf``, ``accuracy``, ``macro_f1``, ``per_class_f1`` (class -> F1), ``confusion``
    (rows true, columns predicted), ``n``. Scores are fractions in [0, 1]."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    labels = list(range(num_classes))
    classes = list(classes) if classes is not None else [str(i) for i in labels]
    per = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {
        "waf": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class_f1": {c: float(v) for c, v in zip(classes, per)},
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "n": int(len(y_true)),
    }


def mean_std(values: Sequence[float]) -> dict:
    """``{"mean", "std", "n"}``; std is the sample std (ddof=1), 0 for n = 1."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()) if len(v) else float("nan"),
            "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}


def summarise(fold_scores: Sequence[dict]) -> dict:
    """Mean ± std over folds of waf / accuracy / macro_f1 and each class's F1."""
    out = {k: mean_std([s[k] for s in fold_scores]) for k in ("waf", "accuracy", "macro_f1")}
    classes = list(fold_scores[0]["per_class_f1"]) if fold_scores else []
    out["per_class_f1"] = {c: mean_std([s["per_class_f1"][c] for s in fold_scores]) for c in classes}
    return out


def fmt(ms: dict, scale: float = 100.0) -> str:
    """``86.53 ± 0.41`` (percent)."""
    return f"{ms['mean'] * scale:.2f} ± {ms['std'] * scale:.2f}"
