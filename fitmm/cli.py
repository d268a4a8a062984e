"""Command line: `fitmm data ...`, `fitmm train ...`, `fitmm reanalyse ...`, `fitmm tune ...` (also `python -m fitmm`)."""

from __future__ import annotations

import argparse
import sys

from fitmm.errors import ConfigError, DataError, TrainingError


def _train(args: argparse.Namespace) -> int:
    from fitmm.config import help_text, load_config, parse_overrides
    from fitmm.data import get_dataset
    from fitmm.trainer import preflight, train

    if args.help_config:
        print(help_text(args.model))
        return 0
    overrides = parse_overrides(args.set or [])
    if args.seed is not None:
        overrides["seed"] = args.seed
    config = load_config(args.model, overrides)
    preflight(args.results_dir)
    data = get_dataset(args.dataset, args.data_dir)
    record = train(data, config, results_dir=args.results_dir, progress=not args.quiet)
    print(f"{record['model']} on {data.name} (seed {record['seed']}): best valid epoch {record['best_epoch']}, "
          f"{record['epochs']} epochs, {record['wall_seconds']:.1f} s")
    for split in ("best_valid", "test"):
        row = "  ".join(f"{k} {record[split][k]:.4f}" for k in ("recall@10", "recall@20", "ndcg@10", "ndcg@20"))
        print(f"  {split:10s} {row}")
    return 0


def _reanalyse(args: argparse.Namespace) -> int:
    from fitmm.experiments.runs import reanalyse

    for path in args.runs:
        out = reanalyse(path, args.data_dir, progress=not args.quiet)
        print(f"{path}: analysis.json written ({', '.join(out)})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from fitmm.config import available_models
    from fitmm import reproduce, settings, tune
    from fitmm.data import cli as data_cli

    parser = argparse.ArgumentParser(prog="fitmm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    data_cli.register(commands)
    reproduce.register(commands)
    tune.register(commands)

    train = commands.add_parser("train", help="train one model on one dataset and write its run record")
    train.add_argument("--model", required=True, choices=available_models())
    train.add_argument("--dataset", default="synthetic", help="dataset name (default: the embedded synthetic benchmark)")
    train.add_argument("--data-dir", default=None,
                       help="folder holding DATASET/ in MMRec format (default: $FITMM_DATA, else <project>/data)")
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    train.add_argument("--results-dir", default=settings.results_dir(),
                       help="where run records go (default: $FITMM_RESULTS, else <project>/results)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--help-config", action="store_true", help="print the model's config fields and defaults, then exit")
    train.set_defaults(func=_train)

    again = commands.add_parser("reanalyse", help="recompute the stored analysis of finished runs (without a local "
                                "checkpoint: train the run again and add the parts its analysis lacks)")
    again.add_argument("runs", nargs="+", metavar="RUN_DIR", help="a run folder: <results>/runs/<dataset>/<model>/<run id>")
    again.add_argument("--data-dir", default=None,
                       help="folder holding the run's dataset (default: $FITMM_DATA, else <project>/data)")
    again.add_argument("--quiet", action="store_true", help="no progress bar")
    again.set_defaults(func=_reanalyse)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataError, TrainingError) as err:
        print(f"fitmm: error: {err}", file=sys.stderr)
        return 2
