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
