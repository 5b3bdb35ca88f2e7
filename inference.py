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
    python inference.py --serve [resume=ID|alias:NAME]   serve the run over HTTP (Open Inference Protocol; serve/)
    python inference.py --promote RUN --alias NAME       move an alias to RUN if RUN wins (or ties) its A/B
    python inference.py --export triton                  a Triton model repository of the run's ONNX export

Where each command lives: --list store/listing.py, --report store/page.py, --sweep sweeps/, --serve,
--promote, --shadow-report and --export triton serve/, a group
(resume=<group id>, --compare GROUP_A GROUP_B) groups/, a run's evaluation, prediction, A/B and
export its task (tasks/<name>/). torch is imported inside the functions that use it, so that --list
and --help answer at once.
"""
from __future__ import annotations

import argparse
import functools
from typing import Optional

from tasks import configs
from utils.config import load_config, make_parser, parse_args, shared_config
from utils.errors import RunFailure, UsageError, run_main
from utils.features import features


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_arguments(argv)
    if args.list:
        from store.listing import list_command
        return list_command(args.overrides, args.sort, args.json, configs)
    if args.report:
        from store.page import write_index
        print(f"wrote {write_index()}")
        return 0
    shared = functools.cache(lambda: shared_config(args.config, args.overrides, configs))  # which run(s): their task says which keys apply
    for feature in features():  # --sweep ID, then groups: --compare GROUP_A GROUP_B, resume=<group id>
        if feature.infer is not None and (code := feature.infer(args, shared)) is not None:
            return code
    if args.export and "onnx" in args.export:
        from infer.onnx_backend import require_onnx
        require_onnx()  # the install command comes first: nothing else can be fixed without it
    from train.progress import heartbeat

    with heartbeat("inference.py"):  # a line every 30 s in a log: a GAN's measures can take a minute
        return compare(args, shared()) if args.compare else use_run(args, shared())


def use_run(args: argparse.Namespace, shared) -> int:
    """Evaluate the run `resume` selects, predict with it on --input, or export it."""
    from infer.runs import select_run
    from tasks import task_of

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
    """--compare: two runs on the same samples (the task's A/B report); then the index."""
    from infer.report import select_pair
    from store.page import rewrite_index
    from tasks import task_of

    run_a, run_b, backends = select_pair(shared, args.compare)
    task = task_of(run_a, run_b)
    cfg = load_config(args.config, args.overrides, configs, task.name)
    code = task.compare(cfg, run_a, run_b, backends, args.input)
    rewrite_index()  # its reports column links the new report
    return code


def parse_arguments(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = make_parser("inference.py", "Evaluate a trained run, predict on images, or compare two runs (A/B).", configs)
    parser.add_argument("--input", metavar="PATH", help="an image file or a folder of images to predict on "
                        "(with --compare: a labelled folder of class sub-folders)")
    parser.add_argument("--compare", nargs="+", metavar="RUN", help="RUN_A [RUN_B]: A/B report; RUN_B defaults to the run resume "
                        "selects; RUN@onnx compares the run's ONNX export (served by onnxruntime), e.g. --compare ID@onnx ID")
    parser.add_argument("--export", nargs="+", metavar="FORMAT", help="onnx and/or pt2: export the run resume selects to "
                        "experiments/<id>/export/ (model.onnx, model.pt2, preprocess.json, parity.json, export.json), "
                        "checking parity with the eager model")
    parser.add_argument("--report", action="store_true", help="write experiments/index.html: every run on one page, no server needed")
    for feature in features():
        if feature.infer_options is not None:
            feature.infer_options(parser)
    args = parse_args(parser, argv)
    if args.compare:  # --compare A [B] also swallows the KEY=VALUE words after it
        args.overrides += [w for w in args.compare if "=" in w]
        args.compare = [w for w in args.compare if "=" not in w]
        if not args.compare:
            raise UsageError("--compare needs a run id: --compare RUN_A [RUN_B]")
    if args.export:  # so does --export
        args.overrides += [w for w in args.export if "=" in w]
        args.export = [w for w in args.export if "=" not in w]
        formats = ("onnx", "pt2", *(f for feature in features() for f in feature.export_formats))
        wrong = [w for w in args.export if w not in formats] or ([] if args.export else ["no format"])
        if wrong or args.compare or args.input:
            raise UsageError(f"--export takes {', '.join(formats)}, and no --compare or --input (got {' '.join(wrong) or 'those'}); "
                             "e.g. --export onnx resume=<id>")
    return args


if __name__ == "__main__":
    run_main(main)
