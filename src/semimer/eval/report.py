"""``RUN/report.md``: every stage's numbers and plots, readable without running anything.

The renderer takes the recipe's ``summary`` dict (also written as ``metrics.json``) and tolerates
any of its optional keys being missing (shown as ``–``), so a report can be written for a partial
or an older run. Rounds that selected no pseudo-label are shown as skipped with their reason, never
with another round's numbers. Classes absent from the true labels are marked ``absent``, not
scored 0 (see ``semimer.eval.metrics``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from semimer.io import write_text
from semimer.eval.metrics import fmt, scores

DASH = "–"


def _pct(x) -> str:
    """A fraction as percent with 2 decimals; ``–`` for missing / NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return DASH
    return f"{100 * x:.2f}"


def _cv(x) -> str:
    """A CV score: a mean/std/n dict as ``mean ± std``, a bare number as percent, else ``–``."""
    if isinstance(x, dict):
        mean = x.get("mean")
        if mean is None or math.isnan(mean):
            return DASH
        return fmt({"mean": mean, "std": x.get("std") or 0.0, "n": x.get("n")})
    return _pct(x) if isinstance(x, (int, float)) else DASH


def _is_per_fold(x) -> bool:
    return isinstance(x, (list, tuple)) and bool(x) and isinstance(x[0], (list, tuple))


def _n_pseudo(x) -> str:
    """``n_pseudo``: an int, or one int per fold (shown as ``a / b / c per fold``)."""
    if x is None:
        return DASH
    if isinstance(x, (list, tuple)):
        return " / ".join(str(int(v)) for v in x) + " per fold" if x else DASH
    return str(int(x))


def _selected(x) -> str:
    """``selected``: per-class counts (shown as their total), or a per-fold list of them."""
    if x is None:
        return DASH
    if _is_per_fold(x):
        return " / ".join(str(int(sum(f))) for f in x) + " per fold"
    if isinstance(x, dict):
        return str(int(sum(x.values())))
    return str(int(sum(x))) if isinstance(x, (list, tuple)) else str(x)


def _test(t, key: str) -> str:
    return _pct(t.get(key)) if isinstance(t, dict) else DASH


def _oof_waf(st: dict):
    if st.get("oof_waf") is not None:
        return st["oof_waf"]
    oof = st.get("oof")
    return oof.get("waf") if isinstance(oof, dict) else None


def _f1_values(s: dict | None, classes: Sequence[str]) -> list[float]:
    """Per-class F1 in percent for a plot; NaN (no bar) for an absent or missing class."""
    per = (s or {}).get("per_class_f1") or {}
    return [float("nan") if per.get(c) is None else 100 * per[c] for c in classes]


def stage_rows(summary: dict) -> list[str]:
    """The markdown rows of the stage table (header included)."""
    lines = ["| stage | CV WAF (mean ± std over folds) | OOF WAF | pseudo-labeled clips | selected this round "
             "| test WAF | test acc |", "|---|---|---|---|---|---|---|"]
    for name, st in (summary.get("stages") or {}).items():
        st = st or {}
        if name == "pretrain":
            if st.get("final_loss") is not None:
                lines.append(f"| pretrain | {st.get('clips', DASH)} clips × {st.get('epochs', DASH)} epochs, "
                             f"final loss {st['final_loss']:.3f} | | | | | |")
            else:
                lines.append("| pretrain | | | | | | |")
            continue
        if st.get("skipped"):
            reason = str(st.get("reason") or "no clip selected").replace("|", "/").replace("\n", " ")
            lines.append(f"| {name} | skipped: {reason} | | | {_selected(st.get('selected'))} | | |")
            continue
        t = st.get("test")
        lines.append(f"| {name} | {_cv(st.get('cv_waf'))} | {_pct(_oof_waf(st))} | {_n_pseudo(st.get('n_pseudo'))} | "
                     f"{_selected(st.get('selected'))} | {_test(t, 'waf')} | {_test(t, 'accuracy')} |")
    return lines


def final_line(summary: dict) -> str:
    """``Final (what submission.csv is made of: ...): CV WAF ... OOF WAF ... test ...``."""
    f = summary.get("final") or {}
    t = f.get("test")
    test = f"test WAF {_test(t, 'waf')}, accuracy {_test(t, 'accuracy')}" if isinstance(t, dict) else f"test {DASH}"
    return (f"**Final** (what submission.csv is made of: {f.get('what') or DASH}): CV WAF {_cv(f.get('cv_waf'))} · "
            f"OOF WAF {_pct(_oof_waf(f))} · {test}")


def vote_lines(vote: dict) -> list[str]:
    """The voting stage: weights, OOF WAF (weights fitted on these OOF predictions, so optimistic),
    nested OOF WAF (weights fitted without the scored fold) and which ensemble was chosen."""
    w = vote.get("weights")
    out = ["Voting weights (fitted on out-of-fold predictions only): "
           + (", ".join(f"{k} {v:.2f}" for k, v in w.items()) if w else DASH)]
    in_sample = vote.get("oof_waf_in_sample", vote.get("oof_waf"))
    line = (f"Nested OOF WAF {_pct(vote.get('nested_oof_waf'))} (fold k voted with weights fitted without fold k: "
            f"the vote's out-of-sample score); {_pct(in_sample)} with weights fitted on the same predictions "
            f"(optimistic, not a score)")
    if vote.get("chosen"):
        line += f"; chosen: {vote['chosen']}"
    out.append(line + ".")
    members = vote.get("members_oof_waf")
    if members:
        out.append("Members' own OOF WAF: " + ", ".join(f"{m} {_pct(v)}" for m, v in members.items())
                   + (f". {vote['note'][0].upper()}{vote['note'][1:]}." if vote.get("note") else "."))
    return out


def _pseudo_rounds(ppr: dict, classes: Sequence[str]) -> list[tuple[str, dict, list | None, object]]:
    """Normalise ``pseudo_labels_per_round`` to ``(round, totals per class, per-fold counts, accuracy)``.
    Accepts ``{round: {class: count}}`` or ``{round: {"per_fold", "total", "accuracy"}}``."""
    rows = []
    for r, v in ppr.items():
        v = v or {}
        if "total" in v or "per_fold" in v:
            per_fold = v.get("per_fold")
            total = v.get("total")
            if total is None and per_fold:
                total = {c: int(sum(f[k] for f in per_fold)) for k, c in enumerate(classes)}
            rows.append((str(r), dict(total or {}), per_fold, v.get("accuracy")))
        else:
            rows.append((str(r), dict(v), None, None))
    return rows


def pseudo_lines(ppr: dict, classes: Sequence[str]) -> list[str]:
    """Table of pseudo-labels per class and round; a per-fold column and the pseudo-label accuracy
    (against hidden labels, where known) appear when the summary has them."""
    rows = _pseudo_rounds(ppr, classes)
    has_fold = any(pf for _, _, pf, _ in rows)
    has_acc = any(a is not None for _, _, _, a in rows)
    head = (["round", *classes, "total"] + (["per fold"] if has_fold else [])
            + (["accuracy (clips with a hidden label)"] if has_acc else []))
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r, total, pf, acc in rows:
        cells = [r, *(str(int(total.get(c, 0))) for c in classes), str(int(sum(total.values())))]
        if has_fold:
            cells.append(" / ".join(str(int(sum(f))) for f in pf) if pf else DASH)
        if has_acc:
            cells.append(_pct(acc))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def per_class_lines(final_oof: dict, test: dict | None, classes: Sequence[str]) -> list[str]:
    """Per-class F1 of the final OOF predictions (and test, where known); absent classes say so."""
    has_test = isinstance(test, dict) and "per_class_f1" in test
    support = [sum(row) for row in final_oof["confusion"]]
    lines = ["| class | clips | OOF F1 |" + (" test F1 |" if has_test else ""),
             "|---|---|---|" + ("---|" if has_test else "")]
    for c, n in zip(classes, support):
        v = final_oof["per_class_f1"].get(c)
        cell = "absent" if v is None else _pct(v)
        if has_test:
            tv = test["per_class_f1"].get(c)
            cell += f" | {'absent' if tv is None else _pct(tv)}"
        lines.append(f"| {c} | {n} | {cell} |")
    present = len(classes) - len(final_oof.get("absent", []))
    lines += ["", f"Macro-F1 over the {present} classes present in the labels: OOF {_pct(final_oof['macro_f1'])}"
              + (f", test {_pct(test.get('macro_f1'))}" if has_test else "") + "."]
    return lines


def learning_curve_lines(out: Path, stages: Sequence[str]) -> list[str]:
    """A heading and an image link (relative to ``out``) per stage folder that has
    ``learning_curves.png``: the summary's stages first, then any other folder, sorted."""
    names = list(stages) + sorted(p.parent.name for p in out.glob("*/learning_curves.png")
                                  if p.parent.name not in stages)
    lines = []
    for name in names:
        if (out / name / "learning_curves.png").is_file():
            lines += ["", f"### {name}", "", f"![{name} learning curves]({name}/learning_curves.png)"]
    return lines


def write_report(out: Path, summary: dict, data, oof: np.ndarray, classes: Sequence[str], cfg) -> None:
    """Write ``out/report.md`` and its plots (``confusion.png``, ``per_class_f1.png``,
    ``pseudo_labels.png``) from the recipe summary and the final OOF probabilities."""
    from semimer.eval.plots import bars_png, confusion_png

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    classes = list(classes)
    final_oof = scores(data.labels, np.asarray(oof).argmax(1), len(classes), classes)
    confusion_png(final_oof["confusion"], classes, out / "confusion.png", "final: out-of-fold confusion")
    test = (summary.get("final") or {}).get("test")
    series = {"out-of-fold": _f1_values(final_oof, classes)}
    if isinstance(test, dict) and "per_class_f1" in test:
        series["test"] = _f1_values(test, classes)
    bars_png(series, classes, out / "per_class_f1.png", "final per-class F1 (no bar: class absent)", "F1 (%)")
    ppr = summary.get("pseudo_labels_per_round") or {}
    if ppr:
        bars_png({f"round {r}": [total.get(c, 0) for c in classes] for r, total, _, _ in _pseudo_rounds(ppr, classes)},
                 classes, out / "pseudo_labels.png", "pseudo-labeled clips per class and round", "clips")
    stages = summary.get("stages") or {}
    folds = getattr(getattr(cfg, "train", None), "folds", None)
    members = summary.get("members") or []
    lines = ["# semimer recipe report", "",
             f"Data: `{data.root}` — {len(data.labeled)} labeled, {len(data.unlabeled)} unlabeled, "
             f"{len(data.candidates)} candidates. Features: "
             + ", ".join(f"{m} `{s.feature}` ({s.dim})" for m, s in data.stores.items()) + "."
             + ("" if not getattr(data, "missing", None) else " Clips without a modality (used with the ones they have): "
                + "; ".join(f"{split} " + ", ".join(f"{m} {n}" for m, n in c.items()) for split, c in data.missing.items())
                + "."),
             f"Seed {summary.get('seed', DASH)}; members {', '.join(members) or DASH}; "
             f"{folds or DASH}-fold CV on real labels only (pseudo-labeled clips train, never validate).", "",
             final_line(summary), "", "## Stages", "", *stage_rows(summary)]
    if "vote" in stages:
        lines += ["", *vote_lines(stages["vote"] or {})]
    lines += ["", "## Per-class F1 (final out-of-fold predictions)", "", *per_class_lines(final_oof, test, classes)]
    if ppr:
        lines += ["", "## Pseudo-labels per class and round", "", *pseudo_lines(ppr, classes)]
    seconds = summary.get("seconds") or {}
    ps = summary.get("prior_shift")
    if ps:
        lines += ["", "Class prior of the candidates, estimated by EM from the models' posteriors (no label): "
                  + ", ".join(f"{c} {100 * v:.1f} %" for c, v in ps["candidate_prior"].items())
                  + "; the models behave as if trained under " + ", ".join(f"{c} {100 * v:.1f} %" for c, v in ps["train_prior"].items())
                  + (". Submitted posteriors are re-weighted to it." if ps.get("applied") else
                     ". Not applied (recipe.prior_shift=false).")
                  + (f" Test WAF without / with the re-weighting: {_pct(ps['test_without'])} / {_pct(ps['test_with'])}."
                     if "test_with" in ps else "")]
    lines += ["", "Wall time (s): " + (", ".join(f"{k} {v}" for k, v in seconds.items()) or DASH), "",
              "![confusion](confusion.png)", "", "![per-class F1](per_class_f1.png)"]
    if ppr:
        lines += ["", "![pseudo-labels](pseudo_labels.png)"]
    curves = learning_curve_lines(out, list(stages))
    if curves:
        lines += ["", "## Learning curves", *curves]
    write_text(out / "report.md", "\n".join(lines) + "\n")
