"""semimer demo [--out DIR]"""

HELP = "the main job on the embedded default: synthesise a dataset, train with 5-fold CV, score the hidden test labels"


def add_arguments(p):
    p.add_argument("--out", default="demo-run", help="output folder (default: ./demo-run)")
    p.add_argument("--preset", default="small", help="synthetic preset (default: small)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", default="attention", help="comma-separated models to compare")
    p.add_argument("overrides", nargs="*", help="key=value overrides for training")


def run(args) -> int:
    import time
    from pathlib import Path

    from semimer.commands.evaluate import evaluate_files
    from semimer.config import load_config
    from semimer.cv import run_cv
    from semimer.data.layout import load_dataset
    from semimer.metrics import fmt
    from semimer.synth import generate

    t0 = time.time()
    out = Path(args.out)
    ds = out / "data" / "dataset"
    if not (ds / "synth.json").is_file():
        generate(out / "data", args.preset, args.seed)
    rows = []
    for name in args.models.split(","):
        cfg = load_config(None, [f"data.root={ds}", f"model.name={name}", f"train.seed={args.seed}", *args.overrides])
        data = load_dataset(ds, cfg.data.features(), cfg.data.classes)
        init = None
        if name == "mrccl" and cfg.pretrain.enabled:
            from semimer.pretrain import pretrain_for_run

            init = pretrain_for_run(data, cfg, out / name)
        res = run_cv(data, cfg, out / name, init_state=init)
        test = evaluate_files(out / name / "predictions.csv", out / "data" / "test-labels.csv")
        rows.append((name, fmt(res.metrics["cv"]["waf"]), f"{100 * test['waf']:.2f}", f"{100 * test['accuracy']:.2f}"))
    print()
    print(f"semimer demo: synthetic '{args.preset}' preset (seed {args.seed}); a stand-in for MER2024, not real data")
    print(f"{'model':<12} {'CV WAF (mean ± std, 5 folds)':<30} {'test WAF':>9} {'test acc':>9}")
    for r in rows:
        print(f"{r[0]:<12} {r[1]:<30} {r[2]:>9} {r[3]:>9}")
    print(f"\noutputs: {out}/<model>/ (metrics.json, predictions.csv, confusion.png, ...)  [{time.time() - t0:.0f} s]")
    return 0
