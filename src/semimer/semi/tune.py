"""Hyper-parameter search with Optuna: a seeded TPE sampler over a small, documented space,
scored by the cross-validated WAF of the labeled clips, resumable from an SQLite study.

``tune(data, base_cfg, out, target=..., space=..., n_trials=..., timeout=...)`` writes into ``out``:

- ``optuna.db``  the study (``sqlite:///out/optuna.db``, study name :data:`STUDY_NAME`): running
  the same search again continues it. Trials already COMPLETE count toward ``n_trials`` (only the
  remainder runs); a trial left RUNNING by a killed process is marked FAIL and its parameters are
  queued again with its folder, so the finished folds (and stages) of that trial are reused;
- ``base.yaml``  the resolved starting config; trial ``n``'s config is
  ``load_config(base.yaml, [sampled key=value ...])``, so every sampled value is validated like
  a command-line override;
- ``trials/<n>/`` each trial's run folder (a CV run for ``target="train"``, a recipe run for
  ``target="recipe"``); ``pretrain/<fingerprint>/`` pre-trainings shared by the trials whose
  pre-training settings agree;
- ``best.yaml``  the full resolved config of the best trial (``semimer recipe --config best.yaml``
  or ``semimer train --config best.yaml``); ``trials.csv`` one row per trial (number, state, value,
  params, seconds, std). Both are rewritten after every trial.

**The objective** is the mean over folds of the CV WAF on the labeled clips only:
``cross_validate(data, cfg, trials/<n>, predict_candidates=False)`` for ``target="train"``
(with MR-CCL pre-training first when ``model.name=mrccl`` and ``pretrain.enabled``), or
``run_recipe(data, cfg, trials/<n>)["final"]["cv_waf"]["mean"]`` for ``target="recipe"`` (the
score of what that recipe would submit). No test labels are an input of anything here.

**Pruning.** A :class:`optuna.pruners.MedianPruner` is attached to the study, but no trial is
stopped early: :func:`semimer.train.cv.cross_validate` (and the recipe) run all folds in one call
with no per-fold callback. For ``target="train"`` the running mean WAF after each fold is reported
as the trial's intermediate values *after* its CV finished (so they can be inspected and compared
fold by fold in Optuna's tools); a trial is never marked PRUNED. The budget is therefore spent on
whole trials; ``timeout`` is checked between trials (a trial that has started finishes).

**Selection bias.** The settings are chosen on the CV of the same labeled clips that a later CV of
those settings is computed on, so that later CV score (and the best trial's value here) is
*optimistic*: with many trials some win by the luck of the folds. The unbiased check is a held-out
set that played no part in the search (the hidden labels of ``semimer recipe --test-labels``,
which tune never reads). Running the final recipe with another ``train.seed`` than the search
(other folds, other initialisations) only partly helps: the same clips and labels still chose the
settings.

The search space is :data:`SPACE` (config key -> Optuna distribution spec); ``space=[keys]``
restricts it. Keys that do not apply are left out of the default space (``pretrain.enabled`` unless
the main model is ``mrccl``; ``self_train.rounds`` unless ``target="recipe"``) and are an error
when asked for by name.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path

from semimer.config import RunConfig, load_config, to_yaml
from semimer.data.layout import MERData
from semimer.io import write_csv, write_text
from semimer.utils import log

STUDY_NAME = "semimer-tune"
TARGETS = ("train", "recipe")
#: the first trials of a study are drawn at random (TPE needs a few results to model)
N_STARTUP_TRIALS = 5

#: The search space: config key -> Optuna distribution spec. ``type``: ``float`` (``low``, ``high``,
#: optional ``log``), ``int`` (``low``, ``high``, optional ``step``) or ``categorical``
#: (``choices``). ``only``: when the key applies (``mrccl``: the main model is MR-CCL;
#: ``recipe``: ``target="recipe"``). ``help``: one line for ``--help``.
SPACE: dict[str, dict] = {
    "train.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True,
                 "help": "learning rate"},
    "model.hidden": {"type": "categorical", "choices": [64, 128, 256],
                     "help": "encoder width (MR-CCL: shared width d)"},
    "model.dropout": {"type": "float", "low": 0.0, "high": 0.5,
                      "help": "dropout"},
    "train.weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True,
                           "help": "AdamW weight decay"},
    "train.epochs": {"type": "int", "low": 10, "high": 60, "step": 10,
                     "help": "maximum epochs (the epoch is still chosen on the inner split)"},
    "train.oversample": {"type": "categorical", "choices": [False, True],
                         "help": "oversample minority classes inside the training folds"},
    "pretrain.enabled": {"type": "categorical", "choices": [False, True], "only": "mrccl",
                         "help": "contrastive pre-training first"},
    "self_train.rounds": {"type": "categorical", "choices": [0, 1], "only": "recipe",
                          "help": "self-training rounds"},
}


@dataclass
class TuneResult:
    out: Path
    best_number: int | None
    best_value: float | None
    best_params: dict
    best_config: RunConfig | None
    n_complete: int
    ran: int  # trials run by this call
    rows: list = field(default_factory=list)  # trials.csv rows


def space_help() -> str:
    """The search space, one line per key (for ``--help``)."""
    lines = []
    for k, s in SPACE.items():
        if s["type"] == "categorical":
            dist = "{" + ", ".join(_value_str(c) for c in s["choices"]) + "}"
        else:
            dist = f"[{s['low']:g}, {s['high']:g}]" + (" log" if s.get("log") else "") + (
                f" step {s['step']}" if s.get("step") else "")
        only = {"mrccl": " (main model mrccl)", "recipe": " (--target recipe)"}.get(s.get("only"), "")
        lines.append(f"  {k:<20} {dist:<22} {s['help']}{only}")
    return "\n".join(lines)


def main_model(cfg: RunConfig, target: str) -> str:
    """The model trained (and pre-trained) first: ``model.name`` for a CV run, the first voting
    member for the recipe (which sets ``model.name`` to it)."""
    if target == "recipe":
        return (list(cfg.recipe.vote_members) or [cfg.model.name])[0]
    return cfg.model.name


def _applies(key: str, cfg: RunConfig, target: str) -> str | None:
    """``None`` when ``key`` applies, else why not."""
    only = SPACE[key].get("only")
    if only == "mrccl" and main_model(cfg, target) != "mrccl":
        return f"pre-training is defined for MR-CCL, and the main model is {main_model(cfg, target)}"
    if only == "recipe" and target != "recipe":
        return "self-training rounds exist only with --target recipe"
    return None


def resolve_space(names, cfg: RunConfig, target: str, fixed=()) -> list[str]:
    """The searched keys: ``names`` (a list or a ``"k1,k2"`` string; ``None`` = every key of
    :data:`SPACE` that applies, minus ``fixed``, the keys the user set on the command line).
    Unknown, inapplicable or fixed keys asked for by name are errors."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    fixed = set(fixed)
    if names is None:
        out = []
        for k in SPACE:
            why = _applies(k, cfg, target)
            if why or k in fixed:
                log.info("tune: not searching %s (%s)", k, why or "set on the command line")
            else:
                out.append(k)
        return out
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise ValueError(f"--space is empty; valid keys: {', '.join(SPACE)}")
    unknown = [n for n in names if n not in SPACE]
    if unknown:
        raise ValueError(f"--space: unknown key(s) {unknown}; valid keys: {', '.join(SPACE)}")
    for n in names:
        why = _applies(n, cfg, target)
        if why:
            raise ValueError(f"--space: {n} does not apply here: {why}")
    both = [n for n in names if n in fixed]
    if both:
        raise ValueError(f"--space: {both} are also set as key=value; search them or fix them, not both")
    return list(dict.fromkeys(names))


def _value_str(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def params_overrides(params: dict) -> list[str]:
    """Sampled parameters as ``key=value`` overrides (the keys of :data:`SPACE` are config keys)."""
    return [f"{k}={_value_str(v)}" for k, v in params.items()]


def trial_config(base_yaml: str | Path, params: dict) -> RunConfig:
    """Trial config: the resolved base YAML <- the sampled values (validated by :func:`load_config`)."""
    return load_config(base_yaml, params_overrides(params))


def _suggest(trial, key: str):
    s = SPACE[key]
    if s["type"] == "float":
        return trial.suggest_float(key, s["low"], s["high"], log=bool(s.get("log")))
    if s["type"] == "int":
        return trial.suggest_int(key, s["low"], s["high"], step=int(s.get("step", 1)))
    return trial.suggest_categorical(key, list(s["choices"]))


def _shared_pretrain_dir(data: MERData, cfg: RunConfig, root: Path) -> Path:
    """One folder per pre-training fingerprint, so trials with the same pre-training settings share it."""
    from semimer.train.pretrain import pool_names, pretrain_fingerprint

    return root / pretrain_fingerprint(data, cfg, pool_names(data, cfg))


def trial_score(data: MERData, cfg: RunConfig, out: str | Path, target: str = "train",
                pretrain_root: str | Path | None = None) -> tuple[float, float, list[float]]:
    """The objective of one configuration: ``(CV WAF mean, std, per-fold WAFs)`` on the labeled
    clips of ``data`` (per-fold values: ``target="train"`` only, else ``[]``). Takes no test labels."""
    out = Path(out)
    pretrain_root = Path(pretrain_root) if pretrain_root else out / "pretrain_shared"
    if target == "train":
        from semimer.train.cv import cross_validate

        init = None
        if cfg.model.name == "mrccl" and cfg.pretrain.enabled:
            from semimer.train.pretrain import pretrain

            init = pretrain(data, cfg, _shared_pretrain_dir(data, cfg, pretrain_root))
        res = cross_validate(data, cfg, out, init_state=init, predict_candidates=False)
        waf = res.metrics["cv"]["waf"]
        return float(waf["mean"]), float(waf.get("std") or 0.0), [float(f["waf"]) for f in res.metrics["folds"]]
    if target == "recipe":
        from semimer.semi import recipe

        pdir = None
        if cfg.pretrain.enabled and main_model(cfg, target) == "mrccl":
            main_cfg = deepcopy(cfg)
            main_cfg.model.name = main_model(cfg, target)
            pdir = _shared_pretrain_dir(data, main_cfg, pretrain_root)
        summary = recipe.run_recipe(data, cfg, out, pretrain_dir=pdir)
        waf = summary["final"]["cv_waf"]
        return float(waf["mean"]), float(waf.get("std") or 0.0), []
    raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")


def make_objective(data: MERData, out: str | Path, space: list[str], target: str = "train"):
    """The Optuna objective: sample ``space``, build the trial config from ``out/base.yaml``,
    run it into ``out/trials/<number>`` (or the folder of the killed trial it resumes), return
    the CV WAF mean. Takes no test labels."""
    out = Path(out)

    def objective(trial) -> float:
        params = {k: _suggest(trial, k) for k in space}
        cfg = trial_config(out / "base.yaml", params)
        tdir = Path(trial.user_attrs.get("resume_dir") or out / "trials" / str(trial.number))
        trial.set_user_attr("dir", str(tdir))
        t0 = time.time()
        mean, std, folds = trial_score(data, cfg, tdir, target, out / "pretrain")
        for k in range(len(folds)):  # running mean after each fold (reported after the fact: see module doc)
            trial.report(sum(folds[:k + 1]) / (k + 1), k)
        trial.set_user_attr("std", std)
        trial.set_user_attr("seconds", round(time.time() - t0, 1))
        log.info("tune: trial %d: CV WAF %.2f ± %.2f  %s", trial.number, 100 * mean, 100 * std,
                 " ".join(params_overrides(params)))
        return mean

    return objective


def _optuna():
    try:
        import optuna
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("semimer tune needs Optuna: pip install 'semimer[tune]' (or pip install optuna)") from exc
    return optuna


def storage_url(out: str | Path) -> str:
    return f"sqlite:///{Path(out).resolve() / 'optuna.db'}"


def load_study(out: str | Path):
    """The study of a tune folder (read-only use: counting, reading trials)."""
    optuna = _optuna()
    return optuna.load_study(study_name=STUDY_NAME, storage=storage_url(out))


def _setup(base_cfg: RunConfig, data: MERData, target: str, space: list[str]) -> str:
    """What a study is bound to: target, space (with its distributions) and the base settings + data."""
    from semimer.train.cv import run_fingerprint

    return json.dumps({"target": target, "space": {k: {kk: vv for kk, vv in SPACE[k].items() if kk != "help"}
                                                   for k in space},
                       "base": run_fingerprint(base_cfg, data)}, sort_keys=True)


def tune(data: MERData, base_cfg: RunConfig, out: str | Path, target: str = "train", space=None,
         n_trials: int | None = None, timeout: float | None = None, seed: int | None = None,
         overwrite: bool = False, fixed=()) -> TuneResult:
    """Run (or continue) the search into ``out``; see the module docstring.

    ``n_trials``: the study's total of COMPLETE trials to reach (those already there count);
    ``timeout``: seconds for this call (checked between trials). With neither, 20 trials.
    ``seed``: the TPE sampler's seed (default ``base_cfg.train.seed``). ``overwrite``: delete an
    existing study (and its trial folders) made with other settings instead of refusing.
    """
    optuna = _optuna()
    from optuna.trial import TrialState

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    names = resolve_space(space, base_cfg, target, fixed)
    if not names:
        raise ValueError("nothing to search: every key of the space is fixed or does not apply")
    if n_trials is None and timeout is None:
        n_trials = 20
    if n_trials is not None and n_trials < 1:
        raise ValueError(f"--trials must be >= 1, got {n_trials}")
    if timeout is not None and timeout <= 0:
        raise ValueError(f"--minutes must be > 0, got {timeout / 60:g}")
    db = out / "optuna.db"
    if out.is_dir() and any(out.iterdir()) and not db.is_file() and not overwrite:
        raise ValueError(f"{out} is not empty and holds no tune study; use another --out (or --overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(out)
    setup = _setup(base_cfg, data, target, names)
    if db.is_file() and STUDY_NAME in optuna.get_all_study_names(url):
        previous = optuna.load_study(study_name=STUDY_NAME, storage=url).user_attrs.get("setup")
        if previous != setup:
            if not overwrite:
                raise ValueError(f"{out} holds a study made with another target, search space, data or base "
                                 "settings; use another --out, or pass --overwrite to delete it and start again")
            log.info("tune: deleting the study of %s (--overwrite)", out)
            optuna.delete_study(study_name=STUDY_NAME, storage=url)
            shutil.rmtree(out / "trials", ignore_errors=True)
    write_text(out / "base.yaml", to_yaml(base_cfg))

    probe = optuna.create_study(study_name=STUDY_NAME, storage=url, direction="maximize", load_if_exists=True)
    probe.set_user_attr("setup", setup)
    # one process per study: a RUNNING trial now was left by a killed run. Fail it and queue its
    # parameters again with its folder, so its finished folds / stages are reused
    for t in probe.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        probe.tell(t.number, state=TrialState.FAIL)
        if set(t.params) == set(names):
            log.info("tune: trial %d was interrupted: queued again (reusing %s)", t.number, t.user_attrs.get("dir"))
            probe.enqueue_trial(t.params, user_attrs={"resume_dir": t.user_attrs.get("dir")
                                                      or str(out / "trials" / str(t.number))})
    n_before = len(probe.trials)
    base_seed = base_cfg.train.seed if seed is None else seed
    # a resumed study gets another sampler seed (else its random start would repeat earlier trials),
    # still a function of the seed and of the history only
    sampler = optuna.samplers.TPESampler(seed=base_seed * 100003 + n_before, n_startup_trials=N_STARTUP_TRIALS)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=N_STARTUP_TRIALS, n_warmup_steps=1)
    study = optuna.create_study(study_name=STUDY_NAME, storage=url, direction="maximize", sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    remaining = None if n_trials is None else n_trials - n_complete
    ran = 0
    if remaining is not None and remaining <= 0:
        log.info("tune: the study already has %d complete trials (--trials %d): nothing to run", n_complete, n_trials)
    else:
        log.info("tune: %s into %s (target %s; searching %s; %d complete trials so far)",
                 f"{remaining} trial(s)" if remaining is not None else f"trials for {timeout / 60:g} min",
                 out, target, ", ".join(names), n_complete)

        def after_trial(st, _trial):
            write_outputs(st, out)

        study.optimize(make_objective(data, out, names, target), n_trials=remaining, timeout=timeout,
                       callbacks=[after_trial], gc_after_trial=True)
        ran = len(study.trials) - n_before
    return write_outputs(study, out, ran)


def _trial_rows(study) -> list[dict]:
    rows = []
    for t in study.trials:
        seconds = t.user_attrs.get("seconds")
        if seconds is None and t.duration is not None:
            seconds = round(t.duration.total_seconds(), 1)
        rows.append({"number": t.number, "state": t.state.name,
                     "value": t.value if t.value is not None and not math.isnan(t.value) else None,
                     "params": dict(t.params), "seconds": seconds, "std": t.user_attrs.get("std")})
    return rows


def write_outputs(study, out: str | Path, ran: int = 0) -> TuneResult:
    """``trials.csv`` and (when a trial is complete) ``best.yaml`` from the study's current state."""
    out = Path(out)
    rows = _trial_rows(study)
    write_csv(out / "trials.csv", ["number", "state", "value", "params", "seconds", "std"],
              [[r["number"], r["state"], "" if r["value"] is None else f"{r['value']:.6f}",
                json.dumps(r["params"], sort_keys=True), "" if r["seconds"] is None else r["seconds"],
                "" if r["std"] is None else f"{r['std']:.6f}"] for r in rows])
    done = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    if not done:
        return TuneResult(out, None, None, {}, None, 0, ran, rows)
    best = max(done, key=lambda r: (r["value"], -r["number"]))
    cfg = trial_config(out / "base.yaml", best["params"])
    write_text(out / "best.yaml", to_yaml(cfg))
    return TuneResult(out, best["number"], best["value"], best["params"], cfg, len(done), ran, rows)


def top_table(rows: list[dict], n: int = 10) -> str:
    """The best ``n`` complete trials as a text table."""
    done = sorted((r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None),
                  key=lambda r: (-r["value"], r["number"]))[:n]
    if not done:
        return "no complete trial yet"
    keys = list(dict.fromkeys(k for r in done for k in r["params"]))
    head = ["rank", "trial", "CV WAF", "±", "s"] + keys
    body = [[str(i + 1), str(r["number"]), f"{100 * r['value']:.2f}",
             "" if r["std"] is None else f"{100 * r['std']:.2f}", "" if r["seconds"] is None else f"{r['seconds']:g}"]
            + [_short(r["params"].get(k)) for k in keys] for i, r in enumerate(done)]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    return "\n".join("  ".join(x.rjust(w) for x, w in zip(line, widths)) for line in [head, *body])


def _short(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)
