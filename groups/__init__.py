"""Groups: one experiment trained as several runs (seeds=0,1,2, folds=K), reported as a mean with a
95% interval, compared member by member (--compare GROUP_A GROUP_B) and predicting as an ensemble.

    folder.py   experiments/groups/<id>/group.json: create, find, read, aggregate; rows of --list and index.html
    train.py    train the members in turn, then the group's predictions and curves
    compare.py  the A/B of two groups, members paired by seed and fold
    infer.py    inference.py resume=<group id> and --compare GROUP_A GROUP_B

Plugs into the core through FEATURE (utils/features.py); nothing here is imported before it is used.
"""
from __future__ import annotations

from utils.features import Feature


def train(args, config) -> int | None:
    """train.py with seeds or folds in the config: train the group."""
    from utils.config import is_group

    if not is_group(config()):
        return None
    from groups.train import train_group
    return train_group(config())


def infer(args, shared) -> int | None:
    from groups.infer import infer
    return infer(args, shared)


def resume_refusal(spec: str) -> str | None:
    from groups.folder import find_group

    if find_group(spec) is None:
        return None
    return (f"resume: {spec} is a group; to continue it, run the command that started it again "
            f"(its seeds and folds), or continue one member: --list group={spec}")


def list_rows(runs: list[dict], filters: dict) -> list[dict]:
    from groups.folder import list_rows
    return list_rows(runs, filters)


def page_rows(runs: list[dict]) -> list[dict]:
    from groups.folder import page_rows
    return page_rows(runs)


FEATURE = Feature("groups", train=train, infer=infer, resume_refusal=resume_refusal, list_rows=list_rows, page_rows=page_rows)
