"""How a training stage uses the hardware: threads, precision, compilation, determinism and
host-to-device copies (``train.threads``, ``train.precision``, ``train.compile``,
``train.deterministic``).

* :func:`setup` is called once at the start of a stage (CV, pre-training): it sets torch's intra-op
  threads for the stage's work size (:func:`semimer.utils.apply_threads`), deterministic algorithms
  when asked, and returns the stage's :class:`Accel`.
* :class:`Accel` carries the resolved precision (:func:`semimer.utils.choose_precision`): ``autocast()``
  for forward passes and losses (bfloat16/float16 matmuls, float32 reductions; the contrastive
  similarities are computed in float32 in any case, :func:`semimer.models.losses.nt_xent`), a
  gradient scaler for float16, and ``to_device`` (pinned memory + non-blocking copies on CUDA).
* ``compile_loss`` wraps a model's loss in ``torch.compile`` when ``train.compile=true``; a backend
  that cannot compile on this machine (no C++ compiler, an unsupported op) falls back to eager with
  a warning instead of failing the run.

None of these changes which clips are seen in which order; threads, compilation and determinism
change floating-point rounding at most (they are in ``run_state.NO_EFFECT``), precision more
(a resolved bf16/fp16 is fingerprinted).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Callable

import torch

from semimer.utils import apply_threads, log, precision_dtype, resolve_precision, step_flops


@dataclass
class Accel:
    device: torch.device
    precision: str = "fp32"  # bf16 | fp16 | fp32 (resolved)
    compile: bool = False
    _compiled: dict = field(default_factory=dict, repr=False)

    @property
    def dtype(self) -> torch.dtype:
        return precision_dtype(self.precision)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        """Autocast to the stage's precision (a no-op context for fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def scaler(self):
        """A gradient scaler for float16 (``None`` otherwise: bfloat16 has float32's range)."""
        if self.precision != "fp16":
            return None
        return torch.amp.GradScaler(self.device.type)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the stage's device; from pinned memory without blocking when that is CUDA."""
        if x.device == self.device:
            return x
        if self.cuda and x.device.type == "cpu":
            return x.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device)

    def compile_loss(self, fn: Callable, name: str = "loss") -> Callable:
        """``fn`` through ``torch.compile`` when ``train.compile`` is on (see the module docstring)."""
        if not self.compile:
            return fn
        key = (name, id(fn.__self__) if hasattr(fn, "__self__") else id(fn))
        if key not in self._compiled:
            self._compiled[key] = _FallbackCompiled(fn)
        return self._compiled[key]


class _FallbackCompiled:
    """``torch.compile(fn)``; on a compilation failure, warns once and calls ``fn`` eagerly."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.compiled = torch.compile(fn, dynamic=None)
        self.failed = False

    def __call__(self, *args, **kwargs):
        if self.failed:
            return self.fn(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as exc:  # dynamo/inductor errors (BackendCompilerFailed, missing compiler, ...)
            mod = type(exc).__module__ or ""
            if not mod.startswith("torch._"):  # a real error of the model or data: the same in eager mode
                raise
            log.warning("train.compile: torch.compile failed (%s: %s); continuing without compilation",
                        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            self.failed = True
            return self.fn(*args, **kwargs)


def adamw(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, fused into one kernel per step where torch supports it (CPU and CUDA in torch >= 2.4:
    ~2.5× faster optimiser steps on the small models here; the same update up to rounding)."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):  # an older torch, or a device without the fused kernel
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def set_deterministic(on: bool, device: torch.device) -> None:
    """``torch.use_deterministic_algorithms`` (and what CUDA needs for it) when ``on``; nothing otherwise."""
    if not on:
        return
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS initialises
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)


def setup(tc, device: torch.device, model: torch.nn.Module | None = None, batch_size: int | None = None,
          what: str = "training") -> Accel:
    """Threads for this stage's work size (``model`` parameters × ``batch_size``), determinism when
    asked, and the stage's :class:`Accel` (precision resolved for ``device``)."""
    work = None
    if model is not None and batch_size:
        work = step_flops(sum(p.numel() for p in model.parameters()), batch_size)
    n = apply_threads(tc.threads, work, what)
    set_deterministic(bool(tc.deterministic), device)
    precision = resolve_precision(tc.precision, device)
    log.debug("%s on %s: %d thread(s), %s", what, device, n, precision)
    return Accel(device=device, precision=precision, compile=bool(tc.compile))
