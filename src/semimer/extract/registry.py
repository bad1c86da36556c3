"""The extractor registry: one class per feature kind, registered by decorator.

An extractor turns one clip (its audio, its face crops or its transcript, see
:class:`semimer.extract.clip.Clip`) into one array: ``(D,)`` at utterance level, ``(T, D)`` at
frame level. It is built from a spec string as typed on the command line::

    hf-speech:model=ckpt/chinese-hubert-large,level=frame
    ^ name    ^ options (key=value, comma separated; values are strings, typed by the class)

and it describes itself with :meth:`Extractor.metadata`, written as
``features/<FEATURE>/extractor.json``. :func:`build_extractor_from_metadata` turns that dict back
into the same extractor, so a trained model knows how to re-extract features for new clips.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

EXTRACTORS: dict[str, type["Extractor"]] = {}
LEVEL_SUFFIX = {"utt": "UTT", "frame": "FRA"}


class ClipError(Exception):
    """A clip cannot give this feature (no audio stream, corrupt file, ...). The message is the
    reason written to ``failures.csv``; other features of the clip still proceed."""


class MissingModality(ClipError):
    """The clip is fine but has nothing for this modality: no audio or video stream, a stream
    with no samples, no face in any sampled frame, no transcript. The feature is *missing* (no
    file is written; training sees an absent modality), as opposed to a damaged file (a plain
    :class:`ClipError`, e.g. ``corrupt file: ...``)."""


def register_extractor(name: str) -> Callable[[type], type]:
    """Class decorator: make an :class:`Extractor` subclass buildable by ``name``."""

    def deco(cls: type) -> type:
        if name in EXTRACTORS and EXTRACTORS[name] is not cls:
            raise ValueError(f"extractor name {name!r} is registered twice "
                             f"({EXTRACTORS[name].__module__} and {cls.__module__})")
        EXTRACTORS[name] = cls
        cls.name = name
        return cls

    return deco


def list_extractors(modality: str | None = None) -> list[str]:
    """Registered extractor names, optionally only one modality's (``audio``/``text``/``video``)."""
    _import_builtin()
    return sorted(n for n, c in EXTRACTORS.items() if modality in (None, c.modality))


class Extractor:
    """Base class. Subclasses set ``modality``, ``levels`` and ``options`` (defaults, whose types
    convert the strings of a spec) and implement :meth:`load`, :attr:`dim` and :meth:`extract`."""

    name: ClassVar[str] = "abstract"
    modality: ClassVar[str] = "audio"
    levels: ClassVar[tuple[str, ...]] = ("utt",)
    #: option name -> default; ``level`` and ``feature`` (folder name override) are always allowed
    options: ClassVar[dict[str, Any]] = {}
    #: options holding a file or folder path (stored relative to the working dir when possible)
    path_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, level: str = "utt", feature: str = "", device: str = "cpu", batch_size: int = 16,
                 **options: Any):
        if level not in self.levels:
            raise ValueError(f"extractor {self.name!r} has no level {level!r}; choose one of {list(self.levels)}")
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(f"extractor {self.name!r} has no option(s) {unknown}; "
                             f"known: {sorted(self.options) + ['level', 'feature']}")
        self.level = level
        self.feature_override = feature
        self.device = device
        self.batch_size = int(batch_size)
        self.opts: dict[str, Any] = {k: _convert(v, self.options[k], k, self.name)
                                     for k, v in {**self.options, **options}.items()}
        for k in self.path_options:
            if self.opts.get(k):
                self.opts[k] = _portable_path(self.opts[k])
        self._loaded = False

    # -- to implement -------------------------------------------------------------------------
    def load(self) -> None:
        """Load weights (called once, lazily, before the first clip)."""

    @property
    def dim(self) -> int:
        raise NotImplementedError

    def extract(self, clip) -> np.ndarray:
        """One clip -> ``(D,)`` (utt) or ``(T, D)`` (frame) float32. Raise :class:`ClipError`."""
        raise NotImplementedError

    def base_name(self) -> str:
        """Feature folder name without the level suffix."""
        return self.name

    def describe(self) -> dict[str, Any]:
        """Extra metadata (pooling, rates, model type...) merged into :meth:`metadata`."""
        return {}

    # -- shared -------------------------------------------------------------------------------
    def ensure_loaded(self) -> None:
        if not self._loaded:
            self.load()
            self._loaded = True

    def extract_many(self, clips: Sequence) -> list[np.ndarray | ClipError]:
        """Several clips; the default loops over :meth:`extract` (text encoders batch)."""
        out: list[np.ndarray | ClipError] = []
        for clip in clips:
            try:
                out.append(self.extract(clip))
            except ClipError as exc:
                out.append(exc)
        return out

    @property
    def feature_name(self) -> str:
        """``<base>-UTT`` or ``<base>-FRA`` unless overridden with ``feature=NAME``."""
        return self.feature_override or f"{self.base_name()}-{LEVEL_SUFFIX[self.level]}"

    def config(self) -> dict[str, Any]:
        """The options that rebuild this extractor (what :func:`build_extractor` takes)."""
        cfg = {"level": self.level, **self.opts}
        if self.feature_override:
            cfg["feature"] = self.feature_override
        return cfg

    def metadata(self) -> dict[str, Any]:
        """What ``extractor.json`` holds: enough to rebuild and re-extract, plus provenance."""
        self.ensure_loaded()
        return {"extractor": self.name, "feature": self.feature_name, "modality": self.modality,
                "level": self.level, "dim": int(self.dim), "options": self.config(),
                **self.describe(), "versions": package_versions()}


def _convert(value: Any, default: Any, key: str, name: str) -> Any:
    if not isinstance(value, str) or isinstance(default, str) or default is None:
        return value
    try:
        if isinstance(default, bool):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        return type(default)(value)
    except ValueError:
        raise ValueError(f"extractor {name!r}: option {key}={value!r} is not a valid "
                         f"{type(default).__name__}") from None


def _portable_path(value: str) -> str:
    """A path as given; an absolute one under the working directory becomes relative to it."""
    p = Path(value)
    if p.is_absolute():
        try:
            return os.path.relpath(p, Path.cwd()) if p.resolve().is_relative_to(Path.cwd().resolve()) else str(p)
        except (ValueError, OSError):
            return str(p)
    return str(p)


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"name:k=v,k2=v2"`` -> ``("name", {"k": "v", "k2": "v2"})``."""
    name, _, rest = spec.partition(":")
    name = name.strip()
    opts: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"extractor spec {spec!r}: option {part!r} must look like key=value")
        opts[key.strip()] = value.strip()
    return name, opts


def build_extractor(spec: str | tuple[str, dict], **defaults: Any) -> Extractor:
    """Build from a spec string or ``(name, options)``; ``defaults`` (device, batch_size, fps...)
    fill options the spec does not set and that the extractor knows."""
    _import_builtin()
    name, opts = parse_spec(spec) if isinstance(spec, str) else (spec[0], dict(spec[1]))
    if name not in EXTRACTORS:
        raise ValueError(f"unknown extractor {name!r}; registered: {', '.join(sorted(EXTRACTORS))}")
    cls = EXTRACTORS[name]
    runtime = {k: defaults.pop(k) for k in ("device", "batch_size") if k in defaults}
    for k, v in defaults.items():
        if k in cls.options and k not in opts and v is not None:
            opts[k] = v
    return cls(**opts, **runtime)


def build_extractor_from_metadata(meta: dict[str, Any], device: str = "cpu", batch_size: int = 16,
                                  base_dir: str | os.PathLike | None = None) -> Extractor:
    """Rebuild the extractor an ``extractor.json`` describes (for re-extracting new clips).

    Relative checkpoint paths are tried as given (from the working directory), then relative to
    ``base_dir`` (e.g. the folder of the run or data root). The rebuilt extractor must give the
    same feature name and dim, else a ValueError explains the mismatch.
    """
    if "extractor" not in meta or "options" not in meta:
        raise ValueError("extractor metadata needs 'extractor' and 'options' (an extractor.json written by "
                         "`semimer extract`); features extracted elsewhere cannot be re-extracted automatically")
    _import_builtin()
    opts = dict(meta["options"])
    cls = EXTRACTORS.get(meta["extractor"])
    if cls is None:
        raise ValueError(f"extractor {meta['extractor']!r} (from metadata of feature {meta.get('feature')!r}) "
                         f"is not registered; registered: {', '.join(sorted(EXTRACTORS))}")
    for k in cls.path_options:
        v = opts.get(k)
        if v and not Path(v).exists() and base_dir is not None and (Path(base_dir) / v).exists():
            opts[k] = str(Path(base_dir) / v)
    ex = build_extractor((meta["extractor"], opts), device=device, batch_size=batch_size)
    if meta.get("feature") and ex.feature_name != meta["feature"]:
        raise ValueError(f"metadata of feature {meta['feature']!r} rebuilds an extractor named "
                         f"{ex.feature_name!r}; pass feature={meta['feature']} in its options")
    if meta.get("dim") is not None:
        ex.ensure_loaded()
        if int(ex.dim) != int(meta["dim"]):
            raise ValueError(f"feature {meta['feature']!r} had dim {meta['dim']} but the rebuilt extractor "
                             f"gives {ex.dim}; is {opts} the same checkpoint as at extraction time?")
    return ex


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape extracted features (recorded in ``extractor.json``)."""
    from importlib import metadata

    out = {}
    for pkg in ("semimer", "numpy", "torch", "transformers", "av", "opencv-python-headless", "h5py"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    if "semimer" not in out:
        import semimer

        out["semimer"] = semimer.__version__
    return out


def checkpoint_slug(path: str) -> str:
    """A folder-name-safe name for a checkpoint dir (its last path component)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(path).rstrip("/\\")).name) or "model"


def _import_builtin() -> None:
    """Importing the modules registers the built-in extractors."""
    from semimer.extract import audio, text, visual  # noqa: F401
