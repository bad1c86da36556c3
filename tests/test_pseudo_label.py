"""Tests of semimer.semi.pseudo_label against hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from semimer import MER2024_CLASSES
from semimer.semi.pseudo_label import (
    Selection,
    adaptive_thresholds,
    published_thresholds,
    read_selection_csv,
    select_pseudo_labels,
    write_selection_csv,
)

CLASSES = list(MER2024_CLASSES)  # neutral angry happy sad worried surprise

# 8 clips, 6 classes; top class / top prob written on the right
PROBS = np.array([
    [0.995, 0.001, 0.001, 0.001, 0.001, 0.001],  # a: neutral 0.995 >= 0.99  keep
    [0.985, 0.003, 0.003, 0.003, 0.003, 0.003],  # b: neutral 0.985 <  0.99  drop
    [0.002, 0.990, 0.002, 0.002, 0.002, 0.002],  # c: angry   0.990 == 0.99  keep (>=)
    [0.02, 0.02, 0.02, 0.02, 0.90, 0.02],        # d: worried 0.90  >= 0.85  keep
    [0.03, 0.03, 0.03, 0.03, 0.03, 0.85],        # e: surprise 0.85 == 0.85  keep
    [0.03, 0.03, 0.03, 0.03, 0.04, 0.84],        # f: surprise 0.84 <  0.85  drop
    [0.06, 0.02, 0.02, 0.02, 0.88, 0.00],        # g: worried 0.88  >= 0.85  keep
    [0.10, 0.10, 0.70, 0.05, 0.03, 0.02],        # h: happy   0.70  <  0.99  drop
])
NAMES = list("abcdefgh")


def test_published_thresholds_by_name():
    np.testing.assert_allclose(published_thresholds(CLASSES), [0.99, 0.99, 0.99, 0.99, 0.85, 0.85])
    # by name, not by position; case-insensitive
    np.testing.assert_allclose(published_thresholds(["Surprise", "sad"]), [0.85, 0.99])
    with pytest.raises(ValueError, match="disgust"):
        published_thresholds(["neutral", "disgust"])
    np.testing.assert_allclose(published_thresholds(["neutral", "disgust"], default=0.9), [0.99, 0.9])


def test_select_with_published_thresholds_by_hand():
    sel = select_pseudo_labels(PROBS, NAMES, published_thresholds(CLASSES), CLASSES)
    assert isinstance(sel, Selection)
    assert sel.names == ["a", "c", "d", "e", "g"]  # input order kept
    assert sel.labels.tolist() == [0, 1, 4, 5, 4]
    np.testing.assert_allclose(sel.confidence, [0.995, 0.990, 0.90, 0.85, 0.88])
    assert sel.per_class_counts.tolist() == [1, 1, 0, 0, 2, 1]
    np.testing.assert_allclose(sel.thresholds, [0.99, 0.99, 0.99, 0.99, 0.85, 0.85])
    assert len(sel) == 5


def test_thresholds_as_dict_match_array_and_missing_class_errors():
    d = dict(zip(CLASSES, published_thresholds(CLASSES)))
    a = select_pseudo_labels(PROBS, NAMES, d, CLASSES)
    b = select_pseudo_labels(PROBS, NAMES, published_thresholds(CLASSES), CLASSES)
    assert a.names == b.names
    del d["sad"]
    with pytest.raises(ValueError, match="sad"):
        select_pseudo_labels(PROBS, NAMES, d, CLASSES)
    with pytest.raises(ValueError, match="unknown"):
        select_pseudo_labels(PROBS, NAMES, {**dict(zip(CLASSES, [0.5] * 6)), "fear": 0.5}, CLASSES)


def test_argmax_tie_goes_to_first_index():
    probs = np.array([[0.5, 0.5, 0, 0, 0, 0]])
    sel = select_pseudo_labels(probs, ["x"], [0.5, 0.9, 0.9, 0.9, 0.9, 0.9], CLASSES)
    assert sel.labels.tolist() == [0]  # predicted neutral (first of the tie), τ_neutral = 0.5 -> kept
    sel = select_pseudo_labels(probs, ["x"], [0.9, 0.5, 0.9, 0.9, 0.9, 0.9], CLASSES)
    assert sel.names == []  # would pass as angry, but the prediction is neutral


def test_float32_round_trip_still_reaches_threshold():
    # float32(0.7) = 0.69999999 < 0.7; a prediction file read back must still pass τ = 0.7
    probs = np.array([[0.7, 0.3, 0, 0, 0, 0]], dtype=np.float32)
    assert float(probs[0, 0]) < 0.7
    assert select_pseudo_labels(probs, ["x"], [0.7] * 6, CLASSES).names == ["x"]


def test_cap_keeps_most_confident_ties_by_name():
    probs = np.array([
        [0.90, 0.10, 0, 0, 0, 0],  # p  0.90
        [0.95, 0.05, 0, 0, 0, 0],  # q  0.95
        [0.90, 0.10, 0, 0, 0, 0],  # m  0.90 (tie with p -> "m" < "p" wins)
        [0.10, 0.90, 0, 0, 0, 0],  # z  angry
    ])
    names = ["p", "q", "m", "z"]
    sel = select_pseudo_labels(probs, names, [0.5] * 6, CLASSES, max_per_class=2)
    assert sel.names == ["q", "m", "z"]  # neutral capped to q (0.95) and m (tie by name); input order
    assert sel.per_class_counts.tolist() == [2, 1, 0, 0, 0, 0]
    # the result does not depend on row order
    perm = [3, 2, 1, 0]
    sel2 = select_pseudo_labels(probs[perm], [names[i] for i in perm], [0.5] * 6, CLASSES, max_per_class=2)
    assert sorted(sel2.names) == sorted(sel.names)
    # 0 = no cap
    assert select_pseudo_labels(probs, names, [0.5] * 6, CLASSES, max_per_class=0).names == names


def test_exclude_skips_before_cap():
    sel = select_pseudo_labels(PROBS, NAMES, published_thresholds(CLASSES), CLASSES, exclude={"d", "a"})
    assert sel.names == ["c", "e", "g"]
    assert sel.per_class_counts.tolist() == [0, 1, 0, 0, 1, 1]
    # cap 1 on worried: d (0.90) is excluded, so g (0.88) is the one kept
    sel = select_pseudo_labels(PROBS, NAMES, published_thresholds(CLASSES), CLASSES, max_per_class=1, exclude={"d"})
    assert "g" in sel.names and "d" not in sel.names


@pytest.mark.parametrize("bad, msg", [
    (np.array([[0.5, 0.6, 0, 0, 0, 0]]), "sum to 1"),
    (np.array([[np.nan, 1, 0, 0, 0, 0]]), "NaN"),
    (np.array([[-0.1, 1.1, 0, 0, 0, 0]]), "negative"),
    (np.array([0.5, 0.5, 0, 0, 0, 0]), "2-D"),
    (np.array([[0.5, 0.5]]), "columns"),
])
def test_invalid_probs_raise(bad, msg):
    names = ["x"] * (len(bad) if bad.ndim == 2 else 1)
    with pytest.raises(ValueError, match=msg):
        select_pseudo_labels(bad, names, [0.5] * 6, CLASSES)


def test_invalid_shapes_and_thresholds_raise():
    with pytest.raises(ValueError, match="names"):
        select_pseudo_labels(PROBS, NAMES[:-1], [0.5] * 6, CLASSES)
    with pytest.raises(ValueError, match="duplicate"):
        select_pseudo_labels(PROBS, ["a"] * 8, [0.5] * 6, CLASSES)
    with pytest.raises(ValueError, match="shape"):
        select_pseudo_labels(PROBS, NAMES, [0.5] * 5, CLASSES)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        select_pseudo_labels(PROBS, NAMES, [1.5] * 6, CLASSES)
    with pytest.raises(ValueError, match="base_tau"):
        adaptive_thresholds(PROBS, 0.0, 6)
    with pytest.raises(ValueError, match="base_tau"):
        adaptive_thresholds(PROBS, 1.2, 6)


# --- FlexMatch adaptive thresholds -----------------------------------------------------------

# K = 3, τ = 0.9
ADAPT = np.array([
    [0.95, 0.03, 0.02],  # pred 0, confident
    [0.92, 0.05, 0.03],  # pred 0, confident
    [0.96, 0.02, 0.02],  # pred 0, confident
    [0.05, 0.91, 0.04],  # pred 1, confident
    [0.50, 0.30, 0.20],  # unused (0.50 < 0.9)
    [0.20, 0.20, 0.60],  # unused (pred 2 but 0.60 < 0.9)
])


def test_adaptive_thresholds_by_hand_max_sigma_dominates():
    # σ = [3, 1, 0]; N_unused = 2; denominator max(max σ = 3, 2) = 3; β = [1, 1/3, 0]
    # convex M(β) = β/(2-β): [1/1, (1/3)/(5/3) = 1/5, 0]  ->  T = 0.9·M = [0.9, 0.18, 0]
    # linear M(β) = β:                                    ->  T = [0.9, 0.3, 0]
    np.testing.assert_allclose(adaptive_thresholds(ADAPT, 0.9, 3), [0.9, 0.18, 0.0], atol=1e-12)
    np.testing.assert_allclose(adaptive_thresholds(ADAPT, 0.9, 3, mapping="linear"), [0.9, 0.3, 0.0], atol=1e-12)


def test_adaptive_thresholds_by_hand_warmup_unused_dominates():
    probs = np.vstack([ADAPT, [[0.4, 0.3, 0.3], [0.3, 0.3, 0.4]]])
    # σ = [3, 1, 0]; N_unused = 4 > max σ = 3 (warm-up: denominator 4); β = [3/4, 1/4, 0]
    # convex: (3/4)/(5/4) = 3/5 -> 0.54 ; (1/4)/(7/4) = 1/7 -> 0.9/7 ; 0
    # linear: 0.675, 0.225, 0
    np.testing.assert_allclose(adaptive_thresholds(probs, 0.9, 3), [0.54, 0.9 / 7, 0.0], atol=1e-12)
    np.testing.assert_allclose(adaptive_thresholds(probs, 0.9, 3, mapping="linear"), [0.675, 0.225, 0.0], atol=1e-12)


def test_adaptive_thresholds_floor_mapping_and_empty():
    np.testing.assert_allclose(adaptive_thresholds(ADAPT, 0.9, 3, min_threshold=0.5), [0.9, 0.5, 0.5])
    with pytest.raises(ValueError, match="mapping"):
        adaptive_thresholds(ADAPT, 0.9, 3, mapping="sqrt")
    with pytest.raises(ValueError, match="empty"):
        adaptive_thresholds(np.zeros((0, 3)), 0.9, 3)
    # a clip at exactly τ counts as confident (≥): σ = [1, 0, 0], N_unused = 0 -> β = [1, 0, 0]
    np.testing.assert_allclose(adaptive_thresholds(np.array([[0.9, 0.05, 0.05]]), 0.9, 3), [0.9, 0, 0])


def test_adaptive_thresholds_feed_selection():
    t = adaptive_thresholds(ADAPT, 0.9, 3)  # [0.9, 0.18, 0]
    sel = select_pseudo_labels(ADAPT, list("abcdef"), t, ["x", "y", "z"])
    # a,b,c (class 0 ≥ 0.9), d (class 1 ≥ 0.18), f (class 2, T = 0 accepts all); e: 0.5 < 0.9
    assert sel.names == ["a", "b", "c", "d", "f"]
    assert sel.per_class_counts.tolist() == [3, 1, 1]


# --- the CSV -----------------------------------------------------------------------------------


def test_selection_csv_appends_rounds(tmp_path):
    path = tmp_path / "pseudo.csv"
    th = published_thresholds(CLASSES)
    r1 = select_pseudo_labels(PROBS, NAMES, th, CLASSES, exclude={"d", "e", "g"})  # a, c
    write_selection_csv(path, r1, CLASSES, 1)
    assert path.read_text().splitlines()[0] == "name,discrete,confidence,round,fold"
    r2 = select_pseudo_labels(PROBS, NAMES, th, CLASSES, exclude=set(r1.names))  # d, e, g
    write_selection_csv(path, r2, CLASSES, 2)
    rec = read_selection_csv(path)
    assert rec.names == ["a", "c", "d", "e", "g"]
    assert rec.discrete == ["neutral", "angry", "worried", "surprise", "worried"]
    assert rec.rounds.tolist() == [1, 1, 2, 2, 2]
    np.testing.assert_allclose(rec.confidence, [0.995, 0.99, 0.9, 0.85, 0.88])
    assert rec.labels(CLASSES).tolist() == [0, 1, 4, 5, 4]
    assert rec.upto(1).names == ["a", "c"]
    # re-running round 1 replaces it (no duplicates), round 2 stays
    write_selection_csv(path, r1, CLASSES, 1)
    assert read_selection_csv(path).names == ["a", "c", "d", "e", "g"]
    # a clip already pseudo-labeled in another round is refused
    with pytest.raises(ValueError, match="another round"):
        write_selection_csv(path, r1, CLASSES, 3)
    # ... but the same clip may be pseudo-labeled for another fold (each fold has its own labeler)
    write_selection_csv(path, r1, CLASSES, 1, fold=2)
    rec = read_selection_csv(path)
    assert rec.for_fold(2).names == ["a", "c"] and rec.for_fold(0).names == ["a", "c", "d", "e", "g"]
    assert rec.folds.tolist() == [0, 0, 2, 2, 0, 0, 0] and rec.rounds.tolist() == [1, 1, 1, 1, 2, 2, 2]
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pseudo.csv"]


def test_empty_selection_and_bad_header(tmp_path):
    path = tmp_path / "pseudo.csv"
    empty = select_pseudo_labels(PROBS, NAMES, [1.0] * 6, CLASSES)
    assert empty.names == [] and empty.per_class_counts.tolist() == [0] * 6
    write_selection_csv(path, empty, CLASSES, 1)
    assert len(read_selection_csv(path)) == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("name,discrete\nx,neutral\n")
    with pytest.raises(ValueError, match="expected columns"):
        read_selection_csv(bad)


def test_fit_temperature_recovers_the_generating_temperature():
    """Labels drawn from softmax(z / T0) while the model reports softmax(z): the NLL-optimal
    temperature is T0. Checked against a brute-force grid of the NLL written out here."""
    from semimer.semi.pseudo_label import apply_temperature, fit_temperature

    rng = np.random.default_rng(0)
    z = rng.normal(size=(20000, 6)) * 2.0
    T0 = 0.5
    pz = np.exp(z / T0)
    pz /= pz.sum(1, keepdims=True)
    y = np.array([rng.choice(6, p=p) for p in pz])
    reported = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    T = fit_temperature(reported, y)
    grid = np.linspace(0.3, 0.8, 501)

    def nll(t):
        s = z / t
        s = s - s.max(1, keepdims=True)
        return -(s[np.arange(len(y)), y] - np.log(np.exp(s).sum(1))).mean()

    best = grid[np.argmin([nll(t) for t in grid])]
    assert abs(T - best) < 2e-3
    assert abs(T - T0) < 0.03
    # apply_temperature == softmax(log p / T), by hand for one row
    row = np.array([[0.5, 0.3, 0.2]])
    e = row[0] ** (1 / 0.5)
    np.testing.assert_allclose(apply_temperature(row, 0.5)[0], e / e.sum())


def test_select_topk_by_hand():
    from semimer.semi.pseudo_label import select_topk

    classes = ["a", "b", "c"]
    probs = np.array([[0.9, 0.05, 0.05],   # n0 -> a 0.9
                      [0.8, 0.1, 0.1],     # n1 -> a 0.8
                      [0.7, 0.2, 0.1],     # n2 -> a 0.7
                      [0.1, 0.6, 0.3],     # n3 -> b 0.6
                      [0.2, 0.75, 0.05],   # n4 -> b 0.75
                      [0.3, 0.3, 0.4],     # n5 -> c 0.4 (below min_confidence 0.5)
                      [0.05, 0.05, 0.9]])  # n6 -> c 0.9
    names = [f"n{i}" for i in range(7)]
    # n_total 6, prior (0.5, 1/3, 1/6): quotas a 3, b 2, c 1
    sel = select_topk(probs, names, [0.5, 1 / 3, 1 / 6], 6, classes, min_confidence=0.5)
    assert sel.names == ["n0", "n1", "n2", "n3", "n4", "n6"]
    assert sel.per_class_counts.tolist() == [3, 2, 1]
    # quotas bind: prior (1/6, 1/6, 2/3) -> a 1 (most confident: n0), b 1 (n4), c 4 (only n6 qualifies)
    sel = select_topk(probs, names, [1 / 6, 1 / 6, 2 / 3], 6, classes, min_confidence=0.5, exclude={"n0"})
    assert sel.names == ["n1", "n4", "n6"]
    np.testing.assert_allclose(sel.thresholds, [0.8, 0.75, 0.9])
    with pytest.raises(ValueError, match="prior"):
        select_topk(probs, names, [0.5, 0.5, 0.5], 6, classes)


def test_recipe_topk_selection_follows_the_estimated_pool_prior(tiny_data, tmp_path):
    from semimer.config import load_config
    from semimer.data.layout import load_dataset
    from semimer.data.synth import FEATURE_NAMES
    from semimer.semi.recipe import run_recipe

    ds, test_labels = tiny_data
    data = load_dataset(ds, FEATURE_NAMES)
    cfg = load_config(None, [f"data.root={ds}", "recipe.vote_members=[attention]", "train.epochs=3", "train.folds=2",
                             "train.progress=false", "model.hidden=16", "self_train.selection=topk",
                             "self_train.topk_fraction=0.2", "self_train.min_confidence=0.0", "self_train.rounds=2"])
    s = run_recipe(data, cfg, tmp_path / "run", test_labels)
    pool = len([n for n in data.unlabeled if n not in set(data.labeled)])
    r1 = s["pseudo_labels_per_round"]["1"]
    for k, counts in enumerate(r1["per_fold"]):
        prior = np.array(r1["pool_priors"][k])
        assert sum(prior) == pytest.approx(1, abs=1e-3)
        quota = np.round(round(0.2 * pool) * prior)  # a class gets at most its share (fewer if fewer are predicted as it)
        assert 0 < sum(counts) <= round(0.2 * pool) + len(counts) and (np.array(counts) <= quota + 1e-9).all()
    r2 = s["pseudo_labels_per_round"]["2"]
    assert sum(map(sum, r2["per_fold"])) > 0 and r2["accuracy"] is not None


def test_head_agreement_counts_and_agreement_selection(tiny_data, tmp_path):
    import torch

    from semimer.config import load_config
    from semimer.data.layout import load_dataset
    from semimer.data.synth import FEATURE_NAMES
    from semimer.models import build_model
    from semimer.semi.recipe import run_recipe
    from semimer.train.fit import predict_tensors

    cfg = load_config(None, ["model.hidden=8"])
    torch.manual_seed(0)
    model = build_model("mrccl", {"audio": 4, "text": 3}, 5, cfg.model).eval()
    feats = {"audio": torch.randn(30, 4), "text": torch.randn(30, 3)}
    probs, agree = predict_tensors(model, feats, batch_size=7, agreement=True)
    with torch.no_grad():
        out = model(feats)
    top = out["probs"].argmax(-1)
    want = sum((h.argmax(-1) == top).long() for h in out["head_logits"].values()).numpy()
    np.testing.assert_array_equal(agree, want)
    np.testing.assert_allclose(probs, out["probs"].numpy(), atol=1e-6)
    assert predict_tensors(build_model("attention", {"audio": 4, "text": 3}, 5, cfg.model), feats, agreement=True)[1] is None

    ds, _ = tiny_data
    data = load_dataset(ds, FEATURE_NAMES)
    every_clip = [f"self_train.thresholds.{c}=0.0" for c in ("neutral", "angry", "happy", "sad", "worried", "surprise")]
    base = [f"data.root={ds}", "recipe.vote_members=[mrccl]", "pretrain.enabled=false", "train.epochs=2", "train.folds=2",
            "train.progress=false", "model.hidden=16", "self_train.rounds=1", *every_clip]
    s_all = run_recipe(data, load_config(None, base), tmp_path / "all")
    s_agree = run_recipe(data, load_config(None, [*base, "self_train.min_heads_agree=4"]), tmp_path / "agree")
    n_all = sum(map(sum, s_all["pseudo_labels_per_round"]["1"]["per_fold"]))
    n_agree = sum(map(sum, s_agree["pseudo_labels_per_round"]["1"]["per_fold"]))
    assert 0 < n_agree < n_all
    # every clip kept for fold 0 has all four heads agreeing under fold 0's round-0 model
    from semimer.models.checkpoint import load_model

    m0, _ = load_model(tmp_path / "agree" / "round_0" / "fold_0")
    import csv
    with open(tmp_path / "agree" / "pseudo_labels.csv") as fh:
        names = [r["name"] for r in csv.DictReader(fh) if r["fold"] == "0"]
    x = {m: torch.from_numpy(v) for m, v in data.features(names).items()}
    _, a = predict_tensors(m0, x, agreement=True)
    assert (a == 4).all()
