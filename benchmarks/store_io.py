"""Open and read times of the two feature stores: per-clip ``.npy`` folder vs packed memory-map.

For each feature dim: write N utterance-level ``(D,)`` float32 clips as ``features/<F>/<name>.npy``
(the field's layout; timed, not the focus), pack them with ``semimer.data.pack.pack_folder``
(timed), then for ``NpyFolderStore`` and ``PackedStore``:

* open: construct the store (folder: list + sort 100k names and read one header; pack: read
  ``names.json`` and map ``data.npy``);
* iterate: read every clip in name order in batches of 1024 through ``get_many`` (the way
  ``trainer.predict_names`` streams the unlabeled pool);
* random batch: ``get_many`` of 1024 names drawn at random (the way a shuffled training epoch or
  a self-training subset reads), ms per batch.

Each is measured cold (page cache emptied first) and warm (files just read). The cache is emptied
with ``echo 3 > /proc/sys/vm/drop_caches`` when the process may write it (root outside a
container); otherwise with ``posix_fadvise(POSIX_FADV_DONTNEED)`` on every file of the store,
which evicts file data but not directory entries or inodes. Which method ran is printed and saved.

Usage: PYTHONPATH=src python benchmarks/store_io.py [--quick] [--clips N] [--dims 1024,768]
Writes benchmarks/results/store_io.json (atomically). Temporary data under /tmp, removed at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from semimer.data.pack import pack_folder
from semimer.data.store import NpyFolderStore, PackedStore
from semimer.io import write_json
from semimer.utils import peak_rss_mb

RESULTS = Path(__file__).resolve().parent / "results" / "store_io.json"
BATCH = 1024


# --------------------------------------------------------------------------- page cache
def try_drop_caches() -> tuple[bool, str]:
    """Whether ``drop_caches`` works here (tried once, for real)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True, "drop_caches"
    except OSError as exc:
        return False, f"drop_caches failed ({exc.strerror or exc}); fell back to posix_fadvise DONTNEED per file"


def evict(paths: list[Path], use_drop_caches: bool) -> float:
    """Empty the page cache for ``paths``; returns seconds spent (not part of any timing)."""
    t0 = time.perf_counter()
    os.sync()
    if use_drop_caches:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
    else:
        for p in paths:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- measurements
def write_folder(folder: Path, names: list[str], dim: int, seed: int) -> float:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    t = 0.0
    for s in range(0, len(names), 8192):
        chunk = rng.standard_normal((min(8192, len(names) - s), dim), dtype=np.float32)
        t0 = time.perf_counter()
        for name, row in zip(names[s:s + len(chunk)], chunk):
            np.save(folder / f"{name}.npy", row)
        t += time.perf_counter() - t0
    os.sync()
    return t


def time_open(kind: str, path: Path):
    t0 = time.perf_counter()
    store = NpyFolderStore(path) if kind == "npy-folder" else PackedStore(path)
    return store, time.perf_counter() - t0


def time_iterate(store) -> tuple[float, float]:
    """Seconds to read every clip in batches of BATCH, and a checksum (sum of all values)."""
    names = store.names
    total = 0.0
    t0 = time.perf_counter()
    for s in range(0, len(names), BATCH):
        total += float(store.get_many(names[s:s + BATCH]).sum(dtype=np.float64))
    return time.perf_counter() - t0, total


def time_random(store, batches: int, seed: int, before=None) -> tuple[float, float]:
    """Median and min ms per ``get_many`` of BATCH random names (``before()`` runs untimed before each).

    The min is reported beside the median: on a shared machine the median carries other jobs' load."""
    rng = np.random.default_rng(seed)
    names = np.asarray(store.names)
    times = []
    for _ in range(batches):
        pick = list(names[rng.choice(len(names), size=BATCH, replace=False)])
        if before is not None:
            before()
        t0 = time.perf_counter()
        store.get_many(pick)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def store_files(path: Path) -> list[Path]:
    return sorted(path.iterdir())


def bench_dim(tmp: Path, n: int, dim: int, args, use_drop: bool) -> list[dict]:
    names = [f"sample_{i:08d}" for i in range(n)]
    folder = tmp / "features" / f"bench{dim}-UTT"
    print(f"\n[dim {dim}] writing {n} .npy files ...", flush=True)
    t_write = write_folder(folder, names, dim, seed=dim)
    print(f"[dim {dim}] packing ...", flush=True)
    t0 = time.perf_counter()
    packed_dir = pack_folder(folder, progress=False)
    t_pack = time.perf_counter() - t0
    os.sync()
    mb = n * dim * 4 / 2**20
    paths = {"npy-folder": folder, "packed": packed_dir}
    rows, checks = [], {}
    for kind, path in paths.items():
        files = store_files(path)
        res = {}
        # cold: cache emptied before the open and again before the full pass
        evict(files, use_drop)
        store, t_open = time_open(kind, path)
        evict(files, use_drop)
        t_iter, checks[kind] = time_iterate(store)
        res["cold"] = [t_open, t_iter]
        # warm: right after that pass, everything is cached
        store, t_open = time_open(kind, path)
        t_iter, _ = time_iterate(store)
        res["warm"] = [t_open, t_iter, *time_random(store, args.warm_batches, seed=1)]
        # random batches, cold: cache emptied before each batch
        res["cold"] += time_random(store, args.cold_batches, seed=1, before=lambda: evict(files, use_drop))
        for state in ("cold", "warm"):
            t_open, t_iter, ms_rand, ms_rand_min = res[state]
            rows.append({"dim": dim, "clips": n, "store": kind, "cache": state, "open_s": round(t_open, 4),
                         "iterate_s": round(t_iter, 3), "iterate_clips_per_s": round(n / t_iter),
                         "iterate_mb_per_s": round(mb / t_iter, 1), "random_batch_ms": round(ms_rand, 2),
                         "random_batch_min_ms": round(ms_rand_min, 2),
                         "random_batches": args.cold_batches if state == "cold" else args.warm_batches})
            print(f"[dim {dim}] {kind:<10} {state}: open {t_open:.3f} s, iterate {t_iter:.2f} s, "
                  f"random batch {ms_rand:.1f} ms", flush=True)
    if not np.isclose(checks["npy-folder"], checks["packed"], rtol=1e-9, atol=1e-3):
        raise AssertionError(f"stores disagree: checksums {checks}")
    for r in rows:
        r["write_npy_s"] = round(t_write, 2)
        r["pack_s"] = round(t_pack, 2)
    t0 = time.perf_counter()
    shutil.rmtree(folder)
    shutil.rmtree(packed_dir)
    t_clean = time.perf_counter() - t0
    print(f"[dim {dim}] removing the {n} files took {t_clean:.1f} s", flush=True)
    for r in rows:
        r["cleanup_s"] = round(t_clean, 1)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5,000 clips, dim 1024")
    ap.add_argument("--clips", type=int, default=100_000)
    ap.add_argument("--dims", default="1024", help="comma-separated feature dims (e.g. 1024,768)")
    ap.add_argument("--cold-batches", type=int, default=3, help="random batches timed cold")
    ap.add_argument("--warm-batches", type=int, default=30, help="random batches timed warm")
    ap.add_argument("--tmp", default="/tmp", help="parent folder of the temporary data")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    n = 5000 if args.quick else args.clips
    dims = [1024] if args.quick else [int(d) for d in args.dims.split(",")]

    use_drop, cache_method = try_drop_caches()
    print(f"page cache: {cache_method}")
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="semimer-store-io-", dir=args.tmp))
    try:
        rows = [r for d in dims for r in bench_dim(tmp, n, d, args, use_drop)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    header = (f"{'dim':>5} {'store':<10} {'cache':<5} {'open s':>8} {'iterate s':>10} {'clips/s':>10} "
              f"{'MB/s':>8} {'rand 1024 ms':>13} {'(min)':>7}")
    print(f"\n{n} clips, batches of {BATCH} via get_many; cold = {'drop_caches' if use_drop else 'fadvise DONTNEED'}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['dim']:>5} {r['store']:<10} {r['cache']:<5} {r['open_s']:>8.3f} {r['iterate_s']:>10.2f} "
              f"{r['iterate_clips_per_s']:>10} {r['iterate_mb_per_s']:>8.1f} {r['random_batch_ms']:>13.1f} {r['random_batch_min_ms']:>7.1f}")
    for d in dims:
        r = next(r for r in rows if r["dim"] == d)
        print(f"dim {d}: writing {n} .npy files {r['write_npy_s']:.1f} s; pack_folder {r['pack_s']:.1f} s")
    total = time.perf_counter() - t_start
    print(f"total {total:.0f} s, peak RSS {peak_rss_mb():.0f} MiB")

    write_json(args.out, {
        "benchmark": "feature store open/iterate/random-batch: NpyFolderStore vs PackedStore (utterance level, float32)",
        "clips": n, "dims": dims, "batch": BATCH, "quick": args.quick,
        "cache_method": cache_method, "drop_caches_worked": use_drop,
        "python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
        "cpus": os.cpu_count(), "filesystem_tmp": args.tmp,
        "timing": ("wall seconds, one pass; open = constructing the store; iterate = get_many over all clips "
                   "in name order, batches of 1024; random = median (and min) ms per get_many of 1024 random names "
                   "(cold: cache emptied before each batch)"),
        "rows": rows, "total_s": round(total, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
