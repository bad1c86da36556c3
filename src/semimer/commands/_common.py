"""Arguments shared by train / pretrain / recipe / ablate, and the config they resolve to.

Settings resolve, later beating earlier: dataclass defaults <- the command's preset (a YAML file
of ``semimer/configs/``, ``--preset``) <- the user's ``--config`` YAML <- ``key=value`` overrides.
Flags such as ``--data``, ``--seed`` or ``--model`` are shorthands at the ``key=value`` level
(explicit ``key=value`` arguments beat them).
"""

from __future__ import annotations

import argparse

OVERWRITE_HELP = ("allow replacing the results of a run made with other settings in --out "
                  "(stages whose inputs did not change are still reused)")


def add_data_arguments(p, preset: str | None = None) -> None:
    p.add_argument("--data", help="data root (label-disdim.csv, features/ or packed/)")
    p.add_argument("--audio", help="audio feature folder name (e.g. chinese-hubert-large-UTT); 'none' to drop")
    p.add_argument("--text", help="text feature folder name; 'none' to drop")
    p.add_argument("--video", help="video feature folder name; 'none' to drop")
    add_config_arguments(p, preset)
    p.add_argument("--seed", type=int, help="shorthand for train.seed=S")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=20 model.hidden=128")


def add_config_arguments(p, preset: str | None = None) -> None:
    """``--config`` and, when the command has a default preset, ``--preset`` plus an epilog listing
    every packaged preset and what it sets."""
    p.add_argument("--config", help="YAML config file (merged over the preset; key=value overrides beat it)")
    if preset:
        from semimer.config import preset_names, presets_help

        p.add_argument("--preset", default=preset, choices=preset_names(),
                       help=f"packaged settings merged over the defaults (default: {preset}; see below)")
        p.epilog = presets_help(preset)
        p.formatter_class = argparse.RawDescriptionHelpFormatter


def config_from_args(args, extra: list[str] | None = None, preset: str | None = None):
    """The run config of a command: ``args.preset`` (or ``preset``) <- ``--config`` <- ``extra``
    and the flags <- the ``key=value`` arguments; model names checked against the registry."""
    from semimer.config import load_config
    from semimer.config_checks import check_model_names
    from semimer.models import list_models

    over = list(extra or [])
    for key in ("audio", "text", "video"):
        v = getattr(args, key, None)
        if v is not None:
            over.append(f"data.{key}=" + ("null" if v.lower() == "none" else v))
    if getattr(args, "data", None):
        over.append(f"data.root={args.data}")
    if getattr(args, "seed", None) is not None:
        over.append(f"train.seed={args.seed}")
    cfg = load_config(args.config, over + list(args.overrides), preset=getattr(args, "preset", None) or preset)
    check_model_names(cfg, list_models())  # after the cheap checks: the registry imports torch
    if not cfg.data.root:
        raise ValueError("no data: pass --data DIR (or data.root=DIR)")
    return cfg


def load_data(cfg):
    from semimer.data.layout import load_configured

    return load_configured(cfg.data)
