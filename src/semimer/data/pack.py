"""Writing packed feature stores (what :class:`semimer.data.store.PackedStore` reads): ``semimer
pack`` turns a ``.npy`` folder into one (:func:`pack_folder`); generators that make many clips at
once write one chunk by chunk (:class:`PackedWriter`). Both build the pack in a temporary folder
that replaces the old pack only when complete: a killed pack leaves the old one (or none), never
a half one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from semimer.data.store import PACKED_DIRNAME, NpyFolderStore, _folder_state, _npy_shape
from semimer.io import read_json, write_json


def _fresh_tmp(out: Path) -> Path:
    """An empty ``.<name>.packing`` folder beside ``out`` (left-overs of a killed pack removed)."""
    tmp = out.parent / f".{out.name}.packing"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _publish(tmp: Path, out: Path) -> Path:
    """Put the finished ``tmp`` in place of ``out``; an old pack is moved aside first and removed last."""
    if out.exists():
        old = out.parent / f".{out.name}.old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)
    return out


def pack_folder(folder: str | os.PathLike, out: str | os.PathLike | None = None,
                progress: bool = True, dtype: str = "float32") -> Path:
    """Pack ``<root>/features/<FEATURE>/*.npy`` into ``<root>/packed/<FEATURE>/`` (or ``out``).

    Two passes: shapes are read from the ``.npy`` headers only, then rows are copied into a
    pre-allocated memory-mapped array, so memory stays flat whatever the corpus size. Written into
    a temporary folder that is renamed into place at the end: a killed pack leaves the old pack
    (or none), never a half one.
    """
    src = NpyFolderStore(folder)
    out = Path(out) if out else src.path.parent.parent / PACKED_DIRNAME / src.feature
    state = _folder_state(src.path)  # before reading: a clip rewritten meanwhile makes the pack stale
    names = src.names
    shapes = [_npy_shape(src.path / f"{n}.npy") for n in names]
    for n, s in zip(names, shapes):
        if len(s) != (1 if src.level == "utt" else 2) or s[-1] != src.dim:
            raise ValueError(f"{src.path / (n + '.npy')}: shape {s} differs from the feature's "
                             f"{'(%d,)' % src.dim if src.level == 'utt' else '(T, %d)' % src.dim}; re-extract it")
    lengths = np.array([1 if src.level == "utt" else s[0] for s in shapes], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tmp = _fresh_tmp(out)
    rows = int(offsets[-1])
    shape = (rows, src.dim)
    data = np.lib.format.open_memmap(tmp / "data.npy", mode="w+", dtype=np.dtype(dtype), shape=shape)
    it: Iterable = enumerate(names)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=len(names), desc=f"pack {src.feature}", unit="clip", mininterval=1.0)
    for i, n in it:
        arr = src.get(n)
        data[offsets[i]:offsets[i + 1]] = arr.reshape(-1, src.dim)
    data.flush()
    del data
    np.save(tmp / "offsets.npy", offsets)
    (tmp / "names.json").write_text(json.dumps(names), encoding="utf-8")
    extra = {}
    meta = src.path / "extractor.json"
    if meta.is_file():
        extra["extractor"] = read_json(meta)
    write_json(tmp / "manifest.json", {
        "feature": src.feature, "level": src.level, "dim": src.dim, "count": len(names),
        "rows": rows, "dtype": dtype, "source": str(src.path), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "source_state": {"path": _relpath(src.path, out), **state}, **extra,
    })
    return _publish(tmp, out)


def _relpath(target: Path, start: Path) -> str:
    """``target`` relative to ``start`` (so a data root moved as a whole still finds its folders)."""
    try:
        return os.path.relpath(target.resolve(), start.resolve())
    except ValueError:  # another drive (Windows)
        return str(target.resolve())


class PackedWriter:
    """Write an utterance-level packed store chunk by chunk (used by the synthetic generator and
    by extractors that produce many clips at once). Finalise with :meth:`close`."""

    def __init__(self, out: str | os.PathLike, feature: str, names: Sequence[str], dim: int, dtype: str = "float32"):
        self.out = Path(out)
        self.tmp = _fresh_tmp(self.out)
        self.feature, self.names, self.dim, self.dtype = feature, list(names), int(dim), dtype
        self.data = np.lib.format.open_memmap(self.tmp / "data.npy", mode="w+", dtype=np.dtype(dtype),
                                              shape=(len(self.names), self.dim))

    def write(self, start: int, rows: np.ndarray) -> None:
        self.data[start:start + len(rows)] = rows

    def close(self, extra: dict | None = None) -> Path:
        self.data.flush()
        del self.data
        np.save(self.tmp / "offsets.npy", np.arange(len(self.names) + 1, dtype=np.int64))
        (self.tmp / "names.json").write_text(json.dumps(self.names), encoding="utf-8")
        write_json(self.tmp / "manifest.json", {
            "feature": self.feature, "level": "utt", "dim": self.dim, "count": len(self.names),
            "rows": len(self.names), "dtype": self.dtype, "source": "generated",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **(extra or {})})
        return _publish(self.tmp, self.out)
