"""Time vectorised ``NoiseScheduler.add_noise`` against a per-sample Python loop.

Both draw one timestep per sample and Gaussian ε for a (B, D) batch; the loop does, for each row,
t_i ~ U{0..T−1}, x̃_i = √ᾱ_{t_i}·x_i + √(1−ᾱ_{t_i})·ε_i (the public fragment's style). Before
timing, both are checked to give the same result for the same timesteps and noise.

Usage: PYTHONPATH=src python benchmarks/add_noise.py [--quick] [--repeats N] [--device cpu]
Writes benchmarks/results/add_noise.json (atomically).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from semimer.io import write_json
from semimer.models.noise import NoiseScheduler

RESULTS = Path(__file__).resolve().parent / "results" / "add_noise.json"


def loop_add_noise(
    sched: NoiseScheduler, x: torch.Tensor, timesteps: torch.Tensor | None = None, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample Python-loop reference: one t and one ε row per iteration."""
    abar = sched.alphas_cumprod.tolist()
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        t = int(torch.randint(0, sched.num_steps, ())) if timesteps is None else int(timesteps[i])
        eps = torch.randn(x.shape[1:], device=x.device, dtype=x.dtype) if noise is None else noise[i]
        out[i] = abar[t] ** 0.5 * x[i] + (1.0 - abar[t]) ** 0.5 * eps
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> float:
    """Median wall time in ms over ``repeats`` calls, after one warm-up."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small grid (B in 256, 1024; D = 768)")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per cell (median reported)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    batches = (256, 1024) if args.quick else (256, 1024, 4096)
    dims = (768,) if args.quick else (768, 5120)
    sched = NoiseScheduler()  # published: scaled_linear, 0.001 -> 0.1, T = 100
    torch.manual_seed(0)

    rows = []
    header = f"{'B':>6} {'D':>6} {'vectorised ms':>14} {'loop ms':>10} {'speed-up':>9}"
    print(header)
    print("-" * len(header))
    for D in dims:
        for B in batches:
            x = torch.randn(B, D, device=device)
            t = torch.randint(0, sched.num_steps, (B,), device=device)
            eps = torch.randn(B, D, device=device)
            ref = loop_add_noise(sched, x, t, eps)
            torch.testing.assert_close(sched.add_noise(x, t, eps), ref, rtol=1e-5, atol=1e-6)

            repeats = max(1, args.repeats if B * D <= 1024 * 5120 else args.repeats // 2)
            vec_ms = time_call(lambda: sched.add_noise(x), device, repeats)
            loop_ms = time_call(lambda: loop_add_noise(sched, x), device, repeats)
            rows.append({"B": B, "D": D, "vectorised_ms": round(vec_ms, 3), "loop_ms": round(loop_ms, 3),
                         "speedup": round(loop_ms / vec_ms, 1), "repeats": repeats})
            print(f"{B:>6} {D:>6} {vec_ms:>14.3f} {loop_ms:>10.3f} {loop_ms / vec_ms:>8.1f}x", flush=True)

    write_json(args.out, {
        "benchmark": "add_noise vectorised vs per-sample loop (gaussian, scaled_linear T=100, float32)",
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "quick": args.quick,
        "timing": "median wall ms per call after one warm-up; both include drawing t and eps",
        "rows": rows,
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
