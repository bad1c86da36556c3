"""Tests of the command line (semimer.cli): help, argument and data errors, exit codes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from semimer.cli import main


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "evaluate", "pack", "synth", "models", "demo"):
        assert command in out
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--data" in out and "--out" in out and "overrides" in out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage: semimer" in capsys.readouterr().out


def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "semimer", "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("semimer ")


def test_models_lists_the_baseline(capsys):
    assert main(["models"]) == 0
    assert "attention" in capsys.readouterr().out.split()


def test_flags_become_config_overrides(tmp_path):
    from semimer.cli import build_parser
    from semimer.commands._common import config_from_args

    args = build_parser().parse_args(["train", "--data", str(tmp_path), "--out", "r", "--seed", "7", "--video", "none",
                                      "--audio", "hubert-UTT", "train.epochs=5", "model.hidden=32"])
    cfg = config_from_args(args)
    assert (cfg.data.root, cfg.train.seed, cfg.train.epochs, cfg.model.hidden) == (str(tmp_path), 7, 5, 32)
    assert cfg.data.features() == {"audio": "hubert-UTT", "text": "text-UTT"}
    # explicit overrides win over the flag shorthands
    args = build_parser().parse_args(["train", "--data", str(tmp_path), "--out", "r", "--seed", "7", "train.seed=3"])
    assert config_from_args(args).train.seed == 3


def test_bad_override(tiny_data, tmp_path, capsys):
    ds, _ = tiny_data
    assert main(["train", "--data", str(ds), "--out", str(tmp_path / "r"), "train.nope=1"]) == 1
    err = capsys.readouterr().err
    assert "semimer train: error:" in err and "nope" in err and "Traceback" not in err
    assert main(["train", "--data", str(ds), "--out", str(tmp_path / "r"), "train.epochs=many"]) == 1
    assert "epochs" in capsys.readouterr().err
    assert main(["train", "--data", str(ds), "--out", str(tmp_path / "r"), "train.epochs"]) == 1
    assert "key=value" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing written before the config is valid


def test_missing_data(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r")]) == 1
    assert "--data" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "nope" in err and "does not exist" in err
    with pytest.raises(SystemExit) as exit_:  # --out is required (argparse usage error)
        main(["train", "--data", str(tmp_path)])
    assert exit_.value.code == 2


def test_missing_feature_names_the_available_ones(tiny_data, tmp_path, capsys):
    ds, _ = tiny_data
    assert main(["train", "--data", str(ds), "--out", str(tmp_path / "r"), "--video", "faces-UTT"]) == 1
    err = capsys.readouterr().err
    assert "faces-UTT" in err and "audio-UTT, text-UTT, video-UTT" in err


def _write(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)


def test_evaluate_errors(tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    _write(labels, [["name", "discrete"], ["a", "happy"], ["b", "sad"], ["c", "neutral"]])
    pred = tmp_path / "pred.csv"
    _write(pred, [["name", "discrete"], ["a", "happy"], ["c", "neutral"], ["z", "sad"]])
    assert main(["evaluate", str(pred), str(labels)]) == 1
    err = capsys.readouterr().err
    assert "no prediction for 1 labeled clip" in err and "'b'" in err and str(pred) in err
    _write(pred, [["name", "discrete"], ["a", "happy"], ["b", "bored"], ["c", "neutral"]])
    assert main(["evaluate", str(pred), str(labels)]) == 1
    assert "'bored'" in capsys.readouterr().err
    _write(pred, [["name", "label"], ["a", "happy"]])
    assert main(["evaluate", str(pred), str(labels)]) == 1
    assert "name,discrete" in capsys.readouterr().err
    # extra predicted clips (candidates outside the scored subset) are fine; upper case too
    _write(pred, [["name", "discrete"], ["a", "Happy"], ["b", "sad"], ["c", "happy"], ["z", "sad"]])
    assert main(["evaluate", str(pred), str(labels), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["n"] == 3 and s["accuracy"] == pytest.approx(2 / 3)  # c: neutral predicted happy


def test_evaluate_custom_classes(tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    _write(labels, [["name", "discrete"], ["a", "calm"], ["b", "tense"]])
    pred = tmp_path / "pred.csv"
    _write(pred, [["name", "discrete"], ["a", "calm"], ["b", "calm"]])
    assert main(["evaluate", str(pred), str(labels), "--classes", "calm,tense", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert list(s["per_class_f1"]) == ["calm", "tense"] and s["confusion"] == [[1, 0], [1, 0]]


def test_evaluate_custom_classes_in_any_case(tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    _write(labels, [["name", "discrete"], ["a", "Calm"], ["b", "Tense"]])
    pred = tmp_path / "pred.csv"
    _write(pred, [["name", "discrete"], ["a", "Calm"], ["b", "Calm"]])
    assert main(["evaluate", str(pred), str(labels), "--classes", "Calm,Tense", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["confusion"] == [[1, 0], [1, 0]]


# --------------------------------------------------------------------------- presets and --config
def test_recipe_config_file_beats_the_recipe_preset(tmp_path):
    from semimer.cli import build_parser
    from semimer.commands._common import config_from_args

    yaml = tmp_path / "my.yaml"
    yaml.write_text("train:\n  oversample: false\n  epochs: 3\n", encoding="utf-8")
    args = build_parser().parse_args(["recipe", "--data", str(tmp_path), "--out", "r", "--config", str(yaml)])
    cfg = config_from_args(args)
    assert (cfg.train.oversample, cfg.train.epochs, cfg.model.name, cfg.pretrain.enabled) == (False, 3, "mrccl", True)
    args = build_parser().parse_args(["recipe", "--data", str(tmp_path), "--out", "r", "--config", str(yaml),
                                      "--seed", "4", "train.oversample=true"])
    cfg = config_from_args(args)  # flags and key=value beat the YAML
    assert (cfg.train.oversample, cfg.train.seed) == (True, 4)
    args = build_parser().parse_args(["recipe", "--data", str(tmp_path), "--out", "r", "--preset", "train"])
    assert config_from_args(args).model.name == "attention"


def test_unknown_member_model_is_an_error(tmp_path, capsys):
    assert main(["recipe", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                 "recipe.member_overrides.bert=[train.epochs=1]"]) == 1
    err = capsys.readouterr().err
    assert "'bert'" in err and "attention" in err and not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", ["train", "recipe", "ablate"])
def test_help_lists_the_presets(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "--preset" in out and "--overwrite" in out and "--config YAML <- key=value" in out
    assert "recipe   model.name=mrccl pretrain.enabled=true train.oversample=true" in out


# --------------------------------------------------------------------------- --overwrite reaches the library
def test_overwrite_is_passed_to_run_cv_and_run_recipe(tiny_data, tmp_path, monkeypatch, capsys):
    import types

    import semimer.semi.recipe
    import semimer.train.cv

    seen = {}
    score = {"mean": 0.5, "std": 0.0}

    def fake_cv(*args, **kw):
        seen["cv"] = kw
        return types.SimpleNamespace(metrics={"cv": {"waf": score, "accuracy": score, "macro_f1": score}})

    def fake_recipe(*args, **kw):
        seen["recipe"] = kw
        return {"final": {"cv_waf": score, "oof_waf": 0.5, "test": None, "what": "a fake"}}

    monkeypatch.setattr(semimer.train.cv, "run_cv", fake_cv)
    monkeypatch.setattr(semimer.semi.recipe, "run_recipe", fake_recipe)
    ds, _ = tiny_data
    for flag in ([], ["--overwrite"]):
        assert main(["train", "--data", str(ds), "--out", str(tmp_path / "t"), *flag]) == 0
        assert main(["recipe", "--data", str(ds), "--out", str(tmp_path / "r"), *flag]) == 0
        assert seen["cv"]["overwrite"] is bool(flag) and seen["recipe"]["overwrite"] is bool(flag)


def test_ablate_passes_overwrite_and_the_preset_order(tiny_data, tmp_path, monkeypatch):
    import semimer.semi.recipe

    calls = []
    score = {"mean": 0.5, "std": 0.0}

    def fake_recipe(data, cfg, out, test_labels=None, **kw):
        calls.append((cfg, kw))
        return {"final": {"cv_waf": score, "oof_waf": 0.5, "test": None}, "final_round": 0,
                "stages": {"round_0": {"cv_waf": score}}}

    monkeypatch.setattr(semimer.semi.recipe, "run_recipe", fake_recipe)
    yaml = tmp_path / "my.yaml"
    yaml.write_text("train:\n  oversample: false\n", encoding="utf-8")
    ds, _ = tiny_data
    assert main(["ablate", "--data", str(ds), "--out", str(tmp_path / "a"), "--seeds", "0", "--set", "demo",
                 "--config", str(yaml), "--overwrite"]) == 0
    full = [cfg for cfg, _ in calls if cfg.model.name == "mrccl"]
    assert full and all(cfg.train.oversample is False and cfg.pretrain.enabled for cfg in full)
    assert all(kw["overwrite"] is True for _, kw in calls)


# --------------------------------------------------------------------------- Ctrl-C and closed pipes
def _failing_models_command(monkeypatch, exc):
    import semimer.commands.models

    def run(args):
        raise exc

    monkeypatch.setattr(semimer.commands.models, "run", run)


def test_ctrl_c_exits_130_with_one_line(monkeypatch, capsys):
    _failing_models_command(monkeypatch, KeyboardInterrupt())
    assert main(["models"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err and "run the same command again to resume" in err
    assert "Traceback" not in err


def test_broken_pipe_exits_quietly(monkeypatch, capsys):
    _failing_models_command(monkeypatch, BrokenPipeError())
    assert main(["models"]) == 1
    assert capsys.readouterr().err == ""


def test_broken_pipe_of_a_real_process_is_silent():
    # `semimer models | head -0`: the reader is gone before semimer writes
    p = subprocess.Popen([sys.executable, "-m", "semimer", "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 1 and "BrokenPipeError" not in err and "Traceback" not in err, err
