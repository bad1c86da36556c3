"""Face crops per frame: OpenCV's Haar cascade (weights shipped inside opencv-python-headless<5),
largest face per frame.

Fallbacks, counted and reported, never silent:

* a frame where no face is found takes the box of the nearest frame (in time) that has one;
* a clip where no frame has a face: :attr:`FaceTrack.centre_crop` is true. The visual
  extractors then give **no** feature by default (``no_face=skip``, see
  :mod:`semimer.extract.visual`); with ``no_face=centre`` they encode the **centre crop** the
  track holds: a square of side ``CENTRE_CROP_FRACTION * min(H, W)`` centred horizontally, its
  centre at 40 % of the height (talking heads sit a little above the middle of the picture).

Boxes are made square (the shorter side grown) and enlarged by ``margin`` on each side, then
clipped to the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CENTRE_CROP_FRACTION = 0.6
DETECT_MAX_SIDE = 512  # frames are downscaled to this before detection (speed); boxes scaled back

_CASCADES: dict[str, object] = {}


def haar_cascade(name: str = "haarcascade_frontalface_default.xml"):
    """The cascade bundled with OpenCV (loaded once per process)."""
    if name not in _CASCADES:
        import cv2

        if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
            raise ImportError(f"OpenCV {cv2.__version__} has no Haar cascades (OpenCV 5 dropped them); "
                              f"install opencv-python-headless<5 (pip install 'semimer[extract]')")
        path = cv2.data.haarcascades + name
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise FileNotFoundError(f"cannot load Haar cascade {path}; reinstall opencv-python-headless<5")
        _CASCADES[name] = cascade
    return _CASCADES[name]


def detect_largest_face(rgb: np.ndarray, min_size_fraction: float = 0.1) -> tuple[int, int, int, int] | None:
    """``(x, y, w, h)`` of the largest face in an RGB image, or None."""
    import cv2

    h, w = rgb.shape[:2]
    scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        gray = cv2.resize(gray, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    min_side = max(20, int(min(gray.shape) * min_size_fraction))
    boxes = haar_cascade().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
    if len(boxes) == 0:
        return None
    x, y, bw, bh = max(boxes, key=lambda b: int(b[2]) * int(b[3]))
    return tuple(int(round(v / scale)) for v in (x, y, bw, bh))  # type: ignore[return-value]


def centre_box(h: int, w: int) -> tuple[int, int, int, int]:
    """The documented fallback box (see module docstring)."""
    side = int(CENTRE_CROP_FRACTION * min(h, w))
    cx, cy = w / 2, 0.4 * h
    x = int(np.clip(cx - side / 2, 0, w - side))
    y = int(np.clip(cy - side / 2, 0, h - side))
    return x, y, side, side


def crop_square(rgb: np.ndarray, box: tuple[int, int, int, int], margin: float = 0.1) -> np.ndarray:
    """Square crop around ``box`` enlarged by ``margin`` of its side on each side, clipped."""
    h, w = rgb.shape[:2]
    x, y, bw, bh = box
    side = max(bw, bh) * (1 + 2 * margin)
    cx, cy = x + bw / 2, y + bh / 2
    x0, y0 = int(max(0, round(cx - side / 2))), int(max(0, round(cy - side / 2)))
    x1, y1 = int(min(w, round(cx + side / 2))), int(min(h, round(cy + side / 2)))
    return rgb[y0:y1, x0:x1]


@dataclass
class FaceTrack:
    """Face crops for the sampled frames of one clip."""

    crops: list[np.ndarray]
    boxes: list[tuple[int, int, int, int]]
    detected: np.ndarray  # bool per frame: a face was found in that frame itself
    notes: list[str] = field(default_factory=list)

    @property
    def n_fallback(self) -> int:
        return int((~self.detected).sum())

    @property
    def centre_crop(self) -> bool:
        return bool(len(self.detected)) and not self.detected.any()


def face_track(frames: list[np.ndarray], margin: float = 0.1) -> FaceTrack:
    """Largest face per frame with the fallbacks of the module docstring."""
    found = [detect_largest_face(f) for f in frames]
    detected = np.array([b is not None for b in found], dtype=bool)
    if not detected.any():
        h, w = frames[0].shape[:2]
        boxes = [centre_box(h, w)] * len(frames)
        notes = [f"no face detected in any of {len(frames)} frames: centre crop used"]
    else:
        hits = np.flatnonzero(detected)
        boxes = [b if b is not None else found[int(hits[np.abs(hits - i).argmin()])] for i, b in enumerate(found)]
        miss = int((~detected).sum())
        notes = [f"no face in {miss}/{len(frames)} frames: nearest detected box used"] if miss else []
    crops = [crop_square(f, b, margin) for f, b in zip(frames, boxes)]
    return FaceTrack(crops=crops, boxes=list(boxes), detected=detected, notes=notes)
