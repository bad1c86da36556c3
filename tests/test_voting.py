"""Tests of semimer.semi.voting: soft vote arithmetic, OOF-only weight fitting, name-matched run voting."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from sklearn.metrics import f1_score

from semimer import MER2024_CLASSES
from semimer.eval.predictions import write_predictions
from semimer.semi.voting import _simplex_grid, _waf_fast, fit_vote_weights, soft_vote, vote_runs

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


def test_coordinate_ascent_with_many_models():
    y, perfect, random = _perfect_and_random()
    rng = np.random.default_rng(2)
    models = [np.eye(K)[rng.integers(0, K, len(y))] for _ in range(4)] + [perfect]
    w, waf = fit_vote_weights(models, y)  # 5 models -> coordinate ascent from equal weights
    assert waf == pytest.approx(1.0)
    assert w.argmax() == 4 and w.sum() == pytest.approx(1.0) and (w >= 0).all()
    w2, _ = fit_vote_weights(models, y, method="coordinate", seed=0)
    np.testing.assert_array_equal(w, w2)  # deterministic
    wg, wafg = fit_vote_weights(models[-3:], y, method="grid")
    wc, wafc = fit_vote_weights(models[-3:], y, method="coordinate")
    assert wafg == pytest.approx(1.0) and wafc == pytest.approx(1.0)


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
    with pytest.raises(ValueError, match="method"):
        fit_vote_weights([perfect, random], y, method="bayes")


def test_weights_are_fitted_on_oof_only():
    # fit_vote_weights cannot see candidate/test predictions: its inputs are OOF arrays and labels
    params = list(inspect.signature(fit_vote_weights).parameters)
    assert params == ["oof_list", "y", "grid_step", "method", "seed"]
    # OOF: A perfect, B random; "test": B perfect, A random. Weights must favour A.
    y, a_oof, b_oof = _perfect_and_random(seed=3)
    y_test, b_test, a_test = _perfect_and_random(seed=4)
    w, _ = fit_vote_weights([a_oof, b_oof], y)
    assert w[0] > w[1]
    # a weight fitted on the test set would have favoured B: this is what leakage would look like
    w_leak, _ = fit_vote_weights([a_test, b_test], y_test)
    assert w_leak[1] > w_leak[0]


# --- run folders on disk ------------------------------------------------------------------------


def _write_run(d, oof_names, oof_probs, y, cand_names, cand_probs, order=None, cand_order=None, classes=CLASSES):
    order = np.arange(len(oof_names)) if order is None else np.asarray(order)
    cand_order = np.arange(len(cand_names)) if cand_order is None else np.asarray(cand_order)
    write_predictions(d / "oof.csv", [oof_names[i] for i in order], oof_probs[order], classes,
                      extra={"true": [CLASSES[int(y[i])] for i in order], "fold": [int(i) % 5 for i in order]})
    write_predictions(d / "predictions.csv", [cand_names[i] for i in cand_order], cand_probs[cand_order], classes)


@pytest.fixture
def two_runs(tmp_path):
    """Run A is perfect on OOF and random on candidates, run B the reverse; rows in different orders."""
    y, a_oof, b_oof = _perfect_and_random(n=60, seed=5)
    y_c, b_cand, a_cand = _perfect_and_random(n=30, seed=6)
    oof_names = [f"L{i:03d}" for i in range(len(y))]
    cand_names = [f"C{i:03d}" for i in range(len(y_c))]
    rng = np.random.default_rng(7)
    a, b = tmp_path / "runA", tmp_path / "runB"
    _write_run(a, oof_names, a_oof, y, cand_names, a_cand)
    _write_run(b, oof_names, b_oof, y, cand_names, b_cand, order=rng.permutation(len(y)),
               cand_order=rng.permutation(len(y_c)))
    return a, b, dict(y=y, a_oof=a_oof, b_oof=b_oof, a_cand=a_cand, b_cand=b_cand,
                      oof_names=oof_names, cand_names=cand_names)


def test_vote_runs_matches_rows_by_name(two_runs):
    a, b, t = two_runs
    res = vote_runs([a, b], weights=[0.5, 0.5])
    assert res.names == t["cand_names"] and res.oof_names == t["oof_names"]  # first run's order
    # files store 6 decimals (float32): compare against the in-memory arrays at that precision
    np.testing.assert_allclose(res.probs, 0.5 * t["a_cand"] + 0.5 * t["b_cand"], atol=2e-6)
    np.testing.assert_allclose(res.oof_probs, 0.5 * t["a_oof"] + 0.5 * t["b_oof"], atol=2e-6)
    assert res.oof_labels.tolist() == t["y"].tolist()
    assert res.run_waf[0] == pytest.approx(1.0) and res.run_waf[1] < 0.5
    assert res.classes == CLASSES


def test_vote_runs_fits_on_oof_and_ignores_candidate_rows(two_runs, tmp_path):
    a, b, t = two_runs
    res = vote_runs([a, b])
    assert res.weights[0] > res.weights[1]  # A is better on OOF although B is better on candidates
    np.testing.assert_allclose(res.weights, [0.6, 0.4], atol=1e-12)
    assert res.voted_waf == pytest.approx(1.0)
    # shuffle B's candidate rows (and change its candidate probabilities): same weights
    rng = np.random.default_rng(11)
    perm = rng.permutation(len(t["cand_names"]))
    write_predictions(b / "predictions.csv", [t["cand_names"][i] for i in perm],
                      rng.dirichlet(np.ones(K), len(perm)), CLASSES)
    res2 = vote_runs([a, b])
    np.testing.assert_array_equal(res2.weights, res.weights)
    assert res2.names == res.names


def test_vote_runs_errors_name_the_runs(two_runs):
    a, b, t = two_runs
    write_predictions(b / "predictions.csv", t["cand_names"][:-1], t["b_cand"][:-1], CLASSES)
    with pytest.raises(ValueError, match=r"runA.*runB|runB.*runA") as exc:
        vote_runs([a, b])
    assert t["cand_names"][-1] in str(exc.value)


def test_vote_runs_class_columns_by_name_and_y_labels(two_runs, tmp_path):
    a, b, t = two_runs
    # run B written with its class columns in another order: matched by class name
    perm = [5, 4, 3, 2, 1, 0]
    c = tmp_path / "runB_perm"
    _write_run(c, t["oof_names"], t["b_oof"][:, perm], t["y"], t["cand_names"], t["b_cand"][:, perm],
               classes=[CLASSES[i] for i in perm])
    r1, r2 = vote_runs([a, b], weights=[1, 3]), vote_runs([a, c], weights=[1, 3])
    np.testing.assert_allclose(r1.probs, r2.probs, atol=1e-12)
    # y_labels overrides the `true` column (words or indices)
    ylab = {n: int(v) for n, v in zip(t["oof_names"], t["y"])}
    r3 = vote_runs([a, b], y_labels=ylab)
    np.testing.assert_allclose(r3.weights, [0.6, 0.4])
    with pytest.raises(ValueError, match="lacks"):
        vote_runs([a, b], y_labels={t["oof_names"][0]: 0})
