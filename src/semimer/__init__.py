"""semimer: semi-supervised multimodal emotion recognition with scarce labels.

The library is importable without side effects; the command line lives in :mod:`semimer.cli`.
"""

__version__ = "0.1.0"

#: MER2024 class order, used everywhere (files, logits, CSV columns).
MER2024_CLASSES: tuple[str, ...] = ("neutral", "angry", "happy", "sad", "worried", "surprise")

__all__ = ["MER2024_CLASSES", "__version__"]
