"""Extractor specs, options and the registry."""

from __future__ import annotations

import pytest

from semimer.extract import build_extractor, list_extractors, parse_spec


def test_parse_spec():
    assert parse_spec("hf-speech:model=ckpt/hubert,level=frame") == ("hf-speech", {"model": "ckpt/hubert", "level": "frame"})
    assert parse_spec("logmel") == ("logmel", {})
    with pytest.raises(ValueError, match="key=value"):
        parse_spec("logmel:frame")


def test_build_errors_and_options():
    with pytest.raises(ValueError, match="unknown extractor"):
        build_extractor("nope")
    with pytest.raises(ValueError, match="no option"):
        build_extractor("logmel:bands=3")
    with pytest.raises(ValueError, match="no level"):
        build_extractor("e5:level=frame")
    with pytest.raises(ValueError, match="not a valid int"):
        build_extractor("logmel:n_mels=many")
    ex = build_extractor("face-hog:feature=my-hog", fps=5.0)  # runner default fills fps
    assert ex.feature_name == "my-hog" and ex.opts["fps"] == 5.0 and ex.config()["feature"] == "my-hog"
    assert build_extractor("face-hog:fps=1", fps=5.0).opts["fps"] == 1.0  # the spec wins


def test_list_extractors():
    assert {"logmel", "hf-speech", "egemaps"} <= set(list_extractors("audio"))
    assert {"hf-text", "minilm", "e5", "use"} <= set(list_extractors("text"))
    assert {"hf-vision", "fer-xception", "face-hog"} <= set(list_extractors("video"))
