"""semimer train --data DIR --audio F --text F --video F --model NAME --out RUN [key=value ...]"""

HELP = "train with stratified, seeded K-fold CV; writes metrics, predictions, weights and plots to RUN"


def add_arguments(p):
    from semimer.commands._common import add_data_arguments

    add_data_arguments(p, preset="train")
    p.add_argument("--model", help="model name (see `semimer models`); default attention")
    p.add_argument("--out", required=True, help="run folder")


def run(args) -> int:
    from semimer.commands._common import config_from_args, load_data
    from semimer.train.cv import run_cv
    from semimer.eval.metrics import fmt

    cfg = config_from_args(args, [f"model.name={args.model}"] if args.model else [])
    data = load_data(cfg)
    if cfg.model.name == "mrccl" and cfg.pretrain.enabled:
        from semimer.train.pretrain import pretrain_for_run

        init = pretrain_for_run(data, cfg, args.out, overwrite=args.overwrite)
    else:
        init = None
    res = run_cv(data, cfg, args.out, init_state=init, overwrite=args.overwrite)
    from semimer.train import distributed

    if not distributed.is_lead():  # under torchrun: rank 0 reports
        return 0
    m = res.metrics
    print(f"CV WAF {fmt(m['cv']['waf'])}  accuracy {fmt(m['cv']['accuracy'])}  macro-F1 {fmt(m['cv']['macro_f1'])}"
          f"  ({cfg.train.folds} folds, model {cfg.model.name}) -> {args.out}")
    return 0
