"""Run extractors over many clips: listing, sharding, resume, failures, progress.

Layout written under the data root (what :mod:`semimer.data.store` reads)::

    DATA_DIR/features/<FEATURE>/<name>.npy      (D,) or (T, D) float32, written atomically
    DATA_DIR/features/<FEATURE>/extractor.json  how to rebuild the extractor (see registry)
    DATA_DIR/failures.csv                       name, path, modality, feature, status, reason

``status`` is ``failed`` (no .npy written) or ``note`` (written, but with a documented fallback,
e.g. the nearest detected face box for frames without a face). A clip that lacks a modality gets
**no** file for that modality's features, never a placeholder: its ``failed`` row says why
(``no audio stream``, ``no video stream`` -- every audio file --, ``no face detected in any of N
sampled frames``, ``no transcript ...``); a damaged file says ``corrupt file: ...``. The data
layer sees such a feature as absent for that clip. The summary counts the reasons per feature.
A sharded run writes ``failures.shard-<i>-of-<n>.csv`` instead, so shards never write one file.

Resume: a (clip, feature) whose .npy exists is never recomputed; a clip with all its features
present is skipped without being decoded. Failed clips are retried on the next run.
"""

from __future__ import annotations

import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from semimer.extract.clip import Clip
from semimer.extract.decode import AUDIO_EXTENSIONS, MEDIA_EXTENSIONS, VIDEO_EXTENSIONS
from semimer.extract.registry import ClipError, Extractor
from semimer.io import read_csv, read_json, save_npy, write_csv, write_json
from semimer.utils import log

FAILURE_COLUMNS = ("name", "path", "modality", "feature", "status", "reason")
FLUSH_SECONDS = 60.0  # failures.csv is rewritten at least this often during a long run
MAX_UNEXPECTED_ERRORS = 10  # an extractor failing this often with no success is a bug, not bad clips


# --------------------------------------------------------------------------------------------
# which clips


@dataclass(frozen=True)
class ClipEntry:
    name: str
    path: Path


def list_clips(source: str | os.PathLike) -> list[ClipEntry]:
    """The clips of ``source``, sorted by name; duplicate names are an error.

    * a folder: every video (:data:`~semimer.extract.decode.VIDEO_EXTENSIONS`) and audio file
      (:data:`~semimer.extract.decode.AUDIO_EXTENSIONS`: wav, flac, mp3, m4a, ogg...) under it,
      recursively, hidden files excluded; name = file stem;
    * a ``.csv`` file: a manifest with columns ``name`` and ``path``; a relative ``path`` is
      relative to **the manifest's folder** (not the working directory); absolute paths as given;
    * any other file: that one media file is the one clip (name = its stem).
    """
    src = Path(source)
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.suffix.lower() in MEDIA_EXTENSIONS and p.is_file()
                       and not p.name.startswith("."))
        entries = [ClipEntry(p.stem, p) for p in files]
        if not entries:
            raise FileNotFoundError(f"no video or audio clips under {src} (video: {', '.join(VIDEO_EXTENSIONS)}; "
                                    f"audio: {', '.join(AUDIO_EXTENSIONS)})")
    elif src.is_file() and src.suffix.lower() == ".csv":
        try:
            rows = read_csv(src)
        except UnicodeDecodeError:
            raise ValueError(f"{src}: not a text CSV; a clip manifest is a UTF-8 CSV with columns name,path") from None
        if not rows or not {"name", "path"} <= set(rows[0]):
            raise ValueError(f"{src}: a clip manifest needs the columns name,path (one row per clip; relative "
                             f"paths are relative to the manifest's folder)")
        entries = [ClipEntry(r["name"].strip(), (src.parent / r["path"].strip()) if not Path(r["path"].strip()).is_absolute()
                             else Path(r["path"].strip())) for r in rows]
    elif src.is_file():
        entries = [ClipEntry(src.stem, src)]
    else:
        raise FileNotFoundError(f"{src} is neither a folder of clips, a media file nor a manifest CSV (name,path)")
    seen: dict[str, Path] = {}
    for e in entries:
        if e.name in seen:
            raise ValueError(f"clip name {e.name!r} appears twice ({seen[e.name]} and {e.path}); "
                             f"clip names (file stems) must be unique: rename one or use a manifest CSV")
        seen[e.name] = e.path
    return sorted(entries, key=lambda e: e.name)


def parse_shard(spec: str | None, env: dict[str, str] | None = None) -> tuple[int, int]:
    """``"i/n"`` (0-based, the flag) wins; else torchrun's ``RANK``/``WORLD_SIZE``; else ``(0, 1)``."""
    env = os.environ if env is None else env
    if spec:
        try:
            i, n = (int(v) for v in spec.split("/"))
        except ValueError:
            raise ValueError(f"--shard {spec!r} must look like i/n, e.g. 0/4 (shards are 0-based)") from None
    elif "WORLD_SIZE" in env:
        i, n = int(env.get("RANK", "0")), int(env["WORLD_SIZE"])
    else:
        return 0, 1
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {i}/{n} is out of range: need 0 <= i < n (shards are 0-based)")
    return i, n


def shard_of(name: str, n: int) -> int:
    """Stable shard of a clip: CRC32 of its name modulo ``n`` (same on every machine and run)."""
    return zlib.crc32(name.encode("utf-8")) % n


def select_shard(clips: Sequence[ClipEntry], index: int, count: int) -> list[ClipEntry]:
    return [c for c in clips if shard_of(c.name, count) == index] if count > 1 else list(clips)


# --------------------------------------------------------------------------------------------
# the run


def reason_kind(reason: str) -> str:
    """A short class of a failure reason, for counting: ``no audio stream``, ``no video stream``,
    ``no face``, ``corrupt file``, ``no transcript for this clip``, ``zero-length audio``..."""
    r = reason.strip()
    if r.startswith("no face"):
        return "no face"
    for sep in (":", " ("):
        r = r.split(sep)[0]
    return r[:60] or "unknown"


@dataclass
class ExtractReport:
    clips: int = 0
    skipped: int = 0  # clips with every feature already on disk
    written: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)  # no .npy written (missing modality or error)
    notes: dict[str, int] = field(default_factory=dict)
    empty_text: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    failures_file: Path | None = None
    #: feature -> modality (audio/text/video) of every extractor of the run
    modality: dict[str, str] = field(default_factory=dict)
    #: feature -> clips of this run that have the feature on disk afterwards (resumed ones included)
    present: dict[str, int] = field(default_factory=dict)
    #: feature -> {reason kind (see :func:`reason_kind`): clips}, over the failed clips of this run
    reasons: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def total_written(self) -> int:
        return sum(self.written.values())

    def summary(self) -> str:
        lines = [f"{self.clips} clips ({self.skipped} already done) in {self.seconds:.1f} s"]
        feats = set(self.written) | set(self.failed) | set(self.notes) | set(self.modality)
        for feat in sorted(feats, key=lambda f: (self.modality.get(f, ""), f)):
            why = self.reasons.get(feat, {})
            detail = ", ".join(f"{k} {n}" for k, n in sorted(why.items(), key=lambda kv: (-kv[1], kv[0])))
            extra = f", empty text -> zeros: {self.empty_text[feat]}" if self.empty_text.get(feat) else ""
            mod = self.modality.get(feat)
            lines.append(f"  {mod + ' ' if mod else ''}{feat}: written {self.written.get(feat, 0)}"
                         + (f" (with the feature: {self.present[feat]} of {self.clips})" if feat in self.present else "")
                         + f", failed {self.failed.get(feat, 0)}{f' ({detail})' if detail else ''}"
                         + f", fallback notes {self.notes.get(feat, 0)}{extra}")
        if self.failures_file:
            lines.append(f"  failures and notes: {self.failures_file}")
        return "\n".join(lines)


def feature_dir(out: Path, ex: Extractor) -> Path:
    return out / "features" / ex.feature_name


def _same_extractor(old: dict[str, Any], new: dict[str, Any], path_options: Sequence[str],
                    defaults: dict[str, Any] | None = None) -> bool:
    """Same extractor, level, dim and options (path options compared as resolved paths; an option
    the old metadata lacks, added to the extractor since, counts as its default)."""
    if any(old.get(k) != new.get(k) for k in ("extractor", "dim", "level")):
        return False
    a, b = dict(old.get("options", {})), dict(new.get("options", {}))
    for k, v in (defaults or {}).items():
        a.setdefault(k, v)
    for k in path_options:
        if a.get(k) and b.get(k) and os.path.realpath(a[k]) == os.path.realpath(b[k]):
            a[k] = b[k]
    return a == b


def write_extractor_json(folder: Path, meta: dict[str, Any], path_options: Sequence[str] = (),
                         defaults: dict[str, Any] | None = None) -> None:
    """Write ``extractor.json``; refuse to mix features of a different extractor config in one folder."""
    path = folder / "extractor.json"
    if path.is_file():
        old = read_json(path)
        if not _same_extractor(old, meta, path_options, defaults) and any(folder.glob("*.npy")):
            raise ValueError(
                f"{path} describes a different extractor ({old.get('extractor')} {old.get('options')}, dim "
                f"{old.get('dim')}) than this run ({meta['extractor']} {meta['options']}, dim {meta['dim']}); "
                f"give this one another folder name with the option feature=NAME, or delete {folder}")
    write_json(path, meta)


def run_extraction(clips: Sequence[ClipEntry], extractors: Sequence[Extractor], out: str | os.PathLike, *,
                   transcripts: dict[str, str] | None = None, transcriber: Callable | None = None,
                   text_source: dict[str, Any] | None = None, batch_size: int = 16,
                   failures_name: str = "failures.csv", progress: bool = True) -> ExtractReport:
    """Extract every missing (clip, feature) and write failures; see the module docstring."""
    out = Path(out)
    names = [ex.feature_name for ex in extractors]
    if len(set(names)) != len(names):
        raise ValueError(f"two extractors write the same feature folder ({names}); give one feature=NAME")
    for ex in extractors:
        ex.ensure_loaded()
        meta = ex.metadata()
        if ex.modality == "text" and text_source:
            meta["text_source"] = text_source
        write_extractor_json(feature_dir(out, ex), meta, ex.path_options, ex.options)

    report = ExtractReport(clips=len(clips), modality={ex.feature_name: ex.modality for ex in extractors})
    todo: list[tuple[ClipEntry, list[Extractor]]] = []
    for c in clips:
        missing = [ex for ex in extractors if not (feature_dir(out, ex) / f"{c.name}.npy").is_file()]
        if missing:
            todo.append((c, missing))
        else:
            report.skipped += 1
        for ex in extractors:
            if ex not in missing:
                report.present[ex.feature_name] = report.present.get(ex.feature_name, 0) + 1
    report.present = {ex.feature_name: report.present.get(ex.feature_name, 0) for ex in extractors}
    if report.skipped:
        log.info("resume: %d of %d clips already have every feature; skipped", report.skipped, len(clips))

    rows: list[tuple] = []
    attempted: set[tuple[str, str]] = set()
    unexpected = {ex.feature_name: 0 for ex in extractors}
    start = last_flush = time.perf_counter()
    bar = _progress(len(todo), progress)
    try:
        for g in range(0, len(todo), max(1, batch_size)):
            group = todo[g:g + max(1, batch_size)]
            _run_group(group, extractors, out, transcripts, transcriber, report, rows, attempted, unexpected)
            bar.update(len(group))
            if time.perf_counter() - last_flush > FLUSH_SECONDS:  # a killed run keeps its failure rows
                _merge_failures(out / failures_name, rows, attempted, out)
                last_flush = time.perf_counter()
    finally:
        bar.close()
        report.seconds = time.perf_counter() - start
        for feat, n in report.written.items():
            report.present[feat] = report.present.get(feat, 0) + n
        report.failures_file = _merge_failures(out / failures_name, rows, attempted, out)
    for feat, n in report.empty_text.items():
        log.warning("%s: %d clips had empty text and got a zero vector", feat, n)
    return report


def _run_group(group: list[tuple[ClipEntry, list[Extractor]]], extractors: Sequence[Extractor], out: Path,
               transcripts: dict[str, str] | None, transcriber: Callable | None, report: ExtractReport,
               rows: list[tuple], attempted: set[tuple[str, str]], unexpected: dict[str, int]) -> None:
    """One group of clips through every extractor (text encoders batch across the group)."""
    clips = {e.name: Clip(e.name, e.path, transcript=transcripts.get(e.name) if transcripts else None,
                          transcriber=transcriber) for e, _ in group}
    for ex in extractors:
        feat = ex.feature_name
        members = [clips[e.name] for e, missing in group if ex in missing]
        if not members:
            continue
        for clip, result in zip(members, _safe_extract_many(ex, members, unexpected, report.written)):
            attempted.add((clip.name, feat))
            if isinstance(result, np.ndarray):
                result = _check_array(result, ex)
            if isinstance(result, ClipError):
                report.failed[feat] = report.failed.get(feat, 0) + 1
                kinds = report.reasons.setdefault(feat, {})
                kind = reason_kind(str(result))
                kinds[kind] = kinds.get(kind, 0) + 1
                rows.append((clip.name, str(clip.path), ex.modality, feat, "failed", str(result)))
            else:
                save_npy(feature_dir(out, ex) / f"{clip.name}.npy", result)
                report.written[feat] = report.written.get(feat, 0) + 1
                for note in clip.notes:
                    report.notes[feat] = report.notes.get(feat, 0) + 1
                    rows.append((clip.name, str(clip.path), ex.modality, feat, "note", note))
            clip.notes.clear()
        if getattr(ex, "empty_count", 0):
            report.empty_text[feat] = ex.empty_count
    for clip in clips.values():
        clip.release()


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="extract", unit="clip", disable=not enabled, mininterval=1.0, smoothing=0.1)


def _safe_extract_many(ex: Extractor, clips: list[Clip], unexpected: dict[str, int],
                       written: dict[str, int]) -> list:
    """``ex.extract_many``; an unexpected exception is isolated to its clip and recorded as a
    failure, unless the extractor keeps failing with no success at all (a bug: raised)."""
    try:
        return ex.extract_many(clips)
    except Exception as exc:  # noqa: BLE001 - isolate one clip's failure
        if len(clips) > 1:
            return [r for c in clips for r in _safe_extract_many(ex, [c], unexpected, written)]
        unexpected[ex.feature_name] += 1
        if unexpected[ex.feature_name] >= MAX_UNEXPECTED_ERRORS and not written.get(ex.feature_name):
            raise
        log.debug("%s failed on %s", ex.feature_name, clips[0].name, exc_info=True)
        return [ClipError(f"unexpected {type(exc).__name__}: {exc}")]


def _check_array(arr: np.ndarray, ex: Extractor) -> np.ndarray | ClipError:
    arr = np.asarray(arr, dtype=np.float32)
    want = 1 if ex.level == "utt" else 2
    if arr.ndim != want or arr.shape[-1] != ex.dim or (want == 2 and arr.shape[0] == 0):
        return ClipError(f"extractor gave shape {arr.shape}, expected {'(D,)' if want == 1 else '(T, D)'} with D={ex.dim}")
    if not np.isfinite(arr).all():
        return ClipError("extractor gave NaN/Inf values")
    return arr


def _merge_failures(path: Path, rows: list[tuple], attempted: set[tuple[str, str]], out: Path) -> Path | None:
    """Rows of this run replace earlier rows of the same (clip, feature); earlier rows stay for
    pairs not attempted now (a failed pair whose .npy appeared since is dropped)."""
    kept: list[tuple] = []
    if path.is_file():
        for r in read_csv(path):
            key = (r.get("name", ""), r.get("feature", ""))
            if key in attempted:
                continue
            if r.get("status") == "failed" and (out / "features" / key[1] / f"{key[0]}.npy").is_file():
                continue
            kept.append(tuple(r.get(c, "") for c in FAILURE_COLUMNS))
    all_rows = sorted(kept + rows, key=lambda r: (r[0], r[3]))
    if not all_rows and not path.is_file():
        return None
    write_csv(path, FAILURE_COLUMNS, all_rows)
    return path
