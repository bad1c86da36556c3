"""Arguments shared by train / pretrain / recipe / ablate."""

from __future__ import annotations


def add_data_arguments(p) -> None:
    p.add_argument("--data", help="data root (label-disdim.csv, features/ or packed/)")
    p.add_argument("--audio", help="audio feature folder name (e.g. chinese-hubert-large-UTT); 'none' to drop")
    p.add_argument("--text", help="text feature folder name; 'none' to drop")
    p.add_argument("--video", help="video feature folder name; 'none' to drop")
    p.add_argument("--config", help="YAML config file (merged over the defaults)")
    p.add_argument("--seed", type=int, help="shorthand for train.seed=S")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=20 model.hidden=128")


def config_from_args(args, extra: list[str] | None = None):
    from semimer.config import load_config

    over = list(extra or [])
    for key in ("audio", "text", "video"):
        v = getattr(args, key, None)
        if v is not None:
            over.append(f"data.{key}=" + ("null" if v.lower() == "none" else v))
    if getattr(args, "data", None):
        over.append(f"data.root={args.data}")
    if getattr(args, "seed", None) is not None:
        over.append(f"train.seed={args.seed}")
    cfg = load_config(args.config, over + list(args.overrides))
    if not cfg.data.root:
        raise ValueError("no data: pass --data DIR (or data.root=DIR)")
    return cfg


def load_data(cfg):
    from semimer.data.layout import load_dataset

    return load_dataset(cfg.data.root, cfg.data.features(), cfg.data.classes, cfg.data.label_file,
                        cfg.data.candidate_file, cfg.data.prefer)
