"""Train a model. Every run is kept in experiments/<run id>/; checkpoints/ shows the latest.

    python train.py [--config FILE] [KEY=VALUE ...]     a new run, or resume=<id> to continue one
    python train.py seeds=0,1,2 [folds=5] ...            a group: one run per seed and fold (again: continue it)
    python train.py --sweep FILE [--workers N] [KEY=VALUE ...]   an Optuna sweep whose trials are runs (again: continue it)
    python train.py --list [KEY=VALUE ...] [--sort KEY] [--json]   a table of the runs that match
    python train.py --tag ID TAG ... | --note ID TEXT    label a run afterwards
    python train.py --delete ID ... | --restore ID ... | --prune-states [--dry-run]   clean up experiments/
    torchrun --nproc_per_node=N train.py ...            the same on N processes (DDP)

Where each command lives:

    --list, --tag, --note, --delete, --restore, --prune-states   store/commands.py
    --sweep FILE                                                 sweeps/ (a feature: utils/features.py)
    seeds=..., folds=K                                           groups/ (a feature)
    a single run, new or continued                               train/run.py: plan_run, then train_run

torch is imported only by the single run, after --list and --help have answered.
"""
from __future__ import annotations

import argparse
import functools
from typing import Optional

from store.commands import add_store_options, check_store_options, store_command
from tasks import configs, task_dict
from utils.config import is_group, load_config, make_parser, parse_args
from utils.errors import UsageError, run_main
from utils.features import features


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_arguments(argv)
    if args.list or args.store_command:  # looking after experiments/
        return store_command(args, configs)
    config = functools.cache(lambda: load_config(args.config, args.overrides, configs))
    for feature in features():  # --sweep FILE, then seeds or folds
        if feature.train is not None and (code := feature.train(args, config)) is not None:
            return code
    if is_group(config()):  # no feature took it: groups/ was removed
        raise UsageError("seeds, folds: a group needs the groups feature (groups/, and its line in utils/features.py); "
                         "drop seeds and folds, or give fold=F for one fold")
    from train.run import plan_run, train_run  # torch from here on

    typed = frozenset(word.split("=", 1)[0] for word in args.overrides)  # an unfinished run keeps its planned epochs unless typed
    return train_run(plan_run(config(), task_dict, typed))


def parse_arguments(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = make_parser("train.py", "Train a model; every run is kept in experiments/<run id>/.", configs)
    add_store_options(parser)
    for feature in features():
        if feature.train_options is not None:
            feature.train_options(parser)
    args = parse_args(parser, argv)
    check_store_options(args)
    return args


if __name__ == "__main__":
    run_main(main)
