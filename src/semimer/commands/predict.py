"""semimer predict CLIP_OR_FOLDER --run RUN [--json] [--out preds.csv] [--transcript TEXT | --transcripts CSV]"""

from __future__ import annotations

import argparse

HELP = "predict the emotion of new clips with a trained run (re-extracts the run's features)"

EPILOG = """\
CLIP_OR_FOLDER: one video file, a folder of clips (recursive) or a manifest CSV (name,path).
The run's features are re-extracted from each clip exactly as at training time (features.json of
RUN); text features need --transcript/--transcripts unless extraction used --asr-model.
With --features-dir DATA_DIR the clips' features are read by name from DATA_DIR instead (then
CLIP_OR_FOLDER may also be a bare clip name).
output: one clip -> a table (or --json); several clips -> a CSV (name,discrete,prob_<class>...)
at --out, default RUN/predict/<folder name>.csv. Clips that fail are listed on stderr; the exit
code is non-zero only if no clip could be predicted.
examples:
  semimer predict new_clip.mp4 --run runs/attention --transcript "我今天很开心"
  semimer predict videos/ --run runs/recipe --transcripts transcripts.csv --out preds.csv
  semimer predict sample_00000001 --run runs/attention --features-dir data/ --json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("clips", metavar="CLIP_OR_FOLDER", help="video file, folder of clips or manifest CSV (name,path)")
    p.add_argument("--run", required=True, help="run folder of `semimer train` / `semimer recipe`")
    p.add_argument("--json", action="store_true", help="print JSON: {name, emotion, probabilities} (a list for several clips)")
    p.add_argument("--out", help="write a predictions CSV here (default for several clips: RUN/predict/<name>.csv)")
    text = p.add_mutually_exclusive_group()
    text.add_argument("--transcript", metavar="TEXT", help="transcript of the one clip (for text features)")
    text.add_argument("--transcripts", metavar="CSV", help="transcripts: CSV with a name column and a text column")
    p.add_argument("--text-column", default=None,
                   help="transcript column of --transcripts (default: chinese, english, text or transcript)")
    p.add_argument("--features-dir", metavar="DATA_DIR",
                   help="read the clips' features from this data root (features/ or packed/) instead of re-extracting")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _targets(args) -> tuple[list, bool, str]:
    """``(entries, single, label)``: what to predict, whether it is one clip, a name for the output."""
    from pathlib import Path

    from semimer.extract import list_clips

    src = Path(args.clips)
    if src.is_dir() or (src.is_file() and src.suffix.lower() == ".csv"):
        return list_clips(src), False, src.stem if src.is_file() else (src.resolve().name or "clips")
    if src.is_file():
        return [(src.stem, src)], True, src.stem
    if args.features_dir:  # a bare clip name, read from the data root's stores
        return [(src.name, src)], True, src.name
    raise FileNotFoundError(f"{src} is neither a video file, a folder of clips nor a manifest CSV (name,path)")


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from semimer.infer.inputs import check_inputs
    from semimer.infer.predict import load_ensemble, predict_clips, read_run_features
    from semimer.utils import log, pick_device

    read_run_features(args.run)  # a missing run or features.json fails before anything heavy
    entries, single, label = _targets(args)
    if args.transcript is not None and not single:
        raise ValueError("--transcript gives the text of one clip; for a folder pass --transcripts CSV (name + text)")
    transcripts = None
    if args.transcript is not None:
        transcripts = {entries[0][0] if isinstance(entries[0], tuple) else entries[0].name: args.transcript}
    elif args.transcripts:
        from semimer.data.layout import load_transcripts

        if not Path(args.transcripts).is_file():
            raise FileNotFoundError(f"transcript file {args.transcripts} not found (--transcripts)")
        transcripts = load_transcripts(args.transcripts, args.text_column)
    try:
        device = pick_device(args.device)
    except RuntimeError as exc:
        raise ValueError(str(exc)) from None
    check_inputs(args.run, read_run_features(args.run), transcripts, args.features_dir)
    ensemble = load_ensemble(args.run, device)
    try:
        missing: dict[str, dict[str, str]] = {}
        names, probs, failures = predict_clips(args.run, entries, transcripts, device, ensemble=ensemble,
                                               features_dir=args.features_dir,
                                               progress=not args.no_progress and not single, missing=missing)
    except ImportError as exc:
        raise ValueError(str(exc)) from None
    classes = ensemble.classes

    for name, reason in failures:
        print(f"semimer predict: {name}: {reason}", file=sys.stderr)
    total = len(names) + len(failures)
    if failures:
        print(f"semimer predict: {len(failures)} of {total} clip(s) could not be predicted", file=sys.stderr)
    if not names:
        return 1
    if missing and not single:
        by_mod: dict[str, int] = {}
        for gaps in missing.values():
            for m in gaps:
                by_mod[m] = by_mod.get(m, 0) + 1
        print(f"semimer predict: {len(missing)} clip(s) predicted from the modalities they have; missing: "
              + ", ".join(f"{m} {k}" for m, k in by_mod.items()) + " (--json lists each)", file=sys.stderr)

    out = Path(args.out) if args.out else (None if single else Path(args.run) / "predict" / f"{label}.csv")
    if out is not None:
        from semimer.eval.predictions import write_predictions

        out.parent.mkdir(parents=True, exist_ok=True)
        write_predictions(out, names, probs, classes)
        log.info("%d prediction(s) -> %s", len(names), out)

    records = [{"name": n, "emotion": classes[int(p.argmax())],
                "probabilities": {c: round(float(v), 6) for c, v in zip(classes, p)},
                "used": [m for m in ensemble.modalities if m not in missing.get(n, {})],
                "missing": missing.get(n, {})} for n, p in zip(names, probs)]
    if args.json:
        print(json.dumps(records[0] if single else records, indent=2, ensure_ascii=False))
    elif single:
        print(format_table(records[0]))
    else:
        counts = {c: sum(r["emotion"] == c for r in records) for c in classes}
        print(f"{len(names)} clip(s) predicted" + (f", {len(failures)} failed" if failures else "")
              + f" -> {out}\n  " + "  ".join(f"{c} {k}" for c, k in counts.items()))
    return 0


def format_table(record: dict) -> str:
    """``name: emotion`` then one line per class, most probable first, with a bar."""
    probs = sorted(record["probabilities"].items(), key=lambda kv: -kv[1])
    w = max(len(c) for c, _ in probs)
    lines = [f"{record['name']}: {record['emotion']}"]
    lines += [f"  {c:<{w}}  {p:6.4f}  {'#' * int(round(30 * p))}" for c, p in probs]
    if record.get("missing"):
        lines.append(f"  predicted from {', '.join(record['used'])}; missing: "
                     + "; ".join(f"{m} ({why})" for m, why in record["missing"].items()))
    return "\n".join(lines)
