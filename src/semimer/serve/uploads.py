"""An uploaded file on disk, safely: a size limit, a file name of our own, the decoder's verdict.

The client's file name is a label only. :func:`clip_name` makes a clip name of it (no path
survives) and :func:`media_suffix` takes its extension, which must be one of the extensions
extraction takes (:data:`~semimer.extract.decode.MEDIA_EXTENSIONS`); the bytes go to
``<a temporary folder of the server>/upload<suffix>`` (:func:`save`). :func:`probe` then opens the
file with PyAV, the decoder prediction uses, and refuses what it cannot read, what has neither an
audio nor a video stream, and clips longer than the server takes.

Refusals are :class:`ApiError` (an HTTP 4xx with a message that says what to send instead):
413 too large, 415 not a media type the server takes, 422 empty, unreadable or too long.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, BinaryIO

from starlette.exceptions import HTTPException

from semimer.extract.decode import AUDIO_EXTENSIONS, MEDIA_EXTENSIONS, VIDEO_EXTENSIONS, probe_streams

CHUNK = 1 << 20  # bytes copied at a time
MAX_NAME = 80  # characters of a clip name


class ApiError(HTTPException):
    """An error answer: HTTP ``status_code``, a ``detail`` that says what went wrong and what to
    send instead, and ``extra`` fields for the JSON answer (e.g. ``missing``: modality -> reason)."""

    def __init__(self, status_code: int, detail: str, **extra: Any):
        super().__init__(status_code=status_code, detail=detail)
        self.extra = extra


def _base_name(filename: str | None) -> str:
    """The last component of a client's path, whichever separator it used."""
    return re.split(r"[\\/]", filename or "")[-1]


def clip_name(filename: str | None) -> str:
    """A clip name from the client's file name: its last path component without the extension,
    every character other than a letter, digit, ``_``, ``-`` or ``.`` replaced by ``_``, no
    leading or trailing dots, at most :data:`MAX_NAME` characters; ``upload`` if nothing is left."""
    base = _base_name(filename)
    stem = base[: -len(Path(base).suffix)] if Path(base).suffix else base
    stem = re.sub(r"[^\w.-]+", "_", stem).strip("._")[:MAX_NAME]
    return stem or "upload"


def media_suffix(filename: str | None) -> str:
    """The lower-cased extension of the client's file name; :class:`ApiError` (415) unless it is
    one of :data:`~semimer.extract.decode.MEDIA_EXTENSIONS`."""
    suffix = Path(_base_name(filename)).suffix.lower()
    if suffix not in MEDIA_EXTENSIONS:
        raise ApiError(415, f"file type {suffix or '(no extension)'} is not accepted: upload a video "
                           f"({', '.join(VIDEO_EXTENSIONS)}) or an audio file ({', '.join(AUDIO_EXTENSIONS)})")
    return suffix


def too_large(limit_bytes: int) -> ApiError:
    return ApiError(413, f"the upload is larger than this server's limit of {limit_bytes / 2**20:g} MB "
                        f"(semimer serve --max-upload-mb): send a shorter or smaller clip")


def save(src: BinaryIO, folder: Path, suffix: str, limit_bytes: int) -> Path:
    """Copy ``src`` to ``folder/upload<suffix>`` chunk by chunk: :class:`ApiError` 413 as soon as it
    passes ``limit_bytes``, 422 when it is empty."""
    path = folder / f"upload{suffix}"
    size = 0
    with open(path, "wb") as out:
        while chunk := src.read(CHUNK):
            size += len(chunk)
            if size > limit_bytes:
                raise too_large(limit_bytes)
            out.write(chunk)
    if size == 0:
        raise ApiError(422, "the uploaded file is empty: choose a video or audio file with content")
    return path


def probe(path: Path, label: str, max_seconds: float) -> dict[str, Any]:
    """``{"audio": bool, "video": bool, "seconds": float | None}`` from the container's header
    (nothing decoded; an audio file's cover art is not video). :class:`ApiError` 422 when PyAV
    cannot open the file or it lasts longer than ``max_seconds``, 415 when it has neither an audio
    nor a video stream. ``label`` names the upload in messages (the server's path never appears)."""
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ApiError(422, f"{label}: the decoder cannot read this file ({reason}); it is corrupt, truncated or "
                            f"not really a {path.suffix} file") from None
    with container:
        seconds = container.duration / av.time_base if container.duration else None
    audio, video = probe_streams(path)
    if not (audio or video):
        raise ApiError(415, f"{label}: the file has no audio or video stream; upload a video or audio clip")
    if seconds is not None and seconds > max_seconds:
        raise ApiError(422, f"{label}: the clip lasts {seconds:.1f} s; this server takes clips up to {max_seconds:g} s "
                            f"(semimer serve --max-seconds): cut it")
    return {"audio": audio, "video": video, "seconds": None if seconds is None else round(seconds, 3)}
