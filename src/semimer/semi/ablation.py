"""Ablations of the recipe over seeds, tabulated like the published one (CV WAF / test WAF).

Each variant is the recipe (:func:`semimer.semi.recipe.run_recipe`) with some overrides, run for every
seed into ``OUT/seed_<s>/<variant>/``; variants of one seed share one pre-training when their
pre-training settings agree (it is keyed by its own fingerprint). Some rows are *read off* another
variant's stages instead of being retrained, because the stages they would run are identical
(same seed, folds, inputs): e.g. "w/o voting" is the full recipe's last self-training round, and
"MR-CCL + pre-training" (no self-training, no voting) is the full recipe's round 0.

Numbers: CV WAF is the mean over folds on real labels (pseudo-labeled clips never validate), then
mean ± std over seeds; test WAF (when hidden labels are given) mean ± std over seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from semimer.config import load_config
from semimer.data.layout import load_configured
from semimer.io import read_json, write_json, write_text
from semimer.utils import log


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[str, ...] = ()
    read_from: tuple[str, str] | None = None  # (variant, stage) to read instead of running


BASELINE = ("model.name=attention", "recipe.vote_members=[attention]", "pretrain.enabled=false",
            "train.oversample=false", "self_train.rounds=0")
NO_ST_NO_VOTE = ("self_train.rounds=0", "recipe.vote_members=[mrccl]")
# the published method's full recipe includes one self-training round and the vote with the attention
# baseline (both off in semimer's defaults: neither helped under the leak-free protocol, see README)
ST = ("self_train.rounds=1", "recipe.vote_members=[mrccl,attention]")
VOTE = ("recipe.vote_members=[mrccl,attention]",)

VARIANT_SETS: dict[str, list[Variant]] = {
    # the published ablation (recipe level)
    "recipe": [
        Variant("baseline (attention)", BASELINE),
        Variant("full recipe", ST),
        Variant("w/o pre-training", (*ST, "pretrain.enabled=false")),
        Variant("w/o pseudo-labels", ("self_train.rounds=0", *VOTE)),
        Variant("w/o oversampling", (*ST, "train.oversample=false")),
        Variant("w/o voting", read_from=("full recipe", "final_round")),
    ],
    # MR-CCL itself (no self-training, no voting)
    "model": [
        Variant("baseline (attention)", BASELINE),
        Variant("MR-CCL w/o pre-training", ("pretrain.enabled=false", *NO_ST_NO_VOTE)),
        Variant("MR-CCL + pre-training", NO_ST_NO_VOTE),
        Variant("MR-CCL + pre-training w/o oversampling", ("train.oversample=false", *NO_ST_NO_VOTE)),
        Variant("MR-CCL + pre-training w/o noise term", ("model.use_noise=false", *NO_ST_NO_VOTE)),
        Variant("MR-CCL + pre-training w/o modal term", ("model.use_modal=false", *NO_ST_NO_VOTE)),
    ],
    # the quick pair used by `semimer demo`
    "demo": [
        Variant("baseline (attention)", BASELINE),
        Variant("full recipe", ST),
        Variant("MR-CCL + pre-training (round 0)", read_from=("full recipe", "round_0")),
        Variant("w/o voting", read_from=("full recipe", "final_round")),
    ],
}
# everything, with the MR-CCL rows read off the recipe variants' round 0 where they coincide
VARIANT_SETS["all"] = VARIANT_SETS["recipe"] + [
    Variant("MR-CCL w/o pre-training", read_from=("w/o pre-training", "round_0")),
    Variant("MR-CCL + pre-training", read_from=("full recipe", "round_0")),
    Variant("MR-CCL + pre-training w/o oversampling", read_from=("w/o oversampling", "round_0")),
    *VARIANT_SETS["model"][4:],
]

def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def _row_from_stage(summary: dict, stage: str) -> dict:
    if stage == "final_round":
        stage = f"round_{summary.get('final_round', 0)}"
    st = summary["stages"][stage]
    return {"cv_waf": st["cv_waf"]["mean"], "cv_fold_std": st["cv_waf"]["std"],
            "test_waf": st.get("test", {}).get("waf") if st.get("test") else None}


def _row_final(summary: dict) -> dict:
    f = summary["final"]
    return {"cv_waf": f["cv_waf"]["mean"], "cv_fold_std": f["cv_waf"]["std"], "oof_waf": f["oof_waf"],
            "test_waf": f["test"]["waf"] if f.get("test") else None}


def run_ablation(data_root: str | Path, out: str | Path, seeds: Sequence[int], variant_set: str = "recipe",
                 overrides: Sequence[str] = (), test_labels: str | Path | None = None,
                 config_file: str | None = None, preset: str = "recipe", overwrite: bool = False,
                 collect: bool = False) -> dict:
    """Every variant's config: ``preset`` (the packaged recipe settings) <- ``config_file`` <-
    ``overrides`` <- the variant's own overrides and the seed. ``overwrite`` goes to each run_recipe.
    ``collect``: run nothing, tabulate the finished runs' ``metrics.json`` (e.g. after one process
    per seed: ``--seeds 0`` / ``--seeds 1`` / ... in parallel, then ``--seeds 0,1,2 --collect``)."""
    from semimer.semi.recipe import run_recipe
    from semimer.train import distributed

    if variant_set not in VARIANT_SETS:
        raise ValueError(f"unknown variant set {variant_set!r}; choose one of {', '.join(VARIANT_SETS)}")
    if not collect and distributed.active() and len(seeds) >= distributed.world():
        # torchrun: seeds spread over the ranks (each seed's runs in one process), then every rank
        # tabulates the finished runs (with fewer seeds than ranks, the folds are spread instead)
        mine = [s for i, s in enumerate(seeds) if i % distributed.world() == distributed.rank()]
        with distributed.local():
            run_ablation(data_root, out, mine, variant_set, overrides, test_labels, config_file, preset, overwrite)
        distributed.barrier()
        return run_ablation(data_root, out, seeds, variant_set, overrides, test_labels, config_file, preset,
                            collect=True)
    variants = VARIANT_SETS[variant_set]
    out = Path(out)
    rows: dict[str, list[dict]] = {v.name: [] for v in variants}
    loaded: dict[str, object] = {}  # data settings -> dataset (variants may differ in data.*, e.g. data.incomplete)
    for seed in seeds:
        summaries: dict[str, dict] = {}
        seen: dict[tuple, str] = {}
        for v in variants:
            if v.read_from:
                continue
            ov = [f"data.root={data_root}", *overrides, *v.overrides, f"train.seed={seed}"]
            cfg = load_config(config_file, ov, preset=preset)
            if not collect:
                data_key = repr(cfg.data)
                if data_key not in loaded:
                    loaded[data_key] = load_configured(cfg.data)
                data = loaded[data_key]
            key = tuple(ov)
            if key in seen:  # identical settings (e.g. the same variant in two sets)
                summaries[v.name] = summaries[seen[key]]
                continue
            seen[key] = v.name
            run_dir = out / f"seed_{seed}" / _slug(v.name)
            if collect:
                if not (run_dir / "metrics.json").is_file():
                    raise FileNotFoundError(f"{run_dir / 'metrics.json'} is missing: run this variant first "
                                            f"(the same command without --collect)")
                summaries[v.name] = read_json(run_dir / "metrics.json")
            else:
                log.info("ablation seed %d: %s", seed, v.name)
                summaries[v.name] = run_recipe(data, cfg, run_dir, test_labels,
                                               pretrain_dir=out / f"seed_{seed}" / "_pretrain", overwrite=overwrite)
            rows[v.name].append({"seed": seed, **_row_final(summaries[v.name])})
        for v in variants:
            if v.read_from:
                src, stage = v.read_from
                if src not in summaries:
                    raise ValueError(f"variant {v.name!r} reads from {src!r}, which is not in set {variant_set!r}")
                rows[v.name].append({"seed": seed, **_row_from_stage(summaries[src], stage)})
    table = summarise_rows(rows)
    result = {"variant_set": variant_set, "seeds": list(seeds), "overrides": list(overrides), "rows": rows, "table": table}
    if distributed.is_lead():
        write_json(out / "ablation.json", result)  # parallel one-seed processes overwrite it: --collect rewrites it
        write_text(out / "ablation.md", format_table(table, len(seeds)) + "\n")
    return result


def summarise_rows(rows: dict[str, list[dict]]) -> list[dict]:
    def ms(vals):
        vals = [v for v in vals if v is not None]
        if not vals:
            return None
        a = np.asarray(vals, dtype=np.float64)
        return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": len(a)}

    return [{"variant": name, "cv_waf": ms([r["cv_waf"] for r in rs]), "test_waf": ms([r["test_waf"] for r in rs]),
             "cv_fold_std": ms([r["cv_fold_std"] for r in rs])} for name, rs in rows.items()]


def format_table(table: list[dict], n_seeds: int) -> str:
    """Several seeds: mean ± std over seeds. One seed: CV as mean ± std over folds, test as is."""
    def f(x, fold_std=None):
        if x is None:
            return "–"
        if n_seeds > 1:
            return f"{100 * x['mean']:.2f} ± {100 * x['std']:.2f}"
        return f"{100 * x['mean']:.2f}" + (f" ± {100 * fold_std['mean']:.2f}" if fold_std else "")

    w = max(len(r["variant"]) for r in table)
    how = (f"mean ± std over {n_seeds} seeds" if n_seeds > 1 else "1 seed: CV mean ± std over folds")
    lines = [f"{'variant':<{w}}  {'CV WAF':>15}  {'test WAF':>15}   ({how}; CV on real labels only)",
             "-" * (w + 36)]
    lines += [f"{r['variant']:<{w}}  {f(r['cv_waf'], r.get('cv_fold_std')):>15}  {f(r['test_waf']):>15}" for r in table]
    return "\n".join(lines)
