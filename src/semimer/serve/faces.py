"""A few face crops of an uploaded clip, for the page: what the run's visual extractor looks at.

Frames are sampled at the extractor's rate and cropped as in :mod:`semimer.extract.faces` (largest
face, nearest detected box for a frame without one, the centre crop when no frame has a face: each
crop says whether its own frame had a face). Display only: the prediction never uses them.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from semimer.utils import log

SIDE = 112  # pixels of a thumbnail


def face_crops(path: Path, features: Mapping[str, Mapping[str, Any]], n: int = 4) -> list[dict[str, Any]]:
    """Up to ``n`` crops, evenly spaced in time, as ``{"time": s, "detected": bool, "src": JPEG
    data URL}``; empty when the run has no face-based visual feature or the clip has no video."""
    import cv2

    from semimer.extract.decode import decode_frames
    from semimer.extract.faces import face_track
    from semimer.extract.registry import ClipError

    meta = next((f["extractor"] for f in features.values()
                 if isinstance(f.get("extractor"), dict) and "faces" in f["extractor"]), None)
    if meta is None:
        return []
    fps = float(meta.get("frame_rate") or meta.get("options", {}).get("fps", 2.0))
    try:
        frames, times = decode_frames(path, fps)
    except ClipError:  # no video stream (an audio file), or no decodable frame
        return []
    picks = sorted(set(np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int).tolist()))
    track = face_track([frames[i] for i in picks], float(meta["faces"].get("margin", 0.1)))
    out = []
    for i, crop, detected in zip(picks, track.crops, track.detected):
        small = cv2.resize(crop, (SIDE, SIDE), interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
        if not ok:
            log.warning("could not encode a face crop of %s as JPEG", path.name)
            continue
        out.append({"time": round(float(times[i]), 2), "detected": bool(detected),
                    "src": "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode("ascii")})
    return out
