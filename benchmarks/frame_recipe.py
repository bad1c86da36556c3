"""The whole recipe on frame-level features, with and without token pruning in the model's audio
encoder: CV / test WAF, wall time per stage, training throughput.

Data: the ``frames`` synthetic preset (1,006 labeled, 6,000 unlabeled clips; audio ``(T, 64)`` with
T in 10..60, video ``(T, 48)`` with T in 4..24, text utterance level; the emotion is carried by a
salient segment of 30 % of the frames), generated once under ``--work`` (default
``benchmarks/.work/frames``, git-ignored).

Settings (each a ``semimer recipe`` run in a child process, ``train.threads=1``; with ``--jobs 2``
two run at once on a 2-core machine):

* ``unpruned``: frame transformer encoders, ``model.keep_rate=1``;
* ``pruned r=<r> l0=<l>``: the audio encoder keeps ``ceil(r * N)`` frames after every block
  ``i >= l0`` (``--keep-rate``, ``--prune-from-layer``; several values allowed);
* ``attention baseline``: ``semimer train --model attention`` with the same frame encoders
  (``--no-baseline`` skips it); its "round0" and "final" columns are its CV.

Every setting shares ``--common`` overrides (default ``model.hidden=128``). Prints a table and
writes ``benchmarks/results/frame_recipe.json``. ``--quick``: 2 folds, 3 epochs, pre-training 1
epoch, 1,500 unlabeled clips (a smoke run, numbers not meaningful).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FEATURES = ["--audio", "audio-FRA", "--video", "video-FRA", "--text", "text-UTT"]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def semimer(command: str, ds: Path, out: Path, args: list[str]) -> float:
    """``semimer <command>`` on ``ds`` into ``out`` (log beside it, one thread); wall seconds.
    ``args``: options first, then key=value overrides."""
    cmd = [sys.executable, "-m", "semimer", command, "--data", str(ds), *FEATURES, "--out", str(out), *args,
           "train.progress=false", "train.threads=1"]
    out.mkdir(parents=True, exist_ok=True)
    t = time.time()
    with open(out.parent / f"{out.name}.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env=ENV)
    return time.time() - t


def run_setting(ds: Path, labels: Path, out: Path, overrides: list[str]) -> dict:
    wall = semimer("recipe", ds, out, ["--test-labels", str(labels), *overrides])
    m = json.loads((out / "metrics.json").read_text())
    r0 = json.loads((out / "round_0" / "metrics.json").read_text())
    pre = out / "pretrain" / "pretrain.json"
    return {"wall_seconds": round(wall, 1), "stages": m["seconds"], "final": m["final"],
            "stage_scores": m["stages"], "pseudo_labels_per_round": m.get("pseudo_labels_per_round"),
            "round_0": {"cv_waf": r0["cv"]["waf"], "train_clips_per_s": r0.get("train_clips_per_s"),
                        "test": m["stages"]["round_0"].get("test")},
            "pretrain_clips_per_s": json.loads(pre.read_text()).get("clips_per_s") if pre.is_file() else None}


def run_baseline(ds: Path, labels: Path, out: Path, overrides: list[str]) -> dict:
    """The attention baseline (same frame encoders, no pre-training / MR-CCL / self-training)."""
    wall = semimer("train", ds, out, ["--model", "attention", *overrides])
    m = json.loads((out / "metrics.json").read_text())
    ev = subprocess.run([sys.executable, "-m", "semimer", "evaluate", str(out / "predictions.csv"), str(labels), "--json"],
                        check=True, capture_output=True, text=True, env=ENV).stdout
    test = json.loads(ev)
    return {"wall_seconds": round(wall, 1), "final": {"cv_waf": m["cv"]["waf"], "oof_waf": m["oof"]["waf"],
                                                      "test": {"waf": test["waf"], "accuracy": test["accuracy"]}},
            "round_0": {"cv_waf": m["cv"]["waf"], "train_clips_per_s": m.get("train_clips_per_s"),
                        "test": {"waf": test["waf"]}}, "pretrain_clips_per_s": None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / ".work" / "frames"))
    ap.add_argument("--keep-rate", type=float, nargs="+", default=[0.7])
    ap.add_argument("--prune-from-layer", type=int, nargs="+", default=[0])
    ap.add_argument("--common", nargs="*", default=["model.hidden=128"], help="overrides for every setting")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-baseline", action="store_true", help="skip the attention baseline (semimer train)")
    ap.add_argument("--baseline-only", action="store_true",
                    help="run only the baseline and add it to this seed's existing results JSON")
    args = ap.parse_args(argv)
    from semimer.io import write_json
    from semimer.data.synth import generate

    work = Path(args.work) / ("quick" if args.quick else "full") / f"seed{args.seed}"
    ds = work / "data" / "dataset"
    if not (ds / "synth.json").is_file():
        extra = {"n_unlabeled": 1500, "n_candidates": 700, "n_test": 300} if args.quick else {}
        generate(work / "data", "frames", args.seed, **extra)
    labels = work / "data" / "test-labels.csv"
    common = list(args.common) + [f"train.seed={args.seed}"]
    if args.quick:
        common += ["train.folds=2", "train.epochs=3", "pretrain.epochs=1"]
    settings = {"unpruned": ["model.keep_rate=1.0"]}
    for r in args.keep_rate:
        for l0 in args.prune_from_layer:
            settings[f"pruned r={r} l0={l0}"] = [f"model.keep_rate={r}", f"model.prune_from_layer={l0}"]
    name = "frame_recipe_quick.json" if args.quick else f"frame_recipe_seed{args.seed}.json"
    previous = {}
    if args.baseline_only:
        settings = {}
        previous = json.loads((ROOT / "benchmarks" / "results" / name).read_text())["results"]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {name: pool.submit(run_setting, ds, labels, work / "runs" / name.replace(" ", "_").replace("=", ""),
                                     common + over) for name, over in settings.items()}
        if not args.no_baseline:
            futures["attention baseline"] = pool.submit(run_baseline, ds, labels, work / "runs" / "baseline", common)
        results = {**previous, **{k: f.result() for k, f in futures.items()}}
    print(f"{'setting':<22} {'round0 CV':>12} {'r0 test':>7} {'final CV':>14} {'OOF':>7} {'test':>7} {'train c/s':>10} "
          f"{'pretrain c/s':>13} {'wall min':>9}")
    nan = float("nan")
    for label, r in results.items():
        f, cv0 = r["final"], r["round_0"]["cv_waf"]
        test = (f.get("test") or {}).get("waf", nan)
        test0 = (r["round_0"].get("test") or {}).get("waf", nan)
        print(f"{label:<22} {100 * cv0['mean']:6.2f}±{100 * cv0['std']:4.2f} {100 * test0:7.2f} "
              f"{100 * f['cv_waf']['mean']:8.2f}±{100 * f['cv_waf']['std']:4.2f} "
              f"{100 * f['oof_waf']:7.2f} {100 * test:7.2f} "
              f"{r['round_0']['train_clips_per_s'] or float('nan'):10.1f} {r['pretrain_clips_per_s'] or float('nan'):13.1f} "
              f"{r['wall_seconds'] / 60:9.1f}")
    if args.baseline_only:
        settings = json.loads((ROOT / "benchmarks" / "results" / name).read_text())["settings"]
    write_json(ROOT / "benchmarks" / "results" / name,
               {"preset": "frames", "seed": args.seed, "common_overrides": common, "settings": settings,
                "results": results, "jobs": args.jobs,
                "note": "train.threads=1 per run; with --jobs 2 both runs share the 2 cores"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
