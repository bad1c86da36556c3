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
        self.fit_stream([feats])

    @torch.no_grad()
    def fit_stream(self, chunks, rows_per_step: int = 4096) -> None:
        """Mean and (population) std from an iterable of feature dicts, accumulated in float64
        over row blocks, so a large sample never needs a float64 copy of itself."""
        acc = {m: [0, 0.0, 0.0] for m in self.modalities}  # n, sum, sum of squares
        for feats in chunks:
            for m in self.modalities:
                x = feats[m].reshape(-1, feats[m].shape[-1])
                for s in range(0, len(x), rows_per_step):
                    b = x[s:s + rows_per_step].double()
                    acc[m][0] += len(b)
                    acc[m][1] = acc[m][1] + b.sum(0)
                    acc[m][2] = acc[m][2] + (b * b).sum(0)
        for m, (n, s1, s2) in acc.items():
            if n == 0:
                raise ValueError(f"no rows to fit the {m} standardiser on")
            mean = s1 / n
            std = (s2 / n - mean * mean).clamp_min(0).sqrt()
            std[std < 1e-6] = 1.0
            getattr(self, f"{m}_mean").copy_(mean.float())
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
