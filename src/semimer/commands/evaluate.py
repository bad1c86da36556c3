"""semimer evaluate PREDICTIONS.csv LABELS.csv [--json]"""

HELP = "score a predictions/submission CSV against labels: WAF, accuracy, macro-F1, per-class F1, confusion"


def add_arguments(p):
    p.add_argument("predictions", help="CSV with name,discrete (extra columns ignored)")
    p.add_argument("labels", help="CSV with name,discrete (e.g. test-labels.csv)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--classes", help="comma-separated class order (default: MER2024)")


def evaluate_files(pred_path, label_path, classes=None) -> dict:
    from semimer import MER2024_CLASSES
    from semimer.data.layout import load_labels
    from semimer.eval.metrics import scores
    from semimer.eval.predictions import read_predictions

    classes = list(classes or MER2024_CLASSES)
    truth = load_labels(label_path, classes)
    names, _, _, pred_words = read_predictions(pred_path)
    index = {c.lower(): i for i, c in enumerate(classes)}
    pred = {}
    for n, w in zip(names, pred_words):
        if w not in index:
            raise ValueError(f"{pred_path}: clip {n!r} has unknown class {w!r}; expected one of {', '.join(classes)}")
        pred[n] = index[w]
    missing = [n for n in truth if n not in pred]
    if missing:
        raise ValueError(f"{pred_path} has no prediction for {len(missing)} labeled clip(s), e.g. {missing[:3]}")
    order = sorted(truth)
    return scores([truth[n] for n in order], [pred[n] for n in order], len(classes), classes)


def run(args) -> int:
    import json

    classes = args.classes.split(",") if args.classes else None
    s = evaluate_files(args.predictions, args.labels, classes)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(format_scores(s))
    return 0


def format_scores(s: dict) -> str:
    """The human-readable form: headline scores, a per-class table (F1 and support; classes absent
    from the labels marked ``absent``, not scored and not in macro-F1) and the confusion matrix,
    all with full class names (columns are as wide as the longest name)."""
    classes = list(s["per_class_f1"])
    support = [sum(row) for row in s["confusion"]]
    absent = [c for c, v in s["per_class_f1"].items() if v is None]
    n_present = len(classes) - len(absent)
    lines = [f"clips      {s['n']}", f"WAF        {100 * s['waf']:.2f}", f"accuracy   {100 * s['accuracy']:.2f}",
             f"macro-F1   {100 * s['macro_f1']:.2f}  (over the {n_present} classes present in the labels)"]
    if absent:
        lines.append(f"absent     {', '.join(absent)}  (no true clip: not scored, not in macro-F1)")
    w = max([len(c) for c in classes] + [5])
    lines.append("per-class F1:")
    lines.append(f"  {'class':<{w}} {'F1':>6} {'clips':>6}")
    for c, v, n in zip(classes, s["per_class_f1"].values(), support):
        lines.append(f"  {c:<{w}} {'absent' if v is None else f'{100 * v:6.2f}':>6} {n:>6}")
    cw = max([len(c) for c in classes] + [len(str(v)) for row in s["confusion"] for v in row] + [4])
    lines.append("confusion (rows true, columns predicted):")
    lines.append(" " * (w + 2) + " " + " ".join(f"{c:>{cw}}" for c in classes))
    for c, row in zip(classes, s["confusion"]):
        lines.append(f"  {c:<{w}} " + " ".join(f"{v:>{cw}}" for v in row))
    return "\n".join(lines)
