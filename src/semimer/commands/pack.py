"""semimer pack DATA_DIR [FEATURE ...]"""

HELP = "pack per-clip .npy feature folders into memory-mapped stores (fast to open, never all in RAM)"


def add_arguments(p):
    p.add_argument("data", help="data root holding features/<FEATURE>/*.npy")
    p.add_argument("features", nargs="*", help="feature folder names (default: all under features/)")


def run(args) -> int:
    from pathlib import Path

    from semimer.data.pack import pack_folder
    from semimer.data.store import FEATURES_DIRNAME

    root = Path(args.data)
    feats = args.features or sorted(p.name for p in (root / FEATURES_DIRNAME).iterdir() if p.is_dir()) \
        if (root / FEATURES_DIRNAME).is_dir() else args.features
    if not feats:
        raise FileNotFoundError(f"no feature folders under {root / FEATURES_DIRNAME}")
    for f in feats:
        out = pack_folder(root / FEATURES_DIRNAME / f)
        print(f"packed {f} -> {out}")
    return 0
