"""Model weights as safetensors plus a JSON description (never pickles).

``save_model(dir, model, meta)`` writes ``model.safetensors`` and ``model.json`` (registry name,
input dims, classes, model config); ``load_model(dir)`` rebuilds the model from the JSON through the
registry and loads the tensors.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from semimer.io import atomic_path, read_json, write_json


def save_state(path: str | os.PathLike, state: dict[str, torch.Tensor]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp))


def load_state(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    return load_file(str(path), device=str(device))


def save_model(folder: str | os.PathLike, model, classes, model_cfg, extra: dict | None = None) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_state(folder / "model.safetensors", model.state_dict())
    cfg = dataclasses.asdict(model_cfg) if dataclasses.is_dataclass(model_cfg) else dict(model_cfg)
    write_json(folder / "model.json", {"model": model.registry_name, "dims": model.dims,
                                       "levels": getattr(model, "levels", None), "classes": list(classes),
                                       "model_config": cfg, **(extra or {})})


def load_model(folder: str | os.PathLike, device: str | torch.device = "cpu"):
    from semimer.config import ModalityNoiseConfig, ModelConfig
    from semimer.models import build_model
    from omegaconf import OmegaConf

    folder = Path(folder)
    meta = read_json(folder / "model.json")
    mcfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), meta["model_config"]))
    kwargs = {}
    if meta.get("levels"):
        kwargs["levels"] = meta["levels"]
    if "noise_config" in meta:
        kwargs["noise_cfg"] = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModalityNoiseConfig), meta["noise_config"]))
    model = build_model(meta["model"], meta["dims"], len(meta["classes"]), mcfg, **kwargs)
    model.load_state_dict(load_state(folder / "model.safetensors", device))
    return model.to(device).eval(), meta
