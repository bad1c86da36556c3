"""What every emotion model offers the trainer, and the pieces they share.

Batches are ``dict[str, Tensor]``: one ``(B, D)`` tensor per modality (utterance level). Frame-level
inputs will arrive as ``(B, T, D)`` plus a ``"<modality>_mask"`` ``(B, T)`` bool tensor (True = valid):
models that support them say so with ``frame_level = True``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Standardizer(nn.Module):
    """Per-modality ``(x - mean) / std`` with statistics from training data only.

    The statistics are buffers, so they travel with the weights (safetensors) and a saved model
    standardises new clips exactly as in training. Zero-variance dimensions get std 1.
    """

    def __init__(self, dims: dict[str, int]):
        super().__init__()
        for m, d in dims.items():
            self.register_buffer(f"{m}_mean", torch.zeros(d))
            self.register_buffer(f"{m}_std", torch.ones(d))
        self.modalities = list(dims)

    @torch.no_grad()
    def fit(self, feats: dict[str, torch.Tensor]) -> None:
        for m in self.modalities:
            x = feats[m].reshape(-1, feats[m].shape[-1]).double()
            std = x.std(dim=0, unbiased=False)
            std[std < 1e-6] = 1.0
            getattr(self, f"{m}_mean").copy_(x.mean(dim=0).float())
            getattr(self, f"{m}_std").copy_(std.float())

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(batch)
        for m in self.modalities:
            out[m] = (batch[m] - getattr(self, f"{m}_mean")) / getattr(self, f"{m}_std")
        return out


def mlp_head(d_in: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    """The classifier head of method.md: Linear -> LayerNorm -> ReLU -> Dropout -> Linear."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, num_classes))


class EmotionModel(nn.Module):
    """Interface used by :mod:`semimer.trainer`.

    * ``forward(batch) -> dict`` with at least ``"probs"`` ``(B, K)`` (class probabilities) and
      ``"logits"`` ``(B, K)``;
    * ``loss(batch, y) -> (loss, parts)`` for supervised training (parts: floats for logging);
    * ``standardizer`` applied inside ``forward``; fitted by the trainer on training clips.
    """

    frame_level = False

    def __init__(self, dims: dict[str, int], num_classes: int):
        super().__init__()
        self.dims = dict(dims)
        self.modalities = list(dims)
        self.num_classes = num_classes
        self.standardizer = Standardizer(dims)

    def loss(self, batch: dict[str, torch.Tensor], y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        out = self(batch)
        loss = F.cross_entropy(out["logits"], y)
        return loss, {"cls": float(loss.detach())}
