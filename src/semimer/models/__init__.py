"""Model registry: ``@register_model("name")`` on a class, ``build_model(name, ...)``, ``list_models()``,
``model_class(name)``.

Every model takes ``dims`` (modality -> input width), ``num_classes`` and a
:class:`semimer.config.ModelConfig` (plus optional extra keyword arguments), and implements the
:class:`semimer.models.base.EmotionModel` interface the trainer relies on.
"""

from __future__ import annotations

import fnmatch
import importlib
from typing import Callable

MODELS: dict[str, type] = {}
_BUILTIN = ("semimer.models.attention", "semimer.models.mrccl", "semimer.models.linear")


def register_model(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        if name in MODELS and MODELS[name] is not cls:
            raise ValueError(f"model {name!r} registered twice")
        MODELS[name] = cls
        cls.registry_name = name
        return cls

    return deco


def _load_builtins() -> None:
    for mod in _BUILTIN:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:  # a model module not written yet
            if exc.name != mod:
                raise


def list_models(pattern: str = "*") -> list[str]:
    _load_builtins()
    return sorted(n for n in MODELS if fnmatch.fnmatch(n, pattern))


def model_class(name: str) -> type:
    """The class registered as ``name`` (e.g. to ask what kind of model it is before building one)."""
    _load_builtins()
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return MODELS[name]


def build_model(name: str, dims: dict[str, int], num_classes: int, cfg, **kwargs):
    return model_class(name)(dims=dims, num_classes=num_classes, cfg=cfg, **kwargs)
