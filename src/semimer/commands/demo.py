"""semimer demo [--out DIR]"""

HELP = ("the main job on the embedded default: synthesise a dataset, run the MER2024-SEMI recipe and the "
        "baseline with 5-fold CV, score the hidden test labels, print the table")

# fast settings so the whole demo takes a few minutes on 2 CPU cores (see README for full runs);
# train.threads stays auto: one thread on a small or busy CPU (torch's default of one thread per
# core is 5-10x slower when another process uses a core)
DEMO_SETTINGS = ["model.hidden=128", "model.head_hidden=64", "train.epochs=20", "train.patience=5",
                 "pretrain.epochs=3"]


def add_arguments(p):
    p.add_argument("--out", default="demo-run", help="output folder (default: ./demo-run)")
    p.add_argument("--preset", default="small", help="synthetic preset (default: small)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run")


def run(args) -> int:
    import time
    from pathlib import Path

    from semimer.semi.ablation import format_table, run_ablation
    from semimer.data.synth import generate
    from semimer.utils import log

    t0 = time.time()
    out = Path(args.out)
    ds = out / "data" / "dataset"
    if not (ds / "synth.json").is_file():
        log.info("semimer demo: synthesising the '%s' preset (seed %d) ...", args.preset, args.seed)
        # one memory-mapped store per feature (what `semimer pack` makes of a features/ folder):
        # every stage reads the clips it needs without opening thousands of small files
        generate(out / "data", args.preset, args.seed, fmt="packed")
    res = run_ablation(ds, out / "runs", [args.seed], "demo", [*DEMO_SETTINGS, *args.overrides],
                       test_labels=out / "data" / "test-labels.csv")
    print()
    print(f"semimer demo: synthetic '{args.preset}' preset (seed {args.seed}) — a stand-in for MER2024, not real data")
    print(format_table(res["table"], 1))
    full = out / "runs" / f"seed_{args.seed}" / "full-recipe"
    print(f"\nsubmission: {full / 'submission.csv'}\nreport:     {full / 'report.md'}\n"
          f"table:      {out / 'runs' / 'ablation.md'}   [{time.time() - t0:.0f} s]")
    return 0
