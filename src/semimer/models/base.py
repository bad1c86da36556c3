"""What every emotion model offers the trainer, and the pieces they share.

Batches are ``dict[str, Tensor]``: one ``(B, D)`` tensor per utterance-level modality; a frame-level
modality arrives as ``(B, T, D)`` plus a ``"<modality>_mask"`` ``(B, T)`` bool tensor (True = valid
frame; see :mod:`semimer.data.ragged`). Which modalities are frame level is fixed at construction
(``levels``) and saved with the weights; models that accept frame-level inputs say so with
``frame_level = True``.

A clip may lack a modality (an all-NaN row, or no valid frame; :mod:`semimer.data.ragged`): the
standardiser zeroes it and adds ``"<modality>_present"`` ``(B,)`` to the standardised batch, and the
models leave absent modalities out of fusion, voting and contrastive terms. Every clip must have at
least one modality.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from semimer.data.ragged import MASK_SUFFIX, PRESENT_SUFFIX, Ragged, StoredFrames, presence

LEVELS = ("utt", "frame")


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
        over row blocks, so a large sample never needs a float64 copy of itself.

        Frame-level modalities contribute their valid frames only: a :class:`~semimer.data.ragged.Ragged`
        holds no padding, and a padded ``(B, T, D)`` tensor is reduced to the rows of its
        ``<m>_mask`` (statistics are per frame, so long clips weigh more). Missing clips (NaN
        rows, clips without frames) do not count."""
        acc = {m: [0, 0.0, 0.0] for m in self.modalities}  # n, sum, sum of squares

        def add(m: str, x: torch.Tensor) -> None:
            x = x.reshape(-1, x.shape[-1])
            for s in range(0, len(x), rows_per_step):
                b = x[s:s + rows_per_step].double()
                acc[m][0] += len(b)
                acc[m][1] = acc[m][1] + b.sum(0)
                acc[m][2] = acc[m][2] + (b * b).sum(0)

        for feats in chunks:
            for m in self.modalities:
                x = feats[m]
                if isinstance(x, StoredFrames):
                    for part in x.iter_chunks():
                        add(m, part.flat)
                    continue
                if isinstance(x, Ragged):
                    x = x.flat
                elif m + MASK_SUFFIX in feats:
                    x = x[feats[m + MASK_SUFFIX]]
                else:
                    x = x[presence(x)]
                add(m, x)
        for m, (n, s1, s2) in acc.items():
            if n == 0:
                raise ValueError(f"no rows to fit the {m} standardiser on (no clip has this modality)")
            mean = s1 / n
            std = (s2 / n - mean * mean).clamp_min(0).sqrt()
            std[std < 1e-6] = 1.0
            getattr(self, f"{m}_mean").copy_(mean.float())
            getattr(self, f"{m}_std").copy_(std.float())

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Standardised copy of ``batch`` with ``<m>_present`` ``(B,)`` per modality; padded frames
        (mask False) and missing clips are exactly zero."""
        out = dict(batch)
        for m in self.modalities:
            x = (batch[m] - getattr(self, f"{m}_mean")) / getattr(self, f"{m}_std")
            mask = batch.get(m + MASK_SUFFIX)
            present = presence(batch[m], mask)
            if mask is None:
                out[m] = torch.where(present.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
            else:
                out[m] = x * mask.unsqueeze(-1).to(x.dtype)
            out[m + PRESENT_SUFFIX] = present
        return out


def mlp_head(d_in: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    """The classifier head of method.md: Linear -> LayerNorm -> ReLU -> Dropout -> Linear."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, num_classes))


class EmotionModel(nn.Module):
    """Interface used by :mod:`semimer.train.fit`.

    * ``forward(batch) -> dict`` with at least ``"probs"`` ``(B, K)`` (class probabilities) and
      ``"logits"`` ``(B, K)``;
    * ``loss(batch, y) -> (loss, parts)`` for supervised training (parts: detached 0-dim tensors or
      floats, for logging; the trainer sums them on the device and reads them once per epoch);
    * ``standardizer`` applied inside ``forward``; fitted by the trainer on training clips.
    """

    frame_level = False

    def __init__(self, dims: dict[str, int], num_classes: int, levels: dict[str, str] | None = None):
        super().__init__()
        self.dims = dict(dims)
        self.modalities = list(dims)
        self.num_classes = num_classes
        levels = dict(levels or {})
        unknown = set(levels) - set(dims)
        if unknown:
            raise ValueError(f"levels given for modalities {sorted(unknown)} without dims")
        self.levels = {m: levels.get(m, "utt") for m in dims}
        bad = {m: lv for m, lv in self.levels.items() if lv not in LEVELS}
        if bad:
            raise ValueError(f"feature levels must be 'utt' or 'frame', got {bad}")
        if "frame" in self.levels.values() and not self.frame_level:
            raise ValueError(f"model {getattr(self, 'registry_name', type(self).__name__)!r} takes utterance-level "
                             f"features only, but {[m for m, lv in self.levels.items() if lv == 'frame']} are frame level")
        self.standardizer = Standardizer(dims)
        # training-only options, set by the trainer from TrainConfig (not saved with the weights)
        self.label_smoothing = 0.0
        self.modality_dropout = 0.0

    def check_batch(self, batch: dict[str, torch.Tensor]) -> None:
        """Shapes match the model's levels: ``(B, D)`` or ``(B, T, D)`` + ``<m>_mask``."""
        for m in self.modalities:
            x = batch.get(m)
            if x is None:
                raise ValueError(f"batch has no {m!r} features (model inputs: {', '.join(self.modalities)})")
            want = 2 if self.levels[m] == "utt" else 3
            if x.dim() != want or x.shape[-1] != self.dims[m]:
                raise ValueError(f"{m} features have shape {tuple(x.shape)}, expected "
                                 f"{'(B, %d)' % self.dims[m] if want == 2 else '(B, T, %d)' % self.dims[m]} "
                                 f"({self.levels[m]} level)")
            if want == 3 and m + MASK_SUFFIX not in batch:
                raise ValueError(f"frame-level {m} features need a {m + MASK_SUFFIX!r} (B, T) mask")

    def encode(self, m: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``self.encoders[m]`` on modality ``m`` of a standardised batch (with its mask at frame
        level); zero for clips without the modality."""
        if self.levels[m] == "frame":
            h = self.encoders[m](batch[m], batch[m + MASK_SUFFIX])
        else:
            h = self.encoders[m](batch[m])
        return h * present_of(batch, m).unsqueeze(-1).to(h.dtype)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.check_batch(batch)
        return self._forward_std(self.standardizer(batch))

    def _forward_std(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def training_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Checked, standardised batch with modality dropout applied (training losses only)."""
        self.check_batch(batch)
        return drop_modalities(self.standardizer(batch), self.modalities, self.modality_dropout)

    def loss(self, batch: dict[str, torch.Tensor], y: torch.Tensor,
             weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        out = self._forward_std(self.training_inputs(batch))
        loss = smoothed_nll(torch.log_softmax(out["logits"], dim=-1), y, self.label_smoothing, weight)
        return loss, {"cls": loss.detach()}


def smoothed_nll(logp: torch.Tensor, y: torch.Tensor, eps: float = 0.0, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy with label smoothing on log-probabilities ``(B, K)``:
    ``(1 - eps)·NLL(y) + eps·mean_c(-log p_c)`` (the target is ``(1 - eps)·onehot + eps/K``),
    averaged over the batch, or weighted ``Σ w_i·l_i / Σ w_i`` with per-clip ``weight``."""
    if weight is None:
        nll = F.nll_loss(logp, y)
        return nll if not eps else (1.0 - eps) * nll + eps * (-logp.mean(dim=-1)).mean()
    per = -logp.gather(1, y.unsqueeze(1)).squeeze(1)
    if eps:
        per = (1.0 - eps) * per + eps * (-logp.mean(dim=-1))
    weight = weight.to(per.dtype)
    return (weight * per).sum() / weight.sum().clamp_min(1e-12)


def present_of(x: dict[str, torch.Tensor], m: str) -> torch.Tensor:
    """``(B,)`` bool presence of modality ``m`` in a standardised batch (all True when not recorded)."""
    p = x.get(m + PRESENT_SUFFIX)
    if p is None:
        return torch.ones(x[m].shape[0], dtype=torch.bool, device=x[m].device)
    return p


def drop_modalities(x: dict[str, torch.Tensor], modalities: list[str], p: float) -> dict[str, torch.Tensor]:
    """Modality dropout on a standardised batch: each present modality of each clip is made
    *absent* (zeroed and ``<m>_present`` False, exactly like a missing modality) with probability
    ``p``, never all of a clip's present modalities (a clip whose draw drops everything keeps one of
    them, chosen uniformly). With every modality present, the expected dropped share per
    (clip, modality) is ``p - p**M / M`` for ``M`` modalities. Uses torch's global RNG (seeded per fold);
    no host synchronisation."""
    if not p or len(modalities) < 2:
        return x
    first = x[modalities[0]]
    B, M = first.shape[0], len(modalities)
    present = torch.stack([present_of(x, m) for m in modalities], dim=1)  # (B, M)
    drop = (torch.rand(B, M, device=first.device) < p) & present
    everything = ~(present & ~drop).any(dim=1)  # the draw removed every modality the clip has
    pick = torch.where(present, torch.rand(B, M, device=first.device), torch.full((), -1.0, device=first.device))
    restore = F.one_hot(pick.argmax(dim=1), M).bool() & everything.unsqueeze(1)
    drop = drop & ~restore
    out = dict(x)
    for j, m in enumerate(modalities):
        keep = ~drop[:, j]
        shape = (B,) + (1,) * (x[m].dim() - 1)
        out[m] = x[m] * keep.view(shape).to(x[m].dtype)
        out[m + PRESENT_SUFFIX] = present[:, j] & keep
    return out
