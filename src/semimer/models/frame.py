"""Frame-level encoders: ``(B, T, D)`` features + ``(B, T)`` mask -> one ``(B, width)`` vector per clip.

Two kinds (``model.frame_encoder``):

* ``transformer`` (default): input projection, sinusoidal positions of the *original* frame index,
  ``model.frame_layers`` pre-norm transformer blocks (batch-first :class:`torch.nn.MultiheadAttention`
  with a key-padding mask, GELU feed-forward), final LayerNorm, pooling over valid frames. Optional
  progressive token pruning (``model.keep_rate < 1`` for the modalities in ``model.prune_modalities``):
  after every block ``i >= model.prune_from_layer`` the top ``ceil(r * N_valid)`` frames of each clip
  by the attention they receive (summed over heads and valid queries) are kept in time order
  (:func:`semimer.extract.pruned_speech.select_tokens`, the same rule and layer convention as the speech-encoder
  wrapper), so later blocks and the pooling see fewer frames.
* ``pool``: a residual per-frame MLP then pooling over valid frames (no interaction between frames;
  cheaper, and a strong baseline when the utterance mean carries the signal).

Pooling (``model.frame_pool``): ``mean`` over valid frames, or ``attention`` (a learned score per
frame, softmax over valid frames). Each clip only ever attends to its own valid frames, so its
output does not depend on which clips share its batch or on how much padding the batch has. A clip
with no valid frame (a missing modality) gets a zero vector.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from semimer.config import ENCODERS, POOLS
from semimer.models.tokens import check_keep_rate, gather_tokens, masked_mean, select_tokens



def sinusoid(positions: torch.Tensor, width: int) -> torch.Tensor:
    """Sinusoidal encodings ``(B, T, width)`` of integer positions ``(B, T)`` (Vaswani et al. 2017)."""
    half = width // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device, dtype=torch.float32) / max(half, 1))
    ang = positions.float().unsqueeze(-1) * freq
    enc = torch.cat([ang.sin(), ang.cos()], dim=-1)
    if enc.shape[-1] < width:
        enc = torch.nn.functional.pad(enc, (0, width - enc.shape[-1]))
    return enc


class Block(nn.Module):
    """Pre-norm transformer block; returns per-head attention probabilities when asked."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * width, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, need_weights: bool = False):
        h = self.norm1(x)
        a, w = self.attn(h, h, h, key_padding_mask=~mask, need_weights=need_weights, average_attn_weights=False)
        x = x + self.drop(a)
        x = x + self.drop(self.ff(self.norm2(x)))
        return x, w


class FrameEncoder(nn.Module):
    """``(B, T, d_in)`` + mask -> ``(B, width)``; see the module docstring."""

    def __init__(self, d_in: int, width: int, dropout: float, kind: str = "transformer", layers: int = 2,
                 heads: int = 4, pool: str = "mean", keep_rate: float = 1.0, prune_from_layer: int = 1):
        super().__init__()
        if kind not in ENCODERS:
            raise ValueError(f"model.frame_encoder must be one of {ENCODERS}, not {kind!r}")
        if pool not in POOLS:
            raise ValueError(f"model.frame_pool must be one of {POOLS}, not {pool!r}")
        if layers < 1:
            raise ValueError(f"model.frame_layers must be >= 1, got {layers}")
        check_keep_rate(keep_rate)
        if keep_rate < 1.0:
            if kind != "transformer":
                raise ValueError("token pruning (model.keep_rate < 1) scores frames by the attention they receive: "
                                 "it needs model.frame_encoder=transformer (the pool encoder has no attention weights)")
            if isinstance(prune_from_layer, bool) or not isinstance(prune_from_layer, int) or not 0 <= prune_from_layer <= layers:
                raise ValueError(f"model.prune_from_layer must be an int in [0, {layers}] (model.frame_layers), "
                                 f"got {prune_from_layer!r}")
        if kind == "transformer" and width % heads:
            raise ValueError(f"model.hidden ({width}) must be divisible by model.frame_heads ({heads})")
        self.kind, self.pool, self.width = kind, pool, width
        self.keep_rate, self.prune_from_layer = float(keep_rate), int(prune_from_layer)
        self.inp = nn.Sequential(nn.Linear(d_in, width), nn.GELU(), nn.Dropout(dropout))
        if kind == "transformer":
            self.blocks = nn.ModuleList(Block(width, heads, dropout) for _ in range(layers))
        else:
            self.blocks = nn.ModuleList(
                nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(), nn.Dropout(dropout),
                              nn.Linear(2 * width, width)) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        if pool == "attention":
            self.score = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1))

    @property
    def pruning_active(self) -> bool:
        return self.kind == "transformer" and self.keep_rate < 1.0 and self.prune_from_layer < len(self.blocks)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, pool={self.pool}, keep_rate={self.keep_rate}, prune_from_layer={self.prune_from_layer}"

    def forward(self, x: torch.Tensor, mask: torch.Tensor, return_tokens: bool = False):
        """Pooled ``(B, width)``; with ``return_tokens`` also ``(tokens, mask, frame_index)`` of the
        frames that reached the pooling (all valid frames unless pruning is on)."""
        if x.dim() != 3 or mask.shape != x.shape[:2]:
            raise ValueError(f"frame encoder needs x (B, T, D) and mask (B, T), got {tuple(x.shape)} and {tuple(mask.shape)}")
        mask = mask.to(torch.bool)
        # a clip without frames (missing modality) attends to one zero frame; its output is zeroed below
        empty = ~mask.any(1)
        mask = mask.clone()
        mask[:, 0] |= empty
        h = self.inp(x)
        frame_index = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        if self.kind == "transformer":
            h = h + sinusoid(frame_index, self.width).to(h.dtype)
            for i, blk in enumerate(self.blocks):
                prune = self.keep_rate < 1.0 and i >= self.prune_from_layer
                h, attn = blk(h, mask, need_weights=prune)
                if prune:
                    idx, mask = select_tokens(attn, mask, self.keep_rate)
                    h = gather_tokens(h, idx)
                    frame_index = gather_tokens(frame_index, idx)
        else:
            for blk in self.blocks:
                h = h + blk(h)
        h = self.norm(h)
        if self.pool == "mean":
            pooled = masked_mean(h, mask)
        else:
            s = self.score(h).squeeze(-1).masked_fill(~mask, float("-inf"))
            pooled = (torch.softmax(s, dim=1).unsqueeze(-1) * h).sum(1)
        pooled = pooled * (~empty).unsqueeze(-1).to(pooled.dtype)
        if return_tokens:
            return pooled, (h, mask, frame_index.masked_fill(~mask, -1))
        return pooled


def frame_encoder_from_config(modality: str, d_in: int, width: int, cfg) -> FrameEncoder:
    """The frame encoder ``cfg`` (:class:`semimer.config.ModelConfig`) asks for, for ``modality``."""
    prune = modality in set(cfg.prune_modalities)
    return FrameEncoder(d_in, width, cfg.dropout, kind=cfg.frame_encoder, layers=cfg.frame_layers,
                        heads=cfg.frame_heads, pool=cfg.frame_pool,
                        keep_rate=cfg.keep_rate if prune else 1.0, prune_from_layer=cfg.prune_from_layer)
