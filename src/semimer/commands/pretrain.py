"""semimer pretrain --data DIR --out RUN [key=value ...]"""

HELP = "contrastive pre-training of MR-CCL on unlabeled + labeled clips (no labels); weights to RUN/pretrain/"


def add_arguments(p):
    from semimer.commands._common import add_data_arguments

    add_data_arguments(p)
    p.add_argument("--out", required=True, help="run folder (weights go to RUN/pretrain/)")


def run(args) -> int:
    from pathlib import Path

    from semimer.commands._common import config_from_args, load_data
    from semimer.io import read_json
    from semimer.train.pretrain import pretrain_for_run

    # what this command is, not a default: MR-CCL with pre-training, whatever the preset or YAML say
    cfg = config_from_args(args, ["model.name=mrccl", "pretrain.enabled=true"])
    data = load_data(cfg)
    # the folder is not claimed as a run: pre-training is keyed by its own fingerprint (recomputed
    # when its settings change), so a later `train`/`recipe` with the same --out can reuse it
    pretrain_for_run(data, cfg, args.out, claim=False)
    from semimer.train import distributed

    if not distributed.is_lead():  # under torchrun: rank 0 reports
        return 0
    info = read_json(Path(args.out) / "pretrain" / "pretrain.json")
    print(f"pre-trained on {info['clips']} clips x {info['epochs']} epochs in {info['seconds']} s "
          f"({info['clips_per_s']} clips/s) -> {Path(args.out) / 'pretrain'}")
    print("fine-tune with: semimer train ... --model mrccl pretrain.enabled=true --out", args.out)
    return 0
