"""EM prior estimation (Saerens et al. 2002) against hand-computed steps and a known generative model."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from semimer.semi.prior_shift import adjust_to_prior, em_prior


def test_two_em_steps_by_hand():
    p = np.array([[0.9, 0.1], [0.2, 0.8]])
    # step 1 from (0.5, 0.5): weights 1, posteriors unchanged, prior = column means = (0.55, 0.45)
    prior, _, it = em_prior(p, np.array([0.5, 0.5]), max_iter=1)
    np.testing.assert_allclose(prior, [0.55, 0.45])
    assert it == 1
    # step 2: row 1 -> 0.9·0.55 / (0.9·0.55 + 0.1·0.45) = 0.495 / 0.54; row 2 -> 0.11 / 0.47
    prior, adjusted, _ = em_prior(p, np.array([0.5, 0.5]), max_iter=2)
    first = (0.495 / 0.54 + 0.11 / 0.47) / 2
    np.testing.assert_allclose(prior, [first, 1 - first])
    np.testing.assert_allclose(adjusted[0, 0], 0.9 * first / (0.9 * first + 0.1 * (1 - first)))


def test_adjust_to_prior_is_bayes_rule():
    p = np.array([[0.6, 0.3, 0.1]])
    got = adjust_to_prior(p, [0.5, 0.25, 0.25], [0.2, 0.4, 0.4])
    raw = np.array([0.6 * 0.2 / 0.5, 0.3 * 0.4 / 0.25, 0.1 * 0.4 / 0.25])
    np.testing.assert_allclose(got[0], raw / raw.sum())


def test_em_recovers_a_shifted_prior_from_exact_posteriors():
    """Two Gaussian classes N(-1, 1), N(1, 1); exact posteriors under a 50/50 training prior; the
    unlabeled sample is drawn 80/20. EM finds ~0.8, and the adjusted posteriors are the exact
    posteriors under the true prior."""
    rng = np.random.default_rng(0)
    n = 20000
    y = (rng.random(n) < 0.2).astype(int)
    x = rng.normal(np.where(y == 1, 1.0, -1.0), 1.0)
    lik = np.stack([norm.pdf(x, -1, 1), norm.pdf(x, 1, 1)], 1)
    post_train = lik / lik.sum(1, keepdims=True)
    prior, adjusted, _ = em_prior(post_train, np.array([0.5, 0.5]))
    assert prior[0] == pytest.approx(0.8, abs=0.02)
    exact = lik * np.array([0.8, 0.2])
    exact /= exact.sum(1, keepdims=True)
    assert np.abs(adjusted - exact).max() < 0.05


def test_bad_inputs():
    with pytest.raises(ValueError):
        em_prior(np.ones((3, 2)) / 2, np.array([1.0, 0.0]))
    with pytest.raises(ValueError):
        em_prior(np.ones((3, 2)) / 2, np.array([0.5, 0.3, 0.2]))


def test_recipe_reports_the_candidate_prior_and_applies_it_only_when_asked(tiny_data, tmp_path):
    import csv

    from semimer.config import load_config
    from semimer.data.layout import load_dataset
    from semimer.data.synth import FEATURE_NAMES
    from semimer.semi.recipe import run_recipe

    def probs(path):
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        return np.array([[float(r[k]) for k in r if k.startswith("prob_")] for r in rows])

    ds, test_labels = tiny_data
    data = load_dataset(ds, FEATURE_NAMES)
    base = [f"data.root={ds}", "recipe.vote_members=[attention]", "self_train.rounds=0", "train.epochs=2",
            "train.folds=3", "train.progress=false", "model.hidden=16"]
    a = run_recipe(data, load_config(None, base), tmp_path / "a", test_labels)
    b = run_recipe(data, load_config(None, [*base, "recipe.prior_shift=true"]), tmp_path / "b", test_labels)
    assert not a["prior_shift"]["applied"] and b["prior_shift"]["applied"]
    assert a["prior_shift"]["candidate_prior"] == b["prior_shift"]["candidate_prior"]
    assert sum(a["prior_shift"]["candidate_prior"].values()) == pytest.approx(1, abs=1e-3)
    cand, oof = probs(tmp_path / "a" / "predictions.csv"), probs(tmp_path / "a" / "oof.csv")
    _, want, _ = em_prior(cand, oof.mean(0))
    np.testing.assert_allclose(probs(tmp_path / "b" / "predictions.csv"), want, atol=1e-4)
    assert b["final"]["test"]["waf"] == pytest.approx(a["prior_shift"]["test_with"])
    assert a["final"]["cv_waf"] == b["final"]["cv_waf"]  # CV is never adjusted
