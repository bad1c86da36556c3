"""semimer tune --data DIR [--audio/--text/--video F] --out TUNE_DIR [--trials N] [--minutes M]
[--target train|recipe] [--space k1,k2] [--config base.yaml] [key=value ...]"""

HELP = "hyper-parameter search (Optuna TPE) on the CV WAF of the labeled clips; resumable; writes best.yaml"

NOTE = """\
The objective is the CV WAF mean on the labeled clips (target train: one CV run; target recipe:
the final CV of the whole recipe). Hidden test labels are never read. Settings chosen on the CV of
these clips make a later CV of them on the same clips optimistic: check the chosen settings on a
held-out set (semimer recipe --config TUNE_DIR/best.yaml --test-labels CSV); a final run with
another train.seed than the search (other folds) only partly helps.

Running the same command again continues the study in TUNE_DIR/optuna.db: complete trials count
toward --trials. key=value arguments fix a key (it is then not searched); --config only sets the
starting point. A folder holding a study made with other settings is refused (--overwrite
deletes that study and its trials/). No trial is stopped early (per-fold WAFs are reported after
each trial's CV).
"""


def add_arguments(p):
    import argparse

    from semimer.commands._common import add_data_arguments
    from semimer.config import preset_names
    from semimer.semi.tune import SPACE, TARGETS, space_help

    add_data_arguments(p)
    p.add_argument("--preset", choices=preset_names(),
                   help="packaged settings merged over the defaults (default: the target's, train or recipe)")
    p.add_argument("--model", help="shorthand for model.name=NAME")
    p.add_argument("--out", required=True, help="tune folder (optuna.db, trials/, best.yaml, trials.csv)")
    p.add_argument("--target", choices=TARGETS, default="train",
                   help="what a trial runs: train (one CV run, default) or recipe (the whole recipe, slower)")
    p.add_argument("--trials", type=int, help="complete trials the study should have (default 20 without --minutes)")
    p.add_argument("--minutes", type=float, help="time budget of this call (checked between trials)")
    p.add_argument("--space", help=f"comma-separated keys to search (default: all that apply): {', '.join(SPACE)}")
    p.add_argument("--top", type=int, default=10, help="trials shown in the printed table (default 10)")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "search space (config key, distribution):\n" + space_help() + "\n\n" + NOTE


def run(args) -> int:
    import sys

    from semimer.commands._common import config_from_args, load_data
    from semimer.semi.tune import top_table, tune

    extra = [f"model.name={args.model}"] if args.model else []
    cfg = config_from_args(args, extra, preset="recipe" if args.target == "recipe" else "train")
    fixed = [o.split("=", 1)[0].strip() for o in args.overrides if "=" in o]
    data = load_data(cfg)
    try:
        res = tune(data, cfg, args.out, target=args.target, space=args.space, n_trials=args.trials,
                   timeout=None if args.minutes is None else 60.0 * args.minutes, overwrite=args.overwrite,
                   fixed=fixed)
    except ImportError as exc:
        print(f"semimer tune: error: {exc}", file=sys.stderr)
        return 1
    print(top_table(res.rows, args.top))
    if res.best_number is None:
        print(f"no complete trial in {args.out}")
        return 1
    print(f"best: trial {res.best_number}, CV WAF {100 * res.best_value:.2f} ({res.n_complete} complete trials, "
          f"{res.ran} run now); optimistic: chosen on these folds")
    print(f"best config: {args.out}/best.yaml   (semimer {args.target} --config {args.out}/best.yaml ...)")
    print(f"all trials: {args.out}/trials.csv")
    return 0
