"""Contrastive pre-training on unlabeled + labeled clips (no labels): ``L = L_modal + L_noise``.

The pool (unlabeled clips, candidates included unless ``pretrain.include_candidates=false``, plus
the labeled clips with their labels unused) is streamed from the feature stores in shuffled chunks
of ``CHUNK`` clips, so a 115,595-clip pool at 1024/5120/768 dims (3.2 GB) never sits in RAM at once;
with a packed store each chunk is one sorted gather from a memory map. Standardisation statistics
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
from semimer.data.ragged import to_tensors
from semimer.train import run_state
from semimer.train.fit import run_epoch
from semimer.utils import log, peak_rss_mb, pick_device, seed_everything

CHUNK = 8192
STATS_SAMPLE = 20000


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
                                 {m: s.describe() for m, s in data.stores.items()}, names, *([extra] if extra else []))


def pretrain(data: MERData, cfg: RunConfig, out: str | Path) -> dict[str, torch.Tensor]:
    """Pre-train an MR-CCL model; return its state dict (heads excluded) for fine-tuning."""
    out = Path(out)
    pc = cfg.pretrain
    device = pick_device(cfg.train.device)
    names = pool_names(data, cfg)
    fp = pretrain_fingerprint(data, cfg, names)
    labeled = set(data.labeled)
    unlabeled = [n for n in names if n not in labeled]
    if run_state.done(out, fp):
        log.info("pre-training: reusing finished run in %s", out)
        return _for_finetuning(load_state(out / "model.safetensors", device), bool(unlabeled))
    seed_everything(cfg.train.seed + 7919)
    model = build_model("mrccl", data.dims(), len(data.classes), cfg.model, noise_cfg=cfg.noise,
                        levels=data.levels()).to(device)
    rng = np.random.default_rng(cfg.train.seed)
    stats_from = unlabeled or names
    sample = sorted(rng.choice(stats_from, size=min(STATS_SAMPLE, len(stats_from)), replace=False).tolist())
    model.standardizer.fit_stream(to_tensors(data.features(sample[i:i + CHUNK]), device, data.dims())
                                  for i in range(0, len(sample), CHUNK))
    model.modality_dropout = float(cfg.train.modality_dropout)  # dropped modalities leave the contrastive terms
    opt = torch.optim.AdamW(model.parameters(), lr=pc.lr, weight_decay=pc.weight_decay)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    history, t0, clips = [], time.time(), 0
    names_arr = np.array(names)
    from tqdm import tqdm

    bar = tqdm(total=pc.epochs * len(names), desc="pre-train", unit="clip", unit_scale=True,
               disable=None if cfg.train.progress else True, mininterval=1.0)
    for epoch in range(pc.epochs):
        model.train()
        order = rng.permutation(len(names))
        sums, steps = {}, 0
        for c in range(0, len(order), CHUNK):
            chunk = names_arr[order[c:c + CHUNK]].tolist()
            feats = to_tensors(data.features(chunk), device, data.dims())
            part, n_steps = run_epoch(model, feats, len(chunk), pc.batch_size, gen, opt, model.contrastive_loss,
                                      desc="pre-training")
            for k, v in part.items():
                sums[k] = sums.get(k, 0.0) + v
            steps += n_steps
            clips += len(chunk)
            bar.update(len(chunk))
        rec = {"epoch": epoch, **{k: v / max(steps, 1) for k, v in sums.items()}}
        history.append(rec)
        bar.set_postfix(loss=f"{rec.get('loss', float('nan')):.3f}")
        log.info("pre-train epoch %d/%d: %s", epoch + 1, pc.epochs, ", ".join(f"{k} {v:.4f}" for k, v in rec.items() if k != "epoch"))
    bar.close()
    model.modality_dropout = 0.0
    seconds = time.time() - t0
    save_model(out, model, data.classes, cfg.model, extra={"stage": "pretrain", "noise_config": dataclasses.asdict(cfg.noise)})
    write_json(out / "pretrain.json", {"fingerprint": fp, "clips": len(names), "epochs": pc.epochs,
                                       "standardizer_from": "unlabeled clips" if unlabeled else "every clip (no unlabeled ones)",
                                       "history": history, "seconds": round(seconds, 2),
                                       "clips_per_s": round(clips / seconds, 1) if seconds else None,
                                       "peak_rss_mb": round(peak_rss_mb(), 1),
                                       "temperatures": {"modal": model.modal_loss.temperature_values(),
                                                        "noise": model.noise_loss.temperature_values()}})
    run_state.mark_done(out, fp)
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
