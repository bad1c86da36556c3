"""Tests of semimer.semi.voting: soft vote arithmetic, OOF-only weight fitting, name-matched run voting."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from sklearn.metrics import f1_score

from semimer import MER2024_CLASSES
from semimer.semi.voting import (_simplex_grid, _waf_fast, choose_ensemble, fit_vote_weights, nested_choice, nested_vote,
                                 soft_vote)

CLASSES = list(MER2024_CLASSES)
K = len(CLASSES)


def test_soft_vote_by_hand():
    p1 = np.array([[0.6, 0.4], [0.2, 0.8]])
    p2 = np.array([[0.0, 1.0], [1.0, 0.0]])
    # w = (3, 1): row 0 = (3·0.6 + 0, 3·0.4 + 1)/4 = (0.45, 0.55); row 1 = (0.6 + 1, 2.4)/4 = (0.4, 0.6)
    np.testing.assert_allclose(soft_vote([p1, p2], [3, 1]), [[0.45, 0.55], [0.4, 0.6]])
    np.testing.assert_allclose(soft_vote([p1, p2], [0.75, 0.25]), [[0.45, 0.55], [0.4, 0.6]])
    np.testing.assert_allclose(soft_vote([p1, p2]), [[0.3, 0.7], [0.6, 0.4]])  # equal weights
    np.testing.assert_allclose(soft_vote([p1, p2], [1, 0]), p1)  # a zero weight drops a model
    with pytest.raises(ValueError, match="positive sum"):
        soft_vote([p1, p2], [0, 0])
    with pytest.raises(ValueError, match=">= 0"):
        soft_vote([p1, p2], [1, -1])
    with pytest.raises(ValueError, match="2 probability"):
        soft_vote([p1, p2], [1, 1, 1])
    with pytest.raises(ValueError, match="shape"):
        soft_vote([p1, p2[:1]], [1, 1])


def test_simplex_grid_and_fast_waf():
    g = _simplex_grid(3, 10)
    assert len(g) == 66  # C(12, 2)
    np.testing.assert_allclose(g.sum(1), 1)
    assert len({tuple(r) for r in g.round(9)}) == 66
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, K, 200)
        p = np.where(rng.random(200) < 0.5, y, rng.integers(0, K, 200))
        assert _waf_fast(y, p, K) == pytest.approx(
            f1_score(y, p, labels=list(range(K)), average="weighted", zero_division=0), abs=1e-12)


def _perfect_and_random(n=120, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % K
    perfect = np.full((n, K), 0.02)
    perfect[np.arange(n), y] = 0.9  # right class 0.9, others 0.02
    random = np.eye(K)[rng.integers(0, K, n)]  # confident random one-hot
    return y, perfect, random


def test_perfect_model_gets_the_weight():
    y, perfect, random = _perfect_and_random()
    w, waf = fit_vote_weights([perfect, random], y)
    # where `random` is wrong the vote is right iff 0.9·w_p + 0.02·w_r > w_r + 0.02·w_p, i.e.
    # 0.88·w_p > 0.98·w_r ... with w_r = 1 - w_p: w_p > 0.98/1.86 = 0.527. On the 0.1 grid every
    # w_p ≥ 0.6 scores WAF 1; the tie rule picks the one closest to uniform: (0.6, 0.4).
    np.testing.assert_allclose(w, [0.6, 0.4], atol=1e-12)
    assert waf == pytest.approx(1.0)
    # order does not matter, and a third (random) model is ignored too
    w, waf = fit_vote_weights([random, perfect], y)
    np.testing.assert_allclose(w, [0.4, 0.6], atol=1e-12)
    rng = np.random.default_rng(1)
    other = rng.dirichlet(np.ones(K), len(y))
    w3, waf3 = fit_vote_weights([random, perfect, other], y)
    assert waf3 == pytest.approx(1.0) and w3.argmax() == 1 and w3.sum() == pytest.approx(1.0)


def test_ties_prefer_uniform_weights():
    y, perfect, _ = _perfect_and_random()
    w, waf = fit_vote_weights([perfect, perfect.copy()], y)  # identical models: every weight ties
    np.testing.assert_allclose(w, [0.5, 0.5])
    w, _ = fit_vote_weights([perfect] * 5, y)
    np.testing.assert_allclose(w, np.full(5, 0.2))
    w, _ = fit_vote_weights([perfect], y)
    np.testing.assert_allclose(w, [1.0])


def test_fit_vote_weights_validation():
    y, perfect, random = _perfect_and_random()
    with pytest.raises(ValueError, match="divide 1"):
        fit_vote_weights([perfect, random], y, grid_step=0.3)
    with pytest.raises(ValueError, match="shape"):
        fit_vote_weights([perfect, random], y[:-1])
    with pytest.raises(ValueError, match="outside"):
        fit_vote_weights([perfect, random], y + K)


def test_weights_are_fitted_on_oof_only():
    # fit_vote_weights cannot see candidate/test predictions: its inputs are OOF arrays and labels
    params = list(inspect.signature(fit_vote_weights).parameters)
    assert params == ["oof_list", "y", "grid_step"]
    # OOF: A perfect, B random; "test": B perfect, A random. Weights must favour A.
    y, a_oof, b_oof = _perfect_and_random(seed=3)
    y_test, b_test, a_test = _perfect_and_random(seed=4)
    w, _ = fit_vote_weights([a_oof, b_oof], y)
    assert w[0] > w[1]
    # a weight fitted on the test set would have favoured B: this is what leakage would look like
    w_leak, _ = fit_vote_weights([a_test, b_test], y_test)
    assert w_leak[1] > w_leak[0]


# --- the nested (out-of-sample) vote -------------------------------------------------------------


def test_nested_vote_fits_each_fold_on_the_other_folds_only():
    """Fold k's weights equal fit_vote_weights on the rows of the other folds (computed here
    independently), and fold k's voted rows are soft_vote of its own rows with those weights."""
    rng = np.random.default_rng(11)
    y = rng.integers(0, K, size=90)
    fold = np.arange(90) % 3
    members = [rng.dirichlet(np.ones(K), size=90) for _ in range(3)]
    members[0][np.arange(90), y] += 0.5 * (fold != 1)  # member 0 is good except on fold 1
    members = [m / m.sum(1, keepdims=True) for m in members]
    voted, weights = nested_vote(members, y, fold, grid_step=0.25)
    for k in range(3):
        w, _ = fit_vote_weights([m[fold != k] for m in members], y[fold != k], grid_step=0.25)
        np.testing.assert_allclose(weights[k], w)
        np.testing.assert_allclose(voted[fold == k], soft_vote([m[fold == k] for m in members], w))
    # changing fold 0's labels cannot change the weights used on fold 0
    y2 = np.where(fold == 0, (y + 1) % K, y)
    _, weights2 = nested_vote(members, y2, fold, grid_step=0.25)
    np.testing.assert_allclose(weights2[0], weights[0])


def test_nested_vote_of_noise_members_scores_at_chance_while_the_in_sample_fit_is_optimistic():
    """Members that are pure noise: weights fitted and scored on the same OOF rows look better than
    chance; the nested vote does not (averaged over repetitions)."""
    rng = np.random.default_rng(0)
    in_sample, nested = [], []
    for _ in range(30):
        y = rng.integers(0, K, size=60)
        fold = rng.permutation(np.arange(60) % 5)
        members = [rng.dirichlet(np.ones(K), size=60) for _ in range(4)]
        in_sample.append(fit_vote_weights(members, y, grid_step=0.25)[1])
        voted, _ = nested_vote(members, y, fold, grid_step=0.25)
        nested.append(f1_score(y, voted.argmax(1), average="weighted"))
    assert np.mean(in_sample) > np.mean(nested) + 0.03
    assert abs(np.mean(nested) - 1 / K) < 0.06


def test_choose_ensemble_prefers_a_member_the_vote_cannot_beat_and_nested_choice_is_recomputable():
    rng = np.random.default_rng(5)
    n = 120
    y = rng.integers(0, K, size=n)
    fold = np.arange(n) % 4
    good = np.full((n, K), 0.02)
    good[np.arange(n), y] = 0.9
    good /= good.sum(1, keepdims=True)
    noise = [rng.dirichlet(np.ones(K), size=n) for _ in range(2)]
    chosen, w, nested = choose_ensemble([good, *noise], y, fold, ["good", "n1", "n2"], grid_step=0.25)
    assert nested["good"] == pytest.approx(1.0) and nested["good"] >= max(nested.values()) - 1e-12
    assert chosen in ("vote", "good") and w[0] == max(w)
    # the nested procedure: fold k's rows get choose_ensemble(other folds) applied to them
    voted, per_fold = nested_choice([good, *noise], y, fold, ["good", "n1", "n2"], grid_step=0.25)
    for k in range(4):
        r = fold != k
        c, wk, _ = choose_ensemble([good[r], noise[0][r], noise[1][r]], y[r], fold[r], ["good", "n1", "n2"], 0.25)
        assert per_fold[k] == c
        np.testing.assert_allclose(voted[fold == k], soft_vote([good[fold == k], noise[0][fold == k], noise[1][fold == k]], wk))
    with pytest.raises(ValueError, match="three folds"):
        nested_choice([good], y, np.arange(n) % 2, ["good"])


def test_nested_choice_of_noise_members_scores_at_chance():
    rng = np.random.default_rng(1)
    wafs = []
    for _ in range(15):
        y = rng.integers(0, K, size=60)
        fold = rng.permutation(np.arange(60) % 5)
        members = [rng.dirichlet(np.ones(K), size=60) for _ in range(3)]
        voted, _ = nested_choice(members, y, fold, ["a", "b", "c"], grid_step=0.25)
        wafs.append(f1_score(y, voted.argmax(1), average="weighted"))
    assert abs(np.mean(wafs) - 1 / K) < 0.06
