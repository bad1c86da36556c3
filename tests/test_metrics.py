"""Tests of semimer.eval.metrics against scikit-learn and hand-worked arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from semimer.eval.metrics import fmt, mean_std, scores, summarise


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_match_sklearn_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    y = rng.choice(6, size=300, p=[0.3, 0.25, 0.2, 0.12, 0.1, 0.03])
    p = np.where(rng.random(300) < 0.6, y, rng.integers(0, 6, size=300))
    classes = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
    s = scores(y, p, 6, classes)
    assert s["waf"] == pytest.approx(f1_score(y, p, average="weighted"), abs=1e-12)
    assert s["accuracy"] == pytest.approx(accuracy_score(y, p), abs=1e-12)
    assert s["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"), abs=1e-12)
    assert list(s["per_class_f1"]) == classes
    np.testing.assert_allclose(list(s["per_class_f1"].values()), f1_score(y, p, average=None), atol=1e-12)
    assert s["confusion"] == confusion_matrix(y, p).tolist()
    assert s["n"] == 300


def test_two_class_example_by_hand():
    # true:  0 0 0 0 0 0 1 1 1 1      (support 6 and 4)
    # pred:  0 0 0 0 1 1 1 1 1 0
    # class 0: TP 4, FP 1 (a true 1 predicted 0), FN 2 -> P 4/5, R 4/6, F1 = 2*4/(2*4+1+2) = 8/11
    # class 1: TP 3, FP 2, FN 1                      -> F1 = 2*3/(2*3+2+1) = 6/9 = 2/3
    # WAF = (6 * 8/11 + 4 * 2/3) / 10 ; accuracy = 7/10 ; macro = (8/11 + 2/3) / 2
    y = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    p = [0, 0, 0, 0, 1, 1, 1, 1, 1, 0]
    s = scores(y, p, 2, ["a", "b"])
    assert s["per_class_f1"] == {"a": pytest.approx(8 / 11), "b": pytest.approx(2 / 3)}
    assert s["waf"] == pytest.approx((6 * 8 / 11 + 4 * 2 / 3) / 10)
    assert s["accuracy"] == pytest.approx(0.7)
    assert s["macro_f1"] == pytest.approx((8 / 11 + 2 / 3) / 2)
    assert s["confusion"] == [[4, 2], [1, 3]]  # rows true, columns predicted


def test_classes_absent_from_the_labels_are_absent_not_zero():
    # 6 classes declared, only 0 and 1 present in truth or prediction: the rest have no F1 at all
    s = scores([0, 0, 1], [0, 1, 1], 6)
    assert list(s["per_class_f1"]) == ["0", "1", "2", "3", "4", "5"]
    assert s["per_class_f1"]["3"] is None and s["absent"] == ["2", "3", "4", "5"]
    # class 0: TP1 FN1 -> 2/3 ; class 1: TP1 FP1 -> 2/3 ; WAF = (2 * 2/3 + 1 * 2/3) / 3
    assert s["per_class_f1"]["0"] == pytest.approx(2 / 3) and s["per_class_f1"]["1"] == pytest.approx(2 / 3)
    assert s["waf"] == pytest.approx(2 / 3)
    assert s["macro_f1"] == pytest.approx(2 / 3)  # over the 2 present classes, not (2/3 + 2/3) / 6
    assert np.asarray(s["confusion"]).shape == (6, 6)


def test_absent_but_predicted_class_by_hand():
    # true: 0 0 1 1 1   pred: 0 2 1 1 0   (class 2 never true, predicted once)
    # class 0: TP1 FP1 FN1 -> F1 = 2/(2+1+1) = 1/2 ; class 1: TP2 FP0 FN1 -> F1 = 4/5
    # macro over present {0, 1} = (1/2 + 4/5) / 2 = 0.65  (scoring class 2 as 0 would give 0.4333)
    # WAF = (2 * 1/2 + 3 * 4/5) / 5 = 0.68 ; accuracy 3/5
    s = scores([0, 0, 1, 1, 1], [0, 2, 1, 1, 0], 3, ["a", "b", "c"])
    assert s["per_class_f1"] == {"a": pytest.approx(0.5), "b": pytest.approx(0.8), "c": None}
    assert s["absent"] == ["c"]
    assert s["macro_f1"] == pytest.approx(0.65)
    assert s["waf"] == pytest.approx(0.68)
    assert s["accuracy"] == pytest.approx(0.6)
    assert s["confusion"] == [[1, 0, 1], [1, 2, 0], [0, 0, 0]]


@pytest.mark.parametrize("seed", [0, 1])
def test_absent_classes_match_sklearn_over_present_labels(seed):
    # classes 3 and 5 never true, but predicted by the noise: sklearn's weighted F1 over all labels
    # equals ours (support 0 -> weight 0); macro-F1 equals sklearn's over the present labels only
    rng = np.random.default_rng(seed)
    y = rng.choice([0, 1, 2, 4], size=200, p=[0.4, 0.3, 0.2, 0.1])
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 6, size=200))
    assert {3, 5} & set(p.tolist())
    s = scores(y, p, 6)
    assert s["waf"] == pytest.approx(f1_score(y, p, average="weighted"), abs=1e-12)
    assert s["waf"] == pytest.approx(f1_score(y, p, labels=range(6), average="weighted", zero_division=0), abs=1e-12)
    assert s["macro_f1"] == pytest.approx(f1_score(y, p, labels=[0, 1, 2, 4], average="macro"), abs=1e-12)
    ref = f1_score(y, p, labels=[0, 1, 2, 4], average=None)
    assert [s["per_class_f1"][str(k)] for k in (0, 1, 2, 4)] == pytest.approx(list(ref), abs=1e-12)
    assert s["absent"] == ["3", "5"] and s["per_class_f1"]["5"] is None
    assert s["accuracy"] == pytest.approx(accuracy_score(y, p), abs=1e-12)


def test_mean_std_uses_the_sample_std():
    v = [0.80, 0.84, 0.86, 0.90]
    m = sum(v) / 4
    sample_std = math.sqrt(sum((x - m) ** 2 for x in v) / (4 - 1))
    assert mean_std(v) == {"mean": pytest.approx(0.85), "std": pytest.approx(sample_std), "n": 4}
    assert mean_std(v)["std"] != pytest.approx(np.std(v))  # not the population std
    assert mean_std([0.5]) == {"mean": 0.5, "std": 0.0, "n": 1}
    assert mean_std([0.5, None, 0.7]) == {"mean": pytest.approx(0.6), "std": pytest.approx(math.sqrt(0.02)), "n": 2}
    assert math.isnan(mean_std([])["mean"]) and mean_std([])["n"] == 0


def test_summarise_and_fmt():
    folds = [scores([0, 0, 1, 1], [0, 0, 1, 1], 2, ["a", "b"]),  # perfect
             scores([0, 0, 1, 1], [0, 1, 1, 1], 2, ["a", "b"])]  # a: 2/3, b: 4/5
    out = summarise(folds)
    assert set(out) == {"waf", "accuracy", "macro_f1", "per_class_f1"}
    assert out["accuracy"] == {"mean": pytest.approx(0.875), "std": pytest.approx(math.sqrt(2) * 0.125), "n": 2}
    assert out["per_class_f1"]["a"]["mean"] == pytest.approx((1 + 2 / 3) / 2)
    assert out["per_class_f1"]["b"]["std"] == pytest.approx(abs(1 - 0.8) / math.sqrt(2))
    waf2 = (2 * 2 / 3 + 2 * 0.8) / 4
    assert out["waf"]["mean"] == pytest.approx((1 + waf2) / 2)
    assert fmt({"mean": 0.86531, "std": 0.00414, "n": 5}) == "86.53 ± 0.41"


def test_summarise_averages_a_class_over_the_folds_where_it_is_present():
    # fold 1: a, b present ; fold 2: only a present (b predicted once) ; fold 3: perfect on a and b
    folds = [scores([0, 0, 1, 1], [0, 1, 1, 1], 3, ["a", "b", "c"]),  # a 2/3, b 4/5, macro 11/15
             scores([0, 0, 0, 0], [0, 0, 0, 1], 3, ["a", "b", "c"]),  # a: TP3 FN1 -> 6/7, b absent
             scores([0, 1], [0, 1], 3, ["a", "b", "c"])]              # a 1, b 1
    out = summarise(folds)
    assert out["per_class_f1"]["a"] == {"mean": pytest.approx((2 / 3 + 6 / 7 + 1) / 3),
                                        "std": pytest.approx(float(np.std([2 / 3, 6 / 7, 1], ddof=1))), "n": 3}
    assert out["per_class_f1"]["b"] == {"mean": pytest.approx(0.9), "std": pytest.approx(0.2 / math.sqrt(2)), "n": 2}
    assert out["per_class_f1"]["c"] is None  # absent from every fold
    # each fold's macro-F1 is over its own present classes: (2/3 + 4/5) / 2, 6/7, 1
    assert out["macro_f1"]["mean"] == pytest.approx(((2 / 3 + 0.8) / 2 + 6 / 7 + 1) / 3)
    assert fmt(out["per_class_f1"]["b"], show_n=True) == "90.00 ± 14.14 (n=2)"
    assert fmt(out["per_class_f1"]["c"]) == "–"
