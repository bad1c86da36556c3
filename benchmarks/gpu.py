"""Throughput on a CUDA GPU: MR-CCL fine-tuning (against the attention baseline), pre-training and
feature extraction; skips cleanly (exit 0) on a machine without one.

* fine-tune: :class:`mrccl_throughput.Trainer` (the trainer's ``run_epoch``: batch gather, every
  loss term, backward, fused AdamW) at dims 256/384/192 and 1024/5120/768, batches of 64 and 256,
  float32 and ``train.precision=auto`` (bfloat16 where supported); with ``--compile`` also
  ``train.compile=true``;
* pre-train: :func:`semimer.train.pretrain.pretrain` on a synthetic packed MER-dims pool
  (``--pool`` clips, in GPU-pinned host RAM, batches of 256 and 1024, ``precision=auto``);
* extraction: ``benchmarks/extract_speed.py --quick --device cuda`` in a child process when the
  extraction extras are installed (else reported as skipped).

One short command: ``.venv/bin/python benchmarks/gpu.py --quick`` (about 2 minutes on one GPU);
prints a table and writes ``benchmarks/results/gpu.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results" / "gpu.json"


def finetune(device, quick: bool, compile_too: bool) -> list[dict]:
    from mrccl_throughput import DIMS, Trainer

    from semimer.utils import resolve_precision

    auto = resolve_precision("auto", device)
    rows = []
    n = 4096 if quick else 16384
    for label, dims in DIMS.items():
        for batch in (64, 256):
            for precision in dict.fromkeys(("fp32", auto)):
                variants = [(precision, False)] + ([(precision, True)] if compile_too and precision == auto else [])
                for prec, comp in variants:
                    trainers = {m: Trainer(m, dims, n, device, prec, batch=batch, compile=comp)
                                for m in ("attention", "mrccl")}
                    rates = {}
                    for m, t in trainers.items():
                        t.epoch(min(n, 8 * batch))  # warm-up (and compilation)
                        c, s, _ = t.epoch()
                        rates[m] = c / s
                    for m in trainers:
                        rows.append({"stage": "fine-tune", "model": m, "dims": label, "batch": batch, "precision": prec,
                                     "compile": comp, "clips_per_s": round(rates[m], 1),
                                     "vs_attention": round(rates[m] / rates["attention"], 3)})
                        print(rows[-1], flush=True)
                    del trainers
                    torch.cuda.empty_cache()
    return rows


def pretraining(device, quick: bool, pool: int | None) -> list[dict]:
    from semimer.config import load_config
    from semimer.data.layout import load_dataset
    from semimer.data.synth import generate
    from semimer.train.pretrain import pretrain

    rows = []
    n = pool or (20000 if quick else 100000)
    with tempfile.TemporaryDirectory() as tmp:
        ds = generate(tmp, "mer2024-scale", 0, fmt="packed", n_labeled=1000, n_unlabeled=n, n_test=min(100, n),
                      n_candidates=min(500, n))
        for batch in (256, 1024):
            cfg = load_config(None, [f"data.root={ds}", "model.name=mrccl", "pretrain.enabled=true",
                                     f"pretrain.epochs={1 if quick else 2}", f"pretrain.batch_size={batch}",
                                     "train.progress=false", f"train.device={device}", "pretrain.memory_mb=8192"])
            data = load_dataset(ds, cfg.data.features())
            t = time.time()
            pretrain(data, cfg, Path(tmp) / f"pt{batch}")
            info = json.loads((Path(tmp) / f"pt{batch}" / "pretrain.json").read_text())
            rows.append({"stage": "pre-train", "model": "mrccl", "dims": "1024/5120/768", "batch": batch,
                         "precision": info["precision"], "clips": info["clips"], "pool": info["pool"],
                         "pool_mb": info["pool_mb"], "clips_per_s": info["clips_per_s"],
                         "call_seconds": round(time.time() - t, 1)})
            print(rows[-1], flush=True)
    return rows


def extraction(device) -> dict:
    import importlib.util

    missing = [m for m in ("av", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        return {"skipped": f"extraction extras not installed ({', '.join(missing)})"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "extract.json"
        res = subprocess.run([sys.executable, str(HERE / "extract_speed.py"), "--quick", "--device", str(device),
                              "--out", str(out)], capture_output=True, text=True, timeout=900)
        if res.returncode:
            return {"failed": res.stderr[-2000:]}
        return json.loads(out.read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer clips (about 2 minutes)")
    ap.add_argument("--compile", action="store_true", help="also time train.compile=true")
    ap.add_argument("--pool", type=int, default=None, help="pre-training pool clips (default 100000; quick 20000)")
    ap.add_argument("--skip-extract", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    from semimer.io import write_json

    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA GPU on this machine; nothing measured")
        return 0
    device = torch.device("cuda", 0)
    props = torch.cuda.get_device_properties(device)
    info = {"gpu": props.name, "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1), "bf16": torch.cuda.is_bf16_supported(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version()}
    print(info, flush=True)
    rows = finetune(device, args.quick, args.compile)
    rows += pretraining(device, args.quick, args.pool)
    extract = {"skipped": "--skip-extract"} if args.skip_extract else extraction(device)
    print()
    print(f"{'stage':<10} {'model':<10} {'dims':<14} {'batch':>5} {'prec':>5} {'compile':>7} {'clips/s':>10} {'vs attn':>8}")
    for r in rows:
        print(f"{r['stage']:<10} {r['model']:<10} {r['dims']:<14} {r['batch']:>5} {r['precision']:>5} "
              f"{str(r.get('compile', '')):>7} {r['clips_per_s']:>10.0f} {r.get('vs_attention', ''):>8}")
    print("extraction:", json.dumps(extract)[:600])
    write_json(args.out, {"benchmark": "GPU throughput: fine-tuning, pre-training, extraction", **info,
                          "quick": args.quick, "rows": rows, "extraction": extract})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
