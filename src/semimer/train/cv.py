"""Stratified K-fold cross-validation with honest scoring, and everything a run writes.

``run_cv`` trains one model per fold (best epoch chosen on that fold's validation WAF), scores the
out-of-fold (OOF) predictions on real labels only, and averages the fold models' probabilities over
the candidate clips. Pseudo-labeled clips (self-training) and oversampled duplicates enter training
folds only. A run folder holds::

    config.yaml          resolved configuration
    folds.csv            name, discrete, fold   (seeded, stratified)
    metrics.json         see METRICS_KEYS below
    oof.csv              OOF probabilities for every labeled clip (+ true label, fold)
    predictions.csv      name, discrete, prob_<class>... for every candidate clip
    submission.csv       name, discrete  (challenge format)
    fold_<k>/model.safetensors + model.json, fold_<k>/result.json (history, best epoch)
    confusion.png, learning_curves.png

Folds already finished (``fold_<k>/done.json`` written with the same config) are reused when a
killed run is started again with the same ``--out``.

metrics.json keys: ``cv`` (mean/std/n over folds of ``waf``, ``accuracy``, ``macro_f1`` and
``per_class_f1``), ``folds`` (per-fold scores incl. ``best_epoch``), ``oof`` (scores of the
pooled OOF predictions), ``n_labeled``, ``n_pseudo``, ``n_candidates``, ``model``, ``seed``,
``seconds``, ``train_clips_per_s``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from semimer.models.checkpoint import load_state, save_model
from semimer.config import RunConfig, to_yaml
from semimer.data.layout import MERData
from semimer.data.folds import assign_folds, save_folds
from semimer.io import read_json, write_json, write_text
from semimer.eval.metrics import fmt, scores, summarise
from semimer.models import build_model
from semimer.train.oversample import oversample_indices
from semimer.eval.predictions import write_predictions, write_submission
from semimer.data.ragged import concat, load_features
from semimer.train.fit import FitResult, fit, predict_names, predict_tensors, take
from semimer.utils import log, pick_device, seed_everything


@dataclass
class PseudoLabels:
    """Unlabeled clips with pseudo-labels, added to every training fold (never validation)."""

    names: list[str]
    labels: np.ndarray


@dataclass
class CVResult:
    out: Path
    metrics: dict
    oof_probs: np.ndarray  # (n_labeled, K), aligned with data.labeled
    cand_probs: np.ndarray  # (n_candidates, K), aligned with data.candidates
    models: list = field(default_factory=list)
    fold: np.ndarray | None = None


def fold_seed(seed: int, k: int) -> int:
    return seed * 1000 + k


def inputs_fingerprint(cfg_text: str, pseudo: PseudoLabels | None, init_state: dict | None) -> str:
    """What a finished fold depends on besides the data: config, pseudo-labels, initial weights."""
    h = hashlib.sha256(cfg_text.encode())
    if pseudo is not None:
        h.update(json.dumps([list(pseudo.names), np.asarray(pseudo.labels).tolist()]).encode())
    for k in sorted(init_state or {}):
        h.update(k.encode())
        h.update(init_state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def write_features_json(out: Path, data: MERData) -> None:
    """``features.json``: per modality the feature name, dims, level and how it was extracted, so
    ``semimer predict`` can re-extract exactly these features from a new clip."""
    write_json(out / "features.json", {m: {"feature": s.feature, "dim": s.dim, "level": s.level,
                                           "extractor": s.extractor_meta()} for m, s in data.stores.items()})
    write_json(out / "ensemble.json", {"members": [{"dir": ".", "weight": 1.0}], "classes": list(data.classes)})


def run_cv(data: MERData, cfg: RunConfig, out: str | Path, pseudo: PseudoLabels | None = None,
           init_state: dict[str, torch.Tensor] | None = None, predict_candidates: bool = True) -> CVResult:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = pick_device(tc.device)
    cfg_text = to_yaml(cfg)
    # what the folds depend on: data, model, noise and training settings (not later stages')
    parts = {k: dataclasses.asdict(getattr(cfg, k)) for k in ("data", "model", "noise", "train")}
    for k in ("progress", "threads", "tensorboard", "eval_batch_size", "frame_cache"):  # no effect on results
        parts["train"].pop(k)
    relevant = json.dumps(parts, sort_keys=True, default=str)
    fingerprint = inputs_fingerprint(relevant + json.dumps(data.summary(), default=str), pseudo, init_state)
    same_config = (out / "inputs.json").is_file() and read_json(out / "inputs.json").get("fingerprint") == fingerprint
    write_text(out / "config.yaml", cfg_text)
    write_features_json(out, data)
    write_json(out / "inputs.json", {"fingerprint": fingerprint,
                                     "n_pseudo": 0 if pseudo is None else len(pseudo.names),
                                     "pretrained_init": init_state is not None})
    classes = list(cfg.data.classes)
    K = len(classes)
    fold = assign_folds(data.labels, tc.folds, tc.seed)
    save_folds(out / "folds.csv", data.labeled, data.labels, fold, classes)
    t0 = time.time()
    feats = load_features(data, data.labeled, device, tc.frame_cache)
    y_all = data.labels
    if pseudo is not None and len(pseudo.names):
        overlap = set(pseudo.names) & set(data.labeled)
        if overlap:
            raise ValueError(f"pseudo-labeled clips overlap the labeled set, e.g. {sorted(overlap)[:3]}")
        p_feats = load_features(data, pseudo.names, device, tc.frame_cache)
        p_y = np.asarray(pseudo.labels, dtype=np.int64)
    else:
        p_feats, p_y = None, np.zeros(0, np.int64)
    oof = np.zeros((len(y_all), K), dtype=np.float32)
    cand = np.zeros((len(data.candidates), K), dtype=np.float64)
    fold_scores, histories, models = [], [], []
    clips_seen, train_seconds = 0, 0.0
    for k in range(tc.folds):
        fdir = out / f"fold_{k}"
        tr, va = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        done = fdir / "done.json"
        if not same_config and done.is_file():
            done.unlink()  # finished under other inputs: never reuse it, even after a later kill
        if done.is_file():
            model = build_model(cfg.model.name, data.dims(), K, cfg.model, noise_cfg=cfg.noise, levels=data.levels()).to(device)
            model.load_state_dict(load_state(fdir / "model.safetensors", device))
            res = read_json(fdir / "result.json")
            fr = FitResult(res["best_epoch"], res["best_val_waf"], res["history"])
            log.info("fold %d: reusing finished fold from %s", k, fdir)
        else:
            seed_everything(fold_seed(tc.seed, k))
            model = build_model(cfg.model.name, data.dims(), K, cfg.model, noise_cfg=cfg.noise, levels=data.levels()).to(device)
            train_x, train_y = take(feats, torch.as_tensor(tr, device=device)), y_all[tr]
            if p_feats is not None:
                train_x = concat(train_x, p_feats)
                train_y = np.concatenate([train_y, p_y])
            if init_state is not None:
                missing, unexpected = model.load_state_dict(init_state, strict=False)
                log.debug("fold %d: init from pre-trained weights (missing %s)", k, missing)
            if init_state is None or not any(k_.startswith("standardizer.") for k_ in init_state):
                model.standardizer.fit(train_x)  # statistics from this training fold only
            if tc.oversample:
                idx = oversample_indices(train_y, tc.oversample_ratio, seed=fold_seed(tc.seed, k))
                train_x, train_y = take(train_x, torch.as_tensor(idx, device=device)), train_y[idx]
            t1 = time.time()
            fr = fit(model, train_x, torch.as_tensor(train_y, device=device), take(feats, torch.as_tensor(va, device=device)),
                     y_all[va], tc, seed=fold_seed(tc.seed, k), desc=f"fold {k + 1}/{tc.folds}")
            train_seconds += time.time() - t1
            clips_seen += len(train_y) * len(fr.history)
            save_model(fdir, model, classes, cfg.model, extra={"fold": k, "seed": tc.seed,
                                                             "noise_config": dataclasses.asdict(cfg.noise)})
            write_json(fdir / "result.json", {"best_epoch": fr.best_epoch, "best_val_waf": fr.best_val_waf,
                                              "history": fr.history})
            write_json(done, {"fold": k})
        oof[va] = predict_tensors(model, take(feats, torch.as_tensor(va, device=device)), tc.eval_batch_size)
        s = scores(y_all[va], oof[va].argmax(1), K, classes)
        s["best_epoch"] = fr.best_epoch
        fold_scores.append(s)
        histories.append(fr.history)
        models.append(model)
        log.info("fold %d/%d: WAF %.2f  acc %.2f  (best epoch %d)", k + 1, tc.folds, 100 * s["waf"],
                 100 * s["accuracy"], fr.best_epoch)
    if predict_candidates and data.candidates:
        cand = predict_names(models, data, data.candidates, device, tc.eval_batch_size, progress=tc.progress)
    metrics = {
        "cv": summarise(fold_scores),
        "folds": fold_scores,
        "oof": scores(y_all, oof.argmax(1), K, classes),
        "n_labeled": int(len(y_all)),
        "n_pseudo": int(len(p_y)),
        "n_candidates": int(len(data.candidates)),
        "model": cfg.model.name,
        "seed": tc.seed,
        "seconds": round(time.time() - t0, 2),
        "train_clips_per_s": round(clips_seen / train_seconds, 1) if train_seconds else None,
    }
    write_json(out / "metrics.json", metrics)
    write_predictions(out / "oof.csv", data.labeled, oof, classes,
                      extra={"true": [classes[int(y)] for y in y_all], "fold": [int(f) for f in fold]})
    if predict_candidates:
        write_predictions(out / "predictions.csv", data.candidates, cand, classes)
        write_submission(out / "submission.csv", data.candidates, cand, classes)
    _plots(out, metrics, histories, classes, cfg)
    log.info("CV WAF %s over %d folds -> %s", fmt(metrics["cv"]["waf"]), tc.folds, out)
    return CVResult(out=out, metrics=metrics, oof_probs=oof, cand_probs=np.asarray(cand, np.float32),
                    models=models, fold=fold)


def _plots(out: Path, metrics: dict, histories: Sequence, classes: Sequence[str], cfg: RunConfig) -> None:
    from semimer.eval.plots import confusion_png, learning_curves_png

    waf = fmt(metrics["cv"]["waf"])
    confusion_png(metrics["oof"]["confusion"], classes, out / "confusion.png",
                  f"{cfg.model.name}: out-of-fold confusion (CV WAF {waf})")
    learning_curves_png(histories, out / "learning_curves.png", f"{cfg.model.name} (seed {cfg.train.seed})")
    if cfg.train.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # pragma: no cover - optional extra
            raise ImportError("train.tensorboard=true needs `pip install semimer[tensorboard]`") from exc
        writer = SummaryWriter(str(out / "tensorboard"))
        for k, hist in enumerate(histories):
            for h in hist:
                for key, v in h.items():
                    if key != "epoch":
                        writer.add_scalar(f"fold{k}/{key}", v, h["epoch"])
        writer.close()
