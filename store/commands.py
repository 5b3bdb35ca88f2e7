"""The commands that look after experiments/ (python train.py --list, --tag, --note, --delete,
--restore, --prune-states): a table of option -> function. Each refuses what is unsafe, changing
nothing; after a change, experiments/index.html is rewritten."""
from __future__ import annotations

import argparse

from store import cleanup
from store.listing import list_command
from store.page import rewrite_index
from utils.errors import UsageError

COMMANDS = {  # option (argparse's name) -> what it does; --list is separate: it changes nothing
    "tag": lambda a: cleanup.add_labels(a.tag[0], tags=a.tag[1:], option="--tag"),
    "note": lambda a: cleanup.add_labels(a.note[0], note=a.note[1], option="--note"),
    "delete": lambda a: cleanup.delete_runs(a.delete, a.dry_run),
    "restore": lambda a: cleanup.restore_runs(a.restore, a.dry_run),
    "prune_states": lambda a: cleanup.prune_states(a.dry_run),
}


def add_store_options(parser: argparse.ArgumentParser) -> None:
    store = parser.add_argument_group("looking after experiments/ (each refuses what is unsafe, changing nothing)")
    store.add_argument("--tag", nargs="+", metavar=("ID", "TAG"), help="add tags to a run (weights and config untouched)")
    store.add_argument("--note", nargs=2, metavar=("ID", "TEXT"), help="add a note to a run")
    store.add_argument("--delete", nargs="+", metavar="ID", help="move runs to experiments/.trash/")
    store.add_argument("--restore", nargs="+", metavar="ID", help="bring runs back from experiments/.trash/")
    store.add_argument("--prune-states", action="store_true", help="delete the state.pt of finished runs nothing needs")
    store.add_argument("--dry-run", action="store_true", help="with --delete, --restore, --prune-states: only say what would happen")


def check_store_options(args: argparse.Namespace) -> None:
    """One store command at a time, with what it needs; sets args.store_command (the option or None)."""
    commands = [c for c in COMMANDS if getattr(args, c)]
    if len(commands) + args.list > 1:
        raise UsageError("give one of --list, --tag, --note, --delete, --restore, --prune-states at a time")
    if args.tag is not None and len(args.tag) < 2:
        raise UsageError("--tag needs a run id and at least one tag: --tag ID TAG [TAG ...]")
    if args.overrides and commands:
        raise UsageError(f"--{commands[0].replace('_', '-')} takes no KEY=VALUE words (got {args.overrides[0]})")
    args.store_command = commands[0] if commands else None


def store_command(args: argparse.Namespace, configs: dict[str, type]) -> int:
    """--list, or the store command args names; then the index is rewritten."""
    if args.list:
        return list_command(args.overrides, args.sort, args.json, configs)
    COMMANDS[args.store_command](args)
    if not args.dry_run:
        rewrite_index()
    return 0
