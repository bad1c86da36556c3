"""`semimer predict` end to end: extract -> train -> predict new clips with the run folder.

One tiny run is built per module: 8 one-second clips (64x64, 4 fps, different tones), features
from offline extractors (logmel audio, face-hog video, hf-text with a tiny BERT built here), two
classes and 2 folds. Prediction must re-extract the same features and give exactly the ensemble's
probabilities on the stored features.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("cv2")
pytest.importorskip("transformers")
pytest.importorskip("skimage")

from conftest_media import TINY_RUN_AUDIO as AUDIO, TINY_RUN_VIDEO as VIDEO, make_corrupt, tiny_media_run  # noqa: E402

from semimer.cli import main  # noqa: E402
from semimer.io import read_csv, read_json, write_json  # noqa: E402

CLASSES = ["neutral", "happy"]
TEXTS = ["i am happy", "i am sad", "hello world", "我今天很开心", "我很难过", "hello", "happy happy !", "sad ."]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return tiny_media_run(tmp_path_factory.mktemp("predict"), TEXTS, CLASSES)


def _stored(t, names):
    from semimer.data.store import open_store

    return {m: np.stack([open_store(t["data"], f).get(n) for n in names]) for m, f in t["features"].items()}


def _fold_average(run, feats):
    """The run's own fold ensemble, computed independently of semimer.infer.predict."""
    import torch

    from semimer.models.checkpoint import load_model

    probs = []
    for k in range(2):
        model, meta = load_model(run / f"fold_{k}")
        assert meta["classes"] == CLASSES
        with torch.no_grad():
            probs.append(model({m: torch.as_tensor(x) for m, x in feats.items()})["probs"].numpy())
    return np.mean(probs, axis=0)


def test_one_clip_matches_stored_features_and_fold_average(trained, capsys):
    from semimer.infer.predict import load_ensemble, predict_clips, predict_features

    run = trained["run"]
    assert read_json(run / "ensemble.json")["classes"] == CLASSES
    assert main(["predict", str(trained["videos"] / "c3.mp4"), "--run", str(run), "--json",
                 "--transcript", TEXTS[3], "--device", "cpu"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["name"] == "c3" and list(rec["probabilities"]) == CLASSES
    got = np.array([rec["probabilities"][c] for c in CLASSES])
    assert rec["emotion"] == CLASSES[int(got.argmax())]

    stored = _stored(trained, ["c3"])
    ens = load_ensemble(run)
    assert len(ens.members) == 1 and len(ens.members[0][0]) == 2 and ens.members[0][1] == 1.0
    via_ensemble = predict_features(ens, stored)[0]
    independent = _fold_average(run, stored)[0]
    np.testing.assert_allclose(via_ensemble, independent, atol=1e-6)
    np.testing.assert_allclose(got, via_ensemble, atol=1e-5)  # re-extracted == stored features
    assert got.sum() == pytest.approx(1.0, abs=1e-5)
    # the comparison is sensitive: another transcript moves the probabilities far beyond 1e-5
    _, other, _ = predict_clips(run, [trained["videos"] / "c3.mp4"], {"c3": "hello world"}, device="cpu")
    assert np.abs(other[0] - via_ensemble).max() > 1e-4


def test_library_predict_clips_and_table(trained, capsys):
    from semimer.infer.predict import load_ensemble, predict_clips, predict_features

    names = ["c0", "c5"]
    paths = [trained["videos"] / f"{n}.mp4" for n in names]
    got_names, probs, failures = predict_clips(trained["run"], paths, {"c0": TEXTS[0], "c5": TEXTS[5]}, device="cpu")
    assert got_names == names and failures == []
    expected = predict_features(load_ensemble(trained["run"]), _stored(trained, names))
    np.testing.assert_allclose(probs, expected, atol=1e-5)

    assert main(["predict", str(paths[1]), "--run", str(trained["run"]), "--transcript", TEXTS[5]]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    emotion = CLASSES[int(expected[1].argmax())]
    assert lines[0] == f"c5: {emotion}"
    assert [ln.split()[0] for ln in lines[1:]] == sorted(CLASSES, key=lambda c: -expected[1][CLASSES.index(c)])


def test_folder_writes_csv_and_lists_failures(trained, tmp_path, capsys):
    from semimer.infer.predict import load_ensemble, predict_features

    folder = tmp_path / "new"
    folder.mkdir()
    for n in ("c1", "c6"):
        shutil.copy(trained["videos"] / f"{n}.mp4", folder / f"{n}.mp4")
    make_corrupt(folder / "bad.mp4")
    run = trained["run"]
    assert main(["predict", str(folder), "--run", str(run), "--transcripts", str(trained["transcripts"]),
                 "--no-progress"]) == 0
    cap = capsys.readouterr()
    assert "bad" in cap.err and "1 of 3 clip(s) could not be predicted" in cap.err
    out = run / "predict" / "new.csv"  # default: RUN/predict/<folder name>.csv
    rows = read_csv(out)
    assert [r["name"] for r in rows] == ["c1", "c6"]
    assert list(rows[0]) == ["name", "discrete", *(f"prob_{c}" for c in CLASSES)]
    expected = predict_features(load_ensemble(run), _stored(trained, ["c1", "c6"]))
    got = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in rows])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [r["discrete"] for r in rows] == [CLASSES[int(k)] for k in expected.argmax(1)]

    # --json prints a list; --out chooses the file
    assert main(["predict", str(folder), "--run", str(run), "--transcripts", str(trained["transcripts"]),
                 "--json", "--out", str(tmp_path / "p.csv"), "--no-progress"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in recs] == ["c1", "c6"] and len(read_csv(tmp_path / "p.csv")) == 2

    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    shutil.copy(folder / "bad.mp4", only_bad / "bad.mp4")
    assert main(["predict", str(only_bad), "--run", str(run), "--transcripts", str(trained["transcripts"]),
                 "--no-progress"]) == 1  # nothing could be predicted
    assert "bad" in capsys.readouterr().err


def test_features_dir_reads_stored_features(trained, capsys):
    from semimer.infer.predict import load_ensemble, predict_clips, predict_features

    assert main(["predict", "c2", "--run", str(trained["run"]), "--features-dir", str(trained["data"]), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    expected = predict_features(load_ensemble(trained["run"]), _stored(trained, ["c2"]))[0]
    np.testing.assert_allclose([rec["probabilities"][c] for c in CLASSES], expected, atol=1e-5)
    names, probs, failures = predict_clips(trained["run"], ["c2", "nope"], features_dir=trained["data"], device="cpu")
    assert names == ["c2"] and probs.shape == (1, 2) and failures[0][0] == "nope" and "nope" in failures[0][1]


def test_weighted_members(trained, tmp_path):
    """Soft vote over members with normalised weights, each member the mean of its folds."""
    from semimer.infer.predict import load_ensemble, predict_features

    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    shutil.copytree(run / "fold_0", run / "member_b" / "fold_0")  # a one-fold second member
    write_json(run / "ensemble.json", {"members": [{"dir": ".", "weight": 3.0}, {"dir": "member_b", "weight": 1.0}],
                                       "classes": CLASSES})
    ens = load_ensemble(run)
    assert [w for _, w in ens.members] == [0.75, 0.25]
    feats = _stored(trained, [f"c{i}" for i in range(8)])
    fold_avg = _fold_average(run, feats)
    import torch

    from semimer.models.checkpoint import load_model

    with torch.no_grad():
        f0 = load_model(run / "fold_0")[0]({m: torch.as_tensor(x) for m, x in feats.items()})["probs"].numpy()
    np.testing.assert_allclose(predict_features(ens, feats), 0.75 * fold_avg + 0.25 * f0, atol=1e-6)


def test_errors(trained, tmp_path, capsys):
    clip = str(trained["videos"] / "c0.mp4")
    assert main(["predict", clip, "--run", str(tmp_path / "missing"), "--transcript", "x"]) == 1
    err = capsys.readouterr().err
    assert "missing" in err and "does not exist" in err and "semimer train" in err

    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    (run / "features.json").unlink()
    assert main(["predict", clip, "--run", str(run), "--transcript", "x"]) == 1
    err = capsys.readouterr().err
    assert "features.json" in err and "semimer train" in err

    shutil.copy(trained["run"] / "features.json", run / "features.json")
    assert main(["predict", clip, "--run", str(run)]) == 1  # a text feature needs transcripts
    err = capsys.readouterr().err
    assert "--transcript" in err and trained["features"]["text"] in err

    feats = read_json(run / "features.json")
    feats["audio"]["extractor"] = None  # e.g. features made by another toolkit
    write_json(run / "features.json", feats)
    assert main(["predict", clip, "--run", str(run), "--transcript", "x"]) == 1
    err = capsys.readouterr().err
    assert f"feature {AUDIO} of run {run} was not made by `semimer extract`" in err and "--features-dir" in err
    # ... but stored features still work
    assert main(["predict", "c0", "--run", str(run), "--features-dir", str(trained["data"])]) == 0
    capsys.readouterr()

    assert main(["predict", str(trained["videos"]), "--run", str(trained["run"]), "--transcript", "x"]) == 1
    assert "--transcripts CSV" in capsys.readouterr().err



def test_frame_level_run_predicts_a_new_clip_by_re_extraction(trained, tmp_path, capsys):
    """A run on frame-level log-mels (T, 32) + utterance video: `semimer predict` re-extracts the
    frames from the video file and gives the probabilities of the stored (T, D) features."""
    import torch

    from semimer.models.checkpoint import load_model
    from semimer.data.store import open_store
    from semimer.infer.predict import load_ensemble, predict_features
    from semimer.data.ragged import Ragged, collate

    data = tmp_path / "data"
    shutil.copytree(trained["data"], data)
    assert main(["extract", str(trained["videos"]), "--out", str(data), "--audio", "logmel:n_mels=16,level=frame",
                 "--no-progress"]) == 0
    audio = "logmel16-FRA"
    assert open_store(data, audio).level == "frame"
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--audio", audio, "--video", VIDEO, "--text", "none", "--out", str(run),
                 f"data.classes=[{','.join(CLASSES)}]", "train.epochs=2", "train.folds=2", "train.progress=false",
                 "model.hidden=16", "model.head_hidden=8", "model.frame_heads=2", "model.keep_rate=0.5",
                 "model.prune_from_layer=0"]) == 0
    assert read_json(run / "features.json")["audio"]["level"] == "frame"
    capsys.readouterr()
    assert main(["predict", str(trained["videos"] / "c5.mp4"), "--run", str(run), "--json", "--device", "cpu"]) == 0
    rec = json.loads(capsys.readouterr().out)
    got = np.array([rec["probabilities"][c] for c in CLASSES])
    stored = {"audio": [open_store(data, audio).get("c5")], "video": open_store(data, VIDEO).get("c5")[None]}
    np.testing.assert_allclose(got, predict_features(load_ensemble(run), stored)[0], atol=1e-5)
    # independent of semimer.infer.predict: the two fold models on the padded batch, averaged
    batch = collate({"audio": Ragged.from_arrays(stored["audio"]), "video": torch.as_tensor(stored["video"])})
    with torch.no_grad():
        folds = [load_model(run / f"fold_{k}")[0](batch)["probs"].numpy()[0] for k in range(2)]
    np.testing.assert_allclose(got, np.mean(folds, axis=0), atol=1e-5)


def test_a_clip_missing_a_modality_is_predicted_from_the_others(trained, tmp_path, capsys):
    """Stored features with a gap: the clip is predicted from what it has (the fold models given an
    all-NaN row, i.e. attention renormalised over the present modalities), and the output says so;
    a clip with none of the run's modalities is a failure, and predict_features refuses it."""
    import shutil

    import torch

    from semimer.infer.predict import load_ensemble, predict_clips, predict_features

    data = tmp_path / "data"
    shutil.copytree(trained["data"], data)
    shutil.rmtree(data / "packed", ignore_errors=True)
    (data / "features" / VIDEO / "c2.npy").unlink()
    for f in trained["features"].values():
        (data / "features" / f / "c5.npy").unlink()
    missing: dict = {}
    names, probs, failures = predict_clips(trained["run"], ["c2", "c5", "c1"], features_dir=data, device="cpu",
                                           missing=missing)
    assert names == ["c2", "c1"] and [n for n, _ in failures] == ["c5"] and "none of the run's" in failures[0][1]
    assert set(missing) == {"c2"} and set(missing["c2"]) == {"video"} and VIDEO in missing["c2"]["video"]
    feats = _stored(trained, ["c2"])
    feats["video"][:] = np.nan
    np.testing.assert_allclose(probs[0], _fold_average(trained["run"], feats)[0], atol=1e-6)
    # attention over the present modalities: the fold models put no weight on the absent one
    from semimer.models.checkpoint import load_model

    model, _ = load_model(trained["run"] / "fold_0")
    with torch.no_grad():
        alpha = model({m: torch.as_tensor(x) for m, x in feats.items()})["attention"][0]
    assert alpha[2].item() == 0.0 and alpha.sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="none of the run's modalities"):
        predict_features(load_ensemble(trained["run"]), {m: np.full_like(x, np.nan) for m, x in feats.items()})
    with pytest.raises(ValueError, match="NaN"):
        bad = {m: x.copy() for m, x in _stored(trained, ["c2"]).items()}
        bad["audio"][0, 0] = np.nan
        predict_features(load_ensemble(trained["run"]), bad)
    assert main(["predict", "c2", "--run", str(trained["run"]), "--features-dir", str(data), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["used"] == ["audio", "text"] and list(rec["missing"]) == ["video"]
