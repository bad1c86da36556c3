"""Fit one model on one training set, choosing the best epoch on a selection set.

Features for the labeled clips are small enough to sit in memory as tensors (5,030 clips x 6,912
dims is 139 MB); large pools are streamed by :func:`predict_names`. The epoch is chosen on the WAF
of a selection set that the caller keeps apart from the clips it scores; the best epoch's weights
are restored at the end. Frame-level features are
:class:`~semimer.data.ragged.Ragged` (no padding at rest), batched by length buckets in training and by
sorted length under a frame budget at inference.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from sklearn.metrics import f1_score

from semimer.config import TrainConfig
from semimer.data.ragged import (clip_lengths, collate, inference_batches, length_bucketed_batches, n_items,
                            to_tensors)
from semimer.train.accel import adamw
from semimer.utils import log, prefetched
from semimer.utils import progress as show_progress

MAX_EVAL_FRAMES = 65536  # padded frames per inference batch at frame level (bounds memory)


def take(feats: dict, idx) -> dict:
    """Clips ``idx`` of every modality (tensor rows or Ragged clips). A CPU index tensor is sent to
    a tensor's device without blocking; Ragged selections are indexed on the CPU."""
    out = {}
    for m, x in feats.items():
        if isinstance(x, torch.Tensor) and isinstance(idx, torch.Tensor) and idx.device != x.device:
            out[m] = x[idx.to(x.device, non_blocking=True)]
        else:
            out[m] = x[idx]
    return out


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
def predict_tensors(model, feats: dict, batch_size: int = 1024, max_frames: int = MAX_EVAL_FRAMES,
                    agreement: bool = False, accel=None):
    """Class probabilities ``(N, K)`` for in-memory features (eval mode, no grad). Frame-level
    inputs are batched by length with at most ``max_frames`` padded frames per batch.
    ``agreement=True`` also returns, per clip, how many of the model's heads (``head_logits``:
    MR-CCL's unimodal and fusion heads, those of the modalities the clip has) predict the same class
    as its output (``None`` for a model without heads). ``accel``: autocast precision (probabilities
    are returned in float32 whatever it is)."""
    model.eval()
    n = n_items(feats)
    out = np.zeros((n, model.num_classes), np.float32)
    agree = np.zeros(n, np.int64)
    has_heads = True
    lengths = clip_lengths(feats)
    for idx in inference_batches(lengths, n, batch_size, max_frames):
        sel = slice(int(idx[0]), int(idx[-1]) + 1) if lengths is None else torch.as_tensor(idx)
        with (accel.autocast() if accel is not None else contextlib.nullcontext()):
            res = model(collate(take(feats, sel)))
        out[idx] = res["probs"].float().cpu().numpy()
        if agreement and "head_logits" in res:
            top = res["probs"].argmax(-1)
            votes = torch.stack([h.argmax(-1) == top for h in res["head_logits"].values()])  # (H, B)
            if "heads_present" in res:  # a head of a modality the clip lacks does not agree
                votes = votes & res["heads_present"]
            agree[idx] = votes.long().sum(0).cpu().numpy()
        else:
            has_heads = False
    if agreement:
        return out, (agree if has_heads else None)
    return out


@torch.no_grad()
def predict_names(models: Sequence, data, names: Sequence[str], device: torch.device,
                  batch_size: int = 1024, progress: bool = False, average: bool = True, agreement: bool = False,
                  accel=None):
    """Class probabilities of ``models`` (e.g. the fold ensemble) over clips ``names``, read from
    the data's feature stores batch by batch (never the whole pool in RAM): their mean ``(N, K)``,
    or with ``average=False`` one row block per model ``(M, N, K)``; ``agreement=True`` (with
    ``average=False``) also returns the per-model head agreement counts ``(M, N)`` (``None`` when
    the models have no heads; see :func:`predict_tensors`). The next batch is read from the stores
    in a background thread while this one is scored."""
    K = models[0].num_classes
    out = np.zeros((len(models), len(names), K), dtype=np.float32)
    agree = np.zeros((len(models), len(names)), dtype=np.int64)
    has_heads = True
    starts = list(range(0, len(names), batch_size))
    bar = show_progress(total=len(starts), desc="predict", unit="batches", enabled=progress, leave=False)
    for s, feats in prefetched(lambda s: to_tensors(data.features(list(names[s:s + batch_size])), device, data.dims()),
                               starts):
        n_chunk = min(batch_size, len(names) - s)
        bar.update(1)
        for i, m in enumerate(models):
            if not agreement:
                out[i, s:s + n_chunk] = predict_tensors(m, feats, batch_size, accel=accel)
                continue
            out[i, s:s + n_chunk], a = predict_tensors(m, feats, batch_size, agreement=True, accel=accel)
            if a is None:
                has_heads = False
            else:
                agree[i, s:s + n_chunk] = a
    bar.close()
    if agreement:
        return out, (agree if has_heads else None)
    return out.mean(axis=0, dtype=np.float64).astype(np.float32) if average else out


def run_epoch(model, feats: dict, n: int, batch_size: int, gen: torch.Generator, opt, loss_fn: Callable,
              y: torch.Tensor | None = None, desc: str = "fit",
              after_step: Callable[[], None] | None = None,
              weight: torch.Tensor | None = None, accel=None, scaler=None,
              batches: Sequence | None = None,
              on_batch: Callable[[int], None] | None = None) -> tuple[dict[str, float], int]:
    """One pass over ``feats`` in seeded batches (or the given ``batches`` of indices):
    ``loss_fn(batch)`` or ``loss_fn(batch, y[idx])``, AdamW step. Shared by fine-tuning (:func:`fit`)
    and pre-training (:mod:`.pretrain`). Returns the summed loss terms (``loss`` + the model's
    parts) and the number of steps.

    No host synchronisation per step: the loss terms are summed as detached tensors on the device
    and read once at the end, where a non-finite sum raises ``FloatingPointError``. ``on_batch(n)``
    after every step (progress bars). ``accel``
    (:class:`semimer.train.accel.Accel`): autocast precision; ``scaler``: a float16 gradient scaler."""
    sums: dict[str, torch.Tensor] = {}
    steps = 0
    autocast = accel.autocast if accel is not None else contextlib.nullcontext
    plan = train_batches(feats, n, batch_size, gen) if batches is None else batches
    for idx in plan:
        if len(idx) < 2 and n >= 2:  # a batch of one breaks normalisation/contrastive terms
            continue
        batch = collate(take(feats, idx))
        with autocast():
            if y is None:
                loss, parts = loss_fn(batch)
            else:
                yi = y[idx.to(y.device, non_blocking=True)] if idx.device != y.device else y[idx]
                if weight is None:
                    loss, parts = loss_fn(batch, yi)
                else:
                    loss, parts = loss_fn(batch, yi, weight[idx.to(weight.device, non_blocking=True)])
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        if after_step is not None:
            after_step()
        if on_batch is not None:
            on_batch(len(idx))
        steps += 1
        for k, v in (("loss", loss), *parts.items()):
            v = v.detach().float() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
            sums[k] = v if k not in sums else sums[k] + v
    if not sums:
        return {}, 0
    keys = list(sums)
    values = torch.stack([sums[k].to(sums["loss"].device) for k in keys]).cpu().tolist()  # the one read
    out = dict(zip(keys, values))
    if not math.isfinite(out["loss"]):
        raise FloatingPointError(f"{desc}: non-finite loss; lower the learning rate or check the features")
    return out, steps


def _waf(model, feats, y, batch_size, accel=None) -> tuple[float, float]:
    probs = predict_tensors(model, feats, batch_size, accel=accel)
    waf = float(f1_score(y, probs.argmax(1), average="weighted", zero_division=0))
    nll = float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean())
    return waf, nll


def fit(model, train: dict[str, torch.Tensor], y_train: torch.Tensor, val: dict[str, torch.Tensor] | None,
        y_val: np.ndarray | None, cfg: TrainConfig, seed: int, desc: str = "fit",
        on_epoch: Callable[[dict], None] | None = None, monitor: dict | None = None,
        y_monitor: np.ndarray | None = None, w_train: torch.Tensor | None = None, accel=None) -> FitResult:
    """AdamW on ``model.loss``; after each epoch score WAF on the *selection* set ``val`` and keep
    the best epoch (early stopping after ``cfg.patience`` epochs without gain). Without ``val``
    every epoch of ``cfg.epochs`` runs and the last one is kept.

    ``val`` must never be the clips the model is scored on (cross-validation passes an inner split
    of the training folds). ``monitor`` (e.g. the scored fold) is only recorded as
    ``monitor_waf`` for learning curves: nothing is chosen on it. ``w_train``: per-clip loss weights
    (e.g. confidence weights of pseudo-labeled clips); ``None`` = all 1.
    Tensors are already on the model's device; shuffling uses a seeded generator, so a CPU run is
    deterministic for a given ``seed``. ``accel`` (:class:`semimer.train.accel.Accel`): precision,
    gradient scaling and ``train.compile`` (default: float32, eager).
    """
    opt = adamw(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n = len(y_train)
    if n_items(train) != n:
        raise ValueError(f"{desc}: {n_items(train)} training clips but {n} labels")
    model.label_smoothing, model.modality_dropout = float(cfg.label_smoothing), float(cfg.modality_dropout)
    ema = None
    if cfg.ema_decay:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    scored = model if ema is None else ema.module  # the weights that are evaluated, chosen and kept
    scaler = accel.scaler() if accel is not None else None
    loss_fn = accel.compile_loss(model.loss) if accel is not None else model.loss
    has_val = val is not None and y_val is not None and len(y_val) > 0
    best = (-1.0, -1)
    best_state = copy.deepcopy(scored.state_dict())
    history: list[dict] = []
    bar = epochs = show_progress(range(cfg.epochs), desc=desc, unit="epochs", enabled=cfg.progress, leave=False,
                            mininterval=0.5)
    try:
        for epoch in epochs:
            model.train()
            sums, steps = run_epoch(model, train, n, cfg.batch_size, gen, opt, loss_fn, y=y_train, desc=desc,
                                    after_step=None if ema is None else (lambda: ema.update_parameters(model)),
                                    weight=w_train, accel=accel, scaler=scaler)
            rec = {"epoch": epoch, "train_loss": sums.pop("loss", 0.0) / max(steps, 1),
                   **{f"train_{k}": v / max(steps, 1) for k, v in sums.items()}}
            if has_val:
                rec["val_waf"], rec["val_loss"] = _waf(scored, val, y_val, cfg.eval_batch_size, accel)
                if rec["val_waf"] > best[0]:
                    best = (rec["val_waf"], epoch)
                    best_state = copy.deepcopy(scored.state_dict())
            if monitor is not None and y_monitor is not None and len(y_monitor):
                rec["monitor_waf"], rec["monitor_loss"] = _waf(scored, monitor, y_monitor, cfg.eval_batch_size, accel)
            history.append(rec)
            if on_epoch:
                on_epoch(rec)
            bar.set_postfix(loss=f"{rec['train_loss']:.3f}", waf=f"{rec.get('val_waf', float('nan')):.3f}")
            if cfg.patience and has_val and epoch - best[1] >= cfg.patience:
                log.debug("%s: early stop at epoch %d (best %d)", desc, epoch, best[1])
                break
    finally:
        model.label_smoothing = model.modality_dropout = 0.0
    if has_val:
        model.load_state_dict(best_state)
    else:
        model.load_state_dict(scored.state_dict())
        best = (float("nan"), len(history) - 1)
    return FitResult(best_epoch=best[1], best_val_waf=best[0], history=history)
