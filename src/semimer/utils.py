"""Seeds, devices and logging: the few process-wide helpers."""

from __future__ import annotations

import logging
import os
import random

import numpy as np

log = logging.getLogger("semimer")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) for reproducible runs."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def pick_device(requested: str = "auto"):
    """``auto`` -> CUDA when available, else CPU. The device is picked here, once; model code never hard-codes one."""
    import torch

    if requested in ("auto", "", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} requested but CUDA is not available; use device=cpu or device=auto")
    return dev


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB.

    On Linux this is ``VmHWM`` of ``/proc/self/status`` (the high-water mark of this address
    space). ``getrusage().ru_maxrss`` is not used there: after fork+exec it still carries the
    parent's size at fork time, which inflates a child's number.
    """
    import resource
    import sys

    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


# --------------------------------------------------------------------------- CPU threads
#: below this estimated work per optimiser step (FLOPs, :func:`step_flops`) training uses one
#: intra-op thread whatever the free cores. Measured on 2 cores (``benchmarks/threads.py``,
#: ``benchmarks/results/threads.json``): with both cores free a second thread gives 1.09-1.10x at
#: 0.17-0.66 GFLOP/step (the demo, the scarce preset), 1.28-1.29x at 0.7-1.3 and 1.56x at 5.2
#: (MER dims, batches of 256); with one other CPU-bound process it costs 2.4-3.5x at every size. A
#: small gain is not worth that risk when the load changes during a run.
THREADS_MIN_STEP_FLOPS = 1e9


def step_flops(n_params: int, batch_size: int) -> float:
    """A rough work size of one training step: ``6 × parameters × batch`` (forward 2, backward 4
    FLOPs per weight and clip; MR-CCL's noisy view is counted in the threshold, not here)."""
    return 6.0 * float(n_params) * float(batch_size)


def cpu_count() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota (containers)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:  # cgroup v2: "max 100000" or "<quota> <period>"
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(float(quota) / float(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def free_cores(interval: float = 0.25) -> float:
    """CPUs left over by *other* processes, measured over ``interval`` seconds: this process's
    CPUs (:func:`cpu_count`) minus the busy time of the whole machine not spent by this process
    (so our own earlier or background work is not counted as load)."""
    import time

    import psutil

    cpus = cpu_count()
    total_cpus = psutil.cpu_count() or cpus
    try:
        me = psutil.Process()
        psutil.cpu_percent(None)
        me.cpu_percent(None)
        time.sleep(interval)
        busy = psutil.cpu_percent(None) / 100.0 * total_cpus  # busy CPUs, whole machine
        own = me.cpu_percent(None) / 100.0  # CPUs used by this process (may exceed 1)
    except (psutil.Error, OSError):  # e.g. /proc not readable: fall back on the load average
        busy, own = os.getloadavg()[0], 0.0
    others = max(0.0, busy - own)
    # the other CPUs of the machine (outside our affinity) absorb other work first
    others_on_ours = max(0.0, others - max(0, total_cpus - cpus))
    return max(0.0, cpus - others_on_ours)


def auto_threads(work_flops: float | None = None, free: float | None = None, cpus: int | None = None) -> int:
    """The intra-op thread count ``train.threads=auto`` chooses.

    * 1 when a step is small (``work_flops`` below :data:`THREADS_MIN_STEP_FLOPS`): threads that
      synchronise on every small kernel cost more than they give;
    * otherwise the cores that are actually free (``free``, measured by :func:`free_cores` when not
      given), rounded down with a little slack, at least 1: a thread on a core that another process
      is using stalls every parallel region it takes part in (on 2 shared cores this is 5-10×
      slower than one thread);
    * under ``torchrun`` the CPUs are shared by the local ranks (``LOCAL_WORLD_SIZE``).
    """
    if work_flops is not None and work_flops < THREADS_MIN_STEP_FLOPS:
        return 1
    cpus = cpu_count() if cpus is None else cpus
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    free = free_cores() if free is None else free
    free = free / local
    return max(1, min(cpus // local or 1, int(free + 0.2)))


def parse_threads(setting) -> int | None:
    """``train.threads`` as a number: ``None`` for ``auto``, ``0`` for torch's default, else ``n >= 1``."""
    s = str(setting).strip().lower()
    if s == "auto":
        return None
    try:
        n = int(s)
    except ValueError:
        n = -1
    if n < 0:
        raise ValueError(f"train.threads must be auto, 0 (torch's default) or a positive integer, got {setting!r}")
    return n


def apply_threads(setting, work_flops: float | None = None, what: str = "training") -> int:
    """Set torch's intra-op threads from ``train.threads`` (``auto``: :func:`auto_threads` for this
    work size); returns the count in use. Speed only: results do not depend on it."""
    import torch

    n = parse_threads(setting)
    if n is None:
        n = auto_threads(work_flops)
        how = (f"auto: {n} for {what} ({'small steps' if work_flops is not None and work_flops < THREADS_MIN_STEP_FLOPS else 'free cores'}"
               f"{'' if work_flops is None else f', ~{work_flops / 1e9:.2g} GFLOP/step'}; {cpu_count()} CPUs)")
    else:
        how = f"{n or 'torch default'} (train.threads)"
    if n and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    log.debug("intra-op threads: %s", how)
    return torch.get_num_threads()


# --------------------------------------------------------------------------- precision
PRECISION_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def choose_precision(requested: str, device_type: str, bf16_supported: bool) -> str:
    """The autocast precision ``train.precision`` resolves to on a device (a pure function of the
    device's capabilities, so it is testable without a GPU):

    * ``auto``: ``bf16`` on a CUDA device that supports bfloat16, else ``fp32`` (CPU autocast to
      bfloat16 is slower than float32 on most CPUs, and float16 needs a gradient scaler);
    * ``bf16``: bfloat16 autocast (CPU, or a CUDA device that supports it);
    * ``fp16``: float16 autocast with a gradient scaler, CUDA only;
    * ``fp32``: no autocast.
    """
    req = str(requested).strip().lower()
    if req not in ("auto", *PRECISION_DTYPES):
        raise ValueError(f"train.precision must be one of auto, bf16, fp16, fp32, got {requested!r}")
    if req == "auto":
        return "bf16" if device_type == "cuda" and bf16_supported else "fp32"
    if req == "bf16" and device_type == "cuda" and not bf16_supported:
        raise ValueError("train.precision=bf16: this GPU does not support bfloat16; use fp16 (with a gradient "
                         "scaler) or fp32")
    if req == "fp16" and device_type != "cuda":
        raise ValueError(f"train.precision=fp16 needs a CUDA device (this run uses {device_type}); use bf16 or fp32")
    return req


def resolve_precision(requested: str, device) -> str:
    """:func:`choose_precision` for a ``torch.device`` (or ``train.device`` string) of this machine."""
    import torch

    device = pick_device(device) if not isinstance(device, torch.device) else device
    bf16 = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return choose_precision(requested, device.type, bf16)


def precision_dtype(name: str):
    """``bf16`` / ``fp16`` / ``fp32`` -> the torch dtype."""
    import torch

    return getattr(torch, PRECISION_DTYPES[name])


# --------------------------------------------------------------------------- progress
class _LogProgress:
    """A progress bar for logs (stderr not a terminal): one INFO line at most every ``every`` seconds."""

    def __init__(self, iterable=None, total=None, desc: str = "", unit: str = "it", every: float = 5.0, **_):
        import time

        self.iterable, self.desc, self.unit, self.every = iterable, desc, unit, every
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self.postfix = 0, ""
        self._clock = time.monotonic
        self._last = self._clock()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self._clock()
        if now - self._last >= self.every:
            self._last = now
            done = f"{self.n:,}/{self.total:,}" if self.total else f"{self.n:,}"
            log.info("%s: %s %s%s", self.desc, done, self.unit, f" ({self.postfix})" if self.postfix else "")

    def set_postfix(self, **kw) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in kw.items())

    def close(self) -> None:
        pass


def progress(iterable=None, total=None, desc: str = "", unit: str = "it", enabled: bool = True, **kw):
    """A progress bar: tqdm on a terminal, a log line every few seconds otherwise (so a long stage
    is never silent in a log file either), nothing when ``enabled`` is false."""
    import sys

    if enabled and not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
        return _LogProgress(iterable, total=total, desc=desc, unit=unit)
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled, **kw)


def prefetched(load, items, depth: int = 1):
    """Yield ``(item, load(item))`` for ``items`` in order, with the next ``depth`` items loaded in a
    background thread meanwhile (feature reads release the GIL: disk and decoding overlap the
    training or scoring of the current item). Errors of ``load`` surface at their item."""
    items = list(items)
    if len(items) <= 1 or depth < 1:
        for it in items:
            yield it, load(it)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    ex = ThreadPoolExecutor(1, thread_name_prefix="semimer-prefetch")
    try:
        pending: deque = deque()
        nxt = 0
        while nxt < len(items) and len(pending) <= depth:
            pending.append((items[nxt], ex.submit(load, items[nxt])))
            nxt += 1
        while pending:
            it, fut = pending.popleft()
            res = fut.result()
            if nxt < len(items):
                pending.append((items[nxt], ex.submit(load, items[nxt])))
                nxt += 1
            yield it, res
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
