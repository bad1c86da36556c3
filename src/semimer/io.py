"""Atomic file writes: a reader never sees a half-written file, a killed job never leaves one.

Every writer goes to a temporary file in the destination folder, flushes, fsyncs and then
``os.replace``-s it onto the final name (atomic on POSIX and Windows for one filesystem). The file
gets the permissions of an ordinary ``open(path, "w")``: 0o666 less the user's umask (``mkstemp``
alone would leave every prediction, weight and config file private, 0o600).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask. POSIX can only read it by setting it, so set-and-restore under a lock
    (threads of this module never see the temporary value; Linux reads /proc without touching it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Atomically write one ``.npy`` (never a half-written array on disk)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(array), allow_pickle=False)


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            for row in rows:
                writer.writerow(row)


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Read a CSV into dicts (header required). UTF-8 with or without BOM."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return list(csv.DictReader(fh))


_IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)


def read_spans(fd: int, base: int, row_bytes: int, spans: Sequence[tuple[int, int]], dests: Sequence) -> None:
    """Fill ``dests[k]`` (a C-contiguous array of ``n`` rows) with rows ``[start, start + n)`` of a
    file of fixed-size rows starting at byte ``base``, for each ``(start, n)`` of ``spans``: positional
    reads in file order, the buffers of adjacent spans in one ``preadv`` (``pread`` where it is
    missing). Nothing is memory-mapped, so scattered reads of a large file add nothing to this
    process's resident memory. A file shorter than the spans say raises ``EOFError``."""
    order = sorted(range(len(spans)), key=lambda k: spans[k][0])
    k = 0
    while k < len(order):
        start = end = spans[order[k]][0]
        bufs = []
        while k < len(order) and spans[order[k]][0] == end and len(bufs) < _IOV_MAX:
            j = order[k]
            if spans[j][1]:
                bufs.append(memoryview(dests[j]).cast("B"))
            end += spans[j][1]
            k += 1
        if bufs:
            got, want = _preadv(fd, bufs, base + start * row_bytes), (end - start) * row_bytes
            if got != want:
                raise EOFError(f"read {got} of {want} bytes at row {start}")


def _preadv(fd: int, bufs: list, offset: int) -> int:
    """Fill ``bufs`` from ``fd`` at ``offset``; the bytes read (short only at the end of the file)."""
    total = sum(len(b) for b in bufs)
    if not hasattr(os, "preadv"):
        data = os.pread(fd, total, offset)
        at = 0
        for b in bufs:
            part = data[at:at + len(b)]
            b[:len(part)] = part
            at += len(part)
        return len(data)
    got = 0
    while got < total:
        n = os.preadv(fd, _skip(bufs, got), offset + got)
        if n == 0:
            break
        got += n
    return got


def _skip(bufs: list, n: int) -> list:
    """The buffers after their first ``n`` bytes (to resume a short ``preadv``)."""
    out = []
    for b in bufs:
        if n >= len(b):
            n -= len(b)
            continue
        out.append(b[n:])
        n = 0
    return out
