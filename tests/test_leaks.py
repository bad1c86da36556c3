"""Leak probe for the whole recipe: labels that are pure noise must score at chance in every stage.

300 labeled clips have pure-noise features and random labels; the unlabeled pool holds a
near-duplicate of every labeled clip. Any path by which a fold's validation labels reach the model
scored on them (pseudo-labels made by an ensemble that trained on the fold, vote weights fitted on
the scored rows, epochs chosen on the scored fold) shows up as a score far above chance. A control
run with the old, leaky pseudo-labelling (one ensemble-made set for every fold) shows that the
probe does detect such a leak on this data.
"""

from __future__ import annotations

import numpy as np
import pytest

from semimer.config import load_config
from semimer.data.layout import load_dataset
from semimer.io import save_npy, write_csv

CLASSES = ("neutral", "angry", "happy", "sad", "worried", "surprise")
N = 300
CHANCE_MAX = 0.33  # 6 balanced random classes: WAF ~0.17, fold noise included


@pytest.fixture(scope="module")
def noise_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.arange(N) % len(CLASSES))
    names = [f"lab_{i:04d}" for i in range(N)]
    dups = [f"dup_{i:04d}" for i in range(N)]
    cands = [f"cand_{i:04d}" for i in range(60)]
    for m, d in (("audio", 12), ("text", 10), ("video", 8)):
        x = rng.normal(size=(N, d)).astype(np.float32)
        for i, n in enumerate(names):
            save_npy(root / "features" / f"{m}-UTT" / f"{n}.npy", x[i])
            save_npy(root / "features" / f"{m}-UTT" / f"{dups[i]}.npy", x[i] + 0.01 * rng.normal(size=d).astype(np.float32))
        for n in cands:
            save_npy(root / "features" / f"{m}-UTT" / f"{n}.npy", rng.normal(size=d).astype(np.float32))
    write_csv(root / "label-disdim.csv", ["name", "discrete"], [(n, CLASSES[y]) for n, y in zip(names, labels)])
    write_csv(root / "track_all_candidates.csv", ["name"], [(n,) for n in cands])
    return root


def _cfg(root, extra=()):
    # memorising settings (no early stopping, no dropout, many epochs): a leak would be loud
    return load_config(None, [f"data.root={root}", "model.name=mrccl", "train.folds=3", "train.epochs=40",
                              "train.select=fixed", "train.patience=0", "train.lr=0.003", "model.dropout=0.0",
                              "model.hidden=64", "train.progress=false", "train.threads=1", "pretrain.enabled=false",
                              "self_train.calibrate=false", "self_train.rounds=2",
                              *[f"self_train.thresholds.{c}=0.25" for c in CLASSES], *extra])


def test_noise_labels_score_at_chance_in_every_round_and_in_the_vote(noise_data, tmp_path):
    from semimer.semi.recipe import run_recipe

    cfg = _cfg(noise_data, ["recipe.vote_members=[mrccl,attention]"])
    data = load_dataset(noise_data, cfg.data.features())
    s = run_recipe(data, cfg, tmp_path / "run")
    rounds = [k for k in s["stages"] if k.startswith("round_") and not s["stages"][k].get("skipped")]
    assert "round_1" in rounds, "the probe needs pseudo-labels to be selected"
    assert sum(s["pseudo_labels_per_round"]["1"]["total"].values()) > 100
    for k in rounds + ["member_attention"]:
        st = s["stages"][k]
        assert st["cv_waf"]["mean"] < CHANCE_MAX and st["oof_waf"] < CHANCE_MAX, (k, st["cv_waf"], st["oof_waf"])
    vote = s["stages"]["vote"]
    assert vote["nested_oof_waf"] < CHANCE_MAX and vote["cv_waf"]["mean"] < CHANCE_MAX
    assert s["final"]["oof_waf"] < CHANCE_MAX


def test_the_probe_detects_ensemble_pseudo_labels_as_a_leak(noise_data, tmp_path):
    """Control: pseudo-labels made by the ensemble of all fold models, given to every fold (the
    0.1 recipe), lift CV far above chance on pure noise. The honest recipe above does not."""
    from semimer.semi.pseudo_label import select_pseudo_labels
    from semimer.train.cv import PseudoLabels, cross_validate
    from semimer.train.fit import predict_names

    cfg = _cfg(noise_data, ["recipe.vote_members=[mrccl]"])
    data = load_dataset(noise_data, cfg.data.features())
    r0 = cross_validate(data, cfg, tmp_path / "r0", predict_candidates=False)
    assert r0.metrics["cv"]["waf"]["mean"] < CHANCE_MAX
    pool = [n for n in data.unlabeled if n.startswith("dup_")]
    probs = predict_names(r0.models, data, pool, "cpu")
    sel = select_pseudo_labels(probs, pool, [0.25] * 6, CLASSES)
    leaky = cross_validate(data, cfg, tmp_path / "r1", pseudo=PseudoLabels(sel.names, sel.labels),
                           predict_candidates=False)
    assert leaky.metrics["cv"]["waf"]["mean"] > 0.5
