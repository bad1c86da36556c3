"""benchmarks/real_text.py's scoring helpers (the benchmark itself needs ../shared data and encoders:
it is run by hand, see README "Real labelled text")."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rt():
    spec = importlib.util.spec_from_file_location("real_text_bench", ROOT / "benchmarks" / "real_text.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _write(path, names, probs, classes):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "discrete", *[f"prob_{c}" for c in classes]])
        for n, p in zip(names, probs):
            w.writerow([n, classes[int(np.argmax(p))], *[f"{x:.6f}" for x in p]])


def test_score_average_is_the_argmax_of_the_mean_probabilities(rt, tmp_path):
    classes = ["neutral", "angry", "happy"]
    names = [f"c{i}" for i in range(6)]
    a = np.array([[.6, .3, .1], [.2, .7, .1], [.1, .1, .8], [.5, .4, .1], [.3, .3, .4], [.9, .05, .05]])
    b = np.array([[.1, .8, .1], [.2, .7, .1], [.1, .1, .8], [.1, .8, .1], [.3, .6, .1], [.2, .1, .7]])
    # worked out by hand: mean rows -> neutral .35/angry .55 -> angry; angry; happy; angry .6; angry .45; neutral .55
    want = ["angry", "angry", "happy", "angry", "angry", "neutral"]
    _write(tmp_path / "a.csv", names, a, classes)
    _write(tmp_path / "b.csv", names[::-1], b[::-1], classes)  # row order does not matter
    test = dict(zip(names, ["angry", "neutral", "happy", "angry", "happy", "neutral"]))
    got = rt.score_average([tmp_path / "a.csv", tmp_path / "b.csv"], test)
    assert got["waf"] == pytest.approx(f1_score([test[n] for n in names], want, average="weighted"))
    assert got["n"] == 6
    _write(tmp_path / "c.csv", names[:4], a[:4], classes)
    with pytest.raises(ValueError, match="without prediction"):
        rt.score_average([tmp_path / "a.csv", tmp_path / "c.csv"], test)
    _write(tmp_path / "d.csv", names, a, ["neutral", "angry", "sad"])
    with pytest.raises(ValueError, match="columns"):
        rt.score_average([tmp_path / "a.csv", tmp_path / "d.csv"], test)


def test_settings_key_follows_the_resolved_configuration(rt, monkeypatch, tmp_path):
    """A run is keyed by what the command resolves, so a changed default makes a finished run stale."""
    import semimer.config as config

    base = rt.settings_key("recipe", ["data.group_column=dialogue"])
    assert base == rt.settings_key("recipe", ["data.group_column=dialogue"])
    assert base != rt.settings_key("train", ["data.group_column=dialogue"])  # another preset
    assert base != rt.settings_key("recipe", ["data.group_column=dialogue", "self_train.rounds=1"])
    # the same command line after the recipe's packaged preset changed a default: another key
    changed = tmp_path / "recipe.yaml"
    changed.write_text(config.preset_path("recipe").read_text() + "recipe:\n  vote_grid_step: 0.05\n")
    real = config.preset_path
    monkeypatch.setattr(config, "preset_path", lambda name: changed if name == "recipe" else real(name))
    assert rt.settings_key("recipe", ["data.group_column=dialogue"]) != base
