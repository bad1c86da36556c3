"""Helpers shared by the Hugging Face extractors: load from a LOCAL directory only, and pool
hidden states the way the field's features were made (sum of the last 4 layers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np


def check_local_dir(path: str, what: str) -> Path:
    """The checkpoint folder, or a FileNotFoundError explaining that no hub download happens."""
    if not path:
        raise ValueError(f"{what} needs a local checkpoint folder: add model=DIR to the extractor spec "
                         f"(e.g. --audio hf-speech:model=checkpoints/chinese-hubert-large)")
    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"{what}: {p} is not a local Hugging Face checkpoint folder (no config.json there). "
            f"Models are never downloaded: download the checkpoint once (e.g. `huggingface-cli download "
            f"<repo> --local-dir {p}`) and pass that folder")
    return p


def load_model(path: str, what: str, device: Any, cls: Any = None):
    """``AutoModel`` (or ``cls``) from a local folder, in eval mode on ``device``."""
    from transformers import AutoModel

    p = check_local_dir(path, what)
    model = (cls or AutoModel).from_pretrained(str(p), local_files_only=True)
    return model.eval().to(device)


def load_processor(path: str, kind: str):
    """``AutoFeatureExtractor`` / ``AutoTokenizer`` / ``AutoImageProcessor`` from a local folder,
    or None when the folder ships none."""
    import transformers

    cls = {"feature": transformers.AutoFeatureExtractor, "tokenizer": transformers.AutoTokenizer,
           "image": transformers.AutoImageProcessor}[kind]
    try:
        return cls.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError):
        return None


def sum_last_layers(hidden_states: Sequence, n_layers: int = 4):
    """Sum of the last ``n_layers`` hidden states (fewer if the model has fewer layers).

    ``hidden_states`` is the tuple a HF model returns with ``output_hidden_states=True``
    (embeddings first, then one entry per layer).
    """
    layers = hidden_states[1:] if len(hidden_states) > 1 else hidden_states
    n = min(n_layers, len(layers))
    out = layers[-n]
    for h in layers[-n + 1:] if n > 1 else []:
        out = out + h
    return out


def to_numpy(t) -> np.ndarray:
    return t.detach().float().cpu().numpy().astype(np.float32)
