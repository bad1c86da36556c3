"""Typed run configuration: dataclasses, YAML files and ``key=value`` overrides (via OmegaConf).

``load_config(yaml_file, overrides)`` merges, in order: the dataclass defaults, an optional YAML
file, then dot-list overrides such as ``train.epochs=20 model.hidden=256``. Unknown keys and wrong
types are errors. The resolved config is saved as ``config.yaml`` next to every run's outputs.
No absolute paths in defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from semimer import MER2024_CLASSES


#: frame encoders and poolings of :mod:`semimer.models.frame`
ENCODERS = ("transformer", "pool")
POOLS = ("mean", "attention")


@dataclass
class DataConfig:
    root: str = ""
    audio: Optional[str] = "audio-UTT"
    text: Optional[str] = "text-UTT"
    video: Optional[str] = "video-UTT"
    classes: list = field(default_factory=lambda: list(MER2024_CLASSES))
    label_file: Optional[str] = None
    candidate_file: Optional[str] = None
    prefer: str = "packed"  # which store to read when both a pack and a .npy folder exist

    def features(self) -> dict[str, str]:
        return {m: f for m, f in (("audio", self.audio), ("text", self.text), ("video", self.video)) if f}


@dataclass
class ModelConfig:
    name: str = "attention"  # see semimer.models.list_models()
    hidden: int = 256  # per-modality encoder width (attention baseline) / shared width d (MR-CCL)
    dropout: float = 0.3
    head_hidden: int = 128
    # MR-CCL voting over heads: weights for audio, text, video, fusion (published a .7 t .3 v .4 f .7)
    vote_weights: dict = field(default_factory=lambda: {"audio": 0.7, "text": 0.3, "video": 0.4, "fusion": 0.7})
    vote_mode: str = "prob"  # prob (soft vote of probabilities) | logit (sum of logits, as published)
    lambda_modal: float = 1.0
    lambda_noise: float = 1.0
    use_modal: bool = True
    use_noise: bool = True
    temperature_init: float = 0.1
    # frame-level inputs ((T, D) per clip; see semimer.models.frame)
    frame_encoder: str = "transformer"  # transformer | pool
    frame_layers: int = 2
    frame_heads: int = 4
    frame_pool: str = "mean"  # mean | attention (over valid frames)
    keep_rate: float = 1.0  # token pruning inside the frame encoders of prune_modalities (1 = off)
    prune_from_layer: int = 1  # prune after every block i >= this (0-based; = frame_layers: off)
    prune_modalities: list = field(default_factory=lambda: ["audio"])


@dataclass(frozen=True)
class NoiseConfig:
    """Settings of one modality's :class:`semimer.models.noise.NoiseScheduler` (validated by :meth:`build`)."""

    num_steps: int = 100
    beta_start: float = 0.001
    beta_end: float = 0.1
    schedule: str = "scaled_linear"
    kind: str = "gaussian"
    impulse_fraction: float = 0.1



@dataclass
class ModalityNoiseConfig:
    """One noise schedule per modality (published: scaled_linear, 0.001 -> 0.1, T = 100 each)."""

    audio: NoiseConfig = field(default_factory=NoiseConfig)
    text: NoiseConfig = field(default_factory=NoiseConfig)
    video: NoiseConfig = field(default_factory=NoiseConfig)


@dataclass
class TrainConfig:
    folds: int = 5
    seed: int = 0
    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 10  # early stopping on validation WAF (0 = off); best epoch kept
    oversample: bool = False
    oversample_ratio: float = 1.0  # minority classes up to this fraction of the majority count
    device: str = "auto"
    eval_batch_size: int = 1024
    tensorboard: bool = False
    progress: bool = True
    threads: int = 0  # torch intra-op threads (0 = leave torch's default)
    # frame-level features of the training set: memory (RAM) | store (read per batch) | auto (RAM up to 4 GiB)
    frame_cache: str = "auto"


@dataclass
class PretrainConfig:
    enabled: bool = False
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    max_clips: int = 0  # 0 = whole unlabeled + labeled pool
    include_candidates: bool = True  # test clips are unlabeled: using them without labels is legitimate


@dataclass
class SelfTrainConfig:
    rounds: int = 1
    thresholds: dict = field(default_factory=lambda: {"neutral": 0.99, "angry": 0.99, "happy": 0.99,
                                                      "sad": 0.99, "worried": 0.85, "surprise": 0.85})
    # thresholds apply to temperature-calibrated probabilities (T fitted on out-of-fold predictions);
    # soft votes are under-confident, and 0.99 on raw voted probabilities selects almost nothing
    calibrate: bool = True
    adaptive: bool = False  # FlexMatch-style class-adaptive thresholds
    adaptive_base: float = 0.95
    max_per_class: int = 0  # 0 = no cap


@dataclass
class RecipeConfig:
    # models whose probabilities are soft-voted at the end (weights fitted on OOF predictions);
    # the first is the main model (model.name is set to it); one member = no voting
    vote_members: list = field(default_factory=lambda: ["mrccl", "attention"])
    vote_grid_step: float = 0.1
    # per-member key=value overrides (each member trained with its own best settings); the
    # attention baseline loses ~9 WAF points with oversampling on the synthetic benchmark
    member_overrides: dict = field(default_factory=lambda: {"attention": ["train.oversample=false"]})


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    noise: ModalityNoiseConfig = field(default_factory=ModalityNoiseConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    self_train: SelfTrainConfig = field(default_factory=SelfTrainConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)


def load_config(yaml_file: str | os.PathLike | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults <- YAML file <- ``key=value`` overrides; returns a typed :class:`RunConfig`."""
    cfg = OmegaConf.structured(RunConfig)
    if yaml_file:
        if not Path(yaml_file).is_file():
            raise FileNotFoundError(f"config file {yaml_file} does not exist")
        cfg = OmegaConf.merge(cfg, OmegaConf.load(yaml_file))
    bad = [o for o in overrides or [] if "=" not in o]
    if bad:
        raise ValueError(f"overrides must look like key=value (e.g. train.epochs=20), got {bad}")
    if overrides:
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        except Exception as exc:  # omegaconf's ConfigKeyError / ValidationError
            raise ValueError(f"bad override: {exc}") from exc
    out = OmegaConf.to_object(cfg)
    validate(out)
    return out


def validate(cfg: RunConfig) -> None:
    """Errors for settings that are wrong whatever the data (checked before any work starts)."""
    m = cfg.model
    if not 0.0 < float(m.keep_rate) <= 1.0:
        raise ValueError(f"model.keep_rate must be in (0, 1] (1 = no token pruning), got {m.keep_rate}")
    if m.frame_encoder not in ENCODERS:
        raise ValueError(f"model.frame_encoder must be one of {ENCODERS}, got {m.frame_encoder!r}")
    if m.frame_pool not in POOLS:
        raise ValueError(f"model.frame_pool must be one of {POOLS}, got {m.frame_pool!r}")
    if m.keep_rate < 1.0 and m.frame_encoder != "transformer":
        raise ValueError("token pruning (model.keep_rate < 1) needs attention weights: set model.frame_encoder=transformer")
    if m.frame_layers < 1 or not 0 <= m.prune_from_layer <= m.frame_layers:
        raise ValueError(f"model.prune_from_layer must be in [0, model.frame_layers={m.frame_layers}], "
                         f"got {m.prune_from_layer}")
    if cfg.train.frame_cache not in ("auto", "memory", "store"):
        raise ValueError(f"train.frame_cache must be auto, memory or store, got {cfg.train.frame_cache!r}")
    bad = set(m.prune_modalities) - {"audio", "text", "video"}
    if bad:
        raise ValueError(f"model.prune_modalities has unknown modalities {sorted(bad)}; valid: audio, text, video")


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
