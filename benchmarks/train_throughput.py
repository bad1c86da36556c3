"""Training and inference throughput of the ``attention`` baseline at MER2024-scale feature dims.

Inputs are random in-memory tensors (no disk): audio 1024 (HuBERT-large), text 5120 (Baichuan-13B),
video 768 (CLIP-large); 4,024 training clips (one training fold of 5,030 in 5-fold CV), 6 classes,
the default ``ModelConfig`` (hidden 256, dropout 0.3). For each batch size:

* step loop: shuffled mini-batches, ``model.loss`` (forward, cross-entropy) + ``backward`` +
  ``AdamW.step`` - the inner loop of :func:`semimer.train.fit.fit` - clips/s over whole epochs;
* fit epoch: :func:`semimer.train.fit.fit` itself for the same epochs, which adds per-epoch
  validation on the held-out 1,006 clips and the best-epoch state copy - clips/s counts training
  clips only.

Inference: :func:`semimer.train.fit.predict_tensors` (eval mode, no grad) over 20,000 clips (a
candidate set) in batches of 1024. One warm-up epoch / pass is run first and not timed.

Every measurement is repeated per entry of ``--threads`` (default ``0,1``: torch's default thread
count, then one thread): on a small shared machine, intra-op threads that wait for each other can
cost more than they give, and the load average (saved beside the numbers) says how shared it was.

Usage: PYTHONPATH=src python benchmarks/train_throughput.py [--quick] [--epochs N] [--threads 0,1] [--device cpu]
Writes benchmarks/results/train_throughput.json (atomically).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from semimer.config import ModelConfig, TrainConfig
from semimer.io import write_json
from semimer.models import build_model
from semimer.train.fit import fit, predict_tensors
from semimer.utils import peak_rss_mb, seed_everything

RESULTS = Path(__file__).resolve().parent / "results" / "train_throughput.json"
DIMS = {"audio": 1024, "text": 5120, "video": 768}
K = 6


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_clips(n: int, device: torch.device, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = {m: torch.randn(n, d, generator=g).to(device) for m, d in DIMS.items()}
    return x, torch.randint(0, K, (n,), generator=g).to(device)


def new_model(train_x, device):
    seed_everything(0)
    model = build_model("attention", DIMS, K, ModelConfig()).to(device)
    model.standardizer.fit(train_x)
    return model


def step_epochs(model, x, y, batch: int, epochs: int, device) -> float:
    """Seconds for ``epochs`` epochs of the trainer's inner loop (no validation)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    n = len(y)
    model.train()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).to(device)
        for s in range(0, n, batch):
            idx = perm[s:s + batch]
            if len(idx) < 2:
                continue
            loss, _ = model.loss({m: v[idx] for m, v in x.items()}, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    _sync(device)
    return time.perf_counter() - t0


def fit_epochs(model, x, y, vx, vy, batch: int, epochs: int, device) -> float:
    cfg = TrainConfig(epochs=epochs, batch_size=batch, patience=0, progress=False)
    _sync(device)
    t0 = time.perf_counter()
    fit(model, x, y, vx, vy.cpu().numpy(), cfg, seed=0)
    _sync(device)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="512 training clips, 1 epoch, 2,048 inference clips")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per batch size")
    ap.add_argument("--batches", default="32,64,128")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", default="0,1", help="comma-separated torch thread counts to run (0 = torch's default)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    default_threads = torch.get_num_threads()
    n_train, n_val, n_infer = (512, 128, 2048) if args.quick else (4024, 1006, 20000)
    epochs = 1 if args.quick else args.epochs
    batches = [int(b) for b in args.batches.split(",")]
    load_before = os.getloadavg()

    x, y = random_clips(n_train, device, seed=0)
    vx, vy = random_clips(n_val, device, seed=1)
    ix, _ = random_clips(n_infer, device, seed=2)
    n_params = sum(p.numel() for p in new_model(x, device).parameters())
    print(f"attention baseline, dims {DIMS}, {n_params / 1e6:.2f} M parameters, {n_train} training clips, "
          f"device {device}, load average {load_before[0]:.1f} on {os.cpu_count()} CPUs")
    rows, infer = [], []
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads or default_threads)
        nt = torch.get_num_threads()
        for b in batches:
            model = new_model(x, device)
            step_epochs(model, x, y, b, 1, device)  # warm-up
            t_step = step_epochs(model, x, y, b, epochs, device)
            model = new_model(x, device)
            t_fit = fit_epochs(model, x, y, vx, vy, b, epochs, device)
            rows.append({"threads": nt, "batch": b, "epochs": epochs, "train_clips": n_train,
                         "step_s_per_epoch": round(t_step / epochs, 3),
                         "step_clips_per_s": round(n_train * epochs / t_step, 1),
                         "fit_s_per_epoch": round(t_fit / epochs, 3),
                         "fit_clips_per_s": round(n_train * epochs / t_fit, 1)})
            print(f"threads {nt}, batch {b}: step loop {rows[-1]['step_clips_per_s']:.0f} clips/s, "
                  f"fit {rows[-1]['fit_clips_per_s']:.0f} clips/s", flush=True)
        model = new_model(x, device)
        predict_tensors(model, {m: v[:1024] for m, v in ix.items()}, 1024)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        probs = predict_tensors(model, ix, 1024)
        _sync(device)
        t_inf = time.perf_counter() - t0
        assert probs.shape == (n_infer, K) and np.allclose(probs.sum(1), 1, atol=1e-4)
        infer.append({"threads": nt, "clips": n_infer, "batch": 1024, "seconds": round(t_inf, 3),
                      "clips_per_s": round(n_infer / t_inf, 1)})
    rss = peak_rss_mb()
    load_after = os.getloadavg()

    header = f"{'threads':>7} {'batch':>6} {'step s/epoch':>13} {'step clips/s':>13} {'fit s/epoch':>12} {'fit clips/s':>12}"
    print(f"\ntraining: {n_train} clips, {epochs} timed epoch(s) per row after 1 warm-up epoch")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['threads']:>7} {r['batch']:>6} {r['step_s_per_epoch']:>13.3f} {r['step_clips_per_s']:>13.0f} "
              f"{r['fit_s_per_epoch']:>12.3f} {r['fit_clips_per_s']:>12.0f}")
    for r in infer:
        print(f"inference, {r['threads']} thread(s): {n_infer} clips in batches of 1024: {r['seconds']:.2f} s "
              f"= {r['clips_per_s']:.0f} clips/s")
    print(f"peak RSS {rss:.0f} MiB; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
          f"({os.cpu_count()} CPUs)")

    write_json(args.out, {
        "benchmark": "attention baseline training/inference throughput, random in-memory features",
        "dims": DIMS, "classes": K, "parameters": n_params, "model_config": "ModelConfig() defaults",
        "device": str(device), "torch": torch.__version__, "default_threads": default_threads,
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
        "cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine(),
        "quick": args.quick,
        "timing": ("wall seconds after one warm-up epoch; step = loss+backward+AdamW over shuffled batches; "
                   "fit = semimer.train.fit.fit incl. validation on held-out clips each epoch; "
                   "clips/s counts training clips"),
        "train": rows, "inference": infer, "peak_rss_mb": round(rss, 1),
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
