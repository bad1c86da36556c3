"""MR-CCL training throughput and peak memory at MER2024 dims on this machine.

* fine-tuning: clips/s of one optimiser step on ``model.loss`` (L_cls + L_modal + L_noise), and
  of the classification loss alone, for in-memory batches (the labeled set fits in RAM);
* pre-training: clips/s of :func:`semimer.train.pretrain.pretrain` streaming a packed store of
  ``--clips`` unlabeled clips at audio 1024 / text 5120 / video 768 (float32) from disk, and the
  peak RSS of that process compared with the size of the packed data (streaming means RSS stays
  far below it).

Usage: ``python benchmarks/mrccl_throughput.py [--quick] [--clips N]``; prints a table and writes
``benchmarks/results/mrccl_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DIMS = {"audio": 1024, "text": 5120, "video": 768}


def finetune_rate(batch: int, steps: int, full: bool) -> float:
    from semimer.config import load_config
    from semimer.models import build_model

    over = [] if full else ["model.use_modal=false", "model.use_noise=false"]
    cfg = load_config(None, ["model.name=mrccl", *over])
    torch.manual_seed(0)
    model = build_model("mrccl", DIMS, 6, cfg.model, noise_cfg=cfg.noise)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = {m: torch.randn(batch, d) for m, d in DIMS.items()}
    y = torch.randint(0, 6, (batch,))
    for _ in range(2):
        loss, _ = model.loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    t = time.perf_counter()
    for _ in range(steps):
        loss, _ = model.loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - t)


PRETRAIN_CHILD = r"""
import json, sys, time
from semimer.config import load_config
from semimer.data.layout import load_dataset
from semimer.train.pretrain import pretrain
from semimer.utils import peak_rss_mb
ds, out, bs = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = load_config(None, [f"data.root={ds}", "model.name=mrccl", "pretrain.enabled=true", "pretrain.epochs=1",
                         f"pretrain.batch_size={bs}", "train.progress=false"])
data = load_dataset(ds, cfg.data.features())
t = time.time()
pretrain(data, cfg, out)
info = json.load(open(out + "/pretrain.json"))
print(json.dumps({"seconds": time.time() - t, "clips": info["clips"], "clips_per_s": info["clips_per_s"],
                  "peak_rss_mb": peak_rss_mb()}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-finetune", action="store_true", help="only the streamed pre-training row")
    ap.add_argument("--clips", type=int, default=None, help="unlabeled clips in the packed store (default 30000; quick 4000)")
    args = ap.parse_args(argv)
    from semimer.io import write_json
    from semimer.data.synth import generate

    rows = []
    steps = 3 if args.quick else 8
    for batch in (() if args.skip_finetune else (64,) if args.quick else (64, 256)):
        for full in (False, True):
            r = finetune_rate(batch, steps, full)
            rows.append({"stage": "fine-tune", "loss": "cls+modal+noise" if full else "cls only", "batch": batch,
                         "clips_per_s": round(r, 1)})
            print(rows[-1], flush=True)
    n = args.clips or (4000 if args.quick else 30000)
    with tempfile.TemporaryDirectory() as tmp:
        ds = generate(tmp, "mer2024-scale", 0, fmt="packed", n_unlabeled=n, n_test=100, n_candidates=200)
        size_mb = sum(f.stat().st_size for f in (ds / "packed").rglob("data.npy")) / 2**20
        for bs in ((256,) if args.quick else (256,)):
            res = subprocess.run([sys.executable, "-c", PRETRAIN_CHILD, str(ds), f"{tmp}/pt{bs}", str(bs)],
                                 capture_output=True, text=True, check=True)
            info = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append({"stage": "pre-train (streamed from packed store)", "batch": bs, "clips": info["clips"],
                         "clips_per_s": info["clips_per_s"], "peak_rss_mb": round(info["peak_rss_mb"], 1),
                         "packed_data_mb": round(size_mb, 1)})
            print(rows[-1], flush=True)
    print()
    print(f"{'stage':<40} {'loss':<16} {'batch':>5} {'clips/s':>9} {'peak RSS MB':>12} {'data MB':>9}")
    for r in rows:
        print(f"{r['stage']:<40} {r.get('loss', 'modal+noise'):<16} {r['batch']:>5} {r['clips_per_s']:>9} "
              f"{r.get('peak_rss_mb', ''):>12} {r.get('packed_data_mb', ''):>9}")
    write_json(ROOT / "benchmarks" / "results" / "mrccl_throughput.json",
               {"dims": DIMS, "torch_threads": torch.get_num_threads(), "quick": args.quick, "rows": rows,
                "note": "CPU, float32; fine-tune on in-memory batches; pre-train streams a packed store"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
