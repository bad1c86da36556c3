"""Throughput, peak memory and embedding drift of progressive token pruning (HuBERT-base size).

Compares the unpruned library forward (``HubertModel(...)(x, attention_mask, output_hidden_states=True)``,
its default ``sdpa`` attention) with :class:`semimer.extract.pruned_speech.PrunedSpeechEncoder` at keep rates
r in {0.9, 0.85, 0.8, 0.7} and first pruning layers l0 in {2, 4, 6} (see ``src/semimer/pruning.py``
for the exact layer convention), plus the wrapper at r = 1 (overhead check).

Model: a default ``HubertConfig()`` (HuBERT-base size: 12 layers, 768 wide, 12 heads) with random
weights, or a real local checkpoint via ``--model-dir`` (loaded with ``local_files_only``).
Input: one batch of ``--batch-size`` clips with lengths drawn uniformly in
[``--min-seconds``, ``--max-seconds``] at 16 kHz (fixed ``--seed``), zero-padded, with a
sample-level ``attention_mask`` (also for "group"-norm configs, so that padding is masked in the
attention, in the token counts and in the pooling for *both* sides of the comparison).

What is measured
----------------
* ``seconds``: median wall time of one batch forward under ``torch.inference_mode`` (one warm-up
  call per configuration first). Configurations are **interleaved**: each of ``--repeats`` rounds
  runs every configuration once, in a freshly shuffled order, so slow phases of a shared CPU hit
  all configurations alike. ``seconds_min`` is also reported (least disturbed run).
* ``cpu_seconds`` / ``cpu_speedup``: the same with process CPU time (all threads), which is far
  less sensitive to other jobs on a shared machine than wall time (with ``--threads 1`` it is
  close to pure work; with several threads OpenMP spin-waiting under contention inflates it).
* ``speedup`` = baseline median / configuration median; ``audio_seconds_per_second`` = real audio
  (unpadded) in the batch / median seconds.
* ``frontend_seconds`` (baseline row): the conv feature extractor + projection alone, which
  pruning cannot speed up; ``encoder_speedup`` = (baseline - frontend) / (config - frontend), the
  speed-up of the transformer part alone (Amdahl's law caps the end-to-end number).
* ``peak_memory_mb``: on CUDA, ``torch.cuda.max_memory_allocated`` minus the allocation before the
  call (tensor memory only). On CPU tracemalloc cannot see torch's allocations, so a *separate
  subprocess* runs every configuration once while a thread samples the process RSS with psutil
  every ~1 ms; the value is peak RSS minus RSS just before the call. That subprocess sets
  ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc returns freed tensor memory to the OS at once
  (otherwise RSS stays at the high-water mark of earlier calls and deltas read ~0). Sampling can
  miss very short peaks; treat it as an estimate of transient activation memory. The front end
  alone is measured too (``frontend_peak_memory_mb``): at inference its first conv layers (512
  channels at 3.2 kHz) hold the largest activations, so it usually sets the peak for every
  setting, and pruning (which acts after it) cannot lower that peak.
* ``cosine``: mean (and ``cosine_min``) over clips of the cosine similarity between the pooled
  utterance embedding (MER convention: mean over valid tokens of the sum of the last 4 hidden
  layers; with pruning each layer is pooled over its own kept tokens, see
  :func:`semimer.extract.pruned_speech.pooled_embedding`) and the unpruned one.
* ``kept_fraction``: tokens left after the last layer / valid input frames (mean over clips).
* ``linear_work`` / ``attention_work`` (deterministic, immune to machine load): share of the
  encoder layers' token-linear work (sum of padded widths) and of the attention-score work (sum of
  squared widths) left, relative to the unpruned padded batch.

With random weights the attention maps, hence which tokens are kept and the cosine numbers, say
little about a trained model; timings and memory do not depend on the weights.

Usage::

    PYTHONPATH=src python benchmarks/token_pruning.py --quick   # ~1-2 min on 2 idle cores
    PYTHONPATH=src python benchmarks/token_pruning.py                    # full grid (~10-20 min)
    PYTHONPATH=src python benchmarks/token_pruning.py --model-dir /path/to/hubert-base --device cuda

Writes ``benchmarks/results/token_pruning.json`` (atomically, ``semimer.io.write_json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from semimer.io import write_json
from semimer.extract.pruned_speech import PrunedSpeechEncoder, load_speech_encoder, masked_mean, pooled_embedding

RESULTS = Path(__file__).resolve().parent / "results" / "token_pruning.json"
SAMPLE_RATE = 16_000
FULL_RATES = (0.9, 0.85, 0.8, 0.7)
FULL_LAYERS = (2, 4, 6)
QUICK_RATES = (0.85, 0.7)
QUICK_LAYERS = (2, 4)


@dataclass(frozen=True)
class Setting:
    label: str
    keep_rate: float | None  # None = library baseline
    prune_from_layer: int | None


# ----------------------------------------------------------------------------------------------
# setup
# ----------------------------------------------------------------------------------------------
def build_model(model_dir: str | None, device: torch.device, seed: int):
    """HuBERT-base-sized model: a local checkpoint, or default ``HubertConfig()`` random weights."""
    if model_dir:
        return load_speech_encoder(model_dir, keep_rate=1.0, device=device).model
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(seed)
    return HubertModel(HubertConfig()).to(device).eval()


def make_batch(batch_size: int, min_s: float, max_s: float, seed: int, device: torch.device):
    """Zero-padded batch of random 'audio' with lengths ~ U[min_s, max_s] s, plus sample mask."""
    rng = random.Random(seed)
    lengths = [int(rng.uniform(min_s, max_s) * SAMPLE_RATE) for _ in range(batch_size)]
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(batch_size, max(lengths))
    mask = torch.zeros(batch_size, max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        x[i, :n] = torch.randn(n, generator=g) * 0.1
        mask[i, :n] = 1
    return x.to(device), mask.to(device), lengths


def settings_grid(rates, layers, num_layers: int) -> list[Setting]:
    grid = [Setting("library (unpruned)", None, None), Setting("wrapper r=1", 1.0, num_layers)]
    for l0 in layers:
        for r in rates:
            grid.append(Setting(f"r={r} l0={l0}", r, l0))
    return grid


def runner(model, setting: Setting, x, am) -> Callable[[], object]:
    if setting.keep_rate is None:
        return lambda: model(x, attention_mask=am, output_hidden_states=True)
    enc = PrunedSpeechEncoder(model, keep_rate=setting.keep_rate, prune_from_layer=setting.prune_from_layer)
    return lambda: enc(x, attention_mask=am)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------
# memory
# ----------------------------------------------------------------------------------------------
class RssSampler:
    """Peak RSS of this process while the context is open, sampled by a thread (psutil)."""

    def __init__(self, interval_s: float = 0.001):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval_s
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        self.start = self.proc.memory_info().rss
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def peak_memory_cuda(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def memory_worker(args) -> int:
    """Subprocess entry: one RSS-sampled call per setting; prints {label: MB} as JSON."""
    device = torch.device("cpu")
    model = build_model(args.model_dir, device, args.seed)
    x, am, _ = make_batch(args.batch_size, args.min_seconds, args.max_seconds, args.seed, device)
    grid = settings_grid(args.rates, args.layers, len(model.encoder.layers))
    result = {}
    with torch.inference_mode():
        model(x, attention_mask=am)  # warm-up: one-time allocations are not charged to anyone
        with RssSampler() as sampler:
            feats = model.feature_projection(model.feature_extractor(x).transpose(1, 2))
        del feats
        result["__frontend__"] = sampler.delta_mb
        for s in grid:
            fn = runner(model, s, x, am)
            with RssSampler() as sampler:
                out = fn()
            del out
            result[s.label] = sampler.delta_mb
    print("MEMORY_JSON " + json.dumps(result))
    return 0


def cpu_peak_memory(args) -> dict[str, float]:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-worker", "--device", "cpu",
           "--batch-size", str(args.batch_size), "--min-seconds", str(args.min_seconds),
           "--max-seconds", str(args.max_seconds), "--seed", str(args.seed),
           "--rates", *map(str, args.rates), "--layers", *map(str, args.layers)]
    if args.model_dir:
        cmd += ["--model-dir", args.model_dir]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("MEMORY_JSON "):
            return json.loads(line[len("MEMORY_JSON "):])
    print(f"warning: memory subprocess failed (rc={proc.returncode}): {proc.stderr[-2000:]}", file=sys.stderr)
    return {}


# ----------------------------------------------------------------------------------------------
# main benchmark
# ----------------------------------------------------------------------------------------------
def work_fractions(out, n_padded: int, keep_rate: float, prune_from_layer: int) -> tuple[float, float]:
    """Deterministic share of encoder work left, relative to the unpruned padded batch.

    Layer ``i`` runs on a padded width ``w_i`` (``n_padded`` until a pruning step has happened,
    then the largest per-clip count). Returns ``(sum w_i / (L n), sum w_i^2 / (L n^2))``: the
    linear (projections, feed-forward) and quadratic (attention scores) parts.
    """
    num_layers = len(out.kept_counts)
    widths = []
    for i in range(num_layers):
        pruned_before = keep_rate < 1.0 and i - 1 >= prune_from_layer
        widths.append(max(out.kept_counts[i - 1]) if pruned_before else n_padded)
    lin = sum(widths) / (num_layers * n_padded)
    quad = sum(w * w for w in widths) / (num_layers * n_padded**2)
    return lin, quad


def cosine_stats(ref: torch.Tensor, emb: torch.Tensor) -> tuple[float, float]:
    cos = torch.nn.functional.cosine_similarity(ref.double(), emb.double(), dim=-1)
    return float(cos.mean()), float(cos.min())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small grid (r 0.85/0.7 x l0 2/4), 2 clips of 4-8 s")
    p.add_argument("--device", default="cpu")
    p.add_argument("--model-dir", default=None, help="local HuBERT/wav2vec2/WavLM checkpoint directory")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--min-seconds", type=float, default=None)
    p.add_argument("--max-seconds", type=float, default=None)
    p.add_argument("--repeats", type=int, default=None, help="interleaved timing rounds")
    p.add_argument("--rates", type=float, nargs="+", default=None)
    p.add_argument("--layers", type=int, nargs="+", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    q = args.quick
    args.batch_size = args.batch_size or (2 if q else 4)
    args.min_seconds = args.min_seconds if args.min_seconds is not None else 4.0
    args.max_seconds = args.max_seconds if args.max_seconds is not None else (8.0 if q else 16.0)
    args.repeats = args.repeats or 3
    args.rates = tuple(args.rates or (QUICK_RATES if q else FULL_RATES))
    args.layers = tuple(args.layers or (QUICK_LAYERS if q else FULL_LAYERS))
    if args.memory_worker:
        return memory_worker(args)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t_start = time.perf_counter()
    model = build_model(args.model_dir, device, args.seed)
    num_layers = len(model.encoder.layers)
    x, am, lengths = make_batch(args.batch_size, args.min_seconds, args.max_seconds, args.seed, device)
    audio_seconds = sum(lengths) / SAMPLE_RATE
    grid = settings_grid(args.rates, args.layers, num_layers)
    print(f"device={device} threads={torch.get_num_threads()} clips={[round(n / SAMPLE_RATE, 2) for n in lengths]} s "
          f"(audio {audio_seconds:.1f} s, padded to {x.shape[1] / SAMPLE_RATE:.1f} s), layers={num_layers}, "
          f"{len(grid)} settings x {args.repeats} rounds", flush=True)

    rows: dict[str, dict] = {}
    fns: dict[str, Callable[[], object]] = {}
    times: dict[str, list[float]] = {s.label: [] for s in grid}
    cpu_times: dict[str, list[float]] = {s.label: [] for s in grid}
    with torch.inference_mode():
        # reference embeddings + warm-up (first call of every setting, untimed)
        ref_out = model(x, attention_mask=am, output_hidden_states=True)
        frame_mask = model._get_feature_vector_attention_mask(ref_out.last_hidden_state.shape[1], am).bool()
        ref_emb = masked_mean(torch.stack(ref_out.hidden_states[-4:]).sum(0), frame_mask)
        del ref_out
        n_in = frame_mask.sum(1).float()
        for s in grid:
            fns[s.label] = runner(model, s, x, am)
            out = fns[s.label]()
            row = {"label": s.label, "keep_rate": s.keep_rate if s.keep_rate is not None else 1.0,
                   "prune_from_layer": s.prune_from_layer if s.prune_from_layer is not None else num_layers,
                   "library_forward": s.keep_rate is None}
            if s.keep_rate is None:
                row.update(cosine=1.0, cosine_min=1.0, kept_fraction=1.0, linear_work=1.0, attention_work=1.0)
            else:
                cos, cos_min = cosine_stats(ref_emb, pooled_embedding(out))
                lin, quad = work_fractions(out, frame_mask.shape[1], s.keep_rate, s.prune_from_layer)
                row.update(cosine=cos, cosine_min=cos_min, linear_work=lin, attention_work=quad,
                           kept_fraction=float((out.mask.sum(1).float() / n_in).mean()),
                           final_tokens_per_clip=out.mask.sum(1).tolist())
            rows[s.label] = row
            del out

        # front end alone (conv feature extractor + projection): what pruning cannot touch
        def frontend():
            feats = model.feature_extractor(x).transpose(1, 2)
            return model.feature_projection(feats)

        frontend()
        front_times, front_cpu = [], []
        # interleaved timing rounds
        order = list(grid)
        rng = random.Random(args.seed + 1)
        for rnd in range(args.repeats):
            rng.shuffle(order)
            for s in order:
                sync(device)
                t0, c0 = time.perf_counter(), time.process_time()
                fns[s.label]()
                sync(device)
                times[s.label].append(time.perf_counter() - t0)
                cpu_times[s.label].append(time.process_time() - c0)
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            frontend()
            sync(device)
            front_times.append(time.perf_counter() - t0)
            front_cpu.append(time.process_time() - c0)
            print(f"  round {rnd + 1}/{args.repeats} done ({time.perf_counter() - t_start:.0f} s elapsed)", flush=True)

        memory: dict[str, float] = {}
        if not args.no_memory:
            if device.type == "cuda":
                memory = {s.label: peak_memory_cuda(fns[s.label], device) for s in grid}
            else:
                memory = cpu_peak_memory(args)

    base = statistics.median(times[grid[0].label])
    base_cpu = statistics.median(cpu_times[grid[0].label])
    front = statistics.median(front_times)
    for s in grid:
        med = statistics.median(times[s.label])
        cpu = statistics.median(cpu_times[s.label])
        rows[s.label].update(
            seconds=med,
            seconds_min=min(times[s.label]),
            seconds_all=times[s.label],
            speedup=base / med,
            cpu_seconds=cpu,
            cpu_speedup=base_cpu / cpu,
            audio_seconds_per_second=audio_seconds / med,
            encoder_speedup=(base - front) / (med - front) if med > front else math.inf,
            peak_memory_mb=memory.get(s.label),
        )
    rows[grid[0].label]["frontend_seconds"] = front
    frontend_mb = memory.get("__frontend__")

    # table
    header = f"{'setting':<20}{'sec/batch':>10}{'min':>8}{'speedup':>9}{'enc.x':>7}{'cpu s':>8}{'cpu x':>7}" \
             f"{'audio s/s':>10}{'cosine':>9}{'cos min':>9}{'kept':>7}{'lin.w':>7}{'att.w':>7}{'peak MB':>9}"
    print(header)
    print("-" * len(header))
    for s in grid:
        r = rows[s.label]
        mem = f"{r['peak_memory_mb']:.0f}" if r["peak_memory_mb"] is not None else "-"
        print(f"{s.label:<20}{r['seconds']:>10.3f}{r['seconds_min']:>8.3f}{r['speedup']:>9.2f}"
              f"{r['encoder_speedup']:>7.2f}{r['cpu_seconds']:>8.2f}{r['cpu_speedup']:>7.2f}"
              f"{r['audio_seconds_per_second']:>10.2f}{r['cosine']:>9.4f}"
              f"{r['cosine_min']:>9.4f}{r['kept_fraction']:>7.3f}{r['linear_work']:>7.3f}"
              f"{r['attention_work']:>7.3f}{mem:>9}")
    front_mem = f", peak memory {frontend_mb:.0f} MB" if frontend_mb is not None else ""
    print(f"front end (conv + projection) alone: {front:.3f} s/batch{front_mem}; "
          f"total wall time {time.perf_counter() - t_start:.0f} s")

    write_json(args.out, {
        "benchmark": "token_pruning",
        "quick": q,
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "model": args.model_dir or "HubertConfig() random weights (HuBERT-base size)",
        "num_layers": num_layers,
        "batch_clip_seconds": [n / SAMPLE_RATE for n in lengths],
        "padded_seconds": x.shape[1] / SAMPLE_RATE,
        "repeats": args.repeats,
        "seed": args.seed,
        "frontend_seconds": front,
        "frontend_cpu_seconds": statistics.median(front_cpu),
        "frontend_peak_memory_mb": frontend_mb,
        "peak_memory_measure": ("torch.cuda.max_memory_allocated delta" if device.type == "cuda" else
                                "RSS delta sampled every ~1 ms by psutil in a subprocess with "
                                "MALLOC_MMAP_THRESHOLD_=65536"),
        "notes": "seconds = median over interleaved rounds; speedup vs the library forward (sdpa); "
                 "cosine of pooled last-4-layer embeddings vs unpruned; random weights make cosine "
                 "uninformative about trained models.",
        "rows": [rows[s.label] for s in grid],
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
