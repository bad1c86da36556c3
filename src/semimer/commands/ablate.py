"""semimer ablate --data DIR --out DIR [--seeds 0,1,2] [--set recipe|model|all] [--test-labels CSV]"""

HELP = "run the recipe and its ablations over seeds and print the table (CV WAF, test WAF: mean ± std)"


def add_arguments(p):
    from semimer.commands._common import OVERWRITE_HELP, add_config_arguments

    p.add_argument("--data", required=True, help="data root")
    p.add_argument("--out", required=True, help="output folder (resumable)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--set", dest="variant_set", default="recipe", help="variant set: recipe, model, all, demo")
    p.add_argument("--test-labels", help="hidden labels CSV (reported only)")
    add_config_arguments(p, preset="recipe")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--collect", action="store_true",
                   help="run nothing: tabulate the finished runs in --out (after one process per seed)")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every variant")


def run(args) -> int:
    from semimer.config import load_config
    from semimer.config_checks import check_model_names
    from semimer.models import list_models
    from semimer.semi.ablation import format_table, run_ablation

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    # the settings shared by every variant fail here, before any variant runs
    check_model_names(load_config(args.config, args.overrides, preset=args.preset), list_models())
    res = run_ablation(args.data, args.out, seeds, args.variant_set, args.overrides, args.test_labels, args.config,
                       preset=args.preset, overwrite=args.overwrite, collect=args.collect)
    from semimer.train import distributed

    if distributed.is_lead():  # under torchrun every rank holds the table; one prints it
        print()
        print(format_table(res["table"], len(seeds)))
        print(f"\n-> {args.out}/ablation.md, ablation.json")
    return 0
