"""MR-CCL: multimodal contrastive model with noisy views (Fan et al., MRAC @ ACM MM 2024,
arXiv 2409.04447; specified in the project's method notes).

Per modality ``m``:  ``h_m = W_m E_m(x_m)`` in a shared width ``d``; combinatorial projection
``g_m = U_m h_m`` in ``2d``. Heads ``c_a(h_a)``, ``c_t(h_t)``, ``c_v(h_v)`` and a fusion head
``c_f([h_a; h_t; h_v])``, each Linear -> LayerNorm -> ReLU -> Dropout -> Linear to K logits.

Voting (``model.vote_mode``):

* ``prob`` (default, a proper soft vote): ``p = sum_k w_k softmax(c_k) / sum_k w_k``;
* ``logit`` (as in the published code): ``p = softmax(sum_k w_k c_k)``.

Published weights: audio 0.7, text 0.3, video 0.4, fusion 0.7.

Missing modalities: a clip's absent modality has ``h_m = 0`` (the fusion head sees zeros there), its
head is left out of that clip's vote (weights renormalised over the heads present; the fusion head is
always present) and out of the per-head loss, and its contrastive terms use only the clips that have
the modalities involved (:mod:`semimer.models.losses`).

Losses: ``L_cls = CE(log p, y) + mean_k CE(c_k, y)``; fine-tuning adds
``lambda_m L_modal + lambda_n L_noise`` (:mod:`semimer.models.losses`), where the noisy view runs the same
encoder on ``x~_m = sqrt(abar_t) x_m + sqrt(1 - abar_t) eps`` (:mod:`semimer.models.noise`, one schedule
per modality, one timestep per clip, applied to standardised inputs). Pre-training uses
``L_modal + L_noise`` only (:meth:`MRCCL.contrastive_loss`).

Every layer acts on one clip at a time (LayerNorm, no BatchNorm, no attention across the batch), so
a clip's prediction never depends on which clips share its batch (the published fragment fed
``(B, 1, D)`` to a non-batch-first transformer and mixed clips). Utterance-level inputs ``(B, D)``
use :class:`ResidualEncoder`; frame-level inputs ``(B, T, D)`` + ``<modality>_mask`` use a
batch-first :class:`~semimer.models.frame.FrameEncoder` (masked attention, masked pooling, optional
token pruning), whose pooled output plays the role of ``E_m(x_m)``. The noisy view perturbs every
frame of a clip with the clip's one timestep; padded frames stay zero.
"""

from __future__ import annotations

import torch
from torch import nn

from semimer.models.losses import ModalityContrastiveLoss, NoiseContrastiveLoss
from semimer.models import register_model
from semimer.models.base import EmotionModel, drop_modalities, mlp_head, present_of, smoothed_nll
from semimer.models.frame import frame_encoder_from_config
from semimer.models.noise import scheduler_from_config
from semimer.data.ragged import MASK_SUFFIX, PRESENT_SUFFIX

HEADS = ("audio", "text", "video", "fusion")


class ResidualEncoder(nn.Module):
    """``E_m``: input projection then one pre-norm residual MLP block (a transformer block on a
    single token reduces to this: self-attention over one token is a linear map)."""

    def __init__(self, d_in: int, width: int, dropout: float):
        super().__init__()
        self.inp = nn.Sequential(nn.Linear(d_in, width), nn.GELU(), nn.Dropout(dropout))
        self.block = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(),
                                   nn.Dropout(dropout), nn.Linear(2 * width, width))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        return self.norm(x + self.block(x))


@register_model("mrccl")
class MRCCL(EmotionModel):
    frame_level = True

    def __init__(self, dims: dict[str, int], num_classes: int, cfg, noise_cfg=None,
                 levels: dict[str, str] | None = None, **_):
        super().__init__(dims, num_classes, levels)
        d = cfg.hidden
        self.cfg = cfg
        self.encoders = nn.ModuleDict({
            m: frame_encoder_from_config(m, D, d, cfg) if self.levels[m] == "frame" else ResidualEncoder(D, d, cfg.dropout)
            for m, D in dims.items()})
        self.to_shared = nn.ModuleDict({m: nn.Linear(d, d) for m in dims})  # W_m
        self.combinatorial = nn.ModuleDict({m: nn.Linear(d, 2 * d) for m in dims})  # U_m
        self.heads = nn.ModuleDict({m: mlp_head(d, cfg.head_hidden, num_classes, cfg.dropout) for m in dims})
        self.heads["fusion"] = mlp_head(d * len(dims), cfg.head_hidden, num_classes, cfg.dropout)
        unknown = set(cfg.vote_weights) - set(HEADS)
        if unknown:
            raise ValueError(f"model.vote_weights has unknown heads {sorted(unknown)}; valid: {', '.join(HEADS)}")
        if cfg.vote_mode not in ("prob", "logit"):
            raise ValueError(f"model.vote_mode must be 'prob' or 'logit', not {cfg.vote_mode!r}")
        w = torch.tensor([float(cfg.vote_weights.get(k, 0.0)) for k in self.head_names])
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"model.vote_weights must be >= 0 with a positive sum, got {dict(cfg.vote_weights)}")
        self.register_buffer("vote_weights", w, persistent=False)
        # data-parallel pre-training sets this to an all-gather (with gradients) over the ranks, so the
        # contrastive terms of every rank see the whole batch (semimer.train.pretrain); None: one process
        self.gather = None
        self.modal_loss = ModalityContrastiveLoss(init_tau=cfg.temperature_init)
        self.noise_loss = NoiseContrastiveLoss(init_tau=cfg.temperature_init)
        self.noise = {}
        if noise_cfg is not None:
            self.noise = {m: scheduler_from_config(getattr(noise_cfg, m)) for m in dims}
        else:
            from semimer.config import NoiseConfig

            self.noise = {m: scheduler_from_config(NoiseConfig()) for m in dims}

    @property
    def head_names(self) -> list[str]:
        return [*self.modalities, "fusion"]

    def embed(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``h_m`` for standardised inputs (zero for clips without modality ``m``)."""
        return {m: self.to_shared[m](self.encode(m, batch)) * present_of(batch, m).unsqueeze(-1).to(batch[m].dtype)
                for m in self.modalities}

    def head_presence(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(H, B)`` bool: which heads a clip has (its modalities' heads; the fusion head always)."""
        pres = [present_of(x, m) for m in self.modalities]
        return torch.stack([*pres, torch.ones_like(pres[0])])

    def vote(self, head_logits: dict[str, torch.Tensor], heads_present: torch.Tensor | None = None) -> torch.Tensor:
        """Voted class probabilities ``(B, K)``; ``heads_present`` ``(H, B)`` leaves absent heads out
        (weights renormalised per clip; a clip whose weighted heads are all absent takes the fusion head)."""
        # (H, B, K); the vote in float32 whatever the autocast precision of the heads
        stacked = torch.stack([head_logits[k] for k in self.head_names]).float()
        w = self.vote_weights.to(stacked.dtype).view(-1, 1, 1)
        if heads_present is not None:
            w = w * heads_present.to(stacked.dtype).unsqueeze(-1)  # (H, B, 1)
            fusion_only = torch.zeros_like(w)
            fusion_only[-1] = 1.0
            w = torch.where(w.sum(0, keepdim=True) > 0, w, fusion_only)
        if self.cfg.vote_mode == "logit":
            return torch.softmax((w * stacked).sum(0), dim=-1)
        return (w * torch.softmax(stacked, dim=-1)).sum(0) / w.sum(0)

    def _forward_std(self, x: dict[str, torch.Tensor]) -> dict:
        return self._heads(x, self.embed(x))

    def _noisy(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(x)  # masks carried over
        for m in self.modalities:
            noisy = self.noise[m].add_noise(x[m])
            mask = x.get(m + MASK_SUFFIX)
            out[m] = noisy if mask is None else noisy * mask.unsqueeze(-1).to(noisy.dtype)
        return out

    def embed_views(self, views: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        """``h`` of several standardised views of one batch (clean, modality-dropped, noisy) in one
        pass: the views are stacked along the batch, run through the encoders together and split.
        Every layer acts on one clip at a time, so this equals one :meth:`embed` per view (up to
        floating-point rounding and which dropout masks are drawn) at a fraction of the kernel calls."""
        if len(views) == 1:
            return [self.embed(views[0])]
        B = views[0][self.modalities[0]].shape[0]
        stacked: dict[str, torch.Tensor] = {}
        for m in self.modalities:
            stacked[m] = torch.cat([v[m] for v in views])
            if m + MASK_SUFFIX in views[0]:
                stacked[m + MASK_SUFFIX] = torch.cat([v[m + MASK_SUFFIX] for v in views])
            stacked[m + PRESENT_SUFFIX] = torch.cat([present_of(v, m) for v in views])
        h = self.embed(stacked)
        return [{m: h[m][i * B:(i + 1) * B] for m in self.modalities} for i in range(len(views))]

    def _contrastive(self, present: dict[str, torch.Tensor], h: dict[str, torch.Tensor], use_modal: bool,
                     h_noisy: dict[str, torch.Tensor] | None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``L_modal`` (when ``use_modal``) and ``L_noise`` (when ``h_noisy`` is given: the noisy
        view's embeddings) for clips with modalities ``present``; parts are detached 0-dim tensors
        (read once per epoch by the trainer)."""
        terms, parts = {}, {}
        if use_modal and len(self.modalities) > 1:
            g = {m: self.combinatorial[m](h[m]) for m in self.modalities}
            terms["modal"], _ = self.modal_loss(h, g, present, terms=False)
            parts["modal"] = terms["modal"].detach()
        if h_noisy is not None:
            terms["noise"], _ = self.noise_loss(h, h_noisy, present, terms=False)
            parts["noise"] = terms["noise"].detach()
        return terms, parts

    def _heads(self, x: dict[str, torch.Tensor], h: dict[str, torch.Tensor]) -> dict:
        head_logits = {m: self.heads[m](h[m]) for m in self.modalities}
        head_logits["fusion"] = self.heads["fusion"](torch.cat([h[m] for m in self.modalities], dim=-1))
        heads_present = self.head_presence(x)
        probs = self.vote(head_logits, heads_present)
        return {"h": h, "head_logits": head_logits, "heads_present": heads_present, "probs": probs,
                "logits": torch.log(probs.clamp_min(1e-12))}

    def loss(self, batch: dict[str, torch.Tensor], y: torch.Tensor,
             weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``L_cls + lambda_m L_modal + lambda_n L_noise``; parts (``cls``, ``modal``, ``noise``) are
        detached 0-dim tensors, so a training step never waits for the device to report them.
        The classification view (modality dropout applied), the clean view (when dropout changed
        it) and the noisy view go through the encoders together (:meth:`embed_views`)."""
        self.check_batch(batch)
        clean = self.standardizer(batch)
        x = drop_modalities(clean, self.modalities, self.modality_dropout)
        use_noise = bool(self.cfg.use_noise)
        views = [x] + ([clean] if x is not clean else []) + ([self._noisy(clean)] if use_noise else [])
        hs = self.embed_views(views)
        out = self._heads(x, hs[0])
        eps = self.label_smoothing
        fused = smoothed_nll(out["logits"], y, eps, weight)
        # each head on the clips that have it (a unimodal head with no such clip in the batch adds nothing)
        w = torch.ones_like(y, dtype=fused.dtype) if weight is None else weight.to(fused.dtype)
        pres = out["heads_present"].to(fused.dtype)  # (H, B)
        head_losses = torch.stack([smoothed_nll(torch.log_softmax(out["head_logits"][k], dim=-1), y, eps, w * pres[i])
                                   for i, k in enumerate(self.head_names)])
        used = (pres * w).sum(1).gt(0).to(fused.dtype)
        per_head = (head_losses * used).sum() / used.sum().clamp_min(1.0)
        loss = fused + per_head
        parts = {"cls": loss.detach()}
        # contrastive terms pair modalities of the same clip: computed on the clips as they are
        h = hs[0] if x is clean else hs[1]
        present = {m: present_of(clean, m) for m in self.modalities}
        terms, cparts = self._contrastive(present, h, self.cfg.use_modal, hs[-1] if use_noise else None)
        if "modal" in terms:
            loss = loss + self.cfg.lambda_modal * terms["modal"]
        if "noise" in terms:
            loss = loss + self.cfg.lambda_noise * terms["noise"]
        parts.update(cparts)
        return loss, parts

    def contrastive_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``L_modal + L_noise`` without labels (contrastive pre-training); modality dropout
        (``modality_dropout``, set by the pre-training loop) removes dropped modalities from the terms.
        The clean and noisy views go through the encoders together."""
        self.check_batch(batch)
        x = drop_modalities(self.standardizer(batch), self.modalities, self.modality_dropout)
        use_noise = bool(self.cfg.use_noise)
        hs = self.embed_views([x, self._noisy(x)] if use_noise else [x])
        present = {m: present_of(x, m) for m in self.modalities}
        if self.gather is not None:  # data-parallel pre-training: the whole batch's clips, from every rank
            hs = [{m: self.gather(v) for m, v in h.items()} for h in hs]
            present = {m: self.gather(p.to(torch.uint8)).bool() for m, p in present.items()}
        terms, parts = self._contrastive(present, hs[0], self.cfg.use_modal, hs[1] if use_noise else None)
        if not terms:
            raise ValueError("contrastive pre-training needs model.use_modal or model.use_noise")
        return sum(terms.values()), parts
