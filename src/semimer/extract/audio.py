"""Audio extractors (16 kHz mono input).

* ``logmel``: the offline default, pure NumPy, no checkpoint. Log-mel spectrogram (25 ms Hann
  window, 10 ms hop, 512-point FFT, ``n_mels`` HTK-mel bands from 20 Hz to 8 kHz, ``log(mel+1e-6)``)
  and its deltas (regression over +-2 frames). Utterance level: ``[mean, std]`` of the log-mels and
  of the deltas, ``4 * n_mels`` values (256 for the default 64 bands). Frame level (100 Hz):
  ``[log-mel, delta]`` per frame, ``2 * n_mels``.
* ``hf-speech``: a local HuBERT / wav2vec 2.0 / WavLM checkpoint folder; sum of the last 4 hidden
  layers; mean over time at utterance level; long audio runs in chunks of ``chunk_seconds``.
* ``egemaps``: openSMILE eGeMAPSv02 (88 functionals per clip, or 25 low-level descriptors per
  10 ms frame). Optional extra (research licence): ``pip install semimer[egemaps]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from semimer.extract.decode import SAMPLE_RATE
from semimer.extract.hf import load_model, load_processor, sum_last_layers, to_numpy
from semimer.extract.registry import ClipError, Extractor, checkpoint_slug, register_extractor
from semimer.utils import log

# --------------------------------------------------------------------------------------------
# log-mel statistics (offline default)


def mel_filterbank(n_mels: int, n_fft: int = 512, sr: int = SAMPLE_RATE,
                   fmin: float = 20.0, fmax: float = 8000.0) -> np.ndarray:
    """Triangular HTK-mel filters, ``(n_mels, n_fft // 2 + 1)``."""
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    bins = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (bins[None] - lo) / (mid - lo)
    down = (hi - bins[None]) / (hi - mid)
    return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


def log_mel(audio: np.ndarray, n_mels: int = 64, sr: int = SAMPLE_RATE) -> np.ndarray:
    """``(T, n_mels)`` log-mel spectrogram, 25 ms windows every 10 ms (T >= 1)."""
    win, hop, n_fft = int(0.025 * sr), int(0.010 * sr), 512
    if len(audio) < win:
        audio = np.pad(audio, (0, win - len(audio)))
    n = 1 + (len(audio) - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
    frames = audio[idx] * np.hanning(win).astype(np.float32)
    power = np.abs(np.fft.rfft(frames, n=n_fft, axis=1)) ** 2
    return np.log(power @ mel_filterbank(n_mels, n_fft, sr).T + 1e-6).astype(np.float32)


def deltas(feat: np.ndarray, width: int = 2) -> np.ndarray:
    """Regression deltas over ``+-width`` frames (edges repeated), same shape as ``feat``."""
    padded = np.pad(feat, ((width, width), (0, 0)), mode="edge")
    num = sum(k * (padded[width + k:len(feat) + width + k] - padded[width - k:len(feat) + width - k])
              for k in range(1, width + 1))
    return (num / (2 * sum(k * k for k in range(1, width + 1)))).astype(np.float32)


@register_extractor("logmel")
class LogMelStats(Extractor):
    """Log-mel + delta statistics (see module docstring); deterministic, no weights."""

    modality = "audio"
    levels = ("utt", "frame")
    options = {"n_mels": 64}

    @property
    def dim(self) -> int:
        return (4 if self.level == "utt" else 2) * self.opts["n_mels"]

    def base_name(self) -> str:
        return f"logmel{self.opts['n_mels']}"

    def describe(self) -> dict[str, Any]:
        return {"sample_rate": SAMPLE_RATE, "frame_rate": 100.0 if self.level == "frame" else None,
                "pooling": ("[mean, std] of log-mel and of its deltas" if self.level == "utt"
                            else "[log-mel, delta] per 10 ms frame"),
                "window": "25 ms hann, 10 ms hop, 512-point FFT, HTK mel 20-8000 Hz, log(x+1e-6)"}

    def extract(self, clip) -> np.ndarray:
        lm = log_mel(clip.audio(), self.opts["n_mels"])
        d = deltas(lm)
        if self.level == "frame":
            return np.concatenate([lm, d], axis=1)
        return np.concatenate([lm.mean(0), lm.std(0), d.mean(0), d.std(0)]).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Hugging Face speech encoders


@register_extractor("hf-speech")
class HFSpeech(Extractor):
    """Local HuBERT / wav2vec 2.0 / WavLM folder (model=DIR), sum of the last 4 hidden layers.

    ``layers`` sets how many last layers are summed; utterance level = mean over time; audio
    longer than ``chunk_seconds`` is encoded chunk by chunk and the frames concatenated.

    ``keep_rate < 1`` turns on progressive token pruning (:mod:`semimer.extract.pruned_speech`): from encoder
    layer ``prune_from_layer`` on, each layer keeps the top ``ceil(keep_rate * N)`` tokens by
    received attention. Utterance level then pools each of the last layers over its own kept
    tokens and sums them; frame level returns the last layers' sum at the finally kept frames
    (time order preserved)."""

    modality = "audio"
    levels = ("utt", "frame")
    options = {"model": "", "layers": 4, "chunk_seconds": 20.0, "keep_rate": 1.0, "prune_from_layer": 4}
    path_options = ("model",)

    def base_name(self) -> str:
        return f"hf-speech-{checkpoint_slug(self.opts['model'])}"

    def load(self) -> None:
        import torch

        self.model = load_model(self.opts["model"], "hf-speech", self.device)
        self.processor = load_processor(self.opts["model"], "feature")
        if self.processor is None:
            log.warning("hf-speech: %s has no preprocessor_config.json; feeding the raw waveform "
                        "(zero-mean/unit-variance normalisation skipped)", self.opts["model"])
        self._dim = int(self.model.config.hidden_size)
        self._torch = torch
        self.pruned = None
        if float(self.opts["keep_rate"]) < 1.0:
            from semimer.extract.pruned_speech import PrunedSpeechEncoder

            self.pruned = PrunedSpeechEncoder(self.model, keep_rate=float(self.opts["keep_rate"]),
                                              prune_from_layer=int(self.opts["prune_from_layer"]))

    @property
    def dim(self) -> int:
        self.ensure_loaded()
        return self._dim

    def describe(self) -> dict[str, Any]:
        return {"checkpoint": self.opts["model"], "model_type": self.model.config.model_type, "sample_rate": SAMPLE_RATE,
                "frame_rate": SAMPLE_RATE / float(np.prod(self.model.config.conv_stride)),
                "pooling": f"sum of last {self.opts['layers']} hidden layers"
                           + (", mean over time" if self.level == "utt" else " per frame"),
                "token_pruning": None if float(self.opts["keep_rate"]) >= 1.0 else
                {"keep_rate": float(self.opts["keep_rate"]), "prune_from_layer": int(self.opts["prune_from_layer"])}}

    def encode(self, audio: np.ndarray) -> np.ndarray:
        """``(T, D)`` summed hidden states for a waveform, chunk by chunk."""
        self.ensure_loaded()
        chunk = max(1, int(self.opts["chunk_seconds"] * SAMPLE_RATE))
        min_len = 400  # the conv feature encoder needs at least one receptive field (25 ms)
        outs = []
        for start in range(0, len(audio), chunk):
            piece = audio[start:start + chunk]
            if len(piece) < min_len:
                if outs:  # a short tail adds nothing meaningful
                    break
                piece = np.pad(piece, (0, min_len - len(piece)))
            if self.processor is not None:
                values = self.processor(piece, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_values
            else:
                values = self._torch.from_numpy(piece)[None]
            with self._torch.inference_mode():
                if self.pruned is not None:
                    outs.append(self._pruned_piece(values.to(self.device)))
                    continue
                out = self.model(values.to(self.device), output_hidden_states=True)
            outs.append(to_numpy(sum_last_layers(out.hidden_states, self.opts["layers"])[0]))
        if self.pruned is not None and self.level == "utt":
            # pooled per chunk, weighted by the chunk's frame count
            w = np.array([n for _, n in outs], dtype=np.float64)
            return (np.stack([e for e, _ in outs]) * (w / w.sum())[:, None]).sum(0).astype(np.float32)
        return np.concatenate(outs, axis=0)

    def _pruned_piece(self, values):
        from semimer.extract.pruned_speech import pooled_embedding

        out = self.pruned(values, output_hidden_states=True)
        k = int(self.opts["layers"])
        if self.level == "utt":
            emb = pooled_embedding(out, list(range(-k, 0)))[0]
            return to_numpy(emb), int(out.input_counts[0])
        keep = out.frame_index[0][out.mask[0]]  # finally kept frames, in time order
        total = 0
        for h, fi, m in zip(out.hidden_states[-k:], out.hidden_frame_index[-k:], out.hidden_masks[-k:]):
            pos = {int(f): j for j, f in enumerate(fi[0].tolist()) if m[0, j]}
            total = total + h[0, [pos[int(f)] for f in keep.tolist()]]
        return to_numpy(total)

    def extract(self, clip) -> np.ndarray:
        frames = self.encode(clip.audio())
        if self.pruned is not None and self.level == "utt":
            return frames
        return frames if self.level == "frame" else frames.mean(0)


# --------------------------------------------------------------------------------------------
# openSMILE eGeMAPS (optional)


@register_extractor("egemaps")
class EGeMAPS(Extractor):
    """openSMILE eGeMAPSv02: 88 functionals (utt) or 25 LLDs per 10 ms (frame)."""

    modality = "audio"
    levels = ("utt", "frame")

    def base_name(self) -> str:
        return "egemaps" if self.level == "utt" else "egemaps-lld"

    def load(self) -> None:
        try:
            import opensmile
        except ImportError as exc:
            raise ImportError(f"the egemaps extractor needs openSMILE ({exc}); install the optional extra: "
                              f"pip install semimer[egemaps]  (research licence, non-commercial)") from None
        level = opensmile.FeatureLevel.Functionals if self.level == "utt" else opensmile.FeatureLevel.LowLevelDescriptors
        self.smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=level)

    @property
    def dim(self) -> int:
        return 88 if self.level == "utt" else 25

    def describe(self) -> dict[str, Any]:
        return {"sample_rate": SAMPLE_RATE, "feature_set": "eGeMAPSv02",
                "frame_rate": 100.0 if self.level == "frame" else None}

    def extract(self, clip) -> np.ndarray:
        self.ensure_loaded()
        df = self.smile.process_signal(clip.audio(), SAMPLE_RATE)
        values = df.to_numpy(dtype=np.float32)
        if values.size == 0:
            raise ClipError("openSMILE returned no frames (audio too short)")
        return values[0] if self.level == "utt" else values
