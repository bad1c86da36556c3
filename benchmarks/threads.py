"""How many intra-op threads to give training on a small, shared CPU: the measurement behind
``train.threads=auto`` (:func:`semimer.utils.auto_threads`).

For a few work sizes (MR-CCL, all loss terms, one AdamW step per batch: from the demo's model to
MER2024 feature widths) it measures training clips/s with 1 thread and with every CPU of this
process's affinity, first as the machine is, then with ``--busy`` CPU-bound competitors
(``yes > /dev/null``-like busy loops) started by this script beside it. Every number is a ratio
against the 1-thread run of the same row measured in the same pass, so the verdict does not
depend on how loaded the machine was (the load average is saved beside the numbers).

Usage: ``.venv/bin/python benchmarks/threads.py [--quick] [--busy 1]``; prints a table and writes
``benchmarks/results/threads.json``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "threads.json"

# (label, dims, hidden, head_hidden, batch)
WORKS = [
    ("demo (small preset)", {"audio": 64, "text": 128, "video": 48}, 128, 64, 64),
    ("scarce preset", {"audio": 128, "text": 256, "video": 96}, 256, 128, 64),
    ("256/384/192", {"audio": 256, "text": 384, "video": 192}, 256, 128, 64),
    ("MER dims, batch 64", {"audio": 1024, "text": 5120, "video": 768}, 256, 128, 64),
    ("MER dims, batch 256", {"audio": 1024, "text": 5120, "video": 768}, 256, 128, 256),
]


def _spin() -> None:  # a CPU-bound competitor, like `yes > /dev/null`
    while True:
        pass


def rate(dims: dict, hidden: int, head_hidden: int, batch: int, threads: int, seconds: float) -> float:
    from semimer.config import load_config
    from semimer.models import build_model

    torch.set_num_threads(threads)
    cfg = load_config(None, ["model.name=mrccl", f"model.hidden={hidden}", f"model.head_hidden={head_hidden}"])
    torch.manual_seed(0)
    model = build_model("mrccl", dims, 6, cfg.model, noise_cfg=cfg.noise)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = {m: torch.randn(batch, d) for m, d in dims.items()}
    y = torch.randint(0, 6, (batch,))

    def step():
        loss, _ = model.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return n * batch / (time.perf_counter() - t0)


def step_flops(dims: dict, hidden: int, head_hidden: int, batch: int) -> float:
    from semimer.config import load_config
    from semimer.models import build_model
    from semimer.utils import step_flops as estimate

    cfg = load_config(None, ["model.name=mrccl", f"model.hidden={hidden}", f"model.head_hidden={head_hidden}"])
    model = build_model("mrccl", dims, 6, cfg.model, noise_cfg=cfg.noise)
    return estimate(sum(p.numel() for p in model.parameters()), batch)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter timing windows, fewer rows")
    ap.add_argument("--busy", type=int, default=1, help="CPU-bound competitors in the second pass (0 = skip it)")
    ap.add_argument("--seconds", type=float, default=None, help="timing window per measurement")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    from semimer.io import write_json
    from semimer.utils import free_cores

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    seconds = args.seconds or (1.0 if args.quick else 3.0)
    works = WORKS[::2] if args.quick else WORKS
    rows = []
    passes = [0] + ([args.busy] if args.busy else [])
    for busy in passes:
        procs = [mp.Process(target=_spin, daemon=True) for _ in range(busy)]
        for p in procs:
            p.start()
        try:
            time.sleep(0.5 if busy else 0.0)
            free = free_cores()
            load = os.getloadavg()[0]
            for label, dims, hidden, head, batch in works:
                # interleave 1 and `cpus` threads twice so a load change hits both alike
                r1a = rate(dims, hidden, head, batch, 1, seconds / 2)
                rna = rate(dims, hidden, head, batch, cpus, seconds / 2)
                r1b = rate(dims, hidden, head, batch, 1, seconds / 2)
                rnb = rate(dims, hidden, head, batch, cpus, seconds / 2)
                r1, rn = (r1a + r1b) / 2, (rna + rnb) / 2
                rows.append({"work": label, "dims": dims, "hidden": hidden, "batch": batch, "busy_competitors": busy,
                             "free_cores_measured": round(free, 2), "load_average_1min": round(load, 2),
                             "mflop_per_step": round(step_flops(dims, hidden, head, batch) / 1e6, 1),
                             "clips_per_s_1_thread": round(r1, 1), f"clips_per_s_{cpus}_threads": round(rn, 1),
                             "ratio_n_over_1": round(rn / r1, 3)})
                print(f"busy {busy} | {label:<22} batch {batch:>4}: 1 thread {r1:>8.0f} clips/s, {cpus} threads "
                      f"{rn:>8.0f} clips/s  (x{rn / r1:.2f}; free cores {free:.2f}, load {load:.1f})", flush=True)
        finally:
            for p in procs:
                p.terminate()
                p.join()
    print()
    print(f"{'competitors':>11} {'work':<22} {'batch':>5} {'MFLOP/step':>10} {'1 thread':>9} {f'{cpus} threads':>10} {'ratio':>6}")
    for r in rows:
        print(f"{r['busy_competitors']:>11} {r['work']:<22} {r['batch']:>5} {r['mflop_per_step']:>10} "
              f"{r['clips_per_s_1_thread']:>9.0f} {r[f'clips_per_s_{cpus}_threads']:>10.0f} {r['ratio_n_over_1']:>6.2f}")
    write_json(args.out, {"benchmark": "training clips/s with 1 thread vs all CPUs, MR-CCL all terms, CPU float32",
                          "cpus": cpus, "torch": torch.__version__, "python": platform.python_version(),
                          "quick": args.quick, "seconds_per_measurement": seconds, "rows": rows,
                          "note": "ratios are within one pass (1 and N threads interleaved); the machine was shared "
                                  "with other work (load average per row)"})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
