"""Tests of semimer.data.folds (seeded stratified K-fold) and semimer.train.oversample (minority oversampling).

The oversampling tests live here until ``tests/test_oversample.py`` exists: both modules decide
which labeled clips a training fold sees.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from semimer.data.folds import assign_folds, load_folds, save_folds
from semimer.train.oversample import oversample_indices

# the MER2024 label counts, scaled down 10x (surprise keeps 19 clips)
COUNTS = [125, 121, 104, 73, 62, 19]
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(6), COUNTS))


def test_folds_are_seeded():
    a = assign_folds(LABELS, 5, seed=0)
    assert np.array_equal(a, assign_folds(LABELS, 5, seed=0))
    b = assign_folds(LABELS, 5, seed=1)
    assert not np.array_equal(a, b)
    assert (a != b).mean() > 0.5


@pytest.mark.parametrize("k", [2, 5, 10])
def test_folds_are_stratified_and_a_partition(k):
    fold = assign_folds(LABELS, k, seed=3)
    assert fold.shape == LABELS.shape and fold.dtype == np.int64
    assert sorted(set(fold.tolist())) == list(range(k))  # every clip in exactly one fold 0..k-1
    for c, n in enumerate(COUNTS):
        per_fold = np.bincount(fold[LABELS == c], minlength=k)
        assert per_fold.sum() == n
        assert np.all(np.abs(per_fold - n / k) < 1), (c, per_fold, n / k)  # floor or ceil of n/k
    sizes = np.bincount(fold, minlength=k)
    assert sizes.max() - sizes.min() <= 6  # at most one clip per class apart


def test_folds_round_trip(tmp_path):
    names = [f"sample_{i:08d}" for i in range(len(LABELS))]
    classes = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
    fold = assign_folds(LABELS, 5, seed=0)
    save_folds(tmp_path / "folds.csv", names, LABELS, fold, classes)
    back = load_folds(tmp_path / "folds.csv")
    assert back == dict(zip(names, fold.tolist()))
    lines = (tmp_path / "folds.csv").read_text().splitlines()
    assert lines[0] == "name,discrete,fold"
    assert lines[1] == f"{names[0]},{classes[LABELS[0]]},{fold[0]}"


def test_too_few_clips_in_a_class():
    labels = np.array([0] * 10 + [1] * 10 + [2] * 3)
    with pytest.raises(ValueError, match=r"\[2\].*fewer than 5"):
        assign_folds(labels, 5)
    assert len(assign_folds(labels, 3)) == 23
    with pytest.raises(ValueError, match="n_folds"):
        assign_folds(labels, 1)


# --------------------------------------------------------------------------- oversampling
@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.3])
def test_oversample_counts(ratio):
    labels = np.repeat(np.arange(4), [40, 25, 7, 1])
    # target = ceil(ratio * 40): 40, 20, 12 ; classes below it are topped up to it, others untouched
    target = {1.0: 40, 0.5: 20, 0.3: 12}[ratio]
    expected = [max(n, target) for n in (40, 25, 7, 1)]
    idx = oversample_indices(labels, ratio, seed=0)
    assert np.bincount(labels[idx], minlength=4).tolist() == expected
    assert math.ceil(ratio * 40) == target


def test_oversample_keeps_originals_and_duplicates_within_class():
    rng = np.random.default_rng(5)
    labels = rng.permutation(np.repeat(np.arange(3), [30, 11, 4]))
    idx = oversample_indices(labels, 1.0, seed=7)
    assert len(idx) == 90
    counts = np.bincount(idx, minlength=len(labels))
    assert (counts >= 1).all()  # every original clip kept
    # every index points at a real clip; extra copies come from the same class, i.e. the class
    # totals are exactly 30 each and the duplicated clips all belong to the minority classes
    assert np.bincount(labels[idx]).tolist() == [30, 30, 30]
    assert set(labels[np.flatnonzero(counts > 1)].tolist()) <= {1, 2}
    assert counts[labels == 0].tolist() == [1] * 30
    # seeded, shuffled
    assert np.array_equal(idx, oversample_indices(labels, 1.0, seed=7))
    assert not np.array_equal(idx, oversample_indices(labels, 1.0, seed=8))
    assert not np.array_equal(np.sort(idx[:45]), np.arange(45))


def test_oversample_balanced_or_bad_ratio():
    labels = np.repeat(np.arange(3), 5)
    assert sorted(oversample_indices(labels, 1.0).tolist()) == list(range(15))
    for bad in (0, -0.5, 1.5):
        with pytest.raises(ValueError, match="ratio"):
            oversample_indices(labels, bad)


def test_grouped_folds_keep_every_group_in_one_fold_and_stay_roughly_stratified():
    from semimer.data.folds import assign_folds

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=300)
    groups = rng.integers(0, 60, size=300)
    fold = assign_folds(y, 5, seed=1, groups=groups)
    for g in np.unique(groups):
        assert len(set(fold[groups == g].tolist())) == 1
    assert set(fold.tolist()) == set(range(5))
    with pytest.raises(ValueError, match="distinct groups"):
        assign_folds(y, 5, groups=np.arange(300) % 3)


@pytest.mark.parametrize("grouped", [False, True])
def test_inner_split_is_a_stratified_partition_of_the_training_clips_only(grouped):
    from semimer.data.folds import assign_folds, inner_split

    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(4), [80, 60, 40, 20])
    groups = rng.integers(0, 50, size=len(y)) if grouped else None
    fold = assign_folds(y, 5, seed=0, groups=groups)
    tr = np.flatnonzero(fold != 0)
    fit, sel = inner_split(tr, y, 0.2, seed=7, groups=groups)
    assert sorted(np.concatenate([fit, sel]).tolist()) == tr.tolist() and not set(fit) & set(sel)
    assert not set(sel.tolist()) & set(np.flatnonzero(fold == 0).tolist())
    assert 0.1 < len(sel) / len(tr) < 0.3
    if grouped:
        assert not set(groups[fit].tolist()) & set(groups[sel].tolist())
    else:  # stratified: each class's share within 2 clips of its share of the training clips
        for c in range(4):
            assert abs((y[sel] == c).sum() - (y[tr] == c).mean() * len(sel)) <= 2
    again = inner_split(tr, y, 0.2, seed=7, groups=groups)
    assert np.array_equal(again[0], fit) and np.array_equal(again[1], sel)
