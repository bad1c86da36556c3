"""semimer tune: a tiny Optuna study writes a best.yaml that load_config reads back, resumes
without re-running complete trials, re-runs an interrupted trial in its folder, never sees test
labels, and rejects bad search-space keys clearly."""

from __future__ import annotations

import csv
import inspect
import shutil

import pytest

optuna = pytest.importorskip("optuna")

from semimer.cli import build_parser, main  # noqa: E402
from semimer.config import load_config  # noqa: E402

FAST = ["train.threads=1", "train.folds=2", "train.epochs=2", "train.progress=false", "train.batch_size=64"]
SPACE = "train.lr,model.hidden,train.oversample"


def tune_args(ds, out, *extra):
    return ["tune", "--data", str(ds), "--out", str(out), "--space", SPACE, *extra, *FAST]


def trials(out, state=None):
    from semimer.semi.tune import load_study

    ts = load_study(out).trials
    return [t for t in ts if state is None or t.state.name == state]


@pytest.fixture(scope="module")
def study2(tiny_data, tmp_path_factory):
    """A finished 2-trial study (copy it before changing it)."""
    ds, _ = tiny_data
    out = tmp_path_factory.mktemp("tune") / "t"
    assert main(tune_args(ds, out, "--trials", "2")) == 0
    return out


def test_two_trials_write_best_yaml_that_loads_back(study2, tiny_data, tmp_path, capsys):
    from semimer.commands._common import config_from_args

    ds, _ = tiny_data
    done = trials(study2, "COMPLETE")
    assert len(done) == 2 and len(trials(study2)) == 2
    best = max(done, key=lambda t: t.value)
    cfg = load_config(study2 / "best.yaml")
    assert cfg.train.lr == best.params["train.lr"]
    assert cfg.model.hidden == best.params["model.hidden"]
    assert cfg.train.oversample == best.params["train.oversample"]
    # the fixed settings and the data travel with it
    assert cfg.train.folds == 2 and cfg.train.epochs == 2 and cfg.data.root == str(ds)
    # what `semimer recipe --config best.yaml` resolves (recipe preset first, then best.yaml)
    args = build_parser().parse_args(["recipe", "--config", str(study2 / "best.yaml"), "--out", str(tmp_path / "r")])
    rcfg = config_from_args(args)
    assert rcfg.train.lr == best.params["train.lr"] and rcfg.model.hidden == best.params["model.hidden"]
    # one folder per trial, a CV run each
    for t in done:
        assert (study2 / "trials" / str(t.number) / "metrics.json").is_file()
        assert len(t.intermediate_values) == 2  # running mean after each fold
    with open(study2 / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["number"] for r in rows] == ["0", "1"] and {r["state"] for r in rows} == {"COMPLETE"}
    assert {"number", "state", "value", "params", "seconds"} <= set(rows[0])
    assert abs(float(next(r for r in rows if r["number"] == str(best.number))["value"]) - best.value) < 1e-5


def test_resume_runs_only_the_remaining_trials(study2, tiny_data, tmp_path, capsys):
    ds, _ = tiny_data
    out = tmp_path / "t"
    shutil.copytree(study2, out)
    assert main(tune_args(ds, out, "--trials", "3")) == 0
    assert len(trials(out, "COMPLETE")) == 3 and len(trials(out)) == 3
    assert (out / "trials" / "2").is_dir()
    assert main(tune_args(ds, out, "--trials", "3")) == 0  # already there: runs nothing
    assert len(trials(out)) == 3
    assert "best: trial" in capsys.readouterr().out


def test_other_settings_in_the_same_folder_are_refused(study2, tiny_data, tmp_path, capsys):
    ds, _ = tiny_data
    out = tmp_path / "t"
    shutil.copytree(study2, out)
    assert main(["tune", "--data", str(ds), "--out", str(out), "--space", "train.lr", "--trials", "3", *FAST]) == 1
    assert "another target, search space" in capsys.readouterr().err
    assert len(trials(out)) == 2


def test_interrupted_trial_is_run_again_in_its_folder(study2, tiny_data, tmp_path):
    from semimer.semi.tune import _suggest, load_study

    ds, _ = tiny_data
    out = tmp_path / "t"
    shutil.copytree(study2, out)
    study = load_study(out)
    t = study.ask()  # a trial that a killed process left RUNNING
    params = {k: _suggest(t, k) for k in SPACE.split(",")}
    old_dir = out / "trials" / str(t.number)
    t.set_user_attr("dir", str(old_dir))
    assert main(tune_args(ds, out, "--trials", "3")) == 0
    ts = trials(out)
    assert ts[t.number].state.name == "FAIL"
    done = trials(out, "COMPLETE")
    assert len(done) == 3 and len(ts) == 4
    assert done[-1].params == params and done[-1].user_attrs["dir"] == str(old_dir)
    assert (old_dir / "metrics.json").is_file()


def test_minutes_budget(tiny_data, tmp_path):
    from semimer.data.layout import load_dataset
    from semimer.semi.tune import tune

    ds, _ = tiny_data
    cfg = load_config(None, [f"data.root={ds}", *FAST], preset="train")
    data = load_dataset(ds, cfg.data.features())
    res = tune(data, cfg, tmp_path / "t", space=["model.dropout"], timeout=0.01)
    assert res.ran >= 1 and res.best_number is not None
    assert load_config(tmp_path / "t" / "best.yaml").model.dropout == res.best_params["model.dropout"]


def test_objective_never_sees_test_labels(tiny_data, tmp_path, monkeypatch, capsys):
    import semimer.semi.recipe as recipe_mod
    from semimer.data.layout import load_dataset
    from semimer.semi import tune as tune_mod

    for fn in (tune_mod.trial_score, tune_mod.make_objective, tune_mod.tune):
        assert not [p for p in inspect.signature(fn).parameters if "test" in p or "label" in p], fn.__name__
    ds, test_labels = tiny_data
    with pytest.raises(SystemExit):  # the command has no --test-labels
        main(["tune", "--data", str(ds), "--out", str(tmp_path / "x"), "--test-labels", str(test_labels)])
    assert "test_labels" not in vars(build_parser().parse_args(["tune", "--out", "x"]))

    # target recipe: run_recipe is called without test labels, its final CV is the value
    calls = []

    def fake_run_recipe(data, cfg, out, test_labels=None, pretrain_dir=None, overwrite=False):
        calls.append((test_labels, cfg.self_train.rounds, pretrain_dir))
        return {"final": {"cv_waf": {"mean": 0.25 + 0.5 * cfg.self_train.rounds, "std": 0.0}}}

    monkeypatch.setattr(recipe_mod, "run_recipe", fake_run_recipe)
    cfg = load_config(None, [f"data.root={ds}", *FAST], preset="recipe")
    data = load_dataset(ds, cfg.data.features())
    res = tune_mod.tune(data, cfg, tmp_path / "r", target="recipe", space="self_train.rounds,pretrain.enabled",
                        n_trials=4)
    assert len(calls) == 4 and all(c[0] is None for c in calls)
    assert all((c[2] is not None) == bool(p["pretrain.enabled"]) for c, p in
               zip(calls, (r["params"] for r in res.rows)))
    assert res.best_value == max(r["value"] for r in res.rows)
    assert res.best_value == 0.25 + 0.5 * res.best_params["self_train.rounds"]
    assert load_config(tmp_path / "r" / "best.yaml").self_train.rounds == res.best_params["self_train.rounds"]


@pytest.mark.parametrize("space, message", [
    ("train.lr,model.nope", "unknown key(s) ['model.nope']; valid keys: train.lr"),
    ("self_train.rounds", "does not apply here"),
    ("train.lr,train.epochs", "also set as key=value"),
])
def test_bad_space_is_a_clear_error(tiny_data, tmp_path, capsys, space, message):
    ds, _ = tiny_data
    out = tmp_path / "t"
    assert main(["tune", "--data", str(ds), "--out", str(out), "--space", space, "--trials", "1", *FAST]) == 1
    err = capsys.readouterr().err
    assert "semimer tune: error: --space" in err and message in err
    assert not out.exists()
