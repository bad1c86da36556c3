"""Tests of semimer.data.layout.load_dataset on hand-made data roots (both store layouts)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from semimer import MER2024_CLASSES
from semimer.data.layout import load_dataset
from semimer.data.pack import pack_folder

FEATURES = {"audio": "a-UTT", "text": "t-UTT"}
DIMS = {"a-UTT": 5, "t-UTT": 3}
# 12 labeled clips (2 per class), 6 unlabeled
LABELED = {f"lab_{i:02d}": MER2024_CLASSES[i % 6] for i in range(12)}
UNLABELED = [f"unl_{i:02d}" for i in range(6)]


def write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(r) for r in rows]) + "\n", encoding="utf-8")


def make_root(root, labels=LABELED, label_file="label-disdim.csv", column="discrete", skip=()):
    """A data root with both features for every clip except the (feature, clip) pairs in ``skip``."""
    rng = np.random.default_rng(0)
    arrays = {}
    for feat, dim in DIMS.items():
        folder = root / "features" / feat
        folder.mkdir(parents=True)
        for name in [*LABELED, *UNLABELED]:
            if (feat, name) in skip:
                continue
            arrays[feat, name] = rng.normal(size=dim).astype(np.float32)
            np.save(folder / f"{name}.npy", arrays[feat, name])
    write_csv(root / label_file, ["name", column], list(labels.items()))
    return arrays


@pytest.mark.parametrize("layout", ["npy", "packed", "packed-only"])
def test_load_dataset_on_both_layouts(tmp_path, layout):
    arrays = make_root(tmp_path)
    if layout != "npy":
        for feat in DIMS:
            pack_folder(tmp_path / "features" / feat, progress=False)
    if layout == "packed-only":
        shutil.rmtree(tmp_path / "features")
    data = load_dataset(tmp_path, FEATURES)
    kind = "npy-folder" if layout == "npy" else "packed"
    assert {m: s.kind for m, s in data.stores.items()} == {"audio": kind, "text": kind}
    assert data.dims() == {"audio": 5, "text": 3} and data.levels() == {"audio": "utt", "text": "utt"}
    assert data.labeled == sorted(LABELED)
    assert data.labels.tolist() == [MER2024_CLASSES.index(LABELED[n]) for n in sorted(LABELED)]
    assert data.labels.dtype == np.int64
    assert sorted(data.unlabeled) == UNLABELED
    assert data.candidates == data.unlabeled and data.candidate_file is None
    assert data.label_file == tmp_path / "label-disdim.csv"
    feats = data.features(["unl_03", "lab_07"])
    np.testing.assert_array_equal(feats["audio"], np.stack([arrays["a-UTT", "unl_03"], arrays["a-UTT", "lab_07"]]))
    np.testing.assert_array_equal(feats["text"], np.stack([arrays["t-UTT", "unl_03"], arrays["t-UTT", "lab_07"]]))
    assert data.summary()["class_counts"] == {c: 2 for c in MER2024_CLASSES}


@pytest.mark.parametrize("label_file", ["label-disdim.csv", "labels.csv"])
@pytest.mark.parametrize("column", ["discrete", "label"])
def test_label_file_names_and_columns(tmp_path, label_file, column):
    # labels in any case, with stray spaces, as users' CSVs have them
    labels = {n: f" {c.upper()} " if i % 2 else c for i, (n, c) in enumerate(LABELED.items())}
    make_root(tmp_path, labels=labels, label_file=label_file, column=column)
    data = load_dataset(tmp_path, FEATURES)
    assert data.label_file.name == label_file
    assert data.labels.tolist() == [MER2024_CLASSES.index(LABELED[n]) for n in sorted(LABELED)]


def test_label_disdim_wins_over_labels_csv_and_explicit_file_wins_over_both(tmp_path):
    make_root(tmp_path)
    only_two = {"lab_00": "sad", "lab_01": "happy"}
    write_csv(tmp_path / "labels.csv", ["name", "discrete"], list(only_two.items()))
    assert load_dataset(tmp_path, FEATURES).label_file.name == "label-disdim.csv"
    data = load_dataset(tmp_path, FEATURES, label_file="labels.csv")
    assert data.labeled == ["lab_00", "lab_01"] and data.labels.tolist() == [3, 2]
    assert set(data.unlabeled) == set(LABELED) - set(only_two) | set(UNLABELED)


def test_empty_label_rows_are_unlabeled(tmp_path):
    labels = dict(LABELED, unl_00="")
    make_root(tmp_path, labels=labels)
    data = load_dataset(tmp_path, FEATURES)
    assert "unl_00" not in data.labeled and "unl_00" in data.unlabeled


def test_unknown_label_names_file_line_and_label(tmp_path):
    labels = dict(LABELED)
    labels["lab_04"] = "contempt"  # 5th data row -> line 6 of the file
    make_root(tmp_path, labels=labels)
    with pytest.raises(ValueError) as err:
        load_dataset(tmp_path, FEATURES)
    msg = str(err.value)
    assert f"{tmp_path / 'label-disdim.csv'}:6" in msg and "'contempt'" in msg and "'lab_04'" in msg


def test_duplicate_labeled_names(tmp_path):
    make_root(tmp_path)
    with open(tmp_path / "label-disdim.csv", "a", encoding="utf-8") as fh:
        fh.write("lab_03,angry\n")
    with pytest.raises(ValueError, match=r"label-disdim\.csv:14: clip 'lab_03' appears twice"):
        load_dataset(tmp_path, FEATURES)


def test_duplicate_candidate_names(tmp_path):
    make_root(tmp_path)
    write_csv(tmp_path / "candidates.csv", ["name"], [["unl_01"], ["unl_02"], ["unl_01"]])
    with pytest.raises(ValueError, match="'unl_01' appears twice"):
        load_dataset(tmp_path, FEATURES)


def test_missing_label_column_or_file(tmp_path):
    make_root(tmp_path, column="emotion_word")
    with pytest.raises(ValueError, match="none of the label columns"):
        load_dataset(tmp_path, FEATURES)
    (tmp_path / "label-disdim.csv").unlink()
    with pytest.raises(FileNotFoundError, match="no label file"):
        load_dataset(tmp_path, FEATURES)


def test_labeled_clip_missing_a_feature_names_the_clip_when_incomplete_is_error(tmp_path):
    make_root(tmp_path, skip={("t-UTT", "lab_05")})
    with pytest.raises(FileNotFoundError) as err:
        load_dataset(tmp_path, FEATURES, incomplete="error")
    msg = str(err.value)
    assert "lab_05" in msg and "t-UTT" in msg and "text" in msg and "data.incomplete=use" in msg


def test_a_clip_with_no_feature_at_all_is_an_error_naming_it(tmp_path):
    make_root(tmp_path, skip={("t-UTT", "lab_05"), ("a-UTT", "lab_05")})
    with pytest.raises(FileNotFoundError, match="lab_05.*none of the features|none of the features.*lab_05"):
        load_dataset(tmp_path, FEATURES)
    make_root(tmp_path / "c", skip={("t-UTT", "unl_03"), ("a-UTT", "unl_03")})
    write_csv(tmp_path / "c" / "candidates.csv", ["name"], [["unl_01"], ["unl_03"]])
    with pytest.raises(FileNotFoundError, match="candidate"):
        load_dataset(tmp_path / "c", FEATURES)


@pytest.mark.parametrize("layout", ["npy", "packed"])
def test_missing_modalities_are_used_with_masks_and_counted(tmp_path, layout):
    arrays = make_root(tmp_path, skip={("t-UTT", "lab_05"), ("a-UTT", "unl_02"), ("a-UTT", "unl_04")})
    if layout == "packed":
        for feat in DIMS:
            pack_folder(tmp_path / "features" / feat, progress=False)
    data = load_dataset(tmp_path, FEATURES)
    assert {s.kind for s in data.stores.values()} == {"npy-folder" if layout == "npy" else "packed"}
    assert "lab_05" in data.labeled and sorted(data.unlabeled) == UNLABELED
    assert data.missing == {"labeled": {"text": 1}, "unlabeled": {"audio": 2}, "candidates": {"audio": 2}}
    assert data.summary()["missing"] == data.missing
    names = ["lab_04", "lab_05", "unl_02"]
    np.testing.assert_array_equal(data.availability(names), [[True, True], [True, False], [False, True]])
    feats = data.features(names)
    assert np.isnan(feats["text"][1]).all() and np.isnan(feats["audio"][2]).all()
    np.testing.assert_array_equal(feats["audio"][:2], np.stack([arrays["a-UTT", "lab_04"], arrays["a-UTT", "lab_05"]]))
    np.testing.assert_array_equal(feats["text"][2], arrays["t-UTT", "unl_02"])
    # drop: incomplete labeled and pool clips leave (candidates stay: they must be predicted)
    dropped = load_dataset(tmp_path, FEATURES, incomplete="drop")
    assert "lab_05" not in dropped.labeled and len(dropped.labels) == len(LABELED) - 1
    assert "unl_02" not in dropped.unlabeled and len(dropped.unlabeled) == 4
    with pytest.raises(ValueError, match="data.incomplete"):
        load_dataset(tmp_path, FEATURES, incomplete="ignore")


def test_missing_frame_level_clips_have_zero_frames_from_both_stores(tmp_path):
    from semimer.data.ragged import StoredFrames, collate, to_tensors

    rng = np.random.default_rng(1)
    folder = tmp_path / "features" / "a-FRA"
    folder.mkdir(parents=True)
    for i, name in enumerate(["c0", "c1", "c3"]):
        np.save(folder / f"{name}.npy", rng.normal(size=(i + 2, 4)).astype(np.float32))
    from semimer.data.store import open_store

    for kind in ("npy", "packed"):
        if kind == "packed":
            pack_folder(folder, progress=False)
        store = open_store(tmp_path, "a-FRA")
        got = store.get_present(["c1", "c2", "c3"])
        assert [a.shape for a in got] == [(3, 4), (0, 4), (4, 4)]
        assert store.present_lengths(["c2", "c0"]).tolist() == [0, 2]
        lazy = StoredFrames(store, ["c2", "c0"])
        x, mask = lazy.pad()
        assert mask.sum(1).tolist() == [0, 2] and x.shape == (2, 2, 4)
        batch = collate(to_tensors({"audio": got}, "cpu", {"audio": 4}))
        assert batch["audio_mask"].sum(1).tolist() == [3, 0, 4]


def test_unlabeled_clip_missing_a_feature_leaves_the_pool_when_incomplete_is_error(tmp_path):
    make_root(tmp_path, skip={("a-UTT", "unl_02")})
    data = load_dataset(tmp_path, FEATURES, incomplete="error")
    assert "unl_02" not in data.unlabeled and "unl_02" not in data.candidates
    assert len(data.unlabeled) == 5 and any("1 unlabeled clip" in n for n in data.notes)


def test_candidates_default_and_explicit(tmp_path):
    make_root(tmp_path)
    assert sorted(load_dataset(tmp_path, FEATURES).candidates) == UNLABELED
    # the standard file name is found; its order is kept (never directory listing order)
    write_csv(tmp_path / "track_all_candidates.csv", ["name"], [["unl_04"], ["unl_00"]])
    data = load_dataset(tmp_path, FEATURES)
    assert data.candidates == ["unl_04", "unl_00"] and data.candidate_file.name == "track_all_candidates.csv"
    assert sorted(data.unlabeled) == UNLABELED  # the pool is unchanged
    # an explicit file (relative to the root) wins
    write_csv(tmp_path / "mine.csv", ["name"], [["unl_05"], ["unl_01"], ["unl_03"]])
    data = load_dataset(tmp_path, FEATURES, candidate_file="mine.csv")
    assert data.candidates == ["unl_05", "unl_01", "unl_03"]
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_dataset(tmp_path, FEATURES, candidate_file="nope.csv")


def test_candidate_without_a_feature_names_the_clip(tmp_path):
    make_root(tmp_path, skip={("a-UTT", "unl_03")})
    write_csv(tmp_path / "candidates.csv", ["name"], [["unl_01"], ["unl_03"]])
    with pytest.raises(FileNotFoundError, match="unl_03"):
        load_dataset(tmp_path, FEATURES, incomplete="error")


def test_custom_class_order(tmp_path):
    make_root(tmp_path, labels={"lab_00": "Calm", "lab_01": "excited", "lab_02": "calm", "unl_00": "tense"})
    classes = ["tense", "calm", "excited"]
    data = load_dataset(tmp_path, FEATURES, classes=classes)
    assert data.classes == ("tense", "calm", "excited")
    assert dict(zip(data.labeled, data.labels.tolist())) == {"lab_00": 1, "lab_01": 2, "lab_02": 1, "unl_00": 0}
    with pytest.raises(ValueError, match="'calm'"):  # not a MER2024 word
        load_dataset(tmp_path, FEATURES)


def test_missing_root_or_features(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(tmp_path / "nope", FEATURES)
    make_root(tmp_path)
    with pytest.raises(ValueError, match="no features"):
        load_dataset(tmp_path, {})
    with pytest.raises(FileNotFoundError, match="available: a-UTT, t-UTT"):
        load_dataset(tmp_path, {"audio": "a-UTT", "video": "v-UTT"})
