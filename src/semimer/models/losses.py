"""Contrastive losses of MR-CCL: NT-Xent, L_modal and L_noise with learnable temperatures.

NT-Xent (SimCLR, Chen et al. 2020, arXiv 2002.05709, eq. 1) for two views u, v ∈ R^{B×d} of one
batch: rows are L2-normalised; with s(a, b) = aᵀb / τ (τ divided once), the loss of anchor u_i is

    ℓ(u_i) = −log[ exp(s(u_i, v_i)) / (Σ_k exp(s(u_i, v_k)) + Σ_{k≠i} exp(s(u_i, u_k))) ]

(positive v_i; negatives all v_k, k ≠ i, and all u_k, k ≠ i; never the anchor itself), symmetric
for anchors v_i, and the loss is the mean over all 2B anchors.

L_modal and L_noise follow Fan et al. 2024, "Leveraging Contrastive Learning and Self-Training for
Multimodal Emotion Recognition with Limited Labeled Samples" (arXiv 2409.04447):

    L_modal = mean of (h_a, h_t), (h_a, h_v), (h_t, h_v),
              (g_a, [h_t; h_v]), (g_t, [h_a; h_v]), (g_v, [h_a; h_t])
    L_noise = mean of (h_m, h̃_m) for m ∈ {audio, text, video}

each term an NT-Xent with its own learnable temperature.

Missing modalities: with ``present`` (modality -> ``(B,)`` bool), a term uses only the clips that
have every modality it involves (anchors and negatives alike: exactly the NT-Xent of those rows);
a term with no such clip in the batch contributes nothing, and the loss is the mean of the terms
that have at least one (0 when none has). Their public fragment used the
self-similarity as the positive, did not normalise and divided by τ twice, so it never pulled the
paired views together; this module does not reproduce that.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MODALITIES",
    "nt_xent",
    "LearnableTemperature",
    "ModalityContrastiveLoss",
    "NoiseContrastiveLoss",
]

MODALITIES: tuple[str, ...] = ("audio", "text", "video")


def nt_xent(u: torch.Tensor, v: torch.Tensor, temperature: float | torch.Tensor,
            valid: torch.Tensor | None = None) -> torch.Tensor:
    """SimCLR NT-Xent between paired views ``u`` and ``v`` (formula in the module docstring).

    Args:
        u, v: (B, d) tensors, B ≥ 1; row i of ``u`` is paired with row i of ``v``.
        temperature: τ > 0, a float or a 0-dim tensor (gradients flow to it when it requires grad).
        valid: optional (B,) bool; only valid pairs are anchors and negatives, so the result equals
            ``nt_xent(u[valid], v[valid])`` (0 when no pair is valid), computed without host sync.

    Returns:
        0-dim tensor, the mean of ℓ over the 2B anchors. For B = 1 the only denominator term is the
        positive, so the loss is exactly 0. Rows are normalised with ``F.normalize`` (a zero row
        stays zero rather than producing NaN).
    """
    if not isinstance(u, torch.Tensor) or not isinstance(v, torch.Tensor):
        raise ValueError("u and v must be tensors")
    if u.ndim != 2 or v.shape != u.shape:
        raise ValueError(f"u and v must both have shape (B, d) with the same B and d, got {tuple(u.shape)} and {tuple(v.shape)}")
    if u.shape[0] == 0:
        raise ValueError("nt_xent needs a batch of at least one pair (B >= 1), got B = 0")
    if isinstance(temperature, torch.Tensor):
        if temperature.ndim != 0:
            raise ValueError(f"temperature must be a float or a 0-dim tensor, got shape {tuple(temperature.shape)}")
    elif isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a positive number or a 0-dim tensor, got {temperature!r}")

    if torch.is_autocast_enabled(u.device.type):
        # similarities divided by a small τ need float32: computed outside autocast, in float32
        with torch.autocast(u.device.type, enabled=False):
            return nt_xent(u.float(), v.float(), temperature.float() if isinstance(temperature, torch.Tensor)
                           else temperature, valid)
    B = u.shape[0]
    z = F.normalize(torch.cat([u, v], dim=0), dim=1)  # (2B, d), unit rows
    logits = (z @ z.T) / temperature  # s(a, b), τ divided once
    self_mask = torch.eye(2 * B, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))  # never the anchor itself
    idx = torch.arange(B, device=z.device)
    positives = torch.cat([idx + B, idx])  # u_i ↔ v_i
    if valid is None:
        return F.cross_entropy(logits, positives)
    if valid.shape != (B,):
        raise ValueError(f"valid must have shape ({B},), got {tuple(valid.shape)}")
    vv = torch.cat([valid, valid]).to(torch.bool)
    logits = logits.masked_fill(~vv.unsqueeze(0), float("-inf"))  # invalid rows are never negatives
    logits = logits.masked_fill(~vv.unsqueeze(1), 0.0)  # invalid anchors: finite, weighted out below
    per = F.cross_entropy(logits, positives, reduction="none")
    w = vv.to(per.dtype)
    return (per * w).sum() / w.sum().clamp_min(1.0)


class LearnableTemperature(nn.Module):
    """A learnable τ stored as log τ; ``forward()`` returns τ = clamp(exp(log τ), min_tau, max_tau).

    Defaults: τ₀ = 0.1 in [0.01, 1.0]. Outside the range the clamp is flat, so τ stops receiving a
    gradient there (it stays at the boundary until the gradient pushes log τ back inside).
    """

    def __init__(self, init: float = 0.1, min_tau: float = 0.01, max_tau: float = 1.0) -> None:
        super().__init__()
        if not (0.0 < min_tau <= max_tau):
            raise ValueError(f"need 0 < min_tau <= max_tau, got min_tau={min_tau}, max_tau={max_tau}")
        if not (min_tau <= init <= max_tau):
            raise ValueError(f"init temperature {init} outside [{min_tau}, {max_tau}]")
        self.min_tau = float(min_tau)
        self.max_tau = float(max_tau)
        self.log_tau = nn.Parameter(torch.tensor(math.log(init)))

    def forward(self) -> torch.Tensor:
        return self.log_tau.exp().clamp(self.min_tau, self.max_tau)

    def extra_repr(self) -> str:
        return f"tau={float(self.forward()):.4g}, range=[{self.min_tau}, {self.max_tau}]"


def _check_embeddings(name: str, embs: dict[str, torch.Tensor]) -> None:
    unknown = set(embs) - set(MODALITIES)
    if unknown:
        raise ValueError(f"{name} has unknown modality keys {sorted(unknown)}; valid: {', '.join(MODALITIES)}")


class _TermsLoss(nn.Module):
    """Mean of named NT-Xent terms, one :class:`LearnableTemperature` per term."""

    term_names: tuple[str, ...] = ()

    def __init__(self, init_tau: float = 0.1, min_tau: float = 0.01, max_tau: float = 1.0) -> None:
        super().__init__()
        self.temperatures = nn.ModuleDict(
            {name: LearnableTemperature(init_tau, min_tau, max_tau) for name in self.term_names}
        )

    def _reduce(self, pairs: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]], terms: bool = True
                ) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean of the terms that have a valid pair (``valid`` None: every row valid); with
        ``terms=False`` the per-term floats (one host read each) are not made: ``{}``."""
        if not pairs:
            raise ValueError(f"{type(self).__name__}: no term has all its modalities present")
        values = {name: nt_xent(a, b, self.temperatures[name](), valid) for name, (a, b, valid) in pairs.items()}
        ref = next(iter(values.values()))
        used = torch.stack([ref.new_tensor(1.0) if valid is None else valid.any().to(ref.dtype)
                            for _, _, valid in pairs.values()])
        loss = (torch.stack(list(values.values())) * used).sum() / used.sum().clamp_min(1.0)
        return loss, ({name: float(val.detach()) for name, val in values.items()} if terms else {})

    def temperature_values(self) -> dict[str, float]:
        """Current τ of every term, as floats (for logging)."""
        return {name: float(mod().detach()) for name, mod in self.temperatures.items()}


class ModalityContrastiveLoss(_TermsLoss):
    """L_modal: mean of six NT-Xent terms, each with its own learnable temperature.

    Terms (keys of the returned dict): ``audio_text`` (h_a, h_t), ``audio_video`` (h_a, h_v),
    ``text_video`` (h_t, h_v), ``g_audio`` (g_a, [h_t; h_v]), ``g_text`` (g_t, [h_a; h_v]),
    ``g_video`` (g_v, [h_a; h_t]); concatenations follow the order audio, text, video.

    Missing modalities: a term is used only when everything it needs is present (a pair term needs
    both h's; a combinatorial term needs g_m and the h of all three modalities, so with two
    modalities only their pair term is left). Presence is decided by the keys of ``h``; ``g=None``
    gives the three pair terms only. The loss is the mean of the terms used; with none, a ValueError.
    """

    term_names = ("audio_text", "audio_video", "text_video", "g_audio", "g_text", "g_video")

    def forward(
        self, h: dict[str, torch.Tensor], g: dict[str, torch.Tensor] | None = None,
        present: dict[str, torch.Tensor] | None = None, terms: bool = True,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """h[m]: (B, d) embeddings; g[m]: (B, 2d) combinatorial projections; present[m]: optional
        (B,) bool per clip (see the module docstring). Returns (loss, terms) (``terms=False``: ``{}``,
        no host read: what training uses)."""
        g = g or {}
        _check_embeddings("h", h)
        _check_embeddings("g", g)

        def valid(*ms: str) -> torch.Tensor | None:
            if not present:
                return None
            out = None
            for m in ms:
                if m in present:
                    out = present[m] if out is None else out & present[m]
            return out

        pairs: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
        for i, a in enumerate(MODALITIES):
            for b in MODALITIES[i + 1 :]:
                if a in h and b in h:
                    pairs[f"{a}_{b}"] = (h[a], h[b], valid(a, b))
        for m in MODALITIES:
            others = [o for o in MODALITIES if o != m]
            if m in g and m in h and all(o in h for o in others):
                pairs[f"g_{m}"] = (g[m], torch.cat([h[o] for o in others], dim=1), valid(*MODALITIES))
        return self._reduce(pairs, terms)


class NoiseContrastiveLoss(_TermsLoss):
    """L_noise: mean over modalities of NT-Xent(h_m, h̃_m), each with its own learnable temperature.

    Terms are keyed by modality; a modality is used when it is in both ``h`` and ``h_noisy``.
    """

    term_names = MODALITIES

    def forward(
        self, h: dict[str, torch.Tensor], h_noisy: dict[str, torch.Tensor],
        present: dict[str, torch.Tensor] | None = None, terms: bool = True,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """h[m], h_noisy[m]: (B, d) clean and noisy-input embeddings; present[m]: optional (B,) bool.
        Returns (loss, terms)."""
        _check_embeddings("h", h)
        _check_embeddings("h_noisy", h_noisy)
        present = present or {}
        pairs = {m: (h[m], h_noisy[m], present.get(m)) for m in MODALITIES if m in h and m in h_noisy}
        return self._reduce(pairs, terms)
