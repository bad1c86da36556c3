"""Test media and tiny models made in code (no downloads): short clips written with PyAV from
skimage's astronaut picture plus a sine tone, and tiny random Hugging Face checkpoints saved to
temporary folders. Imported by the ``test_extract*`` modules."""

from __future__ import annotations

import fractions
import os
from pathlib import Path

import numpy as np

ASTRONAUT_FACE = (170, 20, 290, 180)  # x0, y0, x1, y1 of the face in skimage.data.astronaut() (512x512)


def astronaut(size: int = 128) -> np.ndarray:
    import cv2
    import skimage.data

    img = skimage.data.astronaut()
    return img if size == 512 else cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def make_clip(path: str | os.PathLike, seconds: float = 1.0, fps: int = 8, audio: bool = True,
              size: int = 128, sr: int = 16000, tone: float = 440.0, image: np.ndarray | None = None) -> Path:
    """A short clip: a still picture (astronaut by default) and, optionally, a sine tone."""
    import av

    path = Path(path)
    img = astronaut(size) if image is None else image
    codec = {".mp4": "libx264", ".mkv": "libx264", ".avi": "mpeg4", ".flv": "flv"}[path.suffix]
    with av.open(str(path), "w") as c:
        vs = c.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = img.shape[1], img.shape[0], "yuv420p"
        if audio:
            aus = c.add_stream("aac" if path.suffix != ".flv" else "mp3", rate=sr if path.suffix != ".flv" else 22050)
            aus.layout = "mono"
        for _ in range(max(1, int(seconds * fps))):
            for pkt in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in vs.encode():
            c.mux(pkt)
        if audio:
            rate = aus.rate
            t = np.arange(int(seconds * rate)) / rate
            x = (0.3 * np.sin(2 * np.pi * tone * t)).astype(np.float32)
            for s in range(0, len(x), 1024):
                fr = av.AudioFrame.from_ndarray(x[None, s:s + 1024], format="flt", layout="mono")
                fr.sample_rate, fr.pts, fr.time_base = rate, s, fractions.Fraction(1, rate)
                for pkt in aus.encode(fr):
                    c.mux(pkt)
            for pkt in aus.encode():
                c.mux(pkt)
    return path


def make_corrupt(path: str | os.PathLike, n: int = 4000) -> Path:
    path = Path(path)
    path.write_bytes(np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes())
    return path


# ---------------------------------------------------------------------------------------------
# tiny random Hugging Face checkpoints


def tiny_hubert(folder: str | os.PathLike, layers: int = 5) -> Path:
    """HuBERT with hidden size 32 (default conv strides: 50 frames/s) + a feature extractor."""
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    cfg = HubertConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
                       conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    HubertModel(cfg).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=True,
                             return_attention_mask=False).save_pretrained(folder)
    return Path(folder)


VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "i", "am", "happy", "sad",
         "我", "今", "天", "很", "开", "心", "难", "过", "!", "."]


def tiny_bert(folder: str | os.PathLike, layers: int = 5) -> Path:
    """BERT with hidden size 32 and a 21-token WordPiece vocabulary (English words + Chinese chars)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(folder)
    return folder


def tiny_vit(folder: str | os.PathLike) -> Path:
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64)
    ViTModel(cfg).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return Path(folder)


def tiny_clip(folder: str | os.PathLike) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32, max_position_embeddings=16),
                     vision_config=dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, intermediate_size=64),
                     projection_dim=24)
    CLIPModel(cfg).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return Path(folder)


def tiny_clip_vision(folder: str | os.PathLike) -> Path:
    """A vision-only CLIP tower with its projection head (CLIPVisionModelWithProjection)."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, projection_dim=20)
    CLIPVisionModelWithProjection(cfg).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return Path(folder)


TINY_RUN_AUDIO, TINY_RUN_VIDEO = "logmel32-UTT", "face-hog-UTT"


def tiny_media_run(root: Path, texts: list[str], classes: list[str]) -> dict:
    """A trained attention run on ``len(texts)`` generated clips with offline extractors (log-mel
    audio, HOG faces, a tiny BERT on ``texts``), labels cycling through ``classes``, 2 folds: what
    `semimer predict` and `semimer serve` tests start from. Returns the paths and feature names."""
    from semimer.cli import main

    videos = root / "videos"
    videos.mkdir()
    for i in range(len(texts)):
        make_clip(videos / f"c{i}.mp4", seconds=1.0, fps=4, size=160, tone=200 + 90 * i)
    bert = tiny_bert(root / "bert", layers=2)
    transcripts = root / "transcripts.csv"
    transcripts.write_text("name,chinese\n" + "".join(f"c{i},{t}\n" for i, t in enumerate(texts)), encoding="utf-8")
    data = root / "data"
    assert main(["extract", str(videos), "--out", str(data), "--audio", "logmel:n_mels=32", "--video", "face-hog",
                 "--text", f"hf-text:model={bert}", "--transcripts", str(transcripts), "--fps", "2",
                 "--no-progress"]) == 0
    text = f"hf-text-{bert.name}-UTT"
    (data / "labels.csv").write_text("name,discrete\n" + "".join(f"c{i},{classes[i % len(classes)]}\n"
                                                                 for i in range(len(texts))))
    run = root / "run"
    assert main(["train", "--data", str(data), "--audio", TINY_RUN_AUDIO, "--text", text, "--video", TINY_RUN_VIDEO,
                 "--out", str(run), f"data.classes=[{','.join(classes)}]", "train.epochs=2", "train.folds=2",
                 "train.progress=false", "model.hidden=16", "model.head_hidden=8"]) == 0
    return {"root": root, "videos": videos, "data": data, "run": run, "transcripts": transcripts, "text": text,
            "features": {"audio": TINY_RUN_AUDIO, "text": text, "video": TINY_RUN_VIDEO}}
