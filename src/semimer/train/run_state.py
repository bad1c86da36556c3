"""Run state: fingerprints, "done" markers and the run-folder claim, for every stage.

Every resumable unit of work (a CV fold, a pre-training, a pseudo-label round, a voting member)
writes its outputs first and a ``done.json`` marker last. The marker carries the *fingerprint* of
everything the unit depends on: the settings that change its result, the data, and the
fingerprints of the stages it consumes (pre-trained weights, pseudo-labels). A unit is reused only
when its marker's fingerprint equals the one computed now, so a run restarted with other settings,
killed and restarted again never picks up work done under the old settings (the marker of a unit
is checked individually, not through one run-level flag that a kill can leave half-updated).

A run folder is *claimed* with :func:`claim_run_dir`: ``run.json`` records the fingerprint of the
whole run. Starting a run in a non-empty folder made with other settings (or by something else)
raises :class:`RunExistsError` unless ``overwrite=True``; with ``overwrite`` the stages whose
inputs did not change are still reused (their own fingerprints match) and the rest recompute.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from semimer.io import read_json, write_json

DONE = "done.json"
RUN_FILE = "run.json"

#: settings that change speed, logging or memory use, never results (beyond floating-point rounding
#: order, like the thread count): not in any fingerprint. ``train.precision`` is not one of them: a
#: run in bfloat16/float16 differs from float32 by more than rounding, so the *resolved* precision
#: (``auto`` -> what this device runs) is fingerprinted unless it is fp32, which every run made
#: before the setting existed used (their fingerprints stay valid)
NO_EFFECT = {"train": ("progress", "threads", "tensorboard", "eval_batch_size", "frame_cache", "device",
                       "compile", "deterministic", "precision"),
             "pretrain": ("pool", "memory_mb", "chunk_mb")}


class RunExistsError(ValueError):
    """``--out`` holds results made with other settings (or is not a semimer run folder)."""


def _default(o: Any) -> Any:
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if isinstance(o, np.ndarray):
        return {"__array__": hashlib.sha256(np.ascontiguousarray(o).tobytes()).hexdigest(), "shape": o.shape,
                "dtype": str(o.dtype)}
    if hasattr(o, "detach") and hasattr(o, "cpu"):  # a torch tensor
        return _default(o.detach().cpu().contiguous().numpy())
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot fingerprint {type(o).__name__}")


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (dataclasses, dicts, arrays and tensors included)."""
    blob = json.dumps(parts, sort_keys=True, default=_default)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def settings(cfg, *sections: str) -> dict:
    """The result-relevant settings of ``cfg`` (all sections, or only ``sections``), without the
    keys of :data:`NO_EFFECT`."""
    d = dataclasses.asdict(cfg)
    keep = sections or tuple(d)
    out = {k: dict(d[k]) for k in keep}
    for sec, keys in NO_EFFECT.items():
        for k in keys:
            out.get(sec, {}).pop(k, None)
    if "train" in out:
        prec = resolved_precision(cfg)
        if prec != "fp32":
            out["train"]["precision"] = prec
    return out


def resolved_precision(cfg) -> str:
    """``train.precision`` as this machine runs it (``auto`` resolved for ``train.device``)."""
    from semimer.utils import resolve_precision

    try:
        return resolve_precision(cfg.train.precision, cfg.train.device)
    except (RuntimeError, ValueError):  # e.g. device=cuda on a machine without one: the run fails later
        return str(cfg.train.precision)


def done(folder: str | os.PathLike, fp: str) -> dict | None:
    """The marker of ``folder`` if it was finished with fingerprint ``fp``, else ``None``. A
    marker with another fingerprint is deleted (it can never be valid again for this folder's
    outputs, which are about to be rewritten)."""
    path = Path(folder) / DONE
    if not path.is_file():
        return None
    try:
        info = read_json(path)
    except (OSError, ValueError):
        info = {}
    if info.get("fingerprint") == fp:
        return info
    path.unlink(missing_ok=True)
    return None


def mark_done(folder: str | os.PathLike, fp: str, **info: Any) -> None:
    """Write the marker last, after every output of the unit (atomic)."""
    write_json(Path(folder) / DONE, {"fingerprint": fp, **info})


def claim_run_dir(out: str | os.PathLike, fp: str, overwrite: bool = False, what: str = "run") -> None:
    """Refuse to write a run into a non-empty ``out`` made with other settings (or not by semimer)
    unless ``overwrite``; then record ``fp`` in ``out/run.json``. Same settings: resume. Under
    ``torchrun`` rank 0 claims the folder and every rank gets its verdict."""
    from semimer.train import distributed

    if distributed.active():
        error = None
        if distributed.is_lead():
            try:
                _claim(out, fp, overwrite, what)
            except RunExistsError as exc:
                error = str(exc)
        error = distributed.agree(error)
        if error:
            raise RunExistsError(error)
        return
    _claim(out, fp, overwrite, what)


def _claim(out: str | os.PathLike, fp: str, overwrite: bool, what: str) -> None:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunExistsError(f"--out {out} is a file, not a folder")
    previous = None
    if (out / RUN_FILE).is_file():
        try:
            previous = read_json(out / RUN_FILE).get("fingerprint")
        except (OSError, ValueError):
            previous = "unreadable"
    non_empty = out.is_dir() and any(out.iterdir())
    if non_empty and previous != fp and not overwrite:
        why = ("was made with other settings or data" if previous else "is not empty and holds no semimer run")
        raise RunExistsError(f"{out} {why}; use another --out, or pass --overwrite to replace its results "
                             f"(stages whose inputs did not change are still reused)")
    write_json(out / RUN_FILE, {"fingerprint": fp, "what": what})
