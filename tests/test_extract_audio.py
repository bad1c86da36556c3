"""Audio decoding (PyAV resampling to 16 kHz mono) and the numpy log-mel statistics extractor."""

from __future__ import annotations

import numpy as np
import pytest
from conftest_media import make_clip

from semimer.extract import ClipError, build_extractor
from semimer.extract.audio import deltas, log_mel, mel_filterbank
from semimer.extract.clip import Clip
from semimer.extract.decode import decode_audio


def test_decode_resamples_to_16k_mono(tmp_path):
    path = make_clip(tmp_path / "t.flv", seconds=1.0, tone=500.0)  # flv: mp3 at 22.05 kHz
    audio = decode_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 16000) < 1600  # 1 s (codec padding aside)
    spectrum = np.abs(np.fft.rfft(audio[2000:14000]))
    assert abs(np.argmax(spectrum) * 16000 / 12000 - 500) < 5  # the tone survives resampling
    with pytest.raises(ClipError, match="no audio stream"):
        decode_audio(make_clip(tmp_path / "s.mkv", audio=False))


def test_mel_filterbank_and_deltas():
    fb = mel_filterbank(64)
    assert fb.shape == (64, 257) and (fb >= 0).all() and (fb.sum(1) > 0).all()
    ramp = np.arange(20, dtype=np.float32)[:, None] * np.array([[1.0, -2.0]], np.float32)
    d = deltas(ramp)
    np.testing.assert_allclose(d[2:-2], np.tile([[1.0, -2.0]], (16, 1)), atol=1e-6)  # slope of a ramp


def test_logmel_extractor_levels():
    sr = 16000
    t = np.arange(sr) / sr
    low, high = (np.sin(2 * np.pi * f * t).astype(np.float32) for f in (300, 3000))
    lm = log_mel(low)
    assert lm.shape == (98, 64)
    assert np.argmax(lm.mean(0)) < np.argmax(log_mel(high).mean(0))  # higher tone, higher band

    class FakeClip(Clip):
        def __init__(self, audio):
            super().__init__("x", "x.mp4")
            self._cache[("audio", 16000)] = audio

    utt, fra = build_extractor("logmel"), build_extractor("logmel:level=frame,n_mels=32")
    assert utt.dim == 256 and fra.dim == 64 and fra.feature_name == "logmel32-FRA"
    u = utt.extract(FakeClip(low))
    np.testing.assert_allclose(u[:64], lm.mean(0), rtol=1e-5)
    np.testing.assert_allclose(u[64:128], lm.std(0), rtol=1e-4)
    np.testing.assert_array_equal(u, utt.extract(FakeClip(low)))  # deterministic
    assert fra.extract(FakeClip(low[:100])).shape == (1, 64)  # shorter than one window: one frame
