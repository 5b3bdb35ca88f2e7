"""inference.py for groups: --compare GROUP_A GROUP_B, and resume=<group id> (evaluate every member,
or with --input predict with their ensemble)."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Optional

from groups.compare import compare_groups, group_pair
from groups.folder import find_group, finished_members, groups_dir
from store.page import rewrite_index
from tasks import configs, task_dict
from utils.config import Config, load_config
from utils.errors import UsageError


def infer(args: argparse.Namespace, shared: Callable[[], Config]) -> Optional[int]:
    """The invocation's exit status when it names groups, else None (the core goes on)."""
    if args.compare:
        groups = group_pair(args.compare)
        if groups is None:
            return None
        if args.input:
            raise UsageError("--input: two groups are compared member by member on their own held-out samples; drop --input")
        code = compare_groups(*groups)
        rewrite_index()  # its reports column links the new report
        return code
    group = find_group(shared().resume)
    return None if group is None else use_group(args, group)


def use_group(args: argparse.Namespace, group: dict) -> int:
    """resume=<group id>: evaluate every finished member, or with --input predict with their ensemble."""
    if args.export:
        raise UsageError(f"--export: {group['id']} is a group; export one member: resume=<member run id> (--list group={group['id']})")
    task = task_dict[group["task"]]()
    cfg = load_config(args.config, args.overrides, configs, task.name)
    runs = finished_members(group)
    if args.input:
        return task.predict_ensemble(cfg, group, runs, args.input, groups_dir() / group["id"] / "inference")
    for run in runs:
        task.evaluate_run(cfg, run, None)
    print(f"group {group['id']}: evaluated {len(runs)} of {len(group['plan'])} members; group.json holds their aggregate")
    return 0
