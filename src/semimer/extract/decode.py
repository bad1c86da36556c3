"""Decode clips with PyAV (FFmpeg bundled in the wheel): audio as 16 kHz mono float32, video as
RGB frames sampled at a fixed rate. Problems become :class:`ClipError` with a short reason that
goes into ``failures.csv``: a damaged file (``corrupt file: ...``) is a plain ClipError; a stream
that is absent or empty (``no audio stream``, ``no video stream``, ``zero-length audio``) is a
:class:`MissingModality`.

Clips may be video files (:data:`VIDEO_EXTENSIONS`) or audio files (:data:`AUDIO_EXTENSIONS`).
The picture embedded in an audio file (cover art: a video stream with the ``attached_pic``
disposition) is not video.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from semimer.extract.registry import ClipError, MissingModality

SAMPLE_RATE = 16_000
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".flv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".3gp")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".aac")
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS + AUDIO_EXTENSIONS


def is_audio_file(path: str | os.PathLike) -> bool:
    """An audio file by its extension (:data:`AUDIO_EXTENSIONS`): no video is expected in it."""
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


def _open(path: str | os.PathLike):
    import av

    if not Path(path).is_file():
        raise ClipError(f"file not found: {path}")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise ClipError(f"corrupt file: {type(exc).__name__}: {exc}") from None


def _video_streams(container) -> list:
    """Video streams that are moving pictures (not an audio file's cover art)."""
    import av

    pic = getattr(getattr(av.stream, "Disposition", None), "attached_pic", None)
    out = []
    for s in container.streams.video:
        disp = getattr(s, "disposition", 0)
        if pic is not None and disp is not None and bool(disp & pic):
            continue
        out.append(s)
    return out


def probe_streams(path: str | os.PathLike) -> tuple[bool, bool]:
    """``(has_audio, has_video)`` from the container header (nothing decoded). Raises
    :class:`ClipError` for a missing or unreadable file."""
    with _open(path) as container:
        return bool(container.streams.audio), bool(_video_streams(container))


def decode_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The first audio stream, down-mixed to mono and resampled (PyAV ``AudioResampler``).

    Returns a 1-D float32 array in [-1, 1]. Raises :class:`ClipError` when the file has no audio
    stream, cannot be decoded, or holds no samples.
    """
    import av

    with _open(path) as container:
        if not container.streams.audio:
            raise MissingModality("no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                frame.pts = None  # let the resampler run on sample counts, not (possibly broken) pts
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as exc:
            if not chunks:
                raise ClipError(f"corrupt audio stream ({exc})") from None
    audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if audio.size == 0:
        raise MissingModality("zero-length audio")
    return audio


def decode_frames(path: str | os.PathLike, fps: float) -> tuple[list[np.ndarray], np.ndarray]:
    """RGB ``uint8`` frames (H, W, 3) sampled every ``1 / fps`` seconds, and their times (s).

    A frame is taken for each sampling time ``0, 1/fps, 2/fps, ...``: the first decoded frame at or
    after it. A clip shorter than one period gives its first frame.
    """
    import av

    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    frames: list[np.ndarray] = []
    times: list[float] = []
    with _open(path) as container:
        streams = _video_streams(container)
        if not streams:
            raise MissingModality("no video stream")
        stream = streams[0]
        stream.thread_type = "AUTO"
        period = 1.0 / fps
        next_t = 0.0
        first_t = None
        try:
            for i, frame in enumerate(container.decode(stream)):
                t = float(frame.time) if frame.time is not None else i / float(stream.average_rate or 25)
                first_t = t if first_t is None else first_t
                t -= first_t
                if t + 1e-6 >= next_t:
                    frames.append(frame.to_ndarray(format="rgb24"))
                    times.append(t)
                    next_t = (np.floor(t / period + 1e-6) + 1) * period
        except av.error.FFmpegError as exc:
            if not frames:
                raise ClipError(f"corrupt video stream ({exc})") from None
    if not frames:
        raise MissingModality("zero-length video (no decodable frame)")
    return frames, np.asarray(times, dtype=np.float64)
