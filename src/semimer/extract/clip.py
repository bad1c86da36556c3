"""One clip as the extractors see it: decoded lazily, each modality at most once.

Audio, sampled frames (per fps) and face tracks are cached on the object, so five visual
extractors at the same fps decode and detect faces once. A decoding problem is cached too and
re-raised as the same :class:`ClipError` for every feature that needs it.

The container's streams are probed once (header only) before anything is decoded: an audio file
gives every visual extractor ``no video stream`` (a :class:`MissingModality`) at once, without
decoding or face detection; a silent video gives every audio feature ``no audio stream``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from semimer.extract.decode import SAMPLE_RATE, decode_audio, decode_frames, probe_streams
from semimer.extract.faces import FaceTrack, face_track
from semimer.extract.registry import ClipError, MissingModality


class Clip:
    """A named video or audio file plus lazily decoded audio / frames / faces / transcript."""

    def __init__(self, name: str, path: str | Path, transcript: str | None = None,
                 transcriber: Callable[[np.ndarray], str] | None = None):
        self.name = name
        self.path = Path(path)
        self._transcript = transcript
        self._transcriber = transcriber
        self._cache: dict[object, object] = {}
        #: notes (e.g. face fallbacks) per feature, collected by the runner into failures.csv
        self.notes: list[str] = []

    def _cached(self, key: object, fn: Callable[[], object]):
        if key not in self._cache:
            try:
                self._cache[key] = fn()
            except ClipError as exc:
                self._cache[key] = exc
        value = self._cache[key]
        if isinstance(value, ClipError):
            raise value
        return value

    def streams(self) -> tuple[bool, bool]:
        """``(has_audio, has_video)`` from the header (raises ClipError: file not found, corrupt)."""
        return self._cached("streams", lambda: probe_streams(self.path))

    def has_stream(self, kind: str) -> bool:
        """Whether the file has an ``audio`` or ``video`` stream (raises ClipError: corrupt file)."""
        has_audio, has_video = self.streams()
        return has_audio if kind == "audio" else has_video

    def _need(self, kind: str, key: object) -> None:
        """Raise MissingModality when the file has no ``kind`` stream (unless ``key`` is cached)."""
        if key not in self._cache and not self.has_stream(kind):
            raise MissingModality(f"no {kind} stream")

    def audio(self, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """Mono float32 waveform (raises ClipError: corrupt; MissingModality: no audio stream,
        zero-length)."""
        self._need("audio", ("audio", sample_rate))
        return self._cached(("audio", sample_rate), lambda: decode_audio(self.path, sample_rate))

    def frames(self, fps: float) -> list[np.ndarray]:
        """RGB frames sampled at ``fps`` (raises MissingModality: no video stream)."""
        self._need("video", ("frames", float(fps)))
        return self._cached(("frames", float(fps)), lambda: decode_frames(self.path, fps)[0])

    def faces(self, fps: float, margin: float = 0.1) -> FaceTrack:
        """Face crops of the frames sampled at ``fps`` (see :mod:`semimer.extract.faces`).

        Only the crops are kept (full frames of a group of HD clips would not fit in memory)."""
        self._need("video", ("faces", float(fps), margin))

        def track() -> FaceTrack:
            cached = self._cache.get(("frames", float(fps)))
            frames = cached if isinstance(cached, list) else decode_frames(self.path, fps)[0]
            return face_track(frames, margin)

        return self._cached(("faces", float(fps), margin), track)

    def transcript(self) -> str:
        """The given transcript, else ASR on the audio, else ClipError."""
        if self._transcript is not None:
            return self._transcript
        if self._transcriber is None:
            raise MissingModality("no transcript for this clip (not in --transcripts and no --asr-model)")
        return self._cached("transcript", lambda: self._transcriber(self.audio()))

    def release(self) -> None:
        """Drop decoded data (the runner calls it when all features of the clip are done)."""
        self._cache.clear()
