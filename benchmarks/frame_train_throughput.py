"""Training and inference throughput of MR-CCL on frame-level features, with and without token
pruning in the model's audio encoder.

Inputs are shaped like MER2024 frame features: audio ``(T, 1024)`` at 50 frames/s for 4-16 s
clips (T = 200..800, HuBERT-large width), video ``(T, 768)`` at 2 fps (T = 8..32), text
utterance level ``(1024,)``; random values (speed does not depend on them). The model is MR-CCL
with the default frame transformer (2 blocks, 4 heads, ``--hidden`` width), all loss terms on.
Each setting runs in its own child process (``train.threads``-like: ``--threads``) so that its peak
RSS (``ru_maxrss``) is its own; a fixed set of batches (length-bucketed, seeded) is timed after
one warm-up step.

Rows: keep_rate in {1, 0.9, 0.8, 0.7, 0.5} with ``prune_from_layer`` 0 (both blocks after the first
see fewer frames, and the pooling too) and 1 (only the pooling sees fewer frames: no speed-up
expected, a control).

Usage: ``python benchmarks/frame_train_throughput.py [--quick]``; prints a table and writes
``benchmarks/results/frame_train_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def one(args) -> dict:
    import torch

    from semimer.config import load_config
    from semimer.models import build_model
    from semimer.data.ragged import Ragged, collate, length_bucketed_batches
    from semimer.train.fit import predict_tensors, take

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    n = args.clips
    audio_T = rng.integers(200, 801, size=n)
    video_T = rng.integers(8, 33, size=n)
    feats = {"audio": Ragged.from_arrays([rng.normal(size=(t, 1024)).astype(np.float32) for t in audio_T]),
             "text": torch.randn(n, 1024),
             "video": Ragged.from_arrays([rng.normal(size=(t, 768)).astype(np.float32) for t in video_T])}
    y = torch.as_tensor(rng.integers(0, 6, size=n))
    cfg = load_config(None, ["model.name=mrccl", f"model.hidden={args.hidden}", f"model.keep_rate={args.keep_rate}",
                             f"model.prune_from_layer={args.prune_from_layer}"])
    torch.manual_seed(0)
    model = build_model("mrccl", {"audio": 1024, "text": 1024, "video": 768}, 6, cfg.model, noise_cfg=cfg.noise,
                        levels={"audio": "frame", "video": "frame"})
    model.standardizer.fit(feats)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = length_bucketed_batches(audio_T + video_T, args.batch, torch.Generator().manual_seed(0))
    model.train()

    def step(idx):
        loss, _ = model.loss(collate(take(feats, torch.as_tensor(idx))), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(batches[0])
    t = time.perf_counter()
    for idx in batches:
        step(idx)
    train_s = time.perf_counter() - t
    predict_tensors(model, take(feats, slice(0, args.batch)))  # warm-up
    t = time.perf_counter()
    predict_tensors(model, feats, batch_size=args.batch)
    infer_s = time.perf_counter() - t
    return {"train_seconds": train_s, "train_clips_per_s": n / train_s, "infer_seconds": infer_s,
            "infer_clips_per_s": n / infer_s, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "mean_audio_frames": float(audio_T.mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keep-rate", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--prune-from-layer", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.keep_rate is not None:  # child process: one setting
        print(json.dumps(one(args)))
        return 0
    if args.quick:
        args.clips, args.batch = 16, 8
    settings = [(1.0, 2)] + [(r, 0) for r in (0.9, 0.8, 0.7, 0.5)] + [(0.7, 1)]
    rows = []
    for r, l0 in settings:
        cmd = [sys.executable, __file__, "--keep-rate", str(r), "--prune-from-layer", str(l0), "--clips", str(args.clips),
               "--batch", str(args.batch), "--hidden", str(args.hidden), "--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append({"keep_rate": r, "prune_from_layer": l0, **json.loads(out.strip().splitlines()[-1])})
    base = rows[0]
    print(f"{'keep_rate':>9} {'l0':>3} {'train c/s':>10} {'speedup':>8} {'infer c/s':>10} {'speedup':>8} {'peak RSS MB':>12}")
    for r in rows:
        r["train_speedup"] = r["train_clips_per_s"] / base["train_clips_per_s"]
        r["infer_speedup"] = r["infer_clips_per_s"] / base["infer_clips_per_s"]
        print(f"{r['keep_rate']:>9} {r['prune_from_layer']:>3} {r['train_clips_per_s']:>10.2f} {r['train_speedup']:>7.2f}x "
              f"{r['infer_clips_per_s']:>10.2f} {r['infer_speedup']:>7.2f}x {r['peak_rss_mb']:>12.0f}")
    import torch

    from semimer.io import write_json

    name = "frame_train_throughput_quick.json" if args.quick else "frame_train_throughput.json"
    write_json(ROOT / "benchmarks" / "results" / name,
               {"benchmark": "frame_train_throughput", "quick": args.quick, "clips": args.clips, "batch": args.batch,
                "hidden": args.hidden, "threads": args.threads, "torch": torch.__version__, "platform": platform.platform(),
                "inputs": "audio (200..800, 1024), video (8..32, 768), text (1024,); random values", "rows": rows,
                "note": "keep_rate 1.0 row: no pruning; l0=1 prunes only before pooling (control)"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
