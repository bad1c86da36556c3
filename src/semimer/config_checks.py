"""Checks of a resolved :class:`semimer.config.RunConfig`: errors for settings that are wrong whatever
the data, raised by :func:`semimer.config.load_config` before any work starts (naming the key).

Part of the configuration layer: imports no other semimer module but :mod:`semimer.config`.
"""

from __future__ import annotations

from typing import Iterable

from omegaconf import OmegaConf

from semimer.config import ENCODERS, POOLS, VOTE_HEADS, RunConfig, _from_dotlist, _merge


def validate(cfg: RunConfig, known_models: Iterable[str] | None = None) -> None:
    """Errors for settings that are wrong whatever the data (checked before any work starts).

    Model names (``model.name``, ``recipe.vote_members``, ``recipe.member_overrides`` keys) are
    checked only when ``known_models`` is given: the list lives in :mod:`semimer.models`, a layer
    this module must not import; the commands pass ``list_models()``.
    """
    _check_dicts(cfg)
    if known_models is not None:
        check_model_names(cfg, known_models)
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
    check_speed_settings(cfg)
    if cfg.train.frame_cache not in ("auto", "memory", "store"):
        raise ValueError(f"train.frame_cache must be auto, memory or store, got {cfg.train.frame_cache!r}")
    bad = set(m.prune_modalities) - {"audio", "text", "video"}
    if bad:
        raise ValueError(f"model.prune_modalities has unknown modalities {sorted(bad)}; valid: audio, text, video")
    t = cfg.train
    for key, lo, hi in (("label_smoothing", 0.0, 1.0), ("modality_dropout", 0.0, 1.0), ("ema_decay", 0.0, 1.0)):
        v = float(getattr(t, key))
        if not lo <= v < hi:
            raise ValueError(f"train.{key} must be in [{lo}, {hi}), got {v}")
    if t.select not in ("inner", "fixed"):
        raise ValueError(f"train.select must be inner or fixed, got {t.select!r}")
    if not 0.0 < t.inner_fraction < 0.5:
        raise ValueError(f"train.inner_fraction must be in (0, 0.5), got {t.inner_fraction}")
    st = cfg.self_train
    if st.min_heads_agree < 0:
        raise ValueError(f"self_train.min_heads_agree must be >= 0, got {st.min_heads_agree}")
    if st.weighting not in ("none", "softmatch"):
        raise ValueError(f"self_train.weighting must be none or softmatch, got {st.weighting!r}")
    if st.selection not in ("threshold", "topk"):
        raise ValueError(f"self_train.selection must be threshold or topk, got {st.selection!r}")
    if not 0.0 < st.topk_fraction <= 1.0 or not 0.0 <= st.min_confidence <= 1.0:
        raise ValueError(f"self_train.topk_fraction must be in (0, 1] and min_confidence in [0, 1], got "
                         f"{st.topk_fraction}, {st.min_confidence}")
    if m.linear_scoring not in ("waf", "log_loss"):
        raise ValueError(f"model.linear_scoring must be waf or log_loss, got {m.linear_scoring!r}")
    if cfg.recipe.vote_weights not in ("choose", "equal"):
        raise ValueError(f"recipe.vote_weights must be choose or equal, got {cfg.recipe.vote_weights!r}")
    if not cfg.pretrain.finetune_lr_scale > 0:
        raise ValueError(f"pretrain.finetune_lr_scale must be > 0, got {cfg.pretrain.finetune_lr_scale}")


PRECISIONS = ("auto", "bf16", "fp16", "fp32")
POOL_MODES = ("auto", "memory", "stream")


def check_speed_settings(cfg: RunConfig) -> None:
    """``train.threads``, ``train.precision``, ``pretrain.pool`` / ``memory_mb`` / ``chunk_mb``."""
    threads = str(cfg.train.threads).strip().lower()
    if threads != "auto" and not (threads.isdigit()):
        raise ValueError(f"train.threads must be auto, 0 (torch's default) or a positive integer, got {cfg.train.threads!r}")
    if str(cfg.train.precision).lower() not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {cfg.train.precision!r}")
    pc = cfg.pretrain
    if pc.pool not in POOL_MODES:
        raise ValueError(f"pretrain.pool must be one of {', '.join(POOL_MODES)}, got {pc.pool!r}")
    if pc.memory_mb < 0:
        raise ValueError(f"pretrain.memory_mb must be >= 0, got {pc.memory_mb}")
    if not pc.chunk_mb > 0:
        raise ValueError(f"pretrain.chunk_mb must be > 0, got {pc.chunk_mb}")


def _check_dicts(cfg: RunConfig) -> None:
    """The dict-valued settings: their keys are not fixed by the dataclasses, so check them here."""
    classes = [str(c) for c in cfg.data.classes]
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"data.classes must name at least two distinct classes, got {classes}")
    st = cfg.self_train
    if not 0.0 <= st.default_threshold <= 1.0:
        raise ValueError(f"self_train.default_threshold must be in [0, 1], got {st.default_threshold}")
    if st.thresholds:
        unknown = sorted(set(st.thresholds) - set(classes))
        missing = [c for c in classes if c not in st.thresholds]
        if unknown or missing:
            raise ValueError("self_train.thresholds must give one value per class of data.classes "
                             f"({', '.join(classes)}) or be {{}} (published/default values)"
                             + (f"; unknown: {unknown}" if unknown else "") + (f"; missing: {missing}" if missing else ""))
        bad = {c: t for c, t in st.thresholds.items() if not 0.0 <= t <= 1.0}
        if bad:
            raise ValueError(f"self_train.thresholds must be in [0, 1], got {bad}")
    unknown = sorted(set(cfg.model.vote_weights) - set(VOTE_HEADS))
    if unknown:
        raise ValueError(f"model.vote_weights has unknown heads {unknown}; valid: {', '.join(VOTE_HEADS)}")
    neg = {k: w for k, w in cfg.model.vote_weights.items() if w < 0}
    if neg:
        raise ValueError(f"model.vote_weights must be >= 0, got {neg}")
    for member, over in cfg.recipe.member_overrides.items():  # each member's overrides must be valid settings
        _merge(OmegaConf.structured(RunConfig), _from_dotlist(over, f"recipe.member_overrides.{member}"),
               f"recipe.member_overrides.{member}")


def check_model_names(cfg: RunConfig, known_models: Iterable[str]) -> None:
    """``model.name``, ``recipe.vote_members`` and ``recipe.member_overrides`` keys must be known models."""
    known = set(known_models)
    for what, names in (("model.name", [cfg.model.name]), ("recipe.vote_members", cfg.recipe.vote_members),
                        ("recipe.member_overrides", list(cfg.recipe.member_overrides))):
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"{what}: unknown model(s) {unknown}; available: {', '.join(sorted(known))}")
