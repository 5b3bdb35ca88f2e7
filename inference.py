"""Load a trained run and use it: evaluate it, predict on images, or compare two runs (A/B).

    python inference.py [KEY=VALUE ...]                  evaluate the run `resume` selects on its validation split
    python inference.py --input PATH                     predict on an image file or a folder of images
    python inference.py --compare RUN_A [RUN_B]          A/B report on the same samples (RUN@onnx: its ONNX export)
    python inference.py --compare GROUP_A GROUP_B        A/B of two groups, members paired by seed and fold
    python inference.py resume=<group id> [--input PATH] evaluate every member of a group, or predict with the ensemble
    python inference.py --export onnx [pt2]              export the run for services, parity checked (export/)
    python inference.py backend=onnxruntime [--input P]  evaluate or predict with the run's export/model.onnx on CPU
    python inference.py --list [KEY=VALUE ...]           a table of the runs (see train.py --help)
    python inference.py --report                         write experiments/index.html, a page of all runs
    python inference.py --sweep <sweep id>               the report of a sweep: best trial, every trial, importances, plots

torch and what needs it are imported inside the functions that use them, so that --list and
--help answer at once.
"""
from __future__ import annotations

import argparse
from typing import Optional

from tasks import configs
from utils.config import load_config, make_parser, parse_args, shared_config
from utils.errors import RunFailure, UsageError, run_main


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_arguments(argv)
    if args.list:
        from utils.listing import list_command
        return list_command(args.overrides, args.sort, args.json, configs)
    if args.sweep:
        from infer.sweeps import sweep_report
        return sweep_report(args.sweep)
    if args.report:
        from utils.report import write_index
        print(f"wrote {write_index()}")
        return 0
    shared = shared_config(args.config, args.overrides, configs)  # which run(s): then their task says which keys apply
    if args.export and "onnx" in args.export:
        from infer.onnx_backend import require_onnx
        require_onnx()  # the install command comes first: nothing else can be fixed without it
    from infer.runs import select_run
    from tasks import task_of

    if args.compare:
        return compare(args, shared)
    from utils.groups import find_group

    group = find_group(shared.resume)
    if group is not None:
        return use_group(args, group)
    run = select_run(shared.resume)
    task = task_of(run)
    cfg = load_config(args.config, args.overrides, configs, task.name)
    if args.export:
        return task.export(cfg, run, args.export)
    try:
        task.evaluate_run(cfg, run, args.input)
    except BrokenPipeError:
        raise
    except OSError as e:
        raise RunFailure(f"cannot write under experiments/{run['id']}/inference ({e.strerror}); make experiments/ writable") from None
    return 0


def compare(args: argparse.Namespace, shared) -> int:
    """--compare: two groups (paired by seed and fold), or two runs (the task's A/B report); then the index."""
    from infer.groups import compare_groups, group_pair
    from infer.report import select_pair
    from tasks import task_of
    from utils.report import rewrite_index

    groups = group_pair(args.compare)
    if groups is not None:
        if args.input:
            raise UsageError("--input: two groups are compared member by member on their own held-out samples; drop --input")
        code = compare_groups(*groups)
    else:
        run_a, run_b, backends = select_pair(shared, args.compare)
        task = task_of(run_a, run_b)
        cfg = load_config(args.config, args.overrides, configs, task.name)
        code = task.compare(cfg, run_a, run_b, backends, args.input)
    rewrite_index()  # its reports column links the new report
    return code


def use_group(args: argparse.Namespace, group: dict) -> int:
    """resume=<group id>: evaluate every finished member, or with --input predict with their ensemble."""
    from tasks import task_dict
    from utils.groups import finished_members

    if args.export:
        raise UsageError(f"--export: {group['id']} is a group; export one member: resume=<member run id> (--list group={group['id']})")
    task = task_dict[group["task"]]()
    cfg = load_config(args.config, args.overrides, configs, task.name)
    runs = finished_members(group)
    if args.input:
        return task.predict_ensemble(cfg, group, runs, args.input)
    for run in runs:
        task.evaluate_run(cfg, run, None)
    print(f"group {group['id']}: evaluated {len(runs)} of {len(group['plan'])} members; group.json holds their aggregate")
    return 0


def parse_arguments(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = make_parser("inference.py", "Evaluate a trained run, predict on images, or compare two runs (A/B).", configs)
    parser.add_argument("--input", metavar="PATH", help="an image file or a folder of images to predict on "
                        "(with --compare: a labelled folder of class sub-folders)")
    parser.add_argument("--compare", nargs="+", metavar="RUN", help="RUN_A [RUN_B]: A/B report; RUN_B defaults to the run resume "
                        "selects; RUN@onnx compares the run's ONNX export (served by onnxruntime), e.g. --compare ID@onnx ID")
    parser.add_argument("--export", nargs="+", metavar="FORMAT", help="onnx and/or pt2: export the run resume selects to "
                        "experiments/<id>/export/ (model.onnx, model.pt2, preprocess.json, parity.json, export.json), "
                        "checking parity with the eager model")
    parser.add_argument("--sweep", metavar="ID", help="the report of a sweep (train.py --sweep): best trial and config, every "
                        "trial, parameter importances, plots; written to experiments/sweeps/<ID>/")
    parser.add_argument("--report", action="store_true", help="write experiments/index.html: every run on one page, no server needed")
    args = parse_args(parser, argv)
    if args.compare:  # --compare A [B] also swallows the KEY=VALUE words after it
        args.overrides += [w for w in args.compare if "=" in w]
        args.compare = [w for w in args.compare if "=" not in w]
        if not args.compare:
            raise UsageError("--compare needs a run id: --compare RUN_A [RUN_B]")
    if args.export:  # so does --export
        args.overrides += [w for w in args.export if "=" in w]
        args.export = [w for w in args.export if "=" not in w]
        wrong = [w for w in args.export if w not in ("onnx", "pt2")] or ([] if args.export else ["no format"])
        if wrong or args.compare or args.input:
            raise UsageError(f"--export takes onnx and/or pt2, and no --compare or --input (got {' '.join(wrong) or 'those'}); "
                             "e.g. --export onnx resume=<id>")
    return args


if __name__ == "__main__":
    run_main(main)
