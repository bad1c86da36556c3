"""semimer: semi-supervised multimodal emotion recognition with scarce labels.

The package follows the data flow (each layer imports only from the layers above it in this list)::

    io, utils, config      files written atomically, logging/devices, typed run configuration
    data/                  MER layout, feature stores, unpadded frame batches, folds, synthetic data
    eval/                  metrics, prediction files, plots, report.md
    models/                registry, attention baseline, MR-CCL, frame encoders, losses, noise, tokens
    train/                 one fit, contrastive pre-training, K-fold CV, run state (resume/fingerprints)
    semi/                  pseudo-labels, calibration, voting, the recipe, the ablation
    extract/               raw video/audio -> features (incl. the token-pruned speech encoder)
    infer/                 predicting new clips with a finished run
    cli.py, commands/      the command line

The library is importable without side effects; the command line lives in :mod:`semimer.cli`.
Modules of the flat 0.1 layout (``semimer.cv``, ``semimer.recipe``, ...) still import, as aliases
of their new homes (see ``_MOVED``).
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

#: MER2024 class order, used everywhere (files, logits, CSV columns).
MER2024_CLASSES: tuple[str, ...] = ("neutral", "angry", "happy", "sad", "worried", "surprise")

#: old module -> new module (the 0.1 flat layout)
_MOVED = {
    "ragged": "data.ragged", "synth": "data.synth", "folds": "data.folds",
    "losses": "models.losses", "noise": "models.noise", "checkpoint": "models.checkpoint",
    "trainer": "train.fit", "pretrain": "train.pretrain", "cv": "train.cv", "oversample": "train.oversample",
    "pseudo_label": "semi.pseudo_label", "voting": "semi.voting", "recipe": "semi.recipe",
    "ablation": "semi.ablation", "predict": "infer.predict", "metrics": "eval.metrics",
    "predictions": "eval.predictions", "report": "eval.report", "plots": "eval.plots",
    "pruning": "extract.pruned_speech",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module):  # the target module is already executed
        pass


class _MovedFinder(importlib.abc.MetaPathFinder):
    """``import semimer.cv`` gives the module object of ``semimer.train.cv`` (same object, so
    monkeypatching either name patches both)."""

    def find_spec(self, fullname, path=None, target=None):
        prefix = __name__ + "."
        if not fullname.startswith(prefix) or fullname[len(prefix):] not in _MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(prefix + _MOVED[fullname[len(prefix):]]))


if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedFinder())

__all__ = ["MER2024_CLASSES", "__version__"]
