"""What prediction checks about its inputs: clip names, feature arrays against the run's
``features.json`` (shape, level, NaN), whether the run's features can be re-extracted from new
clips and whether they need given transcripts; and the stand-in row of a missing modality.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np


def check_modality(m: str, f: Mapping[str, Any], x: Any):
    """``(N, D)`` float32 array (utterance level) or list of ``(T, D)`` arrays (frame level)."""
    dim, level = int(f["dim"]), f.get("level", "utt")
    if level == "frame":
        if isinstance(x, np.ndarray) and x.ndim == 2:
            x = [x]
        clips = [np.asarray(c, dtype=np.float32) for c in x]
        for i, c in enumerate(clips):
            if c.ndim != 2 or c.shape[1] != dim:
                raise ValueError(f"{m} clip {i} has shape {c.shape}, expected (T, {dim}) like "
                                 f"frame-level feature {f['feature']!r} the run was trained on (T = 0: missing)")
        return clips
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{m} features have shape {x.shape}, expected (N, {dim}) "
                         f"like feature {f['feature']!r} the run was trained on")
    nan = np.isnan(x)
    partial = nan.any(axis=1) & ~nan.all(axis=1)
    if partial.any() or np.isinf(x).any():
        i = int(np.flatnonzero(partial | np.isinf(x).any(axis=1))[0])
        raise ValueError(f"{m} features of clip {i} contain NaN/Inf values (an all-NaN row means: modality missing)")
    return x


def missing_row(f: Mapping[str, Any]) -> np.ndarray:
    """The stand-in for a clip without this feature: an all-NaN ``(D,)`` row (utterance level) or
    a ``(0, D)`` clip (frame level) — how a missing modality travels (:mod:`semimer.data.ragged`)."""
    dim = int(f["dim"])
    if f.get("level", "utt") == "frame":
        return np.zeros((0, dim), np.float32)
    return np.full(dim, np.nan, np.float32)


def clip_entries(paths: Sequence[Any]) -> list[tuple[str, Path]]:
    """``(name, path)`` pairs from paths, ``(name, path)`` tuples or ClipEntry objects."""
    out = []
    for p in paths:
        if hasattr(p, "name") and hasattr(p, "path") and not isinstance(p, (str, os.PathLike)):
            out.append((str(p.name), Path(p.path)))
        elif isinstance(p, tuple):
            out.append((str(p[0]), Path(p[1])))
        else:
            out.append((Path(p).stem, Path(p)))
    seen: dict[str, Path] = {}
    for name, path in out:
        if name in seen:
            raise ValueError(f"clip name {name!r} appears twice ({seen[name]} and {path}); clip names "
                             f"(file stems) must be unique: rename one or use a manifest CSV (name,path)")
        seen[name] = path
    return out


def check_reextractable(run_dir: str | os.PathLike, features: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise unless every feature of the run was made by ``semimer extract`` (utterance or frame level)."""
    for m, f in features.items():
        meta = f.get("extractor")
        if not isinstance(meta, dict) or "extractor" not in meta or "options" not in meta:
            raise ValueError(f"feature {f['feature']} of run {run_dir} was not made by `semimer extract`; "
                             f"pass precomputed features with --features-dir DATA_DIR instead")


def check_inputs(run_dir: str | os.PathLike, features: Mapping[str, Mapping[str, Any]],
                 transcripts: Mapping[str, str] | None, features_dir: str | os.PathLike | None) -> None:
    """Raise early (before loading models) if the run's features cannot be made for new clips."""
    if features_dir is not None:
        return
    check_reextractable(run_dir, features)
    needs_text = needs_transcript(features)
    if needs_text and transcripts is None:
        raise ValueError(f"the run uses text feature {needs_text}, which needs transcripts: pass --transcript TEXT "
                         f"(one clip) or --transcripts CSV (columns name + text), or read stored features with "
                         f"--features-dir DATA_DIR (its extraction used no ASR model)")


def needs_transcript(features: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The run's text feature that needs a given transcript (its extraction recorded no ASR
    model), else None: ``features`` is ``features.json`` of the run."""
    for f in features.values():
        meta = f.get("extractor") or {}
        if meta.get("modality") == "text" and not (meta.get("text_source") or {}).get("asr_model"):
            return f["feature"]
    return None
