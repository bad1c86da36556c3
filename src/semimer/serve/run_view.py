"""What the page shows about the run: its classes, features and members, the headline scores, the
per-class F1 and confusion matrix of its out-of-fold predictions, pseudo-label counts, its plots and
report. Read once when the server starts; the run folder is only ever read.

Both kinds of run are understood: ``semimer train`` (``metrics.json`` with ``cv``, ``oof``,
``n_pseudo``) and ``semimer recipe`` (``metrics.json`` with ``final``, ``members``,
``pseudo_labels_per_round``, plus ``report.md``). Per-class F1 and the confusion matrix come from
``oof.csv`` (columns ``discrete`` and ``true``), which both write.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from semimer.eval.metrics import fmt, scores
from semimer.infer.inputs import needs_transcript
from semimer.infer.predict import Ensemble
from semimer.io import read_csv, read_json
from semimer.utils import log

REPORT = "report.md"


def run_files(run_dir: Path) -> dict[str, Path]:
    """The files of the run the page may fetch: every ``.png`` below it and ``report.md``, by
    path relative to the run (``/``-separated). Nothing else is ever served."""
    files = {p.relative_to(run_dir).as_posix(): p for p in sorted(run_dir.rglob("*.png")) if p.is_file()}
    if (run_dir / REPORT).is_file():
        files[REPORT] = run_dir / REPORT
    return files


def run_summary(ensemble: Ensemble) -> dict[str, Any]:
    """The JSON of ``GET /api/run`` (see the module docstring)."""
    run = Path(ensemble.run_dir)
    classes = list(ensemble.classes)
    metrics = _read_optional_json(run / "metrics.json")
    oof = _oof_scores(run / "oof.csv", classes)
    files = run_files(run)
    dirs = ensemble.member_dirs or [run] * len(ensemble.members)
    return {
        "name": run.resolve().name,
        "classes": classes,
        "features": {m: {"feature": f["feature"], "dim": int(f["dim"]), "level": f.get("level", "utt"),
                         "extractor": (f.get("extractor") or {}).get("extractor")}
                     for m, f in ensemble.features.items()},
        "needs_transcript": needs_transcript(ensemble.features),
        "members": [{"dir": Path(os.path.relpath(d, run)).as_posix(), "weight": w, "folds": len(models)}
                    for (models, w), d in zip(ensemble.members, dirs)],
        "headline": _headline(metrics or {}, oof),
        "per_class": None if oof is None else [
            {"class": c, "clips": int(sum(row)), "f1": oof["per_class_f1"][c]}
            for c, row in zip(classes, oof["confusion"])],
        "confusion": None if oof is None else oof["confusion"],
        "pseudo_labels": _pseudo_labels(metrics or {}, classes),
        "images": [name for name in files if name.endswith(".png")],
        "report": (run / REPORT).read_text(encoding="utf-8") if REPORT in files else None,
        "metrics": metrics,
    }


def _read_optional_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except (OSError, ValueError) as exc:
        log.warning("%s is not readable JSON (%s); the page leaves it out", path, exc)
        return None


def _oof_scores(path: Path, classes: list[str]) -> dict | None:
    """Scores of the out-of-fold predictions in ``oof.csv``, or None without a usable file."""
    if not path.is_file():
        return None
    rows = read_csv(path)
    index = {c: k for k, c in enumerate(classes)}
    pairs = [(index.get(r.get("true", "").strip().lower()), index.get(r.get("discrete", "").strip().lower()))
             for r in rows]
    pairs = [(t, p) for t, p in pairs if t is not None and p is not None]
    if not pairs:
        return None
    return scores([t for t, _ in pairs], [p for _, p in pairs], len(classes), classes)


def _pct(v: Any) -> str:
    return f"{100 * v:.2f}" if isinstance(v, (int, float)) else "–"


def _headline(metrics: dict, oof: dict | None) -> list[dict[str, str]]:
    """``[{"label", "value"}]``: CV WAF (mean ± std over folds), out-of-fold WAF / accuracy /
    macro-F1, test WAF where known, the model(s) and what the final predictions are."""
    final = metrics.get("final") or {}  # semimer recipe
    out = []
    cv = (metrics.get("cv") or {}).get("waf") or final.get("cv_waf")
    if isinstance(cv, dict):
        out.append({"label": "CV WAF (%)", "value": fmt(cv, show_n=True)})
    if oof is not None:
        out += [{"label": "out-of-fold WAF (%)", "value": _pct(oof["waf"])},
                {"label": "out-of-fold accuracy (%)", "value": _pct(oof["accuracy"])},
                {"label": "out-of-fold macro-F1 (%)", "value": _pct(oof["macro_f1"])},
                {"label": "labeled clips", "value": str(oof["n"])}]
    test = final.get("test")
    if isinstance(test, dict) and "waf" in test:
        out.append({"label": "test WAF (%)", "value": _pct(test["waf"])})
    model = metrics.get("model") or ", ".join(metrics.get("members") or [])
    if model:
        out.append({"label": "model", "value": str(model)})
    if final.get("what"):
        out.append({"label": "final predictions", "value": str(final["what"])})
    return out


def _pseudo_labels(metrics: dict, classes: list[str]) -> list[dict[str, Any]] | None:
    """``[{"round", "counts": {class: n} | None, "total"}]`` from a recipe's
    ``pseudo_labels_per_round`` (per class) or a training run's ``n_pseudo`` (per fold, no
    classes); None when no clip was pseudo-labeled."""
    rows = []
    for r, v in (metrics.get("pseudo_labels_per_round") or {}).items():
        v = v or {}
        if "total" in v or "per_fold" in v:
            counts = v.get("total") or {c: sum(f[k] for f in v.get("per_fold") or []) for k, c in enumerate(classes)}
        else:
            counts = v
        counts = {c: int(counts.get(c, 0)) for c in classes}
        rows.append({"round": str(r), "counts": counts, "total": sum(counts.values())})
    if not rows and any(metrics.get("n_pseudo") or []):
        rows.append({"round": "training", "counts": None, "total": int(sum(metrics["n_pseudo"]))})
    return rows or None

