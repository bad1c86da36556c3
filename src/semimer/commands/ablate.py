"""semimer ablate --data DIR --out DIR [--seeds 0,1,2] [--set recipe|model|all] [--test-labels CSV]"""

HELP = "run the recipe and its ablations over seeds and print the table (CV WAF, test WAF: mean ± std)"


def add_arguments(p):
    p.add_argument("--data", required=True, help="data root")
    p.add_argument("--out", required=True, help="output folder (resumable)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--set", dest="variant_set", default="recipe", help="variant set: recipe, model, all, demo")
    p.add_argument("--test-labels", help="hidden labels CSV (reported only)")
    p.add_argument("--config", help="YAML config merged first")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every variant")


def run(args) -> int:
    from semimer.semi.ablation import format_table, run_ablation

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    res = run_ablation(args.data, args.out, seeds, args.variant_set, args.overrides, args.test_labels, args.config)
    print()
    print(format_table(res["table"], len(seeds)))
    print(f"\n-> {args.out}/ablation.md, ablation.json")
    return 0
