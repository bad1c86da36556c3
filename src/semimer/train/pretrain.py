"""Contrastive pre-training on unlabeled + labeled clips (no labels): ``L = L_modal + L_noise``.

The pool (unlabeled clips, candidates included unless ``pretrain.include_candidates=false``, plus
the labeled clips with their labels unused) is read once into RAM when it fits
(``pretrain.pool=auto``: up to ``pretrain.memory_mb``, and at most half the free memory; a 10k-clip
pool at 256/384/192 dims is 33 MB), so no epoch touches the disk again; a larger pool (115,595 clips
at 1024/5120/768 dims: 3.2 GB) is streamed from the feature stores in chunks of
``pretrain.chunk_mb`` megabytes (never a fixed clip count: 8,192 MER frame-level clips are ~16 GB),
each chunk read in a background thread while the previous one trains; with a packed store a chunk
is one sorted gather from a memory map. The epoch's batches are drawn first (a seeded permutation, or
seeded length buckets at frame level) and chunks are runs of consecutive batches, so the training
is the same whether the pool is in RAM or streamed and whatever the chunk size.

Under ``torchrun`` pre-training is data-parallel (:mod:`semimer.train.distributed`): every batch is
split over the ranks and the embeddings are gathered so each contrastive term sees the whole
batch. Standardisation statistics
come from a seeded sample of the *unlabeled* clips only (no labeled clip, so no clip of any
validation fold, shapes the statistics) and travel with the weights; with no unlabeled clip at
all, fine-tuning fits them per training fold instead. Labeled clips take part in the contrastive
loss without their labels (transductive use of features, not of labels).

Outputs under ``RUN/pretrain/``: ``model.safetensors`` + ``model.json`` (the full MR-CCL state) and
``pretrain.json`` (per-epoch losses, clips, seconds, clips/s, peak RSS) and ``done.json``
(:mod:`semimer.train.run_state`). A finished pre-training with the same inputs is reused.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from semimer.models.checkpoint import load_state, save_model
from semimer.config import RunConfig
from semimer.data.layout import MERData
from semimer.io import write_json
from semimer.models import build_model
from semimer.data.ragged import FeaturePool, Ragged, chunk_batches, length_bucketed_batches
from semimer.train import distributed, run_state
from semimer.train.accel import adamw, setup
from semimer.train.fit import run_epoch
from semimer.utils import log, peak_rss_mb, prefetched, progress, seed_everything

STATS_SAMPLE = 20000
MB = 2**20


def pool_names(data: MERData, cfg: RunConfig) -> list[str]:
    cand = set(data.candidates)
    unl = [n for n in data.unlabeled if cfg.pretrain.include_candidates or n not in cand]
    names = sorted(set(unl) | set(data.labeled))
    if cfg.pretrain.max_clips and len(names) > cfg.pretrain.max_clips:
        rng = np.random.default_rng(cfg.train.seed)
        names = sorted(rng.choice(names, size=cfg.pretrain.max_clips, replace=False).tolist())
    return names


def pretrain_fingerprint(data: MERData, cfg: RunConfig, names: list[str]) -> str:
    extra = {"modality_dropout": cfg.train.modality_dropout} if cfg.train.modality_dropout else {}
    return run_state.fingerprint("pretrain", run_state.settings(cfg, "model", "noise", "pretrain"), cfg.train.seed,
                                 {m: s.describe() for m, s in data.stores.items()}, names, *([extra] if extra else []),
                                 *([{"precision": p}] if (p := run_state.resolved_precision(cfg)) != "fp32" else []))


def memory_budget(pc) -> int:
    """Bytes the pool may take in RAM under ``pretrain.pool=auto``: ``pretrain.memory_mb``, and at
    most half of the memory available now."""
    import psutil

    return int(min(pc.memory_mb * MB, 0.5 * psutil.virtual_memory().available))


def keep_pool_in_memory(pool_bytes: int, pc, budget: int | None = None) -> bool:
    """``pretrain.pool``: memory -> True, stream -> False, auto -> whether it fits the budget."""
    if pc.pool == "memory":
        return True
    if pc.pool == "stream":
        return False
    return pool_bytes <= (memory_budget(pc) if budget is None else budget)


def epoch_batches(pool: FeaturePool, batch_size: int, gen: torch.Generator) -> list[np.ndarray]:
    """One epoch's batches of pool positions: a seeded permutation cut in order (utterance level)
    or seeded length buckets (frame level). The same whether the pool is in RAM or streamed."""
    lengths = pool.lengths
    if lengths is None:
        perm = torch.randperm(len(pool), generator=gen).numpy()
        return [perm[s:s + batch_size] for s in range(0, len(perm), batch_size)]
    return length_bucketed_batches(lengths, batch_size, gen)


def pad_for_ranks(batches: list[np.ndarray], world: int) -> list[np.ndarray]:
    """Every batch made divisible by ``world`` (DDP gathers equal shapes from every rank): a batch
    of ``L`` clips with ``L % world = r > 0`` gets ``world - r`` clips of the following batches
    (never one of its own: a duplicate inside a batch would be its own negative in NT-Xent), the
    way torch's ``DistributedSampler`` pads an epoch; every clip is used at least once per epoch.
    Only a pool with a single batch too small to share drops its remainder. One process: as is."""
    if world == 1:
        return batches
    out = []
    n = len(batches)
    for i, b in enumerate(batches):
        r = len(b) % world
        if r:
            need, borrowed = world - r, []
            for j in range(1, n):  # the next batches, wrapping around, only as far as needed
                borrowed.append(batches[(i + j) % n][:need])
                need -= len(borrowed[-1])
                if not need:
                    break
            b = np.concatenate([b, *borrowed]) if not need else b[:len(b) - r]
        out.append(b)
    return out


def rank_share(batches: list[np.ndarray], world: int, rank: int) -> list[np.ndarray]:
    """This rank's part of every batch under DDP: ``world`` equal slices of batches made divisible
    by :func:`pad_for_ranks`. One process: the batches as they are."""
    if world == 1:
        return batches
    out = []
    for b in batches:
        if len(b) % world:
            raise ValueError(f"a batch of {len(b)} clips does not divide over {world} ranks (pad_for_ranks first)")
        per = len(b) // world
        out.append(b[rank * per:(rank + 1) * per])
    return out


class _ContrastiveStep(torch.nn.Module):
    """The pre-training loss as a module's forward (what DistributedDataParallel wraps)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.contrastive_loss(batch)


def pretrain(data: MERData, cfg: RunConfig, out: str | Path) -> dict[str, torch.Tensor]:
    """Pre-train an MR-CCL model; return its state dict (heads excluded) for fine-tuning."""
    out = Path(out)
    pc = cfg.pretrain
    device = distributed.device_for_rank(cfg.train.device)
    names = pool_names(data, cfg)
    fp = pretrain_fingerprint(data, cfg, names)
    labeled = set(data.labeled)
    unlabeled = [n for n in names if n not in labeled]
    if distributed.agree(bool(run_state.done(out, fp))):
        log.info("pre-training: reusing finished run in %s", out)
        return _for_finetuning(load_state(out / "model.safetensors", device), bool(unlabeled))
    world, rank = distributed.world(), distributed.rank()
    seed_everything(cfg.train.seed + 7919)
    model = build_model("mrccl", data.dims(), len(data.classes), cfg.model, noise_cfg=cfg.noise,
                        levels=data.levels()).to(device)
    for p in model.heads.parameters():  # no labels here: the heads are trained from scratch per fold
        p.requires_grad_(False)
    per_rank_batch = max(1, pc.batch_size // world)
    accel = setup(cfg.train, device, model, per_rank_batch, what="pre-training")
    pool = FeaturePool(data, names)
    chunk_bytes = float(pc.chunk_mb) * MB
    in_memory = keep_pool_in_memory(pool.nbytes, pc)
    show = cfg.train.progress and distributed.is_lead()
    rng = np.random.default_rng(cfg.train.seed)
    stats_from = np.asarray([i for i, n in enumerate(names) if n not in labeled] if unlabeled else range(len(names)))
    sample = np.sort(rng.choice(stats_from, size=min(STATS_SAMPLE, len(stats_from)), replace=False))
    if in_memory:
        bar = progress(total=len(pool), desc="load pool", unit="clips", enabled=show, unit_scale=True,
                       mininterval=1.0, leave=False)
        pool.keep_in_memory(chunk_bytes, progress=bar.update)
        bar.close()
        log.info("pre-training pool: %d clips, %.0f MB in RAM (read once)", len(pool), pool.nbytes / MB)
    else:
        log.info("pre-training pool: %d clips, %.0f MB streamed from the feature stores in chunks of %.0f MB "
                 "(pretrain.pool=%s, budget %.0f MB)", len(pool), pool.nbytes / MB, chunk_bytes / MB, pc.pool,
                 memory_budget(pc) / MB)
    pieces = chunk_batches([sample[i:i + 1] for i in range(len(sample))], pool.clip_bytes, chunk_bytes)
    model.standardizer.fit_stream(pool.load(sample[s:e]) for s, e in pieces)
    model.modality_dropout = float(cfg.train.modality_dropout)  # dropped modalities leave the contrastive terms
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # every rank gathers the whole batch's embeddings (with gradients) into its contrastive terms
        model.gather = distributed.gather_with_grad
        # every parameter but the heads' takes part unless a term is off or a modality is absent
        complete = cfg.model.use_modal and cfg.model.use_noise and len(data.dims()) == 3
        step = DistributedDataParallel(_ContrastiveStep(model), device_ids=[device.index] if device.type == "cuda" else None,
                                       broadcast_buffers=False, find_unused_parameters=not complete)
        loss_fn = step
        torch.manual_seed(cfg.train.seed + 7919 + 1000003 * rank)  # each rank its own dropout and noise draws
    else:
        loss_fn = accel.compile_loss(model.contrastive_loss, "contrastive")
    opt = adamw([p for p in model.parameters() if p.requires_grad], lr=pc.lr, weight_decay=pc.weight_decay)
    scaler = accel.scaler()
    gen = torch.Generator().manual_seed(cfg.train.seed)
    history, t0, clips = [], time.time(), 0
    bar = progress(total=pc.epochs * len(names), desc="pre-train", unit="clips", enabled=show, unit_scale=True,
                   mininterval=1.0)
    try:
        for epoch in range(pc.epochs):
            model.train()
            batches = pad_for_ranks(epoch_batches(pool, pc.batch_size, gen), world)
            sums, steps = {}, 0
            chunks = chunk_batches(batches, pool.clip_bytes, chunk_bytes)

            def load(c):
                s, e = c
                mine = rank_share(batches[s:e], world, rank)
                idx = np.concatenate(mine) if mine else np.zeros(0, np.int64)
                return mine, idx, pool.load(idx)

            for (s, e), (mine, idx, feats) in prefetched(load, chunks):
                feats = {m: x.to(device) if isinstance(x, Ragged) else accel.to_device(x) for m, x in feats.items()}
                local, at = [], 0  # the batches as positions in this chunk
                for b in mine:
                    local.append(torch.arange(at, at + len(b)))
                    at += len(b)
                part, n_steps = run_epoch(model, feats, len(idx), pc.batch_size, gen, opt, loss_fn,
                                          desc="pre-training", accel=accel, scaler=scaler, batches=local,
                                          on_batch=lambda n: bar.update(n * world))
                for k, v in part.items():
                    sums[k] = sums.get(k, 0.0) + v
                steps += n_steps
                clips += sum(len(b) for b in batches[s:e])
            rec = {"epoch": epoch, **{k: v / max(steps, 1) for k, v in sums.items()}}
            history.append(rec)
            bar.set_postfix(loss=f"{rec.get('loss', float('nan')):.3f}")
            log.info("pre-train epoch %d/%d: %s", epoch + 1, pc.epochs,
                     ", ".join(f"{k} {v:.4f}" for k, v in rec.items() if k != "epoch"))
    finally:
        bar.close()
        model.modality_dropout = 0.0
        model.gather = None
        for p in model.heads.parameters():
            p.requires_grad_(True)
    seconds = time.time() - t0
    if distributed.is_lead():
        save_model(out, model, data.classes, cfg.model, extra={"stage": "pretrain", "noise_config": dataclasses.asdict(cfg.noise)})
        write_json(out / "pretrain.json", {"fingerprint": fp, "clips": len(names), "epochs": pc.epochs,
                                           "standardizer_from": "unlabeled clips" if unlabeled else "every clip (no unlabeled ones)",
                                           "history": history, "seconds": round(seconds, 2),
                                           "clips_per_s": round(clips / seconds, 1) if seconds else None,
                                           "pool": "memory" if in_memory else "stream", "pool_mb": round(pool.nbytes / MB, 1),
                                           "processes": world, "precision": accel.precision,
                                           "threads": torch.get_num_threads(),
                                           "peak_rss_mb": round(peak_rss_mb(), 1),
                                           "temperatures": {"modal": model.modal_loss.temperature_values(),
                                                            "noise": model.noise_loss.temperature_values()}})
        run_state.mark_done(out, fp)
    distributed.barrier()
    return _for_finetuning(model.state_dict(), bool(unlabeled))


def _for_finetuning(state: dict[str, torch.Tensor], stats_from_unlabeled: bool) -> dict[str, torch.Tensor]:
    """Heads are trained from scratch per fold (seeded per fold); everything else is carried over,
    except standardisation statistics that came from labeled clips (refitted per training fold)."""
    drop = ("heads.",) if stats_from_unlabeled else ("heads.", "standardizer.")
    return {k: v for k, v in state.items() if not k.startswith(drop)}


def pretrain_for_run(data: MERData, cfg: RunConfig, run_dir: str | Path, overwrite: bool = False,
                     claim: bool = True) -> dict[str, torch.Tensor]:
    """Pre-training as the first stage of a CV run in ``run_dir`` (claimed like the CV run itself,
    unless ``claim=False``: ``semimer pretrain`` alone)."""
    from semimer.train.cv import run_fingerprint

    if cfg.model.name != "mrccl":
        raise ValueError("contrastive pre-training is defined for model.name=mrccl")
    if claim:
        run_state.claim_run_dir(run_dir, run_fingerprint(cfg, data), overwrite, what="cv")
    return pretrain(data, cfg, Path(run_dir) / "pretrain")
