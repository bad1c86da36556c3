"""semimer synth OUT --preset P --seed S"""

HELP = "write a synthetic MER-like dataset (the embedded default data) and its hidden test labels"


def add_arguments(p):
    from semimer.data.synth import PRESETS

    p.add_argument("out", help="output folder (gets dataset/ and test-labels.csv)")
    p.add_argument("--preset", default="tiny", choices=list(PRESETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", dest="fmt", choices=["npy", "packed", "both"], default=None,
                   help="per-clip .npy folders, packed stores, or both (default: npy up to 50k clips)")
    p.add_argument("--missing-rate", type=float, default=None, help="fraction of clips with one zeroed modality")


def run(args) -> int:
    from semimer.data.synth import PRESETS, feature_names, generate

    over = {} if args.missing_rate is None else {"missing_rate": args.missing_rate}
    ds = generate(args.out, args.preset, args.seed, fmt=args.fmt, progress=True, **over)
    print(f"dataset: {ds}\nhidden test labels: {ds.parent / 'test-labels.csv'}")
    names = feature_names(PRESETS[args.preset])
    flags = " ".join(f"--{m} {f}" for m, f in names.items() if f.endswith("-FRA"))
    if flags:
        print(f"frame-level features: train with  semimer train --data {ds} {flags}")
    return 0
