"""Sweeps: an Optuna study whose every trial is an ordinary run (python train.py --sweep FILE), run by
N workers on this machine or by several machines sharing a PostgreSQL storage, and its report.

    file.py     the sweep file: trials, metric, sampler, pruner, storage, fixed keys, the space
    study.py    experiments/sweeps/<id>/: the Optuna study, trials handed out, lost trials taken again
    train.py    train.py --sweep: the workers and their trials
    report.py   inference.py --sweep ID: the best trial, every trial, importances, plots

Plugs into the core through FEATURE (utils/features.py); nothing here is imported before it is used.
"""
from __future__ import annotations

from utils.errors import UsageError
from utils.features import Feature


def train_options(parser) -> None:
    group = parser.add_argument_group("sweeps (docs/sweeps.md; pip install -r requirements-sweeps.txt)")
    group.add_argument("--sweep", metavar="FILE", help="an Optuna sweep: FILE holds trials, metric, sampler, pruner, fixed and "
                       "space; KEY=VALUE fixes keys of every trial; the same command again continues it")
    group.add_argument("--sweep-id", metavar="ID", help="join this sweep (several machines: with storage: postgresql://...)")
    group.add_argument("--workers", type=int, default=1, metavar="N", help="with --sweep: N trials at once on this machine, "
                       "the cores split between them (default 1)")


def train(args, config) -> int | None:
    if not args.sweep:
        if args.sweep_id or args.workers != 1:
            raise UsageError("--sweep-id and --workers go with --sweep FILE")
        return None
    if args.workers < 1:
        raise UsageError(f"--workers: {args.workers} is not a number of workers; give 1 or more")
    from sweeps.train import sweep_command
    return sweep_command(args)


def infer_options(parser) -> None:
    parser.add_argument("--sweep", metavar="ID", help="the report of a sweep (train.py --sweep): best trial and config, every "
                        "trial, parameter importances, plots; written to experiments/sweeps/<ID>/")


def infer(args, shared) -> int | None:
    if not args.sweep:
        return None
    from sweeps.report import sweep_report
    return sweep_report(args.sweep)


def page_rows(runs: list[dict]) -> list[dict]:
    from sweeps.study import page_rows
    return page_rows(runs)


FEATURE = Feature("sweeps", train_options=train_options, infer_options=infer_options, train=train, infer=infer, page_rows=page_rows)
