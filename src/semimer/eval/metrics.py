"""Scores: weighted average F-score (WAF, the MER2024 metric), accuracy, macro-F1, per-class F1,
confusion matrix, and fold summaries as mean ± std.

WAF is ``sklearn.metrics.f1_score(average="weighted")``: per-class F1 weighted by true-class
support. We call scikit-learn rather than re-deriving it.

Classes absent from the true labels (a small test set, a fold of a rare class) have no F1: there
is nothing to recall, so sklearn's ``zero_division`` value would be an artefact, not a score. They
are reported as absent (``per_class_f1[c] is None`` and listed in ``absent``) and left out of
macro-F1. WAF is unaffected either way, since an absent class has support 0. Predictions *of* an
absent class still count: they are errors of the true class (lower its recall and the accuracy).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score


def scores(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int,
           classes: Sequence[str] | None = None) -> dict:
    """Keys: ``waf``, ``accuracy``, ``macro_f1`` (over classes present in ``y_true``),
    ``per_class_f1`` (class -> F1, ``None`` for a class absent from ``y_true``), ``absent``
    (those classes, in class order), ``confusion`` (rows true, columns predicted), ``n``.
    Scores are fractions in [0, 1]."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    labels = list(range(num_classes))
    classes = list(classes) if classes is not None else [str(i) for i in labels]
    support = np.bincount(y_true, minlength=num_classes)[:num_classes] if len(y_true) else np.zeros(num_classes, int)
    present = [k for k in labels if support[k] > 0]
    per = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0) if len(y_true) else [0.0] * num_classes
    macro = (float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0))
             if present else float("nan"))
    return {
        "waf": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0))
        if len(y_true) else float("nan"),
        "accuracy": float(accuracy_score(y_true, y_pred)) if len(y_true) else float("nan"),
        "macro_f1": macro,
        "per_class_f1": {c: (float(v) if support[k] > 0 else None) for k, (c, v) in enumerate(zip(classes, per))},
        "absent": [classes[k] for k in labels if support[k] == 0],
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "n": int(len(y_true)),
    }


def mean_std(values: Sequence[float | None]) -> dict:
    """``{"mean", "std", "n"}`` over the values that are not ``None`` (a class absent from some
    folds is averaged over the folds where it is present, and ``n`` says how many); std is the
    sample std (ddof=1), 0 for n = 1; mean is NaN for n = 0."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    return {"mean": float(v.mean()) if len(v) else float("nan"),
            "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}


def summarise(fold_scores: Sequence[dict]) -> dict:
    """Mean ± std over folds of waf / accuracy / macro_f1 and each class's F1. A class's F1 is
    averaged over the folds where it is present (its ``n`` counts them); a class absent from every
    fold gets ``None``."""
    out = {k: mean_std([s[k] for s in fold_scores]) for k in ("waf", "accuracy", "macro_f1")}
    classes = list(fold_scores[0]["per_class_f1"]) if fold_scores else []
    per = {}
    for c in classes:
        ms = mean_std([s["per_class_f1"].get(c) for s in fold_scores])
        per[c] = ms if ms["n"] else None
    out["per_class_f1"] = per
    return out


def fmt(ms: dict | None, scale: float = 100.0, show_n: bool = False) -> str:
    """``86.53 ± 0.41`` (percent); ``–`` for ``None`` (e.g. a class absent from every fold);
    ``show_n`` appends ``(n=3)``, the number of folds the mean is over."""
    if ms is None or ms.get("mean") is None:
        return "–"
    text = f"{ms['mean'] * scale:.2f} ± {ms['std'] * scale:.2f}"
    return text + f" (n={ms['n']})" if show_n else text
