"""The full MER2024-SEMI recipe as one resumable, cross-fitted pipeline (method steps 2-7).

Stages (each in its own folder of ``RUN/``, reused when its fingerprint matches, see
:mod:`semimer.train.run_state`):

1. ``pretrain/``   contrastive pre-training of MR-CCL on unlabeled + labeled clips (no labels);
2. ``round_0/``    MR-CCL fine-tuning from the pre-trained weights, oversampling inside training
                   folds, seeded stratified (grouped) K-fold CV on real labels, epochs chosen on an
                   inner split of the training folds;
3. ``pseudo_round_<r>/`` + ``round_<r>/`` self-training, **per fold**: fold k's model of round r-1
                   (which never saw fold k's labels) scores the unlabeled pool; its probabilities
                   are calibrated with a temperature fitted on its own inner selection split;
                   clips reaching their class threshold join fold k's training part only; every
                   fold is trained again. A round that selects nothing is *skipped* (reported so);
4. ``member_<model>/`` the other voting members, trained on the same folds and per-fold pseudo-labels;
5. vote            among the grid vote, equal weights and each member alone, the ensemble with the best
                   nested OOF WAF is chosen and fitted on all OOF predictions; the reported score is
                   of that whole procedure, nested (fold k gets what was chosen and fitted without it);
6. outputs         ``predictions.csv`` (+ probabilities), ``submission.csv`` (``name,discrete``),
                   ``oof.csv`` (the out-of-sample OOF of exactly what is submitted),
                   ``pseudo_labels.csv`` (``name,discrete,confidence,round,fold``), ``metrics.json``
                   (every stage), ``report.md`` with plots.

"Final CV" is the score of what ``submission.csv`` is made of: the nested vote when there are
several members, else the last self-training round's fold ensemble. Hidden test labels, when
given, are only reported (including the accuracy of pseudo-labels that have one), never used.
"""

from __future__ import annotations

import time
from copy import deepcopy
from pathlib import Path

import numpy as np

from semimer.config import RunConfig, class_thresholds, to_yaml
from semimer.data.layout import MERData, load_labels
from semimer.eval.metrics import scores, summarise
from semimer.eval.predictions import write_predictions, write_submission
from semimer.io import write_csv, write_json, write_text
from semimer.semi.calibration import apply_temperature, fit_temperature
from semimer.semi.prior_shift import em_prior
from semimer.semi.pseudo_label import (SELECTION_COLUMNS, adaptive_thresholds, read_selection_csv,
                                       select_pseudo_labels, select_topk, softmatch_weights, write_selection_csv)
from semimer.semi.voting import choose_ensemble, fit_vote_weights, nested_choice, nested_vote, soft_vote
from semimer.train import distributed, run_state
from semimer.train.cv import CVResult, PseudoLabels, cross_validate, data_folds, run_fingerprint, write_features_json
from semimer.train.fit import predict_names
from semimer.utils import log


def _stage(i: int, n: int, text: str) -> None:
    log.info("[stage %d/%d] %s", i, n, text)


def test_scores(cand_probs: np.ndarray, data: MERData, test: dict[str, int]) -> dict:
    """Scores on hidden test labels (only for reporting; never used to choose anything)."""
    idx = {n: i for i, n in enumerate(data.candidates)}
    missing = [n for n in test if n not in idx]
    if missing:
        raise ValueError(f"{len(missing)} test clip(s) are not candidates, e.g. {missing[:3]}")
    names = sorted(test)
    return scores([test[n] for n in names], cand_probs[[idx[n] for n in names]].argmax(1), len(data.classes),
                  data.classes)


def _cv_summary(res: CVResult, test: dict | None, data: MERData) -> dict:
    out = {"cv_waf": res.metrics["cv"]["waf"], "cv_accuracy": res.metrics["cv"]["accuracy"],
           "oof_waf": res.metrics["oof"]["waf"], "n_pseudo": res.metrics["n_pseudo"],
           "best_epochs": res.metrics["selection"]["best_epochs"]}
    if test is not None:
        out["test"] = test_scores(res.cand_probs, data, test)
    return out


def _spread_folds(data: MERData, jobs: list, folds: int) -> None:
    """Under torchrun, train the folds of several CV runs whose inputs are all known (``jobs``:
    ``(cfg, out, pseudo, init_state)``) spread over the ranks together: rank ``r`` trains the units
    ``(run j, fold k)`` with ``(j * folds + k) % N == r``, then every rank waits once. Trained one
    run at a time, each run's barrier would hold a rank idle whenever the folds do not divide by
    the ranks (5 folds on 2 ranks: 3 + 3 fold-times for two runs instead of 5). The runs' own
    calls afterwards find every fold done (same fingerprints) and only score them."""
    if not distributed.active() or len(jobs) < 2:
        return
    units = distributed.mine(len(jobs) * folds)
    for j, (cfg, out, pseudo, init_state) in enumerate(jobs):
        mine = [u % folds for u in units if u // folds == j]
        if mine:
            cross_validate(data, cfg, out, pseudo=pseudo, init_state=init_state, only_folds=mine)
    distributed.barrier()


def member_config(cfg: RunConfig, member: str) -> RunConfig:
    """The run config of a voting member: ``model.name = member`` plus ``recipe.member_overrides``."""
    from omegaconf import OmegaConf

    over = list(cfg.recipe.member_overrides.get(member, []))
    merged = OmegaConf.merge(OmegaConf.structured(cfg), OmegaConf.from_dotlist(over + [f"model.name={member}"]))
    return OmegaConf.to_object(merged)


def select_round(data: MERData, cfg: RunConfig, res: CVResult, pool: list[str], earlier: list[set[str]],
                 r: int, folder: Path) -> tuple[list, dict]:
    """Round ``r``'s pseudo-labels, one selection per fold, made by that fold's model in ``res``.

    Returns ``(per fold: (names, labels, confidence), info)``; cached in ``folder`` under a
    fingerprint chaining the fold models' fingerprints, the self-training settings and the pool."""
    classes = list(cfg.data.classes)
    st = cfg.self_train
    fp = run_state.fingerprint("select", res.fingerprints, run_state.settings(cfg, "self_train"), pool,
                               [sorted(e) for e in earlier], r)
    csv = folder / "pseudo_labels.csv"
    # under torchrun the lead selects and writes; the other ranks read its selection after a barrier
    info = run_state.done(folder, fp) if distributed.is_lead() else {}
    if info is None:
        folder.mkdir(parents=True, exist_ok=True)
        csv.unlink(missing_ok=True)
        device = distributed.device_for_rank(cfg.train.device)
        probs, agree = predict_names(res.models, data, pool, device, cfg.train.eval_batch_size,
                                     progress=cfg.train.progress, average=False, agreement=True)
        if st.min_heads_agree and agree is None:
            log.warning("self_train.min_heads_agree: %s has no heads to agree; ignored", cfg.model.name)
        temps, taus, priors, stats = [], [], [], []
        for k, (sel_idx, sel_probs) in enumerate(res.selection):
            p = probs[k]
            excluded = set(earlier[k])
            if st.min_heads_agree and agree is not None:  # heads that disagree with the output: not eligible
                excluded |= {n for n, a in zip(pool, agree[k]) if a < st.min_heads_agree}
            t = 1.0
            if st.calibrate and len(sel_idx):
                t = fit_temperature(sel_probs, data.labels[sel_idx])
                p = apply_temperature(p, t)
            elif st.calibrate:
                log.warning("round %d fold %d: no inner selection split (train.select=fixed): "
                            "thresholds apply to uncalibrated probabilities", r, k)
            if st.selection == "topk":
                # the pool's class prior by EM, from the prior this model behaves as if trained under
                # (its mean calibrated posterior on its inner split; the pool's own mean without one)
                ref = apply_temperature(sel_probs, t) if len(sel_idx) else p
                prior, p, _ = em_prior(p, np.clip(ref.mean(0), 1e-6, None))
                n_total = int(round(st.topk_fraction * sum(n not in earlier[k] for n in pool)))
                sel = select_topk(p, pool, prior, n_total, classes, st.min_confidence, exclude=excluded)
                priors.append([round(float(x), 4) for x in prior])
            else:
                tau = (adaptive_thresholds(p, st.adaptive_base, len(classes)) if st.adaptive
                       else np.asarray(class_thresholds(cfg)))
                sel = select_pseudo_labels(p, pool, tau, classes, st.max_per_class, exclude=excluded)
            tau = sel.thresholds
            conf_all = p.max(1)
            stats.append([round(float(conf_all.mean()), 6), round(float(conf_all.std()), 6)])
            write_selection_csv(csv, sel, classes, r, fold=k)
            temps.append(round(float(t), 4))
            taus.append([round(float(x), 4) for x in tau])
        if not csv.is_file():  # no fold at all
            write_csv(csv, list(SELECTION_COLUMNS), [])
        run_state.mark_done(folder, fp, temperatures=temps, thresholds=taus, pool_priors=priors or None,
                            pool_confidence=stats)
        info = run_state.done(folder, fp)
    elif distributed.is_lead():
        log.info("round %d: reusing pseudo-labels from %s", r, csv)
    distributed.barrier()
    if not distributed.is_lead():
        info = run_state.done(folder, fp)
        if info is None:
            raise RuntimeError(f"{folder}: the lead rank's pseudo-label selection is missing after the barrier")
    rec = read_selection_csv(csv)
    per_fold = []
    for k in range(cfg.train.folds):
        f = rec.for_fold(k)
        w = None
        if st.weighting == "softmatch":
            mu, sigma = info["pool_confidence"][k]
            w = softmatch_weights(f.confidence, mu, sigma)
        per_fold.append((list(f.names), f.labels(classes), f.confidence, w))
    return per_fold, info


def _pseudo_accuracy(per_fold: list, test: dict | None) -> float | None:
    """Share of (clip, fold) pseudo-labels that agree with a hidden label (reporting only)."""
    if not test:
        return None
    hits = [int(test[n] == y) for names, labels, _, _ in per_fold for n, y in zip(names, labels) if n in test]
    return round(float(np.mean(hits)), 4) if hits else None


def _prior_shift(summary: dict, cfg: RunConfig, data: MERData, oof: np.ndarray, cand: np.ndarray, final: dict,
                 test: dict | None) -> np.ndarray:
    """EM estimate of the candidates' class prior (always reported); the submitted probabilities are
    re-weighted to it only with ``recipe.prior_shift=true``. Uses no label."""
    if not len(cand):
        return cand
    from semimer.semi.prior_shift import em_prior

    train_prior = np.clip(np.asarray(oof, np.float64).mean(0), 1e-6, None)
    prior, adjusted, it = em_prior(cand, train_prior)
    info = {"applied": bool(cfg.recipe.prior_shift), "train_prior": dict(zip(data.classes, np.round(train_prior, 4).tolist())),
            "candidate_prior": dict(zip(data.classes, np.round(prior, 4).tolist())), "iterations": it}
    if test is not None:
        info["test_without"] = test_scores(cand, data, test)["waf"]
        info["test_with"] = test_scores(adjusted, data, test)["waf"]
    summary["prior_shift"] = info
    if not cfg.recipe.prior_shift:
        return cand
    final["what"] += "; posteriors re-weighted to the candidates' EM-estimated prior"
    if test is not None:
        final["test"] = test_scores(adjusted, data, test)
    return adjusted.astype(np.float32)


def run_recipe(data: MERData, cfg: RunConfig, out: str | Path, test_labels: str | Path | None = None,
               pretrain_dir: str | Path | None = None, overwrite: bool = False) -> dict:
    """Run (or resume) the recipe into ``out``. ``pretrain_dir`` lets several runs share one
    pre-training (keyed by its own fingerprint, so a different setting is never reused). A
    non-empty ``out`` made with other settings is refused unless ``overwrite``."""
    out = Path(out)
    run_state.claim_run_dir(out, run_fingerprint(cfg, data), overwrite, what="recipe")
    lead = distributed.is_lead()  # under torchrun: every rank computes, the lead writes the run's files
    if lead:
        write_text(out / "config.yaml", to_yaml(cfg))
    t0 = time.time()
    classes = list(cfg.data.classes)
    K = len(classes)
    test = load_labels(test_labels, classes) if test_labels else None
    members = list(cfg.recipe.vote_members) or [cfg.model.name]
    main_cfg = deepcopy(cfg)
    main_cfg.model.name = members[0]
    fold = data_folds(data, main_cfg)
    rounds = cfg.self_train.rounds
    do_pretrain = cfg.pretrain.enabled and main_cfg.model.name == "mrccl"
    n_stages = int(do_pretrain) + 1 + rounds + (len(members) > 1) * 2
    summary: dict = {"stages": {}, "members": members, "seed": cfg.train.seed,
                     "protocol": {"select": cfg.train.select, "pseudo_labels": "per fold, by that fold's model",
                                  "vote": "nested over folds", "groups": cfg.data.group_column}}
    timing: dict[str, float] = {}
    stage_no = 1

    init = None
    if do_pretrain:
        _stage(stage_no, n_stages, "contrastive pre-training on unlabeled + labeled clips (no labels)")
        from semimer.io import read_json
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
    folds = cfg.train.folds
    no_pseudo = [PseudoLabels([], np.zeros(0, np.int64)) for _ in range(folds)]
    member_jobs = [(m, member_config(cfg, m), out / f"member_{m}", init if m == "mrccl" else None)
                   for m in members[1:]]
    for m, mcfg, _, _ in member_jobs:
        if not np.array_equal(data_folds(data, mcfg), fold):
            raise ValueError(f"recipe.member_overrides for {m!r} change the folds (train.seed / train.folds): "
                             f"every member must share the main model's folds for an honest vote")
    if rounds == 0:  # the members need no pseudo-labels: their folds and round 0's are spread together
        _spread_folds(data, [(main_cfg, out / "round_0", None, init)]
                      + [(mcfg, mdir, no_pseudo, minit) for _, mcfg, mdir, minit in member_jobs], folds)
    res = cross_validate(data, main_cfg, out / "round_0", init_state=init)
    timing["round_0"] = time.time() - t
    summary["stages"]["round_0"] = _cv_summary(res, test, data)
    stage_no += 1

    labeled = set(data.labeled)
    pool = [n for n in data.unlabeled if n not in labeled]
    pseudo = list(no_pseudo)
    all_rows: list[tuple] = []
    final_round = 0
    ppr: dict[str, dict] = {}
    for r in range(1, rounds + 1):
        _stage(stage_no, n_stages, f"self-training round {r}: each fold's model pseudo-labels the pool "
                                   f"({len(pool)} clips) for its own training part; retrain")
        stage_no += 1
        t = time.time()
        earlier = [set(p.names) for p in pseudo]
        per_fold, info = select_round(data, cfg, res, pool, earlier, r, out / f"pseudo_round_{r}")
        counts = [np.bincount(lab, minlength=K).tolist() for _, lab, _, _ in per_fold]
        total = np.sum(counts, axis=0).tolist()
        ppr[str(r)] = {"per_fold": counts, "total": dict(zip(classes, total)), "accuracy": _pseudo_accuracy(per_fold, test),
                       "temperatures": info.get("temperatures"), "pool_priors": info.get("pool_priors")}
        log.info("round %d: %d pseudo-labels over %d folds (%s)", r, sum(total), folds,
                 ", ".join(f"{c} {n}" for c, n in zip(classes, total)))
        if sum(total) == 0:
            reason = "no clip reached its class threshold in any fold"
            log.warning("round %d skipped: %s (consider self_train.adaptive=true or lower thresholds)", r, reason)
            summary["stages"][f"round_{r}"] = {"skipped": True, "reason": reason, "selected": counts}
            break
        for k, (names, labels, conf, w) in enumerate(per_fold):
            weights = None
            if w is not None:
                old = pseudo[k].weights if pseudo[k].weights is not None else np.ones(len(pseudo[k].names))
                weights = np.concatenate([old, w])
            pseudo[k] = PseudoLabels(pseudo[k].names + names, np.concatenate([pseudo[k].labels, labels]), weights)
            all_rows += [(n, classes[int(y)], f"{c:.6f}", r, k) for n, y, c in zip(names, labels, conf)]
        res = cross_validate(data, main_cfg, out / f"round_{r}", pseudo=pseudo, init_state=init)
        final_round = r
        timing[f"round_{r}"] = time.time() - t
        summary["stages"][f"round_{r}"] = {**_cv_summary(res, test, data), "selected": counts}
    summary["pseudo_labels_per_round"] = ppr
    if lead:
        write_csv(out / "pseudo_labels.csv", list(SELECTION_COLUMNS), all_rows)

    results = {members[0]: res}
    final_dir = f"round_{final_round}"
    member_dirs = {members[0]: final_dir}
    if len(members) > 1:
        _stage(stage_no, n_stages, f"voting members: {', '.join(members[1:])}")
        stage_no += 1
        t = time.time()
        if rounds > 0:  # trained on the final round's pseudo-labels: spread now
            _spread_folds(data, [(mcfg, mdir, pseudo, minit) for _, mcfg, mdir, minit in member_jobs], folds)
        for m, mcfg, mdir, minit in member_jobs:
            results[m] = cross_validate(data, mcfg, mdir, pseudo=pseudo, init_state=minit)
            member_dirs[m] = f"member_{m}"
            summary["stages"][f"member_{m}"] = _cv_summary(results[m], test, data)
        timing["members"] = time.time() - t
        _stage(stage_no, n_stages, "weighted soft voting (chosen and scored out of sample: nested over folds)")
        oofs = [results[m].oof_probs for m in members]
        if cfg.recipe.vote_weights == "equal":  # nothing fitted: the OOF vote is out of sample as it is
            chosen, candidates, per_fold_choice = "equal", None, None
            weights = np.full(len(members), 1.0 / len(members))
            oof = soft_vote(oofs, weights)
        elif folds >= 3:  # choose among the grid vote, equal weights and each member; score the choice nested
            chosen, weights, candidates = choose_ensemble(oofs, data.labels, fold, members, cfg.recipe.vote_grid_step)
            oof, per_fold_choice = nested_choice(oofs, data.labels, fold, members, cfg.recipe.vote_grid_step)
        else:  # two folds cannot nest a choice: the grid vote, scored nested
            chosen, candidates, per_fold_choice = "vote", None, None
            oof, _ = nested_vote(oofs, data.labels, fold, cfg.recipe.vote_grid_step)
            weights, _ = fit_vote_weights(oofs, data.labels, cfg.recipe.vote_grid_step)
        in_sample = scores(data.labels, soft_vote(oofs, weights).argmax(1), K)["waf"]
        cand = soft_vote([results[m].cand_probs for m in members], weights)
        fold_scores = [scores(data.labels[fold == k], oof[fold == k].argmax(1), K, classes) for k in range(folds)]
        member_oof = {m: results[m].metrics["oof"]["waf"] for m in members}
        vote = {"chosen": chosen, "weights": dict(zip(members, map(float, weights))),
                "candidates_nested_oof_waf": candidates, "chosen_per_fold": per_fold_choice,
                "oof_waf_in_sample": float(in_sample), "nested_oof_waf": scores(data.labels, oof.argmax(1), K)["waf"],
                "cv_waf": summarise(fold_scores)["waf"], "members_oof_waf": member_oof}
        vote["oof_waf"] = vote["nested_oof_waf"]
        best = max(member_oof, key=member_oof.get)
        if chosen in members:
            vote["note"] = f"the vote does not beat its best member out of sample: {chosen} alone is submitted"
            log.warning(vote["note"])
        elif vote["nested_oof_waf"] < member_oof[best]:
            vote["note"] = (f"the chosen ensemble scores below its best member out of sample "
                            f"({100 * vote['nested_oof_waf']:.2f} vs {best} {100 * member_oof[best]:.2f} OOF WAF)")
            log.warning(vote["note"])
        if test is not None:
            vote["test"] = test_scores(cand, data, test)
        summary["stages"]["vote"] = vote
        what = (f"{chosen}: soft vote of " + ", ".join(f"{m} ({member_dirs[m]}) × {w:.2f}"
                                                      for m, w in vote["weights"].items() if w > 0)
                + "; chosen and fitted on all OOF predictions; CV = the same procedure nested over folds")
        final = {"cv_waf": vote["cv_waf"], "oof_waf": vote["nested_oof_waf"], "test": vote.get("test"), "what": what}
    else:
        cand, oof = res.cand_probs, res.oof_probs
        last = summary["stages"][final_dir]
        final = {"cv_waf": last["cv_waf"], "oof_waf": last["oof_waf"], "test": last.get("test"),
                 "what": f"{members[0]} fold ensemble of {final_dir}"}
    cand = _prior_shift(summary, cfg, data, oof, cand, final, test)
    summary["final_round"] = final_round
    summary["final"] = final
    summary["seconds"] = {k: round(v, 1) for k, v in timing.items()}
    summary["seconds"]["total"] = round(time.time() - t0, 1)
    if distributed.active():
        summary["processes"] = distributed.world()
    if lead:
        write_features_json(out, data)
        ens = [{"dir": member_dirs[m], "weight": summary["stages"]["vote"]["weights"][m] if "vote" in summary["stages"] else 1.0}
               for m in members]
        write_json(out / "ensemble.json", {"members": ens, "classes": classes})
        write_predictions(out / "predictions.csv", data.candidates, cand, classes)
        write_submission(out / "submission.csv", data.candidates, cand, classes)
        write_predictions(out / "oof.csv", data.labeled, oof, classes,
                          extra={"true": [classes[int(y)] for y in data.labels], "fold": [int(f) for f in fold]})
        write_json(out / "metrics.json", summary)
        from semimer.eval.report import write_report

        write_report(out, summary, data, oof, classes, cfg)
    distributed.barrier()
    log.info("recipe finished in %.0f s -> %s", time.time() - t0, out)
    return summary
