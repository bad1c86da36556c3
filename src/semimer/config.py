"""Typed run configuration: dataclasses, YAML files and ``key=value`` overrides (via OmegaConf).

``load_config(yaml_file, overrides, preset)`` merges, later beating earlier:

1. the dataclass defaults below;
2. a *preset*: a YAML file shipped in ``semimer/configs/`` (``recipe.yaml`` is what the recipe
   changes from the defaults; commands pick theirs, ``--preset NAME`` another);
3. the user's YAML file (``--config``);
4. dot-list overrides such as ``train.epochs=20 model.hidden=256`` (command flags like ``--seed``
   are shorthands at this level).

Unknown keys (dict-valued settings included) and wrong types are errors naming the key and where
it came from. The resolved config is saved as ``config.yaml`` next to every run's outputs.
No absolute paths in defaults. This is the bottom layer: it imports no other semimer module but
the package root and its checks (:mod:`semimer.config_checks`; model names are checked against a
list the caller passes, ``known_models``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from omegaconf import DictConfig, OmegaConf

from semimer import MER2024_CLASSES


#: frame encoders and poolings of :mod:`semimer.models.frame`
ENCODERS = ("transformer", "pool")
POOLS = ("mean", "attention")
#: heads of MR-CCL's vote (``model.vote_weights`` keys)
VOTE_HEADS = ("audio", "text", "video", "fusion")
#: published self-training thresholds by MER class name (Fan et al., MRAC @ ACM MM 2024)
PUBLISHED_THRESHOLDS: dict[str, float] = {"neutral": 0.99, "angry": 0.99, "happy": 0.99, "sad": 0.99,
                                          "worried": 0.85, "surprise": 0.85}


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
    group_column: Optional[str] = None  # label-file column (speaker, dialogue): grouped CV keeps groups whole
    incomplete: str = "use"  # clips lacking a modality: use (with what they have) | drop (labeled + pool) | error

    def features(self) -> dict[str, str]:
        return {m: f for m, f in (("audio", self.audio), ("text", self.text), ("video", self.video)) if f}


@dataclass
class ModelConfig:
    name: str = "attention"  # see semimer.models.list_models()
    hidden: int = 256  # per-modality encoder width (attention baseline) / shared width d (MR-CCL)
    dropout: float = 0.3
    head_hidden: int = 128
    # MR-CCL voting over heads: weights for audio, text, video, fusion (published a .7 t .3 v .4 f .7)
    vote_weights: Dict[str, float] = field(default_factory=lambda: {"audio": 0.7, "text": 0.3, "video": 0.4,
                                                                    "fusion": 0.7})
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
    # the linear model (semimer.models.linear): L2 strengths C tried by its inner CV; class weighting
    linear_cs: list = field(default_factory=lambda: [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0])
    linear_class_weight: Optional[str] = None  # null | balanced
    # what the inner CV maximises to choose C: waf (weighted F1, the challenge's score; the
    # benchmarks' reference LR does the same) or log_loss (calibration). On MELD with 200 labels
    # log loss chose C=0.003 against weighted F1's 0.1 (this and the whole training part, see
    # semimer.models.linear, took the member from 43.6 to 45.9 test WAF)
    linear_scoring: str = "waf"


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
    patience: int = 10  # early stopping on the selection split's WAF (0 = off); best epoch kept
    # how the epoch is chosen without looking at the fold being scored: inner (hold out
    # inner_fraction of the training folds, stratified/grouped) | fixed (train.epochs, last epoch)
    select: str = "inner"
    inner_fraction: float = 0.15
    oversample: bool = False
    oversample_ratio: float = 1.0  # minority classes up to this fraction of the majority count
    device: str = "auto"
    eval_batch_size: int = 1024
    tensorboard: bool = False
    progress: bool = True
    # torch intra-op threads: auto (1 for small steps or busy cores, else the free cores; measured in
    # benchmarks/threads.py) | 0 (torch's default: every core) | n
    threads: str = "auto"
    # autocast dtype: auto (bf16 on a CUDA GPU that supports it, else fp32) | bf16 | fp16 (CUDA, with
    # a gradient scaler) | fp32. Changes results slightly: a resolved bf16/fp16 is part of run fingerprints
    precision: str = "auto"
    compile: bool = False  # torch.compile the model's training step (speed only; first steps compile)
    deterministic: bool = False  # torch.use_deterministic_algorithms (+ cuBLAS workspace setting on CUDA)
    # frame-level features of the training set: memory (RAM) | store (read per batch) | auto (RAM up to 4 GiB)
    frame_cache: str = "auto"
    # regularisation for scarce labels (all off by default; see README "Regularisation")
    label_smoothing: float = 0.0  # target (1 - eps)·onehot + eps/K, every classification term
    modality_dropout: float = 0.0  # zero each modality of each clip with this probability (never all)
    ema_decay: float = 0.0  # exponential moving average of the weights (e.g. 0.99); selection and saving use it


@dataclass
class PretrainConfig:
    enabled: bool = False
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    max_clips: int = 0  # 0 = whole unlabeled + labeled pool
    include_candidates: bool = True  # test clips are unlabeled: using them without labels is legitimate
    finetune_lr_scale: float = 1.0  # fine-tuning from pre-trained weights uses train.lr × this
    # where the pool's features live during pre-training: auto (in RAM when they fit in memory_mb) |
    # memory | stream (read per chunk of chunk_mb from the feature stores each epoch). Speed and
    # memory only: the batches are the same either way
    pool: str = "auto"
    memory_mb: int = 2048  # pool=auto: the most RAM the pool may take (also capped by half the free RAM)
    chunk_mb: float = 256.0  # streamed pool: megabytes of features read (and moved to the device) per chunk


@dataclass
class SelfTrainConfig:
    # 0 by default: under the leak-free protocol self-training at the published thresholds cost 1.2 test
    # WAF on the synthetic benchmark and selected nothing on MELD (README "Results"); 1+ runs it
    rounds: int = 0
    # τ per class, read through class_thresholds(cfg). {} = the published values for MER class names
    # (0.99 neutral/angry/happy/sad, 0.85 worried/surprise) and default_threshold for any other class,
    # so another corpus's data.classes works unchanged; a non-empty dict must name exactly data.classes
    thresholds: Dict[str, float] = field(default_factory=dict)
    default_threshold: float = 0.95
    # thresholds apply to temperature-calibrated probabilities (T fitted on out-of-fold predictions);
    # soft votes are under-confident, and 0.99 on raw voted probabilities selects almost nothing
    calibrate: bool = True
    adaptive: bool = False  # FlexMatch-style class-adaptive thresholds
    adaptive_base: float = 0.95
    max_per_class: int = 0  # 0 = no cap
    # threshold: keep clips reaching their class's τ (published) | topk: class-balanced, per round the
    # topk_fraction of the remaining pool split over the classes by the pool's EM-estimated prior
    # (semimer.semi.prior_shift), most confident first, never below min_confidence
    selection: str = "threshold"
    topk_fraction: float = 0.1
    min_confidence: float = 0.5
    # none | softmatch: a pseudo-labeled clip's loss weight is 1 at or above the mean confidence μ of
    # the pool (under its fold's model) and exp(-(c - μ)² / 2σ²) below it (Chen et al., SoftMatch, 2023)
    weighting: str = "none"
    # agreement: a clip is eligible only if at least this many of the model's heads (MR-CCL: audio,
    # text, video, fusion) predict its voted class (0 = off; models without heads: off)
    min_heads_agree: int = 0


@dataclass
class RecipeConfig:
    # models whose probabilities are soft-voted at the end (weights chosen nested over folds); the
    # first is the main model (model.name is set to it); one member = no voting. Only MR-CCL by
    # default: the published vote with the attention baseline changed test WAF by -0.22 (synthetic
    # scarce), +0.11 (MELD 200 labels), +0.41 (MELD 1,000), -0.27 (EmoryNLP), never beyond one std
    # (README "Results"); [mrccl,attention] (or + linear) turns it on
    vote_members: list = field(default_factory=lambda: ["mrccl"])
    vote_grid_step: float = 0.1
    # how the members' weights are set: "choose" = the grid vote, equal weights or one member alone,
    # whichever scores best out of sample (nested over folds); "equal" = equal weights, nothing fitted
    # (no choice to overfit on a few hundred labels)
    vote_weights: str = "choose"
    # per-member key=value overrides (each member trained with its own best settings); the
    # attention baseline loses ~9 WAF points with oversampling on the synthetic benchmark
    # (keys: model names, checked by the commands against semimer.models.list_models())
    member_overrides: Dict[str, List[str]] = field(default_factory=lambda: {"attention": ["train.oversample=false"]})
    # prior-shift adaptation of the submitted probabilities (Saerens et al. 2002): the candidates'
    # class prior estimated by EM, posteriors re-weighted to it. Off by default: it is measured (and
    # reported) on hidden test labels only, so it cannot be chosen per run without them
    prior_shift: bool = False


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    noise: ModalityNoiseConfig = field(default_factory=ModalityNoiseConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    self_train: SelfTrainConfig = field(default_factory=SelfTrainConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)


def load_config(yaml_file: str | os.PathLike | None = None, overrides: list[str] | None = None,
                preset: str | None = None, known_models: Iterable[str] | None = None) -> RunConfig:
    """Defaults <- ``preset`` <- YAML file <- ``key=value`` overrides; returns a checked :class:`RunConfig`.

    ``preset`` names a YAML file of ``semimer/configs/`` (see :func:`preset_names`); ``known_models``
    (e.g. ``semimer.models.list_models()``), when given, also checks every model name.
    """
    cfg = OmegaConf.structured(RunConfig)
    if preset:
        cfg = _merge(cfg, _read_yaml(preset_path(preset), f"preset {preset!r}"), f"preset {preset!r}")
    if yaml_file:
        if not Path(yaml_file).is_file():
            raise FileNotFoundError(f"config file {yaml_file} does not exist")
        cfg = _merge(cfg, _read_yaml(yaml_file, f"config file {yaml_file}"), f"config file {yaml_file}")
    if overrides:
        cfg = _merge(cfg, _from_dotlist(overrides, "overrides"), "bad override")
    out = OmegaConf.to_object(cfg)
    from semimer.config_checks import validate  # the checks live beside: they import this module

    validate(out, known_models)
    return out


# --------------------------------------------------------------------------- presets
def preset_path(name: str) -> Path:
    """The packaged ``semimer/configs/<name>.yaml`` (importlib.resources: works from a wheel too)."""
    f = resources.files("semimer") / "configs" / f"{name}.yaml"
    if not f.is_file():
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(preset_names()) or 'none'}")
    return Path(str(f))


def preset_names() -> list[str]:
    folder = resources.files("semimer") / "configs"
    return sorted(f.name[:-5] for f in folder.iterdir() if f.name.endswith(".yaml")) if folder.is_dir() else []


def preset_settings(name: str) -> list[str]:
    """What a preset sets, as ``key=value`` strings (for ``--help``)."""
    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict) and v:
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}={str(v).lower() if isinstance(v, bool) else v}"

    return list(flat(OmegaConf.to_container(_read_yaml(preset_path(name), f"preset {name!r}"))))


def presets_help(default: str) -> str:
    """An ``--help`` epilog: the resolution order and what every preset sets."""
    lines = ["settings, later beating earlier:",
             f"  defaults <- --preset (default {default}) <- --config YAML <- key=value arguments and flags",
             "presets (semimer/configs/NAME.yaml):"]
    for name in preset_names():
        lines.append(f"  {name:<8} {' '.join(preset_settings(name)) or '(sets nothing: the defaults)'}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- merging with clear errors
def _read_yaml(path: str | os.PathLike, source: str) -> DictConfig:
    try:
        y = OmegaConf.load(path)
    except Exception as exc:  # yaml syntax errors (the message names line and column)
        raise ValueError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(y, DictConfig):
        raise ValueError(f"{source}: expected a mapping of settings (e.g. 'train: {{epochs: 20}}'), got a list")
    return y


def _from_dotlist(overrides: Iterable[str], source: str) -> DictConfig:
    overrides = list(overrides)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"{source} must look like key=value (e.g. train.epochs=20), got {bad}")
    try:
        return OmegaConf.from_dotlist(overrides)
    except Exception as exc:  # e.g. a value YAML cannot parse
        raise ValueError(f"{source}: {exc}") from exc


def _merge(cfg: DictConfig, other: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, other)
    except Exception as exc:  # omegaconf's ConfigKeyError / ValidationError, or a TypeError
        key = getattr(exc, "full_key", None)
        if not key:
            raise ValueError(f"{source}: {str(exc).splitlines()[0]}") from exc
        if ":" in key:
            raise ValueError(f"{source}: bad key {key!r}; in a {{...}} mapping write a space after each "
                             f"colon, e.g. {{neutral: 0.5}}") from exc
        if type(exc).__name__ == "ConfigKeyError":
            valid = _valid_keys(key)
            hint = f"; valid keys here: {', '.join(valid)}" if valid else ""
            raise ValueError(f"{source}: unknown setting {key!r}{hint}") from exc
        raise ValueError(f"{source}: {key}: {str(exc).splitlines()[0]}") from exc


def _valid_keys(full_key: str) -> list[str] | None:
    obj = RunConfig()
    for part in full_key.split(".")[:-1]:
        obj = getattr(obj, part, None)
    return [f.name for f in dataclasses.fields(obj)] if dataclasses.is_dataclass(obj) else None


def class_thresholds(cfg: RunConfig) -> list[float]:
    """Self-training τ, one per class of ``cfg.data.classes`` in that order.

    ``self_train.thresholds`` when set (validated to name exactly the classes); else the published
    value of each MER class name (case-insensitive) and ``self_train.default_threshold`` for others.
    """
    st = cfg.self_train
    if st.thresholds:
        return [float(st.thresholds[c]) for c in cfg.data.classes]
    return [float(PUBLISHED_THRESHOLDS.get(str(c).strip().lower(), st.default_threshold)) for c in cfg.data.classes]


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
