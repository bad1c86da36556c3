"""K-fold cross-validation in which no label of a fold reaches the model scored on it.

``run_cv`` trains one model per fold and scores the out-of-fold (OOF) predictions on real labels
only. What each fold's model sees:

* its **training folds**, minus an *inner selection split* (``train.inner_fraction``, stratified
  and grouped like the folds) on which the epoch is chosen (``train.select=inner``); or all of the
  training folds for ``train.epochs`` epochs (``train.select=fixed``). The fold being scored is
  never used to choose anything: its per-epoch WAF is only recorded (``monitor_waf``) for the
  learning curves;
* oversampled duplicates of the training part only;
* pseudo-labeled clips given *for this fold* (``pseudo`` as one set per fold, made by models that
  never trained on this fold's labels: see :mod:`semimer.semi.recipe`);
* standardisation statistics from its training part (or from unlabeled clips via pre-training).

Folds are stratified, seeded and grouped (``data.group_column``: every group in one fold).
A run folder holds::

    config.yaml          resolved configuration            run.json   the run's fingerprint
    folds.csv            name, discrete, fold (, group)
    data.json            clips per split, class counts, clips without each modality per split
    metrics.json         see below
    oof.csv              OOF probabilities for every labeled clip (+ true label, fold)
    predictions.csv      name, discrete, prob_<class>... for every candidate clip (mean of the fold models)
    submission.csv       name, discrete  (challenge format)
    fold_<k>/model.safetensors + model.json, result.json (history, chosen epoch), done.json
    confusion.png, learning_curves.png

Each fold's ``done.json`` carries the fingerprint of everything the fold depends on
(:mod:`semimer.train.run_state`); a fold is reused only when it matches.

Under ``torchrun --nproc-per-node N`` (:mod:`semimer.train.distributed`) rank ``r`` trains the folds
``k % N == r``; after a barrier every rank loads every fold from the run folder (which must be on
storage that every node sees) and computes the same OOF and candidate predictions, which equal
those of one process (each fold is seeded by itself); rank 0 writes the run's shared files.
``only_folds`` lets a caller spread the folds of several runs over the ranks at once (the recipe's
round 0 and voting members); each fold's ``result.json`` names the rank that trained it.
Threads and precision are chosen once per call (:func:`semimer.train.accel.setup`).

metrics.json keys: ``cv`` (mean/std/n over folds of ``waf``, ``accuracy``, ``macro_f1`` and
``per_class_f1``), ``folds`` (per-fold scores incl. ``best_epoch``), ``oof`` (scores of the
pooled OOF predictions), ``selection`` (``train.select`` and the chosen epochs), ``n_labeled``,
``n_pseudo`` (per fold), ``n_candidates``, ``model``, ``seed``, ``seconds``, ``train_clips_per_s``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from semimer.config import RunConfig, to_yaml
from semimer.data.folds import assign_folds, inner_split, save_folds
from semimer.data.layout import MERData
from semimer.data.ragged import concat, load_features
from semimer.eval.metrics import fmt, scores, summarise
from semimer.eval.predictions import write_predictions, write_submission
from semimer.io import read_json, write_json, write_text
from semimer.models import build_model, model_class
from semimer.models.checkpoint import load_state, save_model
from semimer.train import distributed, run_state
from semimer.train.accel import setup
from semimer.train.fit import FitResult, fit, predict_names, predict_tensors, take
from semimer.train.oversample import oversample_indices
from semimer.utils import log, seed_everything


@dataclass
class PseudoLabels:
    """Unlabeled clips with pseudo-labels for one fold's training part (never its validation)."""

    names: list[str]
    labels: np.ndarray
    weights: np.ndarray | None = None  # per-clip loss weights (confidence weighting); None = 1


@dataclass
class CVResult:
    out: Path
    metrics: dict
    oof_probs: np.ndarray  # (n_labeled, K), aligned with data.labeled
    cand_probs: np.ndarray  # (n_candidates, K), aligned with data.candidates
    models: list = field(default_factory=list)
    fold: np.ndarray | None = None
    # per fold: (indices of the inner selection clips, the fold model's probabilities on them)
    selection: list = field(default_factory=list)
    fingerprints: list = field(default_factory=list)  # per fold (chains into later stages)


def fold_seed(seed: int, k: int) -> int:
    return seed * 1000 + k


def run_fingerprint(cfg: RunConfig, data: MERData) -> str:
    """Fingerprint of a whole run (claimed in ``run.json``): every result-relevant setting + data."""
    return run_state.fingerprint("run", run_state.settings(cfg), data.summary(), _groups(data))


def _groups(data: MERData) -> list | None:
    return None if data.groups is None else [str(g) for g in data.groups]


def data_folds(data: MERData, cfg: RunConfig) -> np.ndarray:
    """The fold of every labeled clip (seeded, stratified, grouped by ``data.groups``)."""
    return assign_folds(data.labels, cfg.train.folds, cfg.train.seed, data.groups)


def write_features_json(out: Path, data: MERData) -> None:
    """``features.json``: per modality the feature name, dims, level and how it was extracted, so
    ``semimer predict`` can re-extract exactly these features from a new clip."""
    write_json(out / "features.json", {m: {"feature": s.feature, "dim": s.dim, "level": s.level,
                                           "extractor": s.extractor_meta()} for m, s in data.stores.items()})
    write_json(out / "ensemble.json", {"members": [{"dir": ".", "weight": 1.0}], "classes": list(data.classes)})
    # the data as used: clip counts per split, class counts, and clips without each modality per split
    write_json(out / "data.json", {**data.summary(), "missing": data.missing, "notes": list(data.notes)})


def run_cv(data: MERData, cfg: RunConfig, out: str | Path, pseudo=None, init_state: dict | None = None,
           predict_candidates: bool = True, overwrite: bool = False) -> CVResult:
    """Cross-validate into the run folder ``out`` (claimed first: a folder made with other settings
    is refused unless ``overwrite``). See :func:`cross_validate` for the rest."""
    run_state.claim_run_dir(out, run_fingerprint(cfg, data), overwrite, what="cv")
    return cross_validate(data, cfg, out, pseudo, init_state, predict_candidates)


def _per_fold(pseudo, n_folds: int) -> list[PseudoLabels | None]:
    if pseudo is None or isinstance(pseudo, PseudoLabels):
        return [pseudo] * n_folds
    pseudo = list(pseudo)
    if len(pseudo) != n_folds:
        raise ValueError(f"{len(pseudo)} pseudo-label sets for {n_folds} folds")
    return pseudo


def cross_validate(data: MERData, cfg: RunConfig, out: str | Path, pseudo=None,
                   init_state: dict[str, torch.Tensor] | None = None, predict_candidates: bool = True,
                   only_folds: Sequence[int] | None = None) -> CVResult | None:
    """One model per fold (resumable per fold); OOF and candidate probabilities.

    ``pseudo``: ``None``, one :class:`PseudoLabels` per fold (fold ``k``'s set joins fold ``k``'s
    training part only), or a single set for every fold (honest only when no labeled clip's label
    influenced it). ``init_state``: pre-trained weights loaded before each fold's training.
    ``only_folds``: train (or reuse) just these folds in this process and return ``None`` (no
    scoring, no barrier): how :func:`semimer.semi.recipe.run_recipe` spreads the folds of several CV
    runs over the ranks at once; a later full call reuses them (same fingerprints).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tc = cfg.train
    if tc.select not in ("inner", "fixed"):
        raise ValueError(f"train.select must be inner or fixed, got {tc.select!r}")
    device = distributed.device_for_rank(tc.device)
    lead, spread = distributed.is_lead(), distributed.active()
    classes = list(cfg.data.classes)
    K = len(classes)
    fold = data_folds(data, cfg)
    pseudo = _per_fold(pseudo, tc.folds)
    if init_state is not None and cfg.pretrain.finetune_lr_scale != 1.0:  # a gentler fine-tuning of pre-trained weights
        tc = dataclasses.replace(tc, lr=tc.lr * cfg.pretrain.finetune_lr_scale)
    stage_fp = run_state.fingerprint("cv", run_state.settings(cfg, "data", "model", "noise", "train"), tc.lr,
                                     data.summary(), _groups(data), fold, init_state)
    if lead and only_folds is None:  # a partial call (only_folds) leaves the run's files to the full one
        write_text(out / "config.yaml", to_yaml(cfg))
        write_features_json(out, data)
        save_folds(out / "folds.csv", data.labeled, data.labels, fold, classes, data.groups)
    t0 = time.time()
    feats = load_features(data, data.labeled, device, tc.frame_cache)
    y_all = data.labels
    all_groups = _groups(data)
    overlap = set().union(*(set(p.names) for p in pseudo if p is not None)) & set(data.labeled)
    if overlap:
        raise ValueError(f"pseudo-labeled clips overlap the labeled set, e.g. {sorted(overlap)[:3]}")
    oof = np.zeros((len(y_all), K), dtype=np.float32)
    fold_scores, histories, models, fold_fps, selection = [], [], [], [], []
    clips_seen, train_seconds = 0, 0.0
    accel = None
    plans = []
    # a directly fitted model (sklearn inside, e.g. linear) chooses its settings by its own inner CV:
    # it is fitted on the whole training part, no clips held back for epoch selection
    direct = hasattr(model_class(cfg.model.name), "fit_direct")
    for k in range(tc.folds):
        tr, va = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        pk = pseudo[k]
        fp = run_state.fingerprint(stage_fp, k, None if pk is None else [list(pk.names), np.asarray(pk.labels).tolist()],
                                   None if pk is None or pk.weights is None else np.asarray(pk.weights, np.float64))
        fold_fps.append(fp)
        if tc.select == "inner" and not direct:
            fit_idx, sel_idx = inner_split(tr, y_all, tc.inner_fraction, fold_seed(tc.seed, k), data.groups)
        else:
            fit_idx, sel_idx = tr, np.zeros(0, np.int64)
        plans.append((va, fit_idx, sel_idx, pk, fp))

    def new_model(k: int):
        nonlocal accel
        seed_everything(fold_seed(tc.seed, k))  # before building: the fold's initial weights are seeded
        model = build_model(cfg.model.name, data.dims(), K, cfg.model, noise_cfg=cfg.noise, levels=data.levels()).to(device)
        if accel is None:  # threads for this work size, precision for this device: once per stage
            accel = setup(tc, device, model, tc.batch_size, what=f"{cfg.model.name} fine-tuning")
        return model

    def train_fold(k: int):
        """Fold ``k``'s model: reused when finished with the same fingerprint, else trained and saved."""
        nonlocal clips_seen, train_seconds
        va, fit_idx, sel_idx, pk, fp = plans[k]
        fdir = out / f"fold_{k}"
        model = new_model(k)
        if run_state.done(fdir, fp):
            model.load_state_dict(load_state(fdir / "model.safetensors", device))
            res = read_json(fdir / "result.json")
            log.info("fold %d: reusing finished fold from %s", k, fdir)
            return model, FitResult(res["best_epoch"], res["best_val_waf"], res["history"])
        train_x, train_y = take(feats, torch.as_tensor(fit_idx)), y_all[fit_idx]
        train_w = None
        if pk is not None and len(pk.names):
            train_x = concat(train_x, load_features(data, pk.names, device, tc.frame_cache))
            train_y = np.concatenate([train_y, np.asarray(pk.labels, np.int64)])
            if pk.weights is not None:
                train_w = np.concatenate([np.ones(len(fit_idx)), np.asarray(pk.weights, np.float64)])
        if init_state is not None:
            missing, _ = model.load_state_dict(init_state, strict=False)
            log.debug("fold %d: init from pre-trained weights (missing %s)", k, missing)
        if init_state is None or not any(k_.startswith("standardizer.") for k_ in init_state):
            model.standardizer.fit(train_x)  # statistics from this fold's training part only
        t1 = time.time()
        if direct:  # closed-form / sklearn-fitted models choose their own settings
            groups = None
            if data.groups is not None:  # the inner CV grouped like the folds; a pseudo-labeled clip is its own group
                groups = [all_groups[i] for i in fit_idx]
                groups += [f"\0pseudo:{n}" for n in (pk.names if pk is not None else [])]
            chosen = model.fit_direct(train_x, train_y, seed=fold_seed(tc.seed, k), weight=train_w, groups=groups)
            fr = FitResult(0, float("nan"), [{"epoch": 0, "train_loss": float("nan"), **chosen}])
        else:
            if tc.oversample:
                idx = oversample_indices(train_y, tc.oversample_ratio, seed=fold_seed(tc.seed, k))
                train_x, train_y = take(train_x, torch.as_tensor(idx)), train_y[idx]
                train_w = None if train_w is None else train_w[idx]
            sel = take(feats, torch.as_tensor(sel_idx)) if len(sel_idx) else None
            fr = fit(model, train_x, torch.as_tensor(train_y, device=device), sel,
                     y_all[sel_idx] if len(sel_idx) else None, tc, seed=fold_seed(tc.seed, k),
                     desc=f"fold {k + 1}/{tc.folds}", monitor=take(feats, torch.as_tensor(va)),
                     y_monitor=y_all[va],
                     w_train=None if train_w is None else torch.as_tensor(train_w, dtype=torch.float32, device=device),
                     accel=accel)
        seconds = time.time() - t1
        train_seconds += seconds
        clips_seen += len(train_y) * len(fr.history)
        save_model(fdir, model, classes, cfg.model, extra={"fold": k, "seed": tc.seed,
                                                         "noise_config": dataclasses.asdict(cfg.noise)})
        write_json(fdir / "result.json", {"best_epoch": fr.best_epoch, "best_val_waf": fr.best_val_waf,
                                          "selected_on": tc.select, "history": fr.history,
                                          "seconds": round(seconds, 2),
                                          **({"trained_by_rank": distributed.rank()} if spread else {})})
        run_state.mark_done(fdir, fp, fold=k)
        log.info("fold %d/%d trained in %.0f s (%d epochs)", k + 1, tc.folds, seconds, len(fr.history))
        return model, fr

    def load_fold(k: int):
        """Fold ``k`` as another rank finished it (after the barrier)."""
        fdir = out / f"fold_{k}"
        if not run_state.done(fdir, plans[k][4]):
            raise RuntimeError(f"fold {k} is not finished in {fdir} although its rank passed the barrier")
        model = new_model(k)
        model.load_state_dict(load_state(fdir / "model.safetensors", device))
        res = read_json(fdir / "result.json")
        return model, FitResult(res["best_epoch"], res["best_val_waf"], res["history"])

    def score(k: int, model, fr) -> None:
        va, _, sel_idx, _, _ = plans[k]
        oof[va] = predict_tensors(model, take(feats, torch.as_tensor(va)), tc.eval_batch_size, accel=accel)
        sel_probs = (predict_tensors(model, take(feats, torch.as_tensor(sel_idx)), tc.eval_batch_size, accel=accel)
                     if len(sel_idx) else np.zeros((0, K), np.float32))
        selection.append((sel_idx, sel_probs))
        s = scores(y_all[va], oof[va].argmax(1), K, classes)
        s["best_epoch"] = fr.best_epoch
        fold_scores.append(s)
        histories.append(fr.history)
        models.append(model)
        log.info("fold %d/%d: WAF %.2f  acc %.2f  (epoch %d chosen on %s)", k + 1, tc.folds, 100 * s["waf"],
                 100 * s["accuracy"], fr.best_epoch, "the inner split" if tc.select == "inner" else "none: last")

    if only_folds is not None:
        for k in only_folds:
            if not 0 <= k < tc.folds:
                raise ValueError(f"only_folds: fold {k} does not exist (train.folds={tc.folds})")
            train_fold(k)
        return None
    if not spread:  # one process: train (or reuse) and score fold by fold
        for k in range(tc.folds):
            score(k, *train_fold(k))
    else:  # torchrun: rank r trains folds k % N == r; then every rank scores every fold
        trained = {k: train_fold(k) for k in distributed.mine(tc.folds)}
        distributed.barrier()
        for k in range(tc.folds):
            score(k, *(trained[k] if k in trained else load_fold(k)))
    cand = np.zeros((len(data.candidates), K), dtype=np.float32)
    if predict_candidates and data.candidates:
        cand = predict_names(models, data, data.candidates, device, tc.eval_batch_size, progress=tc.progress,
                             accel=accel)
    n_pseudo = [0 if p is None else len(p.names) for p in pseudo]
    metrics = {
        "cv": summarise(fold_scores),
        "folds": fold_scores,
        "oof": scores(y_all, oof.argmax(1), K, classes),
        "selection": {"select": tc.select, "inner_fraction": tc.inner_fraction if tc.select == "inner" else None,
                      "best_epochs": [f["best_epoch"] for f in fold_scores]},
        "n_labeled": int(len(y_all)),
        "n_pseudo": n_pseudo,
        "n_candidates": int(len(data.candidates)),
        "n_groups": None if data.groups is None else int(len(set(_groups(data)))),
        "model": cfg.model.name,
        "seed": tc.seed,
        "seconds": round(time.time() - t0, 2),
        "train_clips_per_s": round(clips_seen / train_seconds, 1) if train_seconds else None,
    }
    if spread:
        metrics["processes"] = distributed.world()
    if lead:  # under torchrun every rank holds the same results; one writes them
        write_json(out / "metrics.json", metrics)
        write_predictions(out / "oof.csv", data.labeled, oof, classes,
                          extra={"true": [classes[int(y)] for y in y_all], "fold": [int(f) for f in fold]})
        if predict_candidates:
            write_predictions(out / "predictions.csv", data.candidates, cand, classes)
            write_submission(out / "submission.csv", data.candidates, cand, classes)
        _plots(out, metrics, histories, classes, cfg)
    distributed.barrier()  # the stage's files exist on every rank's return
    log.info("CV WAF %s over %d folds -> %s", fmt(metrics["cv"]["waf"]), tc.folds, out)
    return CVResult(out=out, metrics=metrics, oof_probs=oof, cand_probs=np.asarray(cand, np.float32),
                    models=models, fold=fold, selection=selection, fingerprints=fold_fps)


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
