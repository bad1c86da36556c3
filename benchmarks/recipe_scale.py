"""Wall time and peak memory of the full recipe at ``mer2024-scale`` (5,030 labeled, 115,595
unlabeled clips, audio 1024 / text 5120 / video 768), broken down by stage.

The dataset is generated once as packed stores (3.3 GB) under ``--work`` (default
``benchmarks/.work``, git-ignored), then ``semimer recipe`` runs in a child process whose peak RSS
is read with ``resource.getrusage(RUSAGE_CHILDREN)``. Stage times come from the run's
``metrics.json``. Target on a 2-core CPU (issue 13): at most 12 minutes, peak RSS under 4 GiB.

Usage: ``python benchmarks/recipe_scale.py [--quick] [key=value ...]`` (``--quick``: 20,000 unlabeled
clips). Prints a table and writes ``benchmarks/results/recipe_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / ".work"))
    ap.add_argument("overrides", nargs="*", help="recipe key=value overrides")
    args = ap.parse_args(argv)
    from semimer.io import write_json
    from semimer.data.synth import generate

    work = Path(args.work) / ("quick" if args.quick else "full")
    ds = work / "data" / "dataset"
    t = time.time()
    if not (ds / "synth.json").is_file():
        extra = {"n_unlabeled": 20000, "n_candidates": 5000} if args.quick else {}
        generate(work / "data", "mer2024-scale", 0, fmt="packed", progress=True, **extra)
    gen_s = time.time() - t
    run = work / "run"
    cmd = [sys.executable, "-m", "semimer", "recipe", "--data", str(ds), "--out", str(run),
           "--test-labels", str(work / "data" / "test-labels.csv"), "train.progress=false", *args.overrides]
    t = time.time()
    subprocess.run(cmd, check=True)
    wall = time.time() - t
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    m = json.loads((run / "metrics.json").read_text())
    rows = [{"stage": k, "seconds": v} for k, v in m["seconds"].items()]
    result = {"preset": "mer2024-scale" + (" (quick: 20k unlabeled)" if args.quick else ""),
              "generate_seconds": round(gen_s, 1), "recipe_wall_seconds": round(wall, 1),
              "peak_rss_mb": round(peak_mb, 1), "stages": rows, "overrides": args.overrides,
              "final": m["final"], "target": {"wall_minutes": 12, "peak_rss_gib": 4},
              "load_average_after": os.getloadavg()[0], "cpus": os.cpu_count()}
    print(f"{'stage':<12} {'seconds':>9}")
    for r in rows:
        print(f"{r['stage']:<12} {r['seconds']:>9}")
    print(f"recipe wall {wall / 60:.1f} min, peak RSS {peak_mb / 1024:.2f} GiB (generation {gen_s:.0f} s, not included)")
    write_json(ROOT / "benchmarks" / "results" / "recipe_scale.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
