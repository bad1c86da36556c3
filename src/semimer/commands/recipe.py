"""semimer recipe --data DIR --audio F --text F --video F --out RUN [--test-labels CSV] [key=value ...]"""

HELP = "the whole MER2024-SEMI pipeline: pre-training, MR-CCL CV, self-training, voting, submission (resumable)"


def add_arguments(p):
    from semimer.commands._common import add_data_arguments

    # the recipe's settings (model.name=mrccl, pre-training, oversampling) are the packaged preset
    # configs/recipe.yaml, so a --config YAML can change them
    add_data_arguments(p, preset="recipe")
    p.add_argument("--out", required=True, help="run folder (a killed run continues where it stopped)")
    p.add_argument("--test-labels", help="hidden labels CSV, only to report test scores (never used to choose)")


def run(args) -> int:
    from semimer.commands._common import config_from_args, load_data
    from semimer.eval.metrics import fmt
    from semimer.semi.recipe import run_recipe

    cfg = config_from_args(args)
    data = load_data(cfg)
    s = run_recipe(data, cfg, args.out, args.test_labels, overwrite=args.overwrite)
    from semimer.train import distributed

    if not distributed.is_lead():  # under torchrun: rank 0 reports
        return 0
    f = s["final"]
    test = f" | test WAF {100 * f['test']['waf']:.2f}" if f.get("test") else ""
    print(f"final: CV WAF {fmt(f['cv_waf'])} | OOF WAF {100 * f['oof_waf']:.2f}{test}  (out of sample; {f['what']})")
    print(f"submission: {args.out}/submission.csv   report: {args.out}/report.md")
    return 0
