"""The field's attention-fusion baseline (the MER2023/2024 official baseline's ``Attention`` model).

Per modality an MLP encoder ``h_m = MLP_m(x_m)`` to a common width; attention weights over
modalities ``alpha = softmax(W_2 tanh(W_1 [h_a; h_t; h_v]))`` (one score per modality); fused
``z = sum_m alpha_m h_m``; a linear classifier on ``z``. Reference: Lian et al., "MER 2023: Multi-label
Learning, Modality Robustness, and Semi-Supervised Learning", ACM MM 2023 (baseline code ``attention.py``).

Frame-level modalities (``levels[m] == "frame"``) replace ``MLP_m`` by a
:class:`~semimer.models.frame.FrameEncoder` (transformer or pooling, masked pooling, optional token
pruning); the fusion is unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from semimer.models import register_model
from semimer.models.base import EmotionModel, present_of
from semimer.models.frame import frame_encoder_from_config


class MLPEncoder(nn.Sequential):
    def __init__(self, d_in: int, hidden: int, dropout: float):
        super().__init__(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout))


@register_model("attention")
class AttentionFusion(EmotionModel):
    frame_level = True

    def __init__(self, dims: dict[str, int], num_classes: int, cfg, levels: dict[str, str] | None = None, **_):
        super().__init__(dims, num_classes, levels)
        h = cfg.hidden
        self.encoders = nn.ModuleDict({
            m: frame_encoder_from_config(m, d, h, cfg) if self.levels[m] == "frame" else MLPEncoder(d, h, cfg.dropout)
            for m, d in dims.items()})
        self.attention = nn.Sequential(nn.Linear(h * len(dims), h), nn.Tanh(), nn.Linear(h, len(dims), bias=False))
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(h, num_classes)

    def _forward_std(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        hs = torch.stack([self.encode(m, batch) for m in self.modalities], dim=1)  # (B, M, h)
        present = torch.stack([present_of(batch, m) for m in self.modalities], dim=1)  # (B, M)
        scores = self.attention(hs.flatten(1)).masked_fill(~present, float("-inf"))
        alpha = torch.softmax(scores, dim=-1)  # (B, M), renormalised over the modalities present
        fused = (alpha.unsqueeze(-1) * hs).sum(dim=1)
        logits = self.classifier(self.dropout(fused))
        return {"logits": logits, "probs": torch.softmax(logits, dim=-1), "attention": alpha}
