"""One clip re-extracted from the ``extractor.json`` metadata of a run's features (what prediction on
a user's own clip needs): :func:`extract_clip_features` and, tolerating missing modalities,
:func:`extract_clip_features_partial`. Extractors and Whisper models are built once per process.
Many clips at once (sharding, resume, ``failures.csv``): :mod:`semimer.extract.runner`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from semimer.extract.clip import Clip
from semimer.extract.registry import ClipError, Extractor, MissingModality, build_extractor_from_metadata
from semimer.extract.runner import _check_array


_BUILT: dict[tuple[str, str], Extractor] = {}
_ASR: dict[tuple[str, str], Callable] = {}


def _clip_for(path: str | os.PathLike, metadatas: list[dict[str, Any]], transcript: str | None, device: Any,
              base_dir: str | os.PathLike | None) -> Clip:
    """A :class:`Clip` of ``path`` with the transcript, else the Whisper model a text feature's
    ``text_source`` names (built once per process)."""
    transcriber = None
    if transcript is None:
        asr = next((m.get("text_source", {}).get("asr_model") for m in metadatas
                    if m.get("modality") == "text" and m.get("text_source", {}).get("asr_model")), None)
        if asr:
            lang = next((m["text_source"].get("asr_language") for m in metadatas if m.get("text_source")), None)
            key = (str(asr), str(device))
            if key not in _ASR:
                from semimer.extract.text import WhisperASR

                _ASR[key] = WhisperASR(str(_resolve(asr, base_dir)), device=device, language=lang)
            transcriber = _ASR[key]
    return Clip(Path(path).stem, path, transcript=transcript, transcriber=transcriber)


def _each_feature(clip: Clip, metadatas: list[dict[str, Any]], device: Any, base_dir: str | os.PathLike | None):
    """Yield ``(feature_name, array | ClipError)`` per metadata, lazily, in order."""
    for meta in metadatas:
        key = (json.dumps(meta, sort_keys=True, default=str), str(device))
        if key not in _BUILT:
            _BUILT[key] = build_extractor_from_metadata(meta, device=device, base_dir=base_dir)
        ex = _BUILT[key]
        try:
            result = _check_array(ex.extract(clip), ex)
        except ClipError as exc:
            result = exc
        yield ex.feature_name, result


def extract_clip_features_partial(path: str | os.PathLike, metadatas: Iterable[dict[str, Any]], *,
                                  transcript: str | None = None, device: Any = "cpu",
                                  base_dir: str | os.PathLike | None = None
                                  ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Re-extract one clip, tolerating missing modalities (for prediction of one clip).

    Returns ``(features, missing)``: ``{feature_name: array}`` for the features that could be
    extracted (keys as in :func:`extract_clip_features`), and ``{feature_name: reason}`` for the
    ones the clip lacks (:class:`~semimer.extract.registry.MissingModality`: ``no video stream``
    for an audio file, ``no audio stream``, ``no face detected in any of N sampled frames``,
    ``zero-length audio``, ``no transcript ...`` when neither ``transcript`` nor an ASR model is
    available). Every feature of ``metadatas`` is in exactly one of the two dicts.

    A damaged file (``corrupt file: ...``, a corrupt stream, file not found) or an extractor
    output of the wrong shape raises ValueError ``"<path>: cannot extract feature <name>: <reason>"``.
    Extractors and the Whisper model are built once per process (as in extract_clip_features).
    """
    metadatas = list(metadatas)
    clip = _clip_for(path, metadatas, transcript, device, base_dir)
    features: dict[str, np.ndarray] = {}
    missing: dict[str, str] = {}
    try:
        for feat, result in _each_feature(clip, metadatas, device, base_dir):
            if isinstance(result, MissingModality):
                missing[feat] = str(result)
            elif isinstance(result, ClipError):
                raise ValueError(f"{path}: cannot extract feature {feat}: {result}")
            else:
                features[feat] = result
    finally:
        clip.release()
    return features, missing


def extract_clip_features(video_path: str | os.PathLike, metadatas: Iterable[dict[str, Any]], *,
                          transcript: str | None = None, device: Any = "cpu",
                          base_dir: str | os.PathLike | None = None,
                          on_error: str = "raise") -> dict[str, np.ndarray]:
    """Re-extract one clip for the features described by ``metadatas`` (``extractor.json`` dicts).

    Returns ``{feature_name: array}``. Extractors (and a Whisper model named in a text feature's
    ``text_source``) are built once per process and reused. Text features use ``transcript`` when
    given, else ASR from the metadata's ``text_source.asr_model``. On a clip problem (no audio
    stream, no face, corrupt file...), ``on_error="raise"`` raises ValueError
    ``"<path>: cannot extract feature <name>: <reason>"`` at the first one; ``"skip"`` leaves that
    feature out of the result. To get the missing modalities' reasons while a damaged file still
    raises, use :func:`extract_clip_features_partial`.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError("on_error must be 'raise' or 'skip'")
    metadatas = list(metadatas)
    clip = _clip_for(video_path, metadatas, transcript, device, base_dir)
    result: dict[str, np.ndarray] = {}
    try:
        for feat, arr in _each_feature(clip, metadatas, device, base_dir):
            if isinstance(arr, ClipError):
                if on_error == "raise":
                    raise ValueError(f"{video_path}: cannot extract feature {feat}: {arr}")
            else:
                result[feat] = arr
    finally:
        clip.release()
    return result


def _resolve(path: str, base_dir: str | os.PathLike | None) -> Path:
    p = Path(path)
    if not p.exists() and base_dir is not None and (Path(base_dir) / p).exists():
        return Path(base_dir) / p
    return p
