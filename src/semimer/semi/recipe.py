"""The full MER2024-SEMI recipe as one resumable pipeline (method steps 2-7).

Stages (each writes into its own folder of ``RUN/`` and is skipped when already finished):

1. ``pretrain/``   contrastive pre-training of MR-CCL on unlabeled + labeled clips (no labels);
2. ``round_0/``    MR-CCL fine-tuning from the pre-trained weights, oversampling inside training
                   folds, stratified seeded K-fold CV on real labels;
3. ``round_<r>/``  self-training: the previous round's fold ensemble scores the unlabeled pool,
                   clips reaching their class threshold join the training folds (never the
                   validation folds) and the model is trained again (``self_train.rounds`` rounds);
                   every selected clip is recorded in ``pseudo_labels.csv``;
4. ``member_<model>/`` the other voting members, trained on the same labels + pseudo-labels;
5. ``vote``        weights for the members' probabilities fitted on out-of-fold predictions only;
6. outputs         ``predictions.csv`` (+ probabilities), ``submission.csv`` (``name,discrete``),
                   ``metrics.json`` (every stage), ``report.md`` with plots.

CV scores are always computed on the real labeled clips; pseudo-labeled clips only ever train.
"""

from __future__ import annotations

import time
from copy import deepcopy
from pathlib import Path

import numpy as np

from semimer.config import RunConfig, to_yaml
from semimer.train.cv import CVResult, PseudoLabels, run_cv
from semimer.data.layout import MERData, load_labels
from semimer.io import read_json, write_json, write_text
from semimer.eval.metrics import fmt, scores
from semimer.eval.predictions import write_predictions, write_submission
from semimer.semi.pseudo_label import (adaptive_thresholds, apply_temperature, fit_temperature, read_selection_csv, select_pseudo_labels,
                                  write_selection_csv)
from semimer.train.fit import predict_names
from semimer.utils import log, pick_device
from semimer.semi.voting import fit_vote_weights, soft_vote


def _stage(i: int, n: int, text: str) -> None:
    log.info("[stage %d/%d] %s", i, n, text)


def _cv_summary(res: CVResult, test: dict | None, data: MERData) -> dict:
    out = {"cv_waf": res.metrics["cv"]["waf"], "cv_accuracy": res.metrics["cv"]["accuracy"],
           "oof_waf": res.metrics["oof"]["waf"], "n_pseudo": res.metrics["n_pseudo"]}
    if test is not None:
        out["test"] = test_scores(res.cand_probs, data, test)
    return out


def test_scores(cand_probs: np.ndarray, data: MERData, test: dict[str, int]) -> dict:
    """Scores on hidden test labels (only for reporting; never used to choose anything)."""
    idx = {n: i for i, n in enumerate(data.candidates)}
    missing = [n for n in test if n not in idx]
    if missing:
        raise ValueError(f"{len(missing)} test clip(s) are not candidates, e.g. {missing[:3]}")
    names = sorted(test)
    return scores([test[n] for n in names], cand_probs[[idx[n] for n in names]].argmax(1), len(data.classes),
                  data.classes)


def member_config(cfg: RunConfig, member: str) -> RunConfig:
    """The run config of a voting member: ``model.name = member`` plus ``recipe.member_overrides``."""
    from omegaconf import OmegaConf

    over = list(cfg.recipe.member_overrides.get(member, []))
    merged = OmegaConf.merge(OmegaConf.structured(cfg), OmegaConf.from_dotlist(over + [f"model.name={member}"]))
    return OmegaConf.to_object(merged)


def run_recipe(data: MERData, cfg: RunConfig, out: str | Path, test_labels: str | Path | None = None,
               pretrain_dir: str | Path | None = None) -> dict:
    """Run (or resume) the recipe into ``out``. ``pretrain_dir`` lets several runs share one
    pre-training (it is keyed by its own fingerprint, so a different setting is never reused)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", to_yaml(cfg))
    t0 = time.time()
    classes = list(cfg.data.classes)
    test = load_labels(test_labels, classes) if test_labels else None
    members = list(cfg.recipe.vote_members) or [cfg.model.name]
    main_cfg = deepcopy(cfg)
    main_cfg.model.name = members[0]
    rounds = cfg.self_train.rounds
    do_pretrain = cfg.pretrain.enabled and main_cfg.model.name == "mrccl"
    n_stages = int(do_pretrain) + 1 + rounds + (len(members) > 1) * 2
    summary: dict = {"stages": {}, "members": members, "seed": cfg.train.seed}
    timing: dict[str, float] = {}
    stage_no = 1

    init = None
    if do_pretrain:
        _stage(stage_no, n_stages, "contrastive pre-training on unlabeled + labeled clips")
        from semimer.train.pretrain import pretrain

        t = time.time()
        pdir = Path(pretrain_dir) if pretrain_dir else out / "pretrain"
        init = pretrain(data, main_cfg, pdir)
        timing["pretrain"] = time.time() - t
        info = read_json(pdir / "pretrain.json")
        summary["stages"]["pretrain"] = {"clips": info["clips"], "epochs": info["epochs"],
                                         "final_loss": info["history"][-1].get("loss") if info["history"] else None}
        stage_no += 1

    _stage(stage_no, n_stages, f"{main_cfg.model.name} fine-tuning, {cfg.train.folds}-fold CV (round 0)")
    t = time.time()
    res = run_cv(data, main_cfg, out / "round_0", init_state=init)
    timing["round_0"] = time.time() - t
    summary["stages"]["round_0"] = _cv_summary(res, test, data)
    stage_no += 1

    pseudo: PseudoLabels | None = None
    final_round = 0
    sel_csv = out / "pseudo_labels.csv"
    counts_per_round: dict[int, list[int]] = {}
    labeled = set(data.labeled)
    pool = [n for n in data.unlabeled if n not in labeled]
    for r in range(1, rounds + 1):
        _stage(stage_no, n_stages, f"self-training round {r}: pseudo-label the pool ({len(pool)} clips), retrain")
        t = time.time()
        done = read_selection_csv(sel_csv) if sel_csv.is_file() else None
        if done is not None and r in set(done.rounds):
            log.info("round %d: reusing pseudo-labels from %s", r, sel_csv)
        else:
            device = pick_device(cfg.train.device)
            probs = predict_names(res.models, data, pool, device, cfg.train.eval_batch_size, progress=cfg.train.progress)
            if cfg.self_train.calibrate:
                temperature = fit_temperature(res.oof_probs, data.labels)
                probs = apply_temperature(probs, temperature)
                log.info("round %d: confidence calibrated on out-of-fold predictions, T = %.3f", r, temperature)
                write_json(out / f"calibration_round_{r}.json", {"temperature": temperature})
            if cfg.self_train.adaptive:
                tau = adaptive_thresholds(probs, cfg.self_train.adaptive_base, len(classes))
            else:
                tau = np.array([float(cfg.self_train.thresholds[c]) for c in classes])
            already = set(done.upto(r - 1).names) if done is not None else set()
            sel = select_pseudo_labels(probs, pool, tau, classes, cfg.self_train.max_per_class, exclude=already)
            write_selection_csv(sel_csv, sel, classes, r)
            done = read_selection_csv(sel_csv)
        upto = done.upto(r)
        pseudo = PseudoLabels(list(upto.names), upto.labels(classes))
        this = [n for n, rr in zip(done.names, done.rounds) if rr == r]
        lab_of = dict(zip(done.names, done.labels(classes)))
        counts_per_round[r] = np.bincount([lab_of[n] for n in this], minlength=len(classes)).tolist()
        log.info("round %d: %d pseudo-labeled clips (%s)", r, len(this),
                 ", ".join(f"{c} {k}" for c, k in zip(classes, counts_per_round[r])))
        if not this:
            log.warning("round %d selected no new clip at the thresholds; self-training stops here "
                        "(consider self_train.adaptive=true)", r)
            prev = done.upto(r - 1)
            pseudo = PseudoLabels(list(prev.names), prev.labels(classes)) if len(prev) else None
            summary["stages"][f"round_{r}"] = {**summary["stages"][f"round_{r - 1}"], "selected": counts_per_round[r],
                                               "n_pseudo": len(upto.names), "note": "no new clips: previous round kept"}
            final_round = r - 1
            stage_no += 1
            break
        res = run_cv(data, main_cfg, out / f"round_{r}", pseudo=pseudo, init_state=init)
        final_round = r
        timing[f"round_{r}"] = time.time() - t
        summary["stages"][f"round_{r}"] = {**_cv_summary(res, test, data), "selected": counts_per_round[r]}
        stage_no += 1
    summary["pseudo_labels_per_round"] = {str(k): dict(zip(classes, v)) for k, v in counts_per_round.items()}

    results = {members[0]: res}
    if len(members) > 1:
        _stage(stage_no, n_stages, f"voting members: {', '.join(members[1:])}")
        t = time.time()
        for m in members[1:]:
            mcfg = member_config(cfg, m)
            results[m] = run_cv(data, mcfg, out / f"member_{m}", pseudo=pseudo,
                                init_state=init if m == "mrccl" and m != members[0] else None)
            summary["stages"][f"member_{m}"] = _cv_summary(results[m], test, data)
        timing["members"] = time.time() - t
        stage_no += 1
        _stage(stage_no, n_stages, "weighted soft voting (weights fitted on out-of-fold predictions)")
        weights, oof_waf = fit_vote_weights([results[m].oof_probs for m in members], data.labels,
                                            grid_step=cfg.recipe.vote_grid_step)
        cand = soft_vote([results[m].cand_probs for m in members], weights)
        oof = soft_vote([results[m].oof_probs for m in members], weights)
        vote = {"weights": dict(zip(members, map(float, weights))), "oof_waf": float(oof_waf),
                "oof": scores(data.labels, oof.argmax(1), len(classes), classes)}
        if test is not None:
            vote["test"] = test_scores(cand, data, test)
        summary["stages"]["vote"] = vote
    else:
        cand, oof = res.cand_probs, res.oof_probs
    final = summary["stages"].get("vote") or summary["stages"][f"round_{final_round}"]
    summary["final_round"] = final_round
    summary["final"] = {"cv_waf": res.metrics["cv"]["waf"], "oof_waf": scores(data.labels, oof.argmax(1), len(classes), classes)["waf"],
                        "test": final.get("test")}
    from semimer.train.cv import write_features_json

    write_features_json(out, data)
    final_dir = f"round_{final_round}"
    ens = [{"dir": final_dir, "weight": 1.0}]
    if "vote" in summary["stages"]:
        ens = [{"dir": final_dir if m == members[0] else f"member_{m}", "weight": w}
               for m, w in summary["stages"]["vote"]["weights"].items()]
    write_json(out / "ensemble.json", {"members": ens, "classes": classes})
    write_predictions(out / "predictions.csv", data.candidates, cand, classes)
    write_submission(out / "submission.csv", data.candidates, cand, classes)
    write_predictions(out / "oof.csv", data.labeled, oof, classes, extra={"true": [classes[int(y)] for y in data.labels]})
    summary["seconds"] = {k: round(v, 1) for k, v in timing.items()}
    summary["seconds"]["total"] = round(time.time() - t0, 1)
    write_json(out / "metrics.json", summary)
    from semimer.eval.report import write_report

    write_report(out, summary, data, oof, classes, cfg)
    log.info("recipe finished in %.0f s -> %s", time.time() - t0, out)
    return summary


