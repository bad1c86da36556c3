"""Feature stores: how one extractor's features for many clips are kept on disk.

Two forms, same interface (:class:`FeatureStore`):

* :class:`NpyFolderStore` reads the field's layout as users have it: ``features/<FEATURE>/<name>.npy``
  with one ``(D,)`` (utterance level) or ``(T, D)`` (frame level) array per clip.
* :class:`PackedStore` is what ``semimer pack`` writes: one memory-mapped ``data.npy`` holding every
  clip's rows back to back (``(N, D)`` at utterance level, ``(sum T, D)`` at frame level), an
  ``offsets.npy`` (``N + 1`` row offsets), ``names.json`` (row order) and ``manifest.json``
  (feature, level, dim, count, dtype, source). Opening it reads two small files; arrays are paged in
  by the OS on access, so a 115k-clip pool never has to fit in RAM.

A pack records the state of the ``.npy`` folder it was packed from (file count, newest mtime); a
pack whose folder changed since (clips re-extracted, added or removed) is refused on open rather
than silently read. Every read checks the shape against the store's dim and values for NaN/Inf,
and errors name the clip and the file. Packs are written by :mod:`semimer.data.pack`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from semimer.io import read_json, read_spans

PACKED_DIRNAME = "packed"
FEATURES_DIRNAME = "features"


def level_of(shape: Sequence[int]) -> str:
    if len(shape) == 1:
        return "utt"
    if len(shape) == 2:
        return "frame"
    raise ValueError(f"feature arrays must be (D,) or (T, D), got shape {tuple(shape)}")


class FeatureStore:
    """Read-only mapping ``clip name -> float32 array`` for one feature."""

    kind = "abstract"
    feature: str
    level: str  # "utt" or "frame"
    dim: int
    path: Path

    @property
    def names(self) -> list[str]:
        raise NotImplementedError

    def __contains__(self, name: str) -> bool:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.names)

    def _read(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def source_of(self, name: str) -> str:
        return str(self.path)

    def get(self, name: str) -> np.ndarray:
        """The clip's array as float32, checked for shape and finiteness."""
        if name not in self:
            raise KeyError(
                f"clip {name!r} has no '{self.feature}' feature in {self.path}; "
                f"extract it (semimer extract) or drop the clip from the label/candidate CSV"
            )
        arr = np.asarray(self._read(name), dtype=np.float32)
        self._check(name, arr)
        return arr

    def _check(self, name: str, arr: np.ndarray) -> None:
        want_ndim = 1 if self.level == "utt" else 2
        if arr.ndim != want_ndim or arr.shape[-1] != self.dim:
            raise ValueError(
                f"{self.source_of(name)}: clip {name!r} has shape {arr.shape}, expected "
                f"{'(%d,)' % self.dim if want_ndim == 1 else '(T, %d)' % self.dim} like the rest of "
                f"feature '{self.feature}'; re-extract this clip"
            )
        if self.level == "frame" and arr.shape[0] == 0:
            raise ValueError(f"{self.source_of(name)}: clip {name!r} has zero frames; re-extract this clip")
        if not np.isfinite(arr).all():
            raise ValueError(
                f"{self.source_of(name)}: clip {name!r} contains NaN/Inf values; re-extract this clip "
                f"(or remove it from the label/candidate CSV)"
            )

    def get_many(self, names: Sequence[str]) -> np.ndarray | list[np.ndarray]:
        """Utterance level: a stacked ``(len(names), D)`` array; frame level: a list of ``(T, D)``."""
        arrays = [self.get(n) for n in names]
        if self.level == "utt":
            return np.stack(arrays) if arrays else np.zeros((0, self.dim), np.float32)
        return arrays

    def get_present(self, names: Sequence[str]) -> np.ndarray | list[np.ndarray]:
        """Like :meth:`get_many`, but a clip without this feature is *missing*, not an error: its
        row is all NaN (utterance level) or it has zero frames (frame level). This is how a missing
        modality travels through semimer (see :mod:`semimer.data.ragged`)."""
        names = list(names)
        have = np.fromiter((n in self for n in names), dtype=bool, count=len(names))
        if have.all():
            return self.get_many(names)
        got = self.get_many([n for n, h in zip(names, have) if h])
        if self.level == "utt":
            out = np.full((len(names), self.dim), np.nan, dtype=np.float32)
            out[have] = got
            return out
        it = iter(got)
        empty = np.zeros((0, self.dim), np.float32)
        return [next(it) if h else empty for h in have]

    def present_lengths(self, names: Sequence[str]) -> np.ndarray:
        """:meth:`lengths` with 0 for clips without this feature."""
        names = list(names)
        have = np.fromiter((n in self for n in names), dtype=bool, count=len(names))
        out = np.zeros(len(names), dtype=np.int64)
        if have.any():
            out[have] = self.lengths([n for n, h in zip(names, have) if h])
        return out

    def lengths(self, names: Sequence[str]) -> np.ndarray:
        """Frames per clip (1 at utterance level) without reading the data where the format allows."""
        if self.level == "utt":
            return np.ones(len(names), dtype=np.int64)
        return np.array([len(self.get(n)) for n in names], dtype=np.int64)

    def extractor_meta(self) -> dict | None:
        """How this feature was extracted (``extractor.json`` written by ``semimer extract``), if known."""
        return None

    def describe(self) -> dict:
        return {"feature": self.feature, "kind": self.kind, "level": self.level, "dim": self.dim,
                "count": len(self), "path": str(self.path)}


class NpyFolderStore(FeatureStore):
    """``<folder>/<name>.npy``, one file per clip (the field's layout)."""

    kind = "npy-folder"

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder)
        if not self.path.is_dir():
            raise FileNotFoundError(f"feature folder {self.path} does not exist")
        self.feature = self.path.name
        self._names = sorted(p.name[:-4] for p in os.scandir(self.path) if p.name.endswith(".npy") and not p.name.startswith("."))
        if not self._names:
            raise FileNotFoundError(f"feature folder {self.path} holds no .npy files")
        self._set = set(self._names)
        shape = _npy_shape(self.path / f"{self._names[0]}.npy")
        self.level = level_of(shape)
        self.dim = int(shape[-1])

    @property
    def names(self) -> list[str]:
        return self._names

    def __contains__(self, name: str) -> bool:
        return name in self._set

    def source_of(self, name: str) -> str:
        return str(self.path / f"{name}.npy")

    def extractor_meta(self) -> dict | None:
        f = self.path / "extractor.json"
        return read_json(f) if f.is_file() else None

    def lengths(self, names: Sequence[str]) -> np.ndarray:
        if self.level == "utt":
            return np.ones(len(names), dtype=np.int64)
        for n in names:
            if n not in self._set:
                self.get(n)  # raises the standard message
        return np.array([_npy_shape(self.path / f"{n}.npy")[0] for n in names], dtype=np.int64)

    def _read(self, name: str) -> np.ndarray:
        f = self.path / f"{name}.npy"
        try:
            return np.load(f, allow_pickle=False)
        except Exception as exc:  # truncated/corrupt file
            raise ValueError(f"{f}: cannot read clip {name!r} ({exc}); re-extract this clip") from exc


class PackedStore(FeatureStore):
    """A packed, memory-mapped store written by :func:`pack_folder`."""

    kind = "packed"

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder)
        manifest_file = self.path / "manifest.json"
        if not manifest_file.is_file():
            raise FileNotFoundError(f"{self.path} is not a packed store (no manifest.json); run `semimer pack`")
        self.manifest = read_json(manifest_file)
        self.feature = self.manifest["feature"]
        self.level = self.manifest["level"]
        self.dim = int(self.manifest["dim"])
        self._check_fresh()
        self._names = json.loads((self.path / "names.json").read_text(encoding="utf-8"))
        self._index = {n: i for i, n in enumerate(self._names)}
        if len(self._index) != len(self._names):
            raise ValueError(f"{self.path}/names.json has duplicate clip names; re-pack the feature")
        try:  # mapped for its header (shape, dtype, data offset); rows are read with preadv
            self.data = np.load(self.path / "data.npy", mmap_mode="r")
            self._base = int(self.data.offset)  # byte offset of row 0
        except (ValueError, OSError) as exc:
            raise ValueError(f"{self.path / 'data.npy'}: cannot open ({exc}); the pack is damaged, "
                             f"re-run `semimer pack`") from exc
        self.offsets = np.load(self.path / "offsets.npy")
        if len(self.offsets) != len(self._names) + 1 or self.data.shape[-1] != self.dim:
            raise ValueError(f"{self.path}: data/offsets/names disagree; the pack is damaged, re-run `semimer pack`")

    def _check_fresh(self) -> None:
        """Refuse a pack older than its ``.npy`` folder: one scandir, no array read. A pack without
        a recorded source (generated, or packed before this check existed) or whose folder is gone
        is fine."""
        state = self.manifest.get("source_state")
        if not state:
            return
        src = Path(os.path.normpath(self.path / state["path"]))
        now = _folder_state(src)
        if now is None or (now["files"], now["mtime_ns"]) == (state["files"], state["mtime_ns"]):
            return
        change = (f"{now['files']} .npy files now, {state['files']} when packed" if now["files"] != state["files"]
                  else "a .npy file was written since")
        raise ValueError(f"{self.path} is out of date: {src} changed since it was packed ({change}); "
                         f"run `semimer pack {src.parent.parent} {src.name}` again "
                         f"(or read the .npy files directly with data.prefer=npy)")

    @property
    def names(self) -> list[str]:
        return self._names

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def source_of(self, name: str) -> str:
        return f"{self.path / 'data.npy'} (row of clip {name})"

    def extractor_meta(self) -> dict | None:
        return self.manifest.get("extractor")

    def lengths(self, names: Sequence[str]) -> np.ndarray:
        missing = [n for n in names if n not in self._index]
        if missing:
            self.get(missing[0])  # raises the standard message
        idx = np.fromiter((self._index[n] for n in names), dtype=np.int64, count=len(names))
        return (self.offsets[idx + 1] - self.offsets[idx]).astype(np.int64)

    def _read(self, name: str) -> np.ndarray:
        i = int(self._index[name])
        if self.level == "utt":
            return self._gather([(i, 1)])[0][0]
        return self._gather([(int(self.offsets[i]), int(self.offsets[i + 1] - self.offsets[i]))])[0]

    def _gather(self, spans: Sequence[tuple[int, int]], into: np.ndarray | None = None) -> list[np.ndarray]:
        """Rows ``[start, start + n)`` of ``data.npy`` for each ``(start, n)`` of ``spans``, read with
        positional reads (``preadv``) in file order, adjacent spans in one call.

        Not through the memory map: touching scattered rows of a mapping maps whole neighbourhoods
        of pages into this process (fault-around), so gathering a 256 MB chunk of random clips from a
        3 GB pool counted ~1.5 GB of file pages as resident memory until released (the peak-RSS
        regression of issue 13). Positional reads go through the page cache without mapping anything.
        ``into``: an ``(len(spans), dim)`` float32 array to fill (utterance level, one row per span)."""
        dt = self.data.dtype
        direct = into is not None and dt == np.float32
        dest = [into[k:k + 1] if direct else np.empty((n, self.dim), dtype=dt) for k, (_, n) in enumerate(spans)]
        try:
            read_spans(self._fd(), self._base, self.dim * dt.itemsize, spans, dest)
        except EOFError as exc:
            raise ValueError(f"{self.path / 'data.npy'} is shorter than its offsets say ({exc}); "
                             f"the pack is damaged, re-run `semimer pack`") from exc
        if into is not None and not direct:
            for k, d in enumerate(dest):
                into[k] = d[0]
        return dest

    def _fd(self) -> int:
        """A read-only descriptor of ``data.npy`` for this process (re-opened after a fork)."""
        if getattr(self, "_fd_pid", None) != os.getpid():
            self._file = open(self.path / "data.npy", "rb")  # closed with the store
            self._fd_pid = os.getpid()
        return self._file.fileno()

    def get_many(self, names: Sequence[str]):
        missing = [n for n in names if n not in self._index]
        if missing:
            self.get(missing[0])  # raises the standard message
        idx = np.fromiter((self._index[n] for n in names), dtype=np.int64, count=len(names))
        if self.level != "utt":
            return self._get_many_frames(names, idx)
        out = np.empty((len(names), self.dim), dtype=np.float32)
        self._gather([(int(i), 1) for i in idx], into=out)
        bad = ~np.isfinite(out).all(axis=1)
        if bad.any():
            name = names[int(np.flatnonzero(bad)[0])]
            self._check(name, out[int(np.flatnonzero(bad)[0])])
        return out

    def _get_many_frames(self, names: Sequence[str], idx: np.ndarray) -> list[np.ndarray]:
        """Frame level: each clip's rows, read in file order, returned in ``names`` order, each checked."""
        spans = [(int(self.offsets[i]), int(self.offsets[i + 1] - self.offsets[i])) for i in idx]
        out = [np.asarray(a, dtype=np.float32) for a in self._gather(spans)]
        for name, arr in zip(names, out):
            self._check(name, arr)
        return out


def _folder_state(folder: Path) -> dict | None:
    """``{"files": count, "mtime_ns": newest}`` of a folder's clip ``.npy`` files (None if it is gone)."""
    try:
        entries = [e for e in os.scandir(folder) if e.name.endswith(".npy") and not e.name.startswith(".")]
        return {"files": len(entries), "mtime_ns": max((e.stat().st_mtime_ns for e in entries), default=0)}
    except FileNotFoundError:
        return None


def _npy_shape(path: Path) -> tuple[int, ...]:
    """Shape of a ``.npy`` without reading its data."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, _ = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, _, _ = np.lib.format.read_array_header_2_0(fh)
        return tuple(shape)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable .npy file ({exc}); re-extract this clip") from exc


def feature_dirs(root: str | os.PathLike, feature: str) -> tuple[Path, Path]:
    root = Path(root)
    return root / PACKED_DIRNAME / feature, root / FEATURES_DIRNAME / feature


def open_store(root: str | os.PathLike, feature: str, prefer: str = "packed") -> FeatureStore:
    """Open ``feature`` under a data root: the packed store if present, else the ``.npy`` folder.

    ``feature`` may also be a path (absolute, or containing a path separator) to either kind of folder.
    """
    direct = Path(feature)
    if (direct.is_absolute() or os.sep in feature or "/" in feature) and direct.is_dir():
        return PackedStore(direct) if (direct / "manifest.json").exists() else NpyFolderStore(direct)
    packed, folder = feature_dirs(root, feature)
    order = [packed, folder] if prefer == "packed" else [folder, packed]
    for cand in order:
        if cand == packed and (cand / "manifest.json").is_file():
            return PackedStore(cand)
        if cand == folder and cand.is_dir():
            return NpyFolderStore(cand)
    available = sorted({p.name for d in (Path(root) / FEATURES_DIRNAME, Path(root) / PACKED_DIRNAME) if d.is_dir() for p in d.iterdir() if p.is_dir()})
    raise FileNotFoundError(
        f"feature '{feature}' not found under {root} (looked for {folder} and {packed}); "
        f"available: {', '.join(available) or 'none'}"
    )
