"""The recipe end to end on the tiny preset: honest CV with pseudo-labels, resume after a kill
between stages, submission format, report, and the ablation table."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from semimer.cli import main
from semimer.config import load_config
from semimer.data.layout import load_dataset
from semimer.data.synth import generate

FAST = ["train.epochs=3", "train.folds=2", "train.progress=false", "pretrain.epochs=1", "model.hidden=32",
        "model.head_hidden=16", "train.batch_size=32", "pretrain.batch_size=128",
        "self_train.max_per_class=8", "self_train.rounds=1"]
# low thresholds so that the tiny, briefly trained model does select pseudo-labels
LOW_TAU = [f"self_train.thresholds.{c}=0.2" for c in ("neutral", "angry", "happy", "sad", "worried", "surprise")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    ds = generate(root, "tiny", 0)
    return ds, root / "test-labels.csv"


def recipe_cfg(ds, extra=()):
    # the vote is off by default; these tests run the published one (extra may switch it off again)
    return load_config(None, [f"data.root={ds}", "model.name=mrccl", "pretrain.enabled=true", "train.oversample=true",
                              "recipe.vote_members=[mrccl,attention]", *FAST, *LOW_TAU, *extra])


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_recipe_outputs_and_honest_cv(tiny, tmp_path):
    from semimer.semi.recipe import run_recipe

    ds, test_labels = tiny
    cfg = recipe_cfg(ds)
    data = load_dataset(ds, cfg.data.features())
    s = run_recipe(data, cfg, tmp_path / "run", test_labels)
    run = tmp_path / "run"
    pseudo = read_rows(run / "pseudo_labels.csv")
    assert pseudo, "low thresholds must select some clips"
    pseudo_names = {r["name"] for r in pseudo}
    assert not pseudo_names & set(data.labeled)
    # CV of the self-training round is measured on real labels only
    oof = read_rows(run / "round_1" / "oof.csv")
    assert {r["name"] for r in oof} == set(data.labeled)
    folds = read_rows(run / "round_1" / "folds.csv")
    assert {r["name"] for r in folds} == set(data.labeled) and not pseudo_names & {r["name"] for r in folds}
    m = json.loads((run / "round_1" / "metrics.json").read_text())
    per_fold = [sum(1 for r in pseudo if r["fold"] == str(k)) for k in range(cfg.train.folds)]
    assert m["n_labeled"] == len(data.labeled) and m["n_pseudo"] == per_fold
    assert s["pseudo_labels_per_round"]["1"]["per_fold"] and "soft vote" in s["final"]["what"]
    # the reported vote score is the nested one, and oof.csv holds exactly those predictions
    vote = s["stages"]["vote"]
    oof_final = read_rows(run / "oof.csv")
    pred = [r["discrete"] for r in oof_final]
    true = [r["true"] for r in oof_final]
    from sklearn.metrics import f1_score
    assert f1_score(true, pred, average="weighted") == pytest.approx(vote["nested_oof_waf"], abs=1e-9)
    assert s["final"]["oof_waf"] == vote["nested_oof_waf"] and s["final"]["cv_waf"] == vote["cv_waf"]
    # every pseudo-label reached its class threshold
    assert all(float(r["confidence"]) >= 0.2 - 1e-6 for r in pseudo)
    # submission: name,discrete, one row per candidate, valid words
    sub = read_rows(run / "submission.csv")
    assert list(sub[0].keys()) == ["name", "discrete"]
    assert [r["name"] for r in sub] == data.candidates
    assert {r["discrete"] for r in sub} <= set(cfg.data.classes)
    preds = read_rows(run / "predictions.csv")
    probs = np.array([[float(r[f"prob_{c}"]) for c in cfg.data.classes] for r in preds])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    # voting weights were fitted and reported; report and plots exist
    w = s["stages"]["vote"]["weights"]
    assert set(w) == {"mrccl", "attention"} and abs(sum(w.values()) - 1) < 1e-6
    report = (run / "report.md").read_text()
    assert "round_1" in report and "Voting weights" in report
    for f in ("confusion.png", "per_class_f1.png", "pseudo_labels.png", "ensemble.json", "features.json"):
        assert (run / f).is_file(), f


def test_recipe_resumes_after_a_kill_between_stages(tiny, tmp_path, monkeypatch):
    import semimer.semi.recipe as recipe

    ds, test_labels = tiny
    cfg = recipe_cfg(ds)
    data = load_dataset(ds, cfg.data.features())
    real_run_cv = recipe.cross_validate
    calls = []

    def killed_at_members(data_, cfg_, out, **kw):
        calls.append(out.name)
        if out.name.startswith("member_"):
            raise KeyboardInterrupt("simulated kill")
        return real_run_cv(data_, cfg_, out, **kw)

    monkeypatch.setattr(recipe, "cross_validate", killed_at_members)
    with pytest.raises(KeyboardInterrupt):
        recipe.run_recipe(data, cfg, tmp_path / "run", test_labels)
    run = tmp_path / "run"
    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("*.safetensors")}
    sel = (run / "pseudo_labels.csv").read_bytes()
    assert any("round_1" in str(p) for p in stamps)

    import semimer.train.cv as cvmod
    import semimer.train.pretrain as ptmod

    trained = []
    real_fit = cvmod.fit

    def counting_fit(*a, **kw):
        trained.append(kw.get("desc"))
        return real_fit(*a, **kw)

    monkeypatch.setattr(recipe, "cross_validate", real_run_cv)
    monkeypatch.setattr(cvmod, "fit", counting_fit)
    monkeypatch.setattr(ptmod, "build_model", None)  # pre-training must be reused, not rebuilt
    s = recipe.run_recipe(data, cfg, run, test_labels)
    # only the member folds were trained; pre-training, round 0, pseudo-labels, round 1 reused
    assert len(trained) == cfg.train.folds
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert (run / "pseudo_labels.csv").read_bytes() == sel
    # and the result equals an uninterrupted run
    monkeypatch.setattr(cvmod, "fit", real_fit)
    monkeypatch.undo()
    clean = recipe.run_recipe(data, cfg, tmp_path / "clean", test_labels)
    assert (run / "predictions.csv").read_text() == (tmp_path / "clean" / "predictions.csv").read_text()
    assert s["final"]["oof_waf"] == clean["final"]["oof_waf"]


def test_no_pseudo_labels_at_strict_thresholds_stops_self_training(tiny, tmp_path):
    from semimer.semi.recipe import run_recipe

    ds, _ = tiny
    strict = [f"self_train.thresholds.{c}=1.0" for c in ("neutral", "angry", "happy", "sad", "worried", "surprise")]
    cfg = load_config(None, [f"data.root={ds}", "model.name=mrccl", *FAST, *strict, "recipe.vote_members=[mrccl]"])
    data = load_dataset(ds, cfg.data.features())
    s = run_recipe(data, cfg, tmp_path / "run")
    assert s["final_round"] == 0 and not (tmp_path / "run" / "round_1").exists()
    assert s["stages"]["round_1"]["skipped"] and "cv_waf" not in s["stages"]["round_1"]
    assert "skipped" in (tmp_path / "run" / "report.md").read_text()
    assert json.loads((tmp_path / "run" / "ensemble.json").read_text())["members"] == [{"dir": "round_0", "weight": 1.0}]


def test_ablate_command_prints_the_table(tiny, tmp_path, capsys):
    ds, test_labels = tiny
    rc = main(["ablate", "--data", str(ds), "--out", str(tmp_path / "abl"), "--seeds", "0", "--set", "demo",
               "--test-labels", str(test_labels), *FAST, *LOW_TAU])
    assert rc == 0
    out = capsys.readouterr().out
    for name in ("baseline (attention)", "full recipe", "w/o voting", "CV WAF", "test WAF"):
        assert name in out
    res = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    full = json.loads((tmp_path / "abl" / "seed_0" / "full-recipe" / "metrics.json").read_text())
    rows = {r["variant"]: r for r in res["table"]}
    # derived rows are read off the full recipe's own stages, exactly
    assert rows["MR-CCL + pre-training (round 0)"]["cv_waf"]["mean"] == full["stages"]["round_0"]["cv_waf"]["mean"]
    last = f"round_{full['final_round']}"
    assert rows["w/o voting"]["test_waf"]["mean"] == full["stages"][last]["test"]["waf"]
    # --collect tabulates the finished runs without running anything
    (tmp_path / "abl" / "ablation.json").unlink()
    assert main(["ablate", "--data", str(ds), "--out", str(tmp_path / "abl"), "--seeds", "0", "--set", "demo",
                 "--collect", *FAST, *LOW_TAU]) == 0
    assert json.loads((tmp_path / "abl" / "ablation.json").read_text())["table"] == res["table"]
    assert main(["ablate", "--data", str(ds), "--out", str(tmp_path / "abl"), "--seeds", "0,1", "--set", "demo",
                 "--collect", *FAST, *LOW_TAU]) == 1  # seed 1 never ran: a clear error


def test_per_fold_pseudo_labels_do_not_depend_on_the_folds_own_labels(tiny, tmp_path, monkeypatch):
    """Leak probe: with the same folds, changing the labels of fold 0's clips leaves the
    pseudo-labels that enter fold 0's training part unchanged (they come from fold 0's model)."""
    import dataclasses

    import semimer.semi.recipe as recipe
    import semimer.train.cv as cvmod

    ds, _ = tiny
    cfg = recipe_cfg(ds, ["recipe.vote_members=[mrccl]", "pretrain.enabled=false", "self_train.calibrate=false"])
    data = load_dataset(ds, cfg.data.features())
    fold = cvmod.data_folds(data, cfg)
    monkeypatch.setattr(cvmod, "data_folds", lambda d, c: fold)
    monkeypatch.setattr(recipe, "data_folds", lambda d, c: fold)
    recipe.run_recipe(data, cfg, tmp_path / "a")
    flipped = dataclasses.replace(data, labels=np.where(fold == 0, (data.labels + 1) % 6, data.labels))
    recipe.run_recipe(flipped, cfg, tmp_path / "b")
    rows = {d: read_rows(tmp_path / d / "pseudo_labels.csv") for d in ("a", "b")}
    f0 = {d: [(r["name"], r["discrete"]) for r in rows[d] if r["fold"] == "0"] for d in rows}
    f1 = {d: [(r["name"], r["discrete"]) for r in rows[d] if r["fold"] == "1"] for d in rows}
    assert f0["a"] and f0["a"] == f0["b"]
    assert f1["a"] != f1["b"]  # fold 1's model trained on fold 0's (changed) labels


def test_equal_weight_vote_is_the_plain_mean_of_its_members(tiny, tmp_path):
    """recipe.vote_weights=equal: nothing fitted, the submitted and OOF probabilities are the plain
    mean of the members' own files (worked out here from those files, not from the voting code)."""
    from semimer.semi.recipe import run_recipe

    ds, test_labels = tiny
    cfg = recipe_cfg(ds, ["recipe.vote_members=[mrccl,linear]", "recipe.vote_weights=equal", "self_train.rounds=0",
                          "pretrain.enabled=false", "train.folds=3"])
    data = load_dataset(ds, cfg.data.features())
    s = run_recipe(data, cfg, tmp_path / "run", test_labels)
    run = tmp_path / "run"
    vote = s["stages"]["vote"]
    assert vote["chosen"] == "equal" and vote["weights"] == {"mrccl": 0.5, "linear": 0.5}
    classes = list(cfg.data.classes)

    def probs(path):
        rows = read_rows(path)
        return [r["name"] for r in rows], np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])

    for f in ("oof.csv", "predictions.csv"):
        names, p = probs(run / f)
        n0, p0 = probs(run / "round_0" / f)
        n1, p1 = probs(run / "member_linear" / f)
        assert names == n0 == n1
        np.testing.assert_allclose(p, (p0 + p1) / 2, atol=2e-6)
    oof = read_rows(run / "oof.csv")
    from sklearn.metrics import f1_score
    assert f1_score([r["true"] for r in oof], [r["discrete"] for r in oof], average="weighted") == \
        pytest.approx(vote["nested_oof_waf"], abs=1e-9)
    with pytest.raises(ValueError, match="vote_weights"):
        load_config(None, ["recipe.vote_weights=median"])
