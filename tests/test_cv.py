"""End-to-end tests of cross-validation (semimer.train.cv) through ``semimer train`` / ``semimer evaluate``.

One CLI run on the tiny synthetic preset (3 epochs) is shared by the read-only tests; tests that
need another run (determinism, pseudo-labels, resume) make their own.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, f1_score

from semimer import MER2024_CLASSES
from semimer.models.checkpoint import load_model
from semimer.cli import main
from semimer.config import load_config
from semimer.train.cv import PseudoLabels, run_cv
from semimer.data.layout import load_dataset
from semimer.data.synth import FEATURE_NAMES

PROB_COLS = [f"prob_{c}" for c in MER2024_CLASSES]
TRAIN_ARGS = ["train.epochs=3", "train.progress=false", "train.threads=1"]  # 2 shared CPU cores


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def train(ds, out):
    assert main(["train", "--data", str(ds), "--out", str(out), *TRAIN_ARGS]) == 0
    return out


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory):
    ds, _ = tiny_data
    return train(ds, tmp_path_factory.mktemp("cv") / "run")


@pytest.fixture(scope="module")
def data(tiny_data):
    return load_dataset(tiny_data[0], FEATURE_NAMES)


def test_evaluate_json_matches_sklearn(run, tiny_data, capsys):
    _, test_labels = tiny_data
    capsys.readouterr()
    assert main(["evaluate", str(run / "predictions.csv"), str(test_labels), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert {"waf", "accuracy", "macro_f1", "per_class_f1", "confusion"} <= set(s)
    pred = {r["name"]: r["discrete"] for r in read_rows(run / "predictions.csv")}
    truth = {r["name"]: r["discrete"] for r in read_rows(test_labels)}
    names = sorted(truth)
    y, p = [truth[n] for n in names], [pred[n] for n in names]
    assert s["n"] == len(truth) == 120
    assert s["waf"] == pytest.approx(f1_score(y, p, average="weighted", zero_division=0), abs=1e-12)
    assert s["accuracy"] == pytest.approx(np.mean(np.array(y) == np.array(p)), abs=1e-12)
    assert s["macro_f1"] == pytest.approx(
        f1_score(y, p, labels=list(MER2024_CLASSES), average="macro", zero_division=0), abs=1e-12)
    assert list(s["per_class_f1"]) == list(MER2024_CLASSES)
    assert s["confusion"] == confusion_matrix(y, p, labels=list(MER2024_CLASSES)).tolist()
    # the human-readable form prints the same WAF
    assert main(["evaluate", str(run / "predictions.csv"), str(test_labels)]) == 0
    assert f"WAF        {100 * s['waf']:.2f}" in capsys.readouterr().out


def test_run_folder_contents(run, data):
    for f in ("config.yaml", "folds.csv", "metrics.json", "oof.csv", "predictions.csv", "submission.csv"):
        assert (run / f).is_file(), f
    for f in ("confusion.png", "learning_curves.png"):
        assert (run / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f
    for k in range(5):
        assert (run / f"fold_{k}" / "model.safetensors").stat().st_size > 0
        meta = json.loads((run / f"fold_{k}" / "model.json").read_text())
        assert meta["model"] == "attention" and meta["fold"] == k and meta["classes"] == list(MER2024_CLASSES)
        assert meta["dims"] == {"audio": 24, "text": 32, "video": 16}
    cfg = load_config(run / "config.yaml")  # the resolved config reloads as a config
    assert cfg.train.epochs == 3 and cfg.data.root == str(data.root) and cfg.train.seed == 0
    folds = read_rows(run / "folds.csv")
    assert [r["name"] for r in folds] == data.labeled
    assert sorted({int(r["fold"]) for r in folds}) == [0, 1, 2, 3, 4]


def test_predictions_cover_every_candidate(run, data):
    rows = read_rows(run / "predictions.csv")
    assert list(rows[0]) == ["name", "discrete", *PROB_COLS]
    assert [r["name"] for r in rows] == data.candidates  # candidate-file order, one row each
    probs = np.array([[float(r[c]) for c in PROB_COLS] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    assert (probs >= 0).all()
    # the label is the argmax of the unrounded probabilities: its written (6-decimal) probability is
    # the row's maximum (two classes can tie once rounded)
    chosen = np.array([MER2024_CLASSES.index(r["discrete"]) for r in rows])
    assert (probs[np.arange(len(rows)), chosen] == probs.max(1)).all()
    assert (chosen == probs.argmax(1)).mean() > 0.95
    sub = read_rows(run / "submission.csv")
    assert list(sub[0]) == ["name", "discrete"]
    assert [(r["name"], r["discrete"]) for r in sub] == [(r["name"], r["discrete"]) for r in rows]


def test_metrics_json_agrees_with_oof_csv(run, data):
    """cv.* is mean ± sample std over folds of sklearn's scores on each fold's OOF rows."""
    m = json.loads((run / "metrics.json").read_text())
    assert m["cv"]["waf"]["n"] == 5 and m["n_labeled"] == 240 and m["n_pseudo"] == [0] * 5 and m["n_candidates"] == 300
    assert m["model"] == "attention" and m["seed"] == 0
    oof = read_rows(run / "oof.csv")
    assert [r["name"] for r in oof] == data.labeled
    assert [r["true"] for r in oof] == [MER2024_CLASSES[i] for i in data.labels]
    fold = np.array([int(r["fold"]) for r in oof])
    y = np.array([r["true"] for r in oof])
    p = np.array([r["discrete"] for r in oof])
    wafs = [f1_score(y[fold == k], p[fold == k], average="weighted", zero_division=0) for k in range(5)]
    assert [f["waf"] for f in m["folds"]] == pytest.approx(wafs, abs=1e-12)
    assert m["cv"]["waf"]["mean"] == pytest.approx(np.mean(wafs), abs=1e-12)
    assert m["cv"]["waf"]["std"] == pytest.approx(np.std(wafs, ddof=1), abs=1e-12)
    assert m["oof"]["waf"] == pytest.approx(f1_score(y, p, average="weighted", zero_division=0), abs=1e-12)
    assert sum(f["n"] for f in m["folds"]) == 240


def test_load_model_round_trips_every_fold(run, data):
    """Reloaded fold models reproduce oof.csv (their own validation fold) and, averaged,
    predictions.csv (the candidates)."""
    oof = read_rows(run / "oof.csv")
    oof_probs = np.array([[float(r[c]) for c in PROB_COLS] for r in oof])
    fold = np.array([int(r["fold"]) for r in oof])
    lab = data.features(data.labeled)
    cand = data.features(data.candidates)
    cand_sum = 0
    for k in range(5):
        model, meta = load_model(run / f"fold_{k}")
        assert not model.training and meta["fold"] == k
        with torch.no_grad():
            va = np.flatnonzero(fold == k)
            got = model({m: torch.from_numpy(x[va]) for m, x in lab.items()})["probs"].numpy()
            cand_sum = cand_sum + model({m: torch.from_numpy(x) for m, x in cand.items()})["probs"].numpy()
        np.testing.assert_allclose(got, oof_probs[va], atol=2e-6)
    pred = np.array([[float(r[c]) for c in PROB_COLS] for r in read_rows(run / "predictions.csv")])
    np.testing.assert_allclose(cand_sum / 5, pred, atol=2e-6)


def test_same_seed_same_predictions(run, tiny_data, tmp_path):
    again = train(tiny_data[0], tmp_path / "again")
    for f in ("predictions.csv", "oof.csv", "folds.csv"):
        assert (again / f).read_bytes() == (run / f).read_bytes(), f


def test_resume_reuses_finished_folds(run, tiny_data, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)  # copy2 keeps mtimes
    shutil.rmtree(resumed / "fold_4")
    before = {k: (resumed / f"fold_{k}" / "model.safetensors").stat().st_mtime_ns for k in range(4)}
    train(tiny_data[0], resumed)
    after = {k: (resumed / f"fold_{k}" / "model.safetensors").stat().st_mtime_ns for k in range(4)}
    assert after == before
    assert (resumed / "fold_4" / "done.json").is_file()
    for f in ("predictions.csv", "oof.csv"):
        assert (resumed / f).read_bytes() == (run / f).read_bytes(), f
    m, m0 = (json.loads((d / "metrics.json").read_text()) for d in (resumed, run))
    assert m["cv"] == m0["cv"] and m["folds"] == m0["folds"]
    # a different config is refused without --overwrite (nothing touched), retrains everything with it
    other = ["train", "--data", str(tiny_data[0]), "--out", str(resumed), "train.epochs=2", "train.progress=false",
             "train.threads=1"]
    assert main(other) == 1
    assert {k: (resumed / f"fold_{k}" / "model.safetensors").stat().st_mtime_ns for k in range(4)} == before
    assert main([*other, "--overwrite"]) == 0
    assert all((resumed / f"fold_{k}" / "model.safetensors").stat().st_mtime_ns != before[k] for k in range(4))


def test_pseudo_labels_never_enter_validation(run, data, tmp_path):
    cfg = load_config(None, [f"data.root={data.root}", *TRAIN_ARGS])
    pool = [n for n in data.unlabeled if n not in set(data.candidates)][:80]
    pseudo = PseudoLabels(pool, np.random.default_rng(0).integers(0, 6, size=len(pool)))
    res = run_cv(data, cfg, tmp_path / "pseudo", pseudo=pseudo)
    out = tmp_path / "pseudo"
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_labeled"] == 240 and m["n_pseudo"] == [80] * 5
    assert sum(f["n"] for f in m["folds"]) == 240
    assert [r["name"] for r in read_rows(out / "oof.csv")] == data.labeled
    assert [r["name"] for r in read_rows(out / "folds.csv")] == data.labeled
    assert res.oof_probs.shape == (240, 6)
    # the pseudo-labeled clips did enter training: the same seed gives other predictions than `run`
    assert (out / "predictions.csv").read_bytes() != (run / "predictions.csv").read_bytes()
    # resuming reuses folds only when the pseudo-labels are the same ones
    mtimes = [(out / f"fold_{k}" / "model.safetensors").stat().st_mtime_ns for k in range(5)]
    run_cv(data, cfg, out, pseudo=pseudo)
    assert [(out / f"fold_{k}" / "model.safetensors").stat().st_mtime_ns for k in range(5)] == mtimes
    run_cv(data, cfg, out, pseudo=PseudoLabels(pool, (pseudo.labels + 1) % 6))
    assert all((out / f"fold_{k}" / "model.safetensors").stat().st_mtime_ns != mtimes[k] for k in range(5))
    with pytest.raises(ValueError, match="overlap the labeled set"):
        run_cv(data, cfg, tmp_path / "bad", pseudo=PseudoLabels([data.labeled[0]], np.array([0])))


def test_folds_finished_under_other_inputs_are_never_reused_after_a_kill(data, tmp_path, monkeypatch):
    """A 5-fold run A finishes every fold; run B (other settings) is killed in its first fold; B restarted
    must retrain every fold rather than take A's finished folds as its own."""
    import semimer.train.cv as cvmod
    from semimer.train.run_state import RunExistsError

    base = [f"data.root={data.root}", "train.folds=5", "train.progress=false", "train.threads=1", "model.hidden=16"]
    run_cv(data, load_config(None, [*base, "train.epochs=1"]), tmp_path / "r")
    a_folds = [(tmp_path / "r" / f"fold_{k}" / "model.safetensors").read_bytes() for k in range(5)]

    def killed(*a, **kw):
        raise KeyboardInterrupt("simulated kill in fold 0")

    cfg_b = load_config(None, [*base, "train.epochs=2", "train.lr=0.003"])
    with pytest.raises(RunExistsError, match="other settings"):
        run_cv(data, cfg_b, tmp_path / "r")
    monkeypatch.setattr(cvmod, "fit", killed)
    with pytest.raises(KeyboardInterrupt):
        run_cv(data, cfg_b, tmp_path / "r", overwrite=True)
    monkeypatch.undo()
    res = run_cv(data, cfg_b, tmp_path / "r")  # B's own settings now: no --overwrite needed
    for k in range(5):
        assert (tmp_path / "r" / f"fold_{k}" / "model.safetensors").read_bytes() != a_folds[k]
        assert len(json.loads((tmp_path / "r" / f"fold_{k}" / "result.json").read_text())["history"]) == 2
    assert len(res.metrics["folds"]) == 5


def test_the_scored_fold_never_chooses_anything(data, tmp_path, monkeypatch):
    """Leak probe: with the same fold assignment, changing the labels of fold 0's clips leaves
    fold 0's model bit-identical (its epoch is chosen on an inner split of the other folds)."""
    import semimer.train.cv as cvmod

    cfg = load_config(None, [f"data.root={data.root}", "train.epochs=4", "train.patience=2", "train.progress=false",
                             "train.threads=1", "model.hidden=16", "train.oversample=true"])
    fold = cvmod.data_folds(data, cfg)
    monkeypatch.setattr(cvmod, "data_folds", lambda d, c: fold)
    cvmod.cross_validate(data, cfg, tmp_path / "a", predict_candidates=False)
    flipped = dataclasses.replace(data, labels=np.where(fold == 0, (data.labels + 1) % 6, data.labels))
    cvmod.cross_validate(flipped, cfg, tmp_path / "b", predict_candidates=False)
    a, b = (json.loads((tmp_path / d / "fold_0" / "result.json").read_text()) for d in ("a", "b"))
    assert a["best_epoch"] == b["best_epoch"] and a["selected_on"] == "inner"
    assert [h["val_waf"] for h in a["history"]] == [h["val_waf"] for h in b["history"]]
    assert ((tmp_path / "a" / "fold_0" / "model.safetensors").read_bytes()
            == (tmp_path / "b" / "fold_0" / "model.safetensors").read_bytes())
    # the other folds did train on fold 0's (changed) labels
    assert ((tmp_path / "a" / "fold_1" / "model.safetensors").read_bytes()
            != (tmp_path / "b" / "fold_1" / "model.safetensors").read_bytes())
    # the chosen epoch is the argmax of the inner split's WAF, never of the scored fold's
    assert a["best_epoch"] == int(np.argmax([h["val_waf"] for h in a["history"]]))


def test_grouped_cv_keeps_groups_whole(tiny_data, tmp_path):
    """data.group_column: every group (here: 40 'speakers') lies in exactly one fold."""
    ds = tmp_path / "ds"
    shutil.copytree(tiny_data[0], ds)
    rows = read_rows(ds / "label-disdim.csv")
    for i, r in enumerate(rows):
        r["speaker"] = f"spk{i % 40}"
    with open(ds / "label-disdim.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main(["train", "--data", str(ds), "--out", str(tmp_path / "g"), "data.group_column=speaker",
                 "train.epochs=1", "train.progress=false", "train.threads=1", "model.hidden=16"]) == 0
    folds = read_rows(tmp_path / "g" / "folds.csv")
    fold_of_group = {}
    for r in folds:
        fold_of_group.setdefault(r["group"], set()).add(r["fold"])
    assert len(fold_of_group) == 40 and all(len(f) == 1 for f in fold_of_group.values())
    assert json.loads((tmp_path / "g" / "metrics.json").read_text())["n_groups"] == 40
    # the linear model's inner CV (its choice of C) is grouped the same way
    assert main(["train", "--data", str(ds), "--out", str(tmp_path / "lin"), "--model", "linear",
                 "data.group_column=speaker", "train.progress=false", "train.threads=1"]) == 0
    res = json.loads((tmp_path / "lin" / "fold_0" / "result.json").read_text())
    assert res["history"][0]["inner_grouped"] is True
