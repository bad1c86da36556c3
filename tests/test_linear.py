"""The registered ``linear`` model against scikit-learn on the same features and rows."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from semimer.config import load_config
from semimer.data.layout import load_dataset
from semimer.data.synth import FEATURE_NAMES


@pytest.fixture(scope="module")
def data(tiny_data):
    return load_dataset(tiny_data[0], FEATURE_NAMES)


def test_linear_cv_fold_equals_sklearn_pipeline(data, tmp_path):
    from semimer.train.cv import cross_validate, data_folds, fold_seed

    cs = [0.01, 0.1, 1.0]
    cfg = load_config(None, [f"data.root={data.root}", "model.name=linear", f"model.linear_cs={cs}",
                             "train.progress=false", "train.oversample=true"])  # oversampling does not apply
    res = cross_validate(data, cfg, tmp_path / "lin", predict_candidates=False)
    fold = data_folds(data, cfg)
    feats = data.features(data.labeled)
    X = np.concatenate([feats[m] for m in ("audio", "text", "video")], axis=1).astype(np.float64)
    y = data.labels
    for k in (0, 3):
        fit_idx = np.flatnonzero(fold != k)  # the whole training part: no clips held back for epoch selection
        scaler = StandardScaler().fit(X[fit_idx])
        cv = StratifiedKFold(5, shuffle=True, random_state=fold_seed(0, k))
        ref = LogisticRegressionCV(Cs=cs, l1_ratios=(0.0,), cv=cv, scoring=_waf, max_iter=3000,
                                   use_legacy_attributes=False).fit(scaler.transform(X[fit_idx]), y[fit_idx])
        va = fold == k
        want = ref.predict_proba(scaler.transform(X[va]))
        np.testing.assert_allclose(res.oof_probs[va], want, atol=2e-4)
        assert res.metrics["folds"][k]["best_epoch"] == 0


def _waf(est, X, y):  # weighted F1 as a plain callable (sklearn 1.9's string F1 scorers break on 2 classes here)
    from sklearn.metrics import f1_score

    return f1_score(y, est.predict(X), average="weighted", zero_division=0)


@pytest.mark.parametrize("scoring,sk_scoring", [("waf", _waf), ("log_loss", "neg_log_loss")])
def test_linear_inner_cv_is_grouped_like_the_folds(scoring, sk_scoring):
    """With group ids the inner CV that chooses C keeps each group on one side, and the fit equals
    sklearn's LogisticRegressionCV given the same StratifiedGroupKFold splits."""
    import torch
    from sklearn.model_selection import StratifiedGroupKFold

    from semimer.models import build_model

    cs = [0.01, 0.1, 1.0]
    cfg = load_config(None, ["model.name=linear", f"model.linear_cs={cs}", f"model.linear_scoring={scoring}"])
    rng = np.random.default_rng(1)
    n, groups = 120, np.repeat(np.arange(30), 4)  # 30 dialogues of 4 utterances, near-duplicates inside one
    centre = rng.normal(size=(30, 6))
    x = (centre[groups] + 0.05 * rng.normal(size=(n, 6))).astype(np.float32)
    y = (centre[groups, 0] + 0.3 * rng.normal(size=n) > 0).astype(np.int64) * 2  # classes 0 and 2 of 3
    model = build_model("linear", {"audio": 6}, 3, cfg.model)
    xt = {"audio": torch.from_numpy(x)}
    model.standardizer.fit(xt)
    info = model.fit_direct(xt, y, seed=7, groups=[f"d{g}" for g in groups])
    assert info["inner_grouped"] and info["inner_folds"] == 5
    z = StandardScaler().fit_transform(x.astype(np.float64))
    splits = list(StratifiedGroupKFold(5, shuffle=True, random_state=7).split(z, y, [f"d{g}" for g in groups]))
    for tr, te in splits:
        assert not set(groups[tr]) & set(groups[te])
    ref = LogisticRegressionCV(Cs=cs, l1_ratios=(0.0,), cv=splits, scoring=sk_scoring, max_iter=3000,
                               use_legacy_attributes=False).fit(z, y)
    assert info["C"] == float(np.ravel(ref.C_)[0])
    got = model(xt)["probs"].detach().numpy()
    np.testing.assert_allclose(got[:, [0, 2]], ref.predict_proba(z), atol=1e-3)
    with pytest.raises(ValueError, match="group ids"):
        model.fit_direct(xt, y, seed=7, groups=["a"] * 3)
    assert not model.fit_direct(xt, y, seed=7)["inner_grouped"]


def test_linear_binary_and_absent_classes_map_to_the_full_class_order(data):
    """Two classes present out of six: probabilities equal sklearn's binary model, absent classes ~0."""
    import torch

    from semimer.models import build_model

    cfg = load_config(None, ["model.name=linear", "model.linear_cs=[0.5]"])
    rng = np.random.default_rng(0)
    x = {"audio": rng.normal(size=(80, 5)).astype(np.float32)}
    y = np.where(x["audio"][:, 0] + 0.5 * rng.normal(size=80) > 0, 4, 1)
    model = build_model("linear", {"audio": 5}, 6, cfg.model)
    xt = {"audio": torch.from_numpy(x["audio"])}
    model.standardizer.fit(xt)
    info = model.fit_direct(xt, y, seed=0)
    assert info["C"] == 0.5
    got = model(xt)["probs"].detach().numpy()
    ref = LogisticRegression(C=0.5, max_iter=3000).fit(StandardScaler().fit_transform(x["audio"]), y)
    want = ref.predict_proba(StandardScaler().fit_transform(x["audio"]))
    np.testing.assert_allclose(got[:, [1, 4]], want, atol=1e-3)  # lbfgs tolerance: refit vs a fresh fit
    assert got[:, [0, 2, 3, 5]].max() < 1e-9


def test_linear_is_a_vote_member_and_rejects_bad_settings(data, tmp_path):
    from semimer.models import build_model, list_models
    from semimer.semi.recipe import run_recipe

    assert "linear" in list_models()
    with pytest.raises(ValueError, match="linear_cs"):
        build_model("linear", {"audio": 3}, 6, load_config(None, ["model.linear_cs=[0]"]).model)
    with pytest.raises(ValueError, match="linear_class_weight"):
        build_model("linear", {"audio": 3}, 6, load_config(None, ["model.linear_class_weight=auto"]).model)
    with pytest.raises(ValueError, match="linear_scoring"):
        load_config(None, ["model.linear_scoring=accuracy"])
    cfg = load_config(None, [f"data.root={data.root}", "recipe.vote_members=[attention,linear]", "self_train.rounds=0",
                             "train.epochs=2", "train.folds=3", "train.progress=false", "model.hidden=16"])
    s = run_recipe(data, cfg, tmp_path / "run")
    assert set(s["stages"]["vote"]["weights"]) == {"attention", "linear"}
    assert (tmp_path / "run" / "member_linear" / "fold_0" / "model.safetensors").is_file()
