"""From raw video to features: decode clips, run registered extractors, write the feature layout.

Reading order: :mod:`~semimer.extract.registry` (the :class:`Extractor` base class, the
``@register_extractor`` decorator, specs and metadata), :mod:`~semimer.extract.decode` (PyAV),
:mod:`~semimer.extract.clip` (one lazily decoded clip), :mod:`~semimer.extract.faces` (Haar face
crops), the extractors by modality (:mod:`~semimer.extract.audio`, :mod:`~semimer.extract.text`,
:mod:`~semimer.extract.visual`, with :mod:`~semimer.extract.fer_xception`), and
:mod:`~semimer.extract.runner` (many clips: sharding, resume, failures), and
:mod:`~semimer.extract.reextract` (one clip again, from a run's metadata, at prediction time).

Library use::

    from semimer.extract import build_extractor, list_clips, run_extraction
    ex = build_extractor("hf-speech:model=checkpoints/chinese-hubert-large,level=frame")
    run_extraction(list_clips("videos/"), [ex], "data/")

and at prediction time, from the ``extractor.json`` files of a training run::

    feats = extract_clip_features("new_clip.mp4", metadatas)   # {feature: array}; raises on a problem
    feats, missing = extract_clip_features_partial("speech.wav", metadatas, transcript="...")
    # missing: {feature: reason} for modalities the clip lacks ("no video stream", "no face ...");
    # a corrupt file still raises ValueError naming it

Clips may be video or audio files; a clip lacking a modality gets no feature for it (never a
placeholder) and a row in ``failures.csv`` (see :mod:`~semimer.extract.runner`).
"""

from semimer.extract.decode import AUDIO_EXTENSIONS, MEDIA_EXTENSIONS, VIDEO_EXTENSIONS, is_audio_file
from semimer.extract.registry import (
    EXTRACTORS,
    ClipError,
    Extractor,
    MissingModality,
    build_extractor,
    build_extractor_from_metadata,
    list_extractors,
    parse_spec,
    register_extractor,
)
from semimer.extract.reextract import extract_clip_features, extract_clip_features_partial
from semimer.extract.runner import (
    ClipEntry,
    ExtractReport,
    list_clips,
    parse_shard,
    reason_kind,
    run_extraction,
    select_shard,
    shard_of,
)

__all__ = [
    "AUDIO_EXTENSIONS", "EXTRACTORS", "MEDIA_EXTENSIONS", "VIDEO_EXTENSIONS", "ClipEntry", "ClipError",
    "ExtractReport", "Extractor", "MissingModality", "build_extractor", "build_extractor_from_metadata",
    "extract_clip_features", "extract_clip_features_partial", "is_audio_file", "list_clips", "list_extractors",
    "parse_shard", "parse_spec", "reason_kind", "register_extractor", "run_extraction", "select_shard",
    "shard_of",
]
