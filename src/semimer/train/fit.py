"""Fit one model on one training set, choosing the best epoch on a validation set.

Features for the labeled clips are small enough to sit in memory as tensors (5,030 clips x 6,912
dims is 139 MB); large pools are streamed by :func:`predict_names`. Model selection uses validation
WAF only; the best epoch's weights are restored at the end. Frame-level features are
:class:`~semimer.data.ragged.Ragged` (no padding at rest), batched by length buckets in training and by
sorted length under a frame budget at inference.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from sklearn.metrics import f1_score

from semimer.config import TrainConfig
from semimer.data.ragged import (clip_lengths, collate, inference_batches, length_bucketed_batches, n_items,
                            to_tensors)
from semimer.utils import log

MAX_EVAL_FRAMES = 65536  # padded frames per inference batch at frame level (bounds memory)


def take(feats: dict, idx) -> dict:
    """Clips ``idx`` of every modality (tensor rows or Ragged clips)."""
    return {m: x[idx] for m, x in feats.items()}


def train_batches(feats: dict, n: int, batch_size: int, generator: torch.Generator) -> list:
    """One epoch's batches of indices: a seeded permutation cut in order (utterance level), or
    seeded length buckets when any modality is frame level (:mod:`semimer.data.ragged`)."""
    lengths = clip_lengths(feats)
    if lengths is None:
        perm = torch.randperm(n, generator=generator)
        return [perm[s:s + batch_size] for s in range(0, n, batch_size)]
    return [torch.as_tensor(b) for b in length_bucketed_batches(lengths, batch_size, generator)]


@dataclass
class FitResult:
    best_epoch: int
    best_val_waf: float
    history: list[dict] = field(default_factory=list)


@torch.no_grad()
def predict_tensors(model, feats: dict, batch_size: int = 1024, max_frames: int = MAX_EVAL_FRAMES) -> np.ndarray:
    """Class probabilities ``(N, K)`` for in-memory features (eval mode, no grad). Frame-level
    inputs are batched by length with at most ``max_frames`` padded frames per batch."""
    model.eval()
    n = n_items(feats)
    out = np.zeros((n, model.num_classes), np.float32)
    lengths = clip_lengths(feats)
    for idx in inference_batches(lengths, n, batch_size, max_frames):
        sel = slice(int(idx[0]), int(idx[-1]) + 1) if lengths is None else torch.as_tensor(idx)
        out[idx] = model(collate(take(feats, sel)))["probs"].float().cpu().numpy()
    return out


@torch.no_grad()
def predict_names(models: Sequence, data, names: Sequence[str], device: torch.device,
                  batch_size: int = 1024, progress: bool = False) -> np.ndarray:
    """Mean class probabilities of ``models`` (e.g. the fold ensemble) over clips ``names``,
    read from the data's feature stores batch by batch (never the whole pool in RAM)."""
    K = models[0].num_classes
    out = np.zeros((len(names), K), dtype=np.float64)
    starts = range(0, len(names), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="predict", unit="batch", leave=False, disable=None)
    for s in starts:
        chunk = list(names[s:s + batch_size])
        feats = to_tensors(data.features(chunk), device, data.dims())
        out[s:s + len(chunk)] = np.mean([predict_tensors(m, feats, batch_size) for m in models], axis=0)
    return out.astype(np.float32)


def fit(model, train: dict[str, torch.Tensor], y_train: torch.Tensor, val: dict[str, torch.Tensor] | None,
        y_val: np.ndarray | None, cfg: TrainConfig, seed: int, desc: str = "fit",
        on_epoch: Callable[[dict], None] | None = None) -> FitResult:
    """Adam(W) on ``model.loss``; after each epoch score validation WAF; keep the best epoch.

    ``train``/``val`` are tensors already on the model's device; shuffling uses a seeded generator,
    so a CPU run is deterministic for a given ``seed``.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n = len(y_train)
    if n_items(train) != n:
        raise ValueError(f"{desc}: {n_items(train)} training clips but {n} labels")
    best = (-1.0, -1)
    best_state = copy.deepcopy(model.state_dict())
    history: list[dict] = []
    epochs = range(cfg.epochs)
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = epochs = tqdm(epochs, desc=desc, unit="ep", leave=False, disable=None, mininterval=0.5)
    for epoch in epochs:
        model.train()
        tot, parts_sum, steps = 0.0, {}, 0
        for idx in train_batches(train, n, cfg.batch_size, gen):
            idx = idx.to(y_train.device)
            if len(idx) < 2 and n >= 2:  # a batch of one breaks normalisation/contrastive terms
                continue
            loss, parts = model.loss(collate(take(train, idx)), y_train[idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: non-finite loss at epoch {epoch}; lower train.lr or check the features")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach())
            steps += 1
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v
        rec = {"epoch": epoch, "train_loss": tot / max(steps, 1), **{f"train_{k}": v / max(steps, 1) for k, v in parts_sum.items()}}
        if val is not None and y_val is not None and len(y_val):
            probs = predict_tensors(model, val, cfg.eval_batch_size)
            rec["val_waf"] = float(f1_score(y_val, probs.argmax(1), average="weighted", zero_division=0))
            rec["val_loss"] = float(-np.log(np.clip(probs[np.arange(len(y_val)), y_val], 1e-12, None)).mean())
            if rec["val_waf"] > best[0]:
                best = (rec["val_waf"], epoch)
                best_state = copy.deepcopy(model.state_dict())
        else:
            best = (float("nan"), epoch)
            best_state = copy.deepcopy(model.state_dict())
        history.append(rec)
        if on_epoch:
            on_epoch(rec)
        if bar is not None:
            bar.set_postfix(loss=f"{rec['train_loss']:.3f}", waf=f"{rec.get('val_waf', float('nan')):.3f}")
        if cfg.patience and val is not None and epoch - best[1] >= cfg.patience:
            log.debug("%s: early stop at epoch %d (best %d)", desc, epoch, best[1])
            break
    model.load_state_dict(best_state)
    return FitResult(best_epoch=best[1], best_val_waf=best[0], history=history)
