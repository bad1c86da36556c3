"""``RUN/report.md``: every stage's numbers and plots, readable without running anything."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from semimer.io import write_text
from semimer.eval.metrics import fmt, scores


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def write_report(out: Path, summary: dict, data, oof: np.ndarray, classes: Sequence[str], cfg) -> None:
    from semimer.eval.plots import bars_png, confusion_png

    final_oof = scores(data.labels, oof.argmax(1), len(classes), classes)
    confusion_png(final_oof["confusion"], classes, out / "confusion.png", "final: out-of-fold confusion")
    series = {"out-of-fold": [final_oof["per_class_f1"][c] * 100 for c in classes]}
    test = summary["final"].get("test")
    if test:
        series["test"] = [test["per_class_f1"][c] * 100 for c in classes]
    bars_png(series, classes, out / "per_class_f1.png", "final per-class F1", "F1 (%)")
    ppr = summary.get("pseudo_labels_per_round", {})
    if ppr:
        bars_png({f"round {r}": [v[c] for c in classes] for r, v in ppr.items()}, classes,
                 out / "pseudo_labels.png", "pseudo-labeled clips per class and round", "clips")
    lines = [f"# semimer recipe report", "",
             f"Data: `{data.root}` — {len(data.labeled)} labeled, {len(data.unlabeled)} unlabeled, "
             f"{len(data.candidates)} candidates. Features: "
             + ", ".join(f"{m} `{s.feature}` ({s.dim})" for m, s in data.stores.items()) + ".",
             f"Seed {summary['seed']}; members {', '.join(summary['members'])}; "
             f"{cfg.train.folds}-fold CV on real labels only (pseudo-labeled clips train, never validate).", "",
             "| stage | CV WAF (mean ± std over folds) | OOF WAF | pseudo-labeled clips | test WAF | test acc |",
             "|---|---|---|---|---|---|"]
    for name, st in summary["stages"].items():
        if name == "pretrain":
            lines.append(f"| pretrain | {st['clips']} clips × {st['epochs']} epochs, final loss "
                         f"{st['final_loss']:.3f} | | | | |" if st.get("final_loss") is not None else "| pretrain | | | | | |")
            continue
        cvw = fmt(st["cv_waf"]) if "cv_waf" in st else "–"
        oofw = _pct(st.get("oof_waf") if "oof_waf" in st else st.get("oof", {}).get("waf"))
        t = st.get("test")
        lines.append(f"| {name} | {cvw} | {oofw} | {st.get('n_pseudo', '')} | {_pct(t['waf']) if t else '–'} | "
                     f"{_pct(t['accuracy']) if t else '–'} |")
    if "vote" in summary["stages"]:
        w = summary["stages"]["vote"]["weights"]
        lines += ["", "Voting weights (fitted on out-of-fold predictions only): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in w.items())]
    if ppr:
        lines += ["", "Pseudo-labels per class and round:", "",
                  "| round | " + " | ".join(classes) + " | total |", "|---" * (len(classes) + 2) + "|"]
        for r, v in ppr.items():
            lines.append(f"| {r} | " + " | ".join(str(v[c]) for c in classes) + f" | {sum(v.values())} |")
    lines += ["", "Wall time (s): " + ", ".join(f"{k} {v}" for k, v in summary["seconds"].items()), "",
              "![confusion](confusion.png)", "", "![per-class F1](per_class_f1.png)"]
    if ppr:
        lines += ["", "![pseudo-labels](pseudo_labels.png)"]
    write_text(out / "report.md", "\n".join(lines) + "\n")
