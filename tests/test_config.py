"""Tests of semimer.config: resolution order (defaults <- preset <- YAML <- key=value), packaged
presets, unknown keys everywhere (dict-valued settings included) and per-class thresholds."""

from __future__ import annotations

import subprocess
import sys

import pytest

from semimer.config import RunConfig, class_thresholds, load_config, preset_names, preset_settings, to_yaml
from semimer.config_checks import validate


def _yaml(tmp_path, text, name="my.yaml"):
    f = tmp_path / name
    f.write_text(text, encoding="utf-8")
    return f


# --------------------------------------------------------------------------- resolution order
def test_yaml_beats_the_preset_and_key_value_beats_the_yaml(tmp_path):
    assert load_config(preset="recipe").train.oversample is True
    f = _yaml(tmp_path, "train:\n  oversample: false\n")
    cfg = load_config(f, preset="recipe")
    assert cfg.train.oversample is False  # the user's YAML beats the preset
    assert (cfg.model.name, cfg.pretrain.enabled) == ("mrccl", True)  # the rest of the preset stays
    assert load_config(f, ["train.oversample=true"], preset="recipe").train.oversample is True
    # no preset: the dataclass defaults
    assert (load_config().model.name, load_config().train.oversample) == ("attention", False)


def test_load_config_stays_backwards_compatible(tmp_path):
    f = _yaml(tmp_path, "train:\n  epochs: 3\n")
    cfg = load_config(f, ["model.hidden=32"])  # positional (yaml, overrides) as before
    assert (cfg.train.epochs, cfg.model.hidden, cfg.model.name) == (3, 32, "attention")
    assert load_config(_yaml(tmp_path, to_yaml(cfg), "saved.yaml")) == cfg  # a run's config.yaml reloads


def test_packaged_presets():
    assert {"recipe", "train"} <= set(preset_names())
    assert preset_settings("recipe") == ["model.name=mrccl", "pretrain.enabled=true", "train.oversample=true"]
    assert preset_settings("train") == []
    assert load_config(preset="train") == load_config()
    with pytest.raises(ValueError, match="unknown preset 'nope'.*recipe"):
        load_config(preset="nope")


def test_config_does_not_import_the_models_layer():
    code = "import sys, semimer.config; sys.exit('semimer.models' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


# --------------------------------------------------------------------------- unknown keys
@pytest.mark.parametrize("text, key", [("bogus: 1\n", "bogus"), ("train:\n  nope: 1\n", "train.nope"),
                                       ("noise:\n  audio:\n    steps: 5\n", "noise.audio.steps")])
def test_unknown_yaml_key_names_the_key_and_the_file(tmp_path, text, key):
    f = _yaml(tmp_path, text)
    with pytest.raises(ValueError) as err:
        load_config(f)
    assert f"'{key}'" in str(err.value) and str(f) in str(err.value)


def test_bad_yaml_files_name_the_file(tmp_path):
    for text in ("train: [1\n", "- a\n- b\n", "train:\n  epochs: many\n"):
        f = _yaml(tmp_path, text)
        with pytest.raises(ValueError, match=str(f)):
            load_config(f)


def test_thresholds_reject_unknown_and_missing_classes(tmp_path):
    with pytest.raises(ValueError, match="space after each colon"):  # YAML reads {neutral:0.5} as one key
        load_config(None, ["self_train.thresholds={neutral:0.5}"])
    with pytest.raises(ValueError, match="missing: \\['angry'"):  # a partial dict no longer keeps 0.99
        load_config(None, ["self_train.thresholds={neutral: 0.5}"])
    every = ", ".join(f"{c}: 0.5" for c in RunConfig().data.classes)
    with pytest.raises(ValueError, match="unknown: \\['calm'\\]"):
        load_config(None, [f"self_train.thresholds={{{every}, calm: 0.5}}"])
    with pytest.raises(ValueError, match="must be in \\[0, 1\\]"):
        load_config(None, [f"self_train.thresholds={{{every.replace('0.5', '1.5', 1)}}}"])
    with pytest.raises(ValueError, match="'self_train.thresholds.neutral'.*my.yaml|my.yaml.*self_train.thresholds"):
        load_config(_yaml(tmp_path, "self_train:\n  thresholds:\n    neutral: high\n"))


def test_class_thresholds_follow_the_classes():
    mer = load_config()
    assert class_thresholds(mer) == [0.99, 0.99, 0.99, 0.99, 0.85, 0.85]
    # another corpus's classes: the defaults still resolve (published by name, else default_threshold)
    other = load_config(None, ["data.classes=[Happy, calm, tense]"])
    assert class_thresholds(other) == [0.99, 0.95, 0.95]
    other = load_config(None, ["data.classes=[calm, tense]", "self_train.default_threshold=0.9"])
    assert class_thresholds(other) == [0.9, 0.9]
    given = load_config(None, ["data.classes=[calm, tense]", "self_train.thresholds={tense: 0.7, calm: 0.6}"])
    assert class_thresholds(given) == [0.6, 0.7]  # in data.classes order
    with pytest.raises(ValueError, match="default_threshold"):
        load_config(None, ["self_train.default_threshold=2"])


def test_vote_weights_are_checked():
    with pytest.raises(ValueError, match="unknown heads \\['speech'\\]"):
        load_config(None, ["model.vote_weights.speech=1.0"])
    with pytest.raises(ValueError, match=">= 0"):
        load_config(None, ["model.vote_weights.audio=-0.5"])
    assert load_config(None, ["model.vote_weights.audio=0"]).model.vote_weights["audio"] == 0.0


def test_member_overrides_are_checked():
    with pytest.raises(ValueError, match="recipe.member_overrides.attention.*'train.nope'"):
        load_config(None, ["recipe.member_overrides.attention=[train.nope=1]"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["recipe.member_overrides.attention=[oversample]"])
    # model names: only against a list the caller passes (config must not import semimer.models)
    cfg = load_config(None, ["recipe.member_overrides.bert=[train.epochs=1]"])
    with pytest.raises(ValueError, match="recipe.member_overrides.*'bert'.*available: attention, mrccl"):
        validate(cfg, known_models=["attention", "mrccl"])
    with pytest.raises(ValueError, match="model.name.*'bert'"):
        load_config(None, ["model.name=bert"], known_models=["attention", "mrccl"])
    validate(load_config(preset="recipe"), known_models=["attention", "mrccl"])


def test_the_vote_is_off_by_default_and_on_in_the_published_ablation_rows():
    """Defaults follow the honest benchmarks (README "Results"): the recipe submits MR-CCL alone; the
    ablation's "full recipe" rows keep the published vote with attention and one self-training round."""
    from semimer.semi.ablation import VARIANT_SETS

    assert load_config(None, [], preset="recipe").recipe.vote_members == ["mrccl"]
    full = {v.name: v for v in VARIANT_SETS["recipe"]}
    for name in ("full recipe", "w/o pre-training", "w/o pseudo-labels", "w/o oversampling"):
        assert "recipe.vote_members=[mrccl,attention]" in full[name].overrides, name
    assert "self_train.rounds=1" in full["full recipe"].overrides
    assert full["w/o voting"].read_from == ("full recipe", "final_round")
