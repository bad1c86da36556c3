"""Training with the clips that lack a modality vs. on complete clips only (synthetic ``gaps`` preset).

The ``gaps`` preset has MER2024-like holes: 15 % of the labeled clips without video (no face) and 3 %
without audio; 10 % of the pool (test clips and candidates included) without video and 3 % without
audio. Both settings run the same recipe (``--preset recipe`` plus ``--common`` overrides) on the
same data and are scored on the same hidden test clips (gaps included: a submission must cover
them, so the complete-only model also predicts from the modalities a test clip has):

* ``all clips``      ``data.incomplete=use``  (labeled and pool clips with gaps train with what they have)
* ``complete only``  ``data.incomplete=drop`` (labeled and pool clips with a gap are left out)

Each (seed, setting) runs in its own process (``--jobs`` at a time, one torch thread each).

Usage: ``python benchmarks/missing_modalities.py [--seeds 0 1 2] [--jobs 2] [--work DIR] [--common k=v ...]``.
Prints a table (test WAF of the submission — over all test clips, those with every modality and
those with a gap — and of round 0's MR-CCL alone, CV WAF; mean ± std over seeds and the paired
difference) and writes
``benchmarks/results/missing_modalities.json`` (``--json`` to change).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"all clips": "use", "complete only": "drop"}


def run_one(work: Path, seed: int, setting: str, common: list[str]) -> dict:
    data = work / f"seed{seed}" / "data"
    run = work / f"seed{seed}" / setting.replace(" ", "_")
    cmd = [sys.executable, "-m", "semimer", "recipe", "--data", str(data / "dataset"), "--out", str(run),
           "--test-labels", str(data / "test-labels.csv"), f"data.incomplete={SETTINGS[setting]}",
           f"train.seed={seed}", "train.threads=1", "train.progress=false", *common]
    if not (run / "metrics.json").is_file():
        t = time.time()
        log = run.parent / f"{run.name}.log"
        with open(log, "w") as fh:
            subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT)
        print(f"seed {seed} {setting}: {time.time() - t:.0f} s", flush=True)
    m = json.loads((run / "metrics.json").read_text())
    d = json.loads((run / "round_0" / "data.json").read_text())
    final = m["final"]  # what submission.csv is made of, scored out of sample
    split = _by_gap(data, run / "predictions.csv")
    r0 = _by_gap(data, run / "round_0" / "predictions.csv")
    return {"seed": seed, "setting": setting, "labeled": d["labeled"], "unlabeled": d["unlabeled"],
            "missing": d.get("missing", {}), "test_waf": 100 * final["test"]["waf"],
            "test_waf_complete": split["complete"], "test_waf_gaps": split["gaps"], "n_test_gaps": split["n_gaps"],
            "r0_test_waf": r0["all"], "r0_test_waf_gaps": r0["gaps"],
            "cv_waf": 100 * final["cv_waf"]["mean"], "what": final.get("what"), "seconds": m["seconds"]["total"]}


def _by_gap(data: Path, predictions: Path) -> dict:
    """Test WAF over all hidden test clips, over those with every modality, and over those with a gap."""
    import csv

    from sklearn.metrics import f1_score

    with open(data / "test-labels.csv", newline="") as fh:
        truth = {r["name"]: r["discrete"] for r in csv.DictReader(fh)}
    with open(predictions, newline="") as fh:
        pred = {r["name"]: r["discrete"] for r in csv.DictReader(fh)}
    feats = data / "dataset" / "features"
    names = sorted(truth)
    gap = np.array([not all((feats / f / f"{n}.npy").is_file() for f in ("audio-UTT", "text-UTT", "video-UTT"))
                    for n in names])
    y, p = np.array([truth[n] for n in names]), np.array([pred[n] for n in names])
    waf = lambda sel: 100 * float(f1_score(y[sel], p[sel], average="weighted"))  # noqa: E731
    return {"all": waf(np.ones(len(names), bool)), "complete": waf(~gap), "gaps": waf(gap), "n_gaps": int(gap.sum())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / ".work" / "gaps"))
    ap.add_argument("--common", nargs="*", default=[], help="recipe key=value overrides for both settings")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "missing_modalities.json"))
    args = ap.parse_args(argv)
    from semimer.data.synth import generate
    from semimer.io import write_json

    work = Path(args.work)
    for seed in args.seeds:
        if not (work / f"seed{seed}" / "data" / "dataset" / "synth.json").is_file():
            generate(work / f"seed{seed}" / "data", "gaps", seed)
    jobs = [(s, name) for s in args.seeds for name in SETTINGS]
    with ThreadPoolExecutor(args.jobs) as ex:
        rows = list(ex.map(lambda j: run_one(work, j[0], j[1], args.common), jobs))
    print(f"\n{'setting':15s} {'seed':>4s} {'labeled':>7s} {'pool':>6s} {'CV WAF':>7s} {'test WAF':>8s} "
          f"{'complete':>8s} {'w/ gaps':>7s} {'r0 test':>7s} {'r0 gaps':>7s}  final")
    for r in rows:
        print(f"{r['setting']:15s} {r['seed']:4d} {r['labeled']:7d} {r['unlabeled']:6d} {r['cv_waf']:7.2f} "
              f"{r['test_waf']:8.2f} {r['test_waf_complete']:8.2f} {r['test_waf_gaps']:7.2f} {r['r0_test_waf']:7.2f} "
              f"{r['r0_test_waf_gaps']:7.2f}  {r['what'].split(';')[0]}")
    keys = ("test_waf", "test_waf_complete", "test_waf_gaps", "r0_test_waf", "r0_test_waf_gaps", "cv_waf")
    summary = {}
    for name in SETTINGS:
        summary[name] = {}
        for k in keys:
            v = np.array([r[k] for r in rows if r["setting"] == name])
            summary[name][k] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
        print(f"{name:15s} " + "  ".join(f"{k} {summary[name][k]['mean']:.2f} ± {summary[name][k]['std']:.2f}"
                                         for k in keys))
    print("(CV WAF is over each setting's own labeled clips: not comparable between the settings)")
    paired = {}
    for k in keys[:-1]:
        d = np.array([r[k] for r in rows if r["setting"] == "all clips"]) - \
            np.array([r[k] for r in rows if r["setting"] == "complete only"])
        paired[k] = d.tolist()
        print(f"all clips - complete only, {k}, paired by seed: {' '.join(f'{x:+.2f}' for x in d)} (mean {d.mean():+.2f})")
    write_json(args.json, {"command": "python benchmarks/missing_modalities.py " + " ".join(argv or sys.argv[1:]),
                           "rows": rows, "summary": summary, "paired_diff": paired})
    return 0


if __name__ == "__main__":
    sys.exit(main())
