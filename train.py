"""Train a model. Every run is kept in experiments/<run id>/; checkpoints/ shows the latest.

    python train.py [--config FILE] [KEY=VALUE ...]     a new run, or resume=<id> to continue one
    python train.py seeds=0,1,2 [folds=5] ...            a group: one run per seed and fold (again: continue it)
    python train.py --sweep FILE [--workers N] [KEY=VALUE ...]   an Optuna sweep whose trials are runs (again: continue it)
    python train.py --list [KEY=VALUE ...] [--sort KEY] [--json]   a table of the runs that match
    python train.py --tag ID TAG ... | --note ID TEXT    label a run afterwards
    python train.py --delete ID ... | --restore ID ... | --prune-states [--dry-run]   clean up experiments/
    torchrun --nproc_per_node=N train.py ...            the same on N processes (DDP)

torch and what needs it are imported inside main, after --list and --help have answered, so
that those two are instant.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import yaml

from tasks import configs, task_dict
from utils.config import (
    CONTINUATION_KEYS,
    LABEL_KEYS,
    Config,
    changed_keys,
    fields_of,
    load_config,
    make_parser,
    parse_args,
    read_yaml,
    saved_config,
    suggest,
    to_yaml,
    yaml_value,
)
from utils.errors import Interrupted, RunFailure, UsageError, fault_point, run_main
from utils.report import rewrite_index
from utils.runstore import BEST_FILE, EXPERIMENTS, RunFolder, find_run, find_state, link_or_copy
from utils.upgrade import RUN_FORMAT, run_format

if TYPE_CHECKING:
    import torch

    from tasks.base import Task
    from train.checkpoint import TrainingParts, TrainState
    from train.trainer import Trainer
    from utils.dataloader import Data


@dataclass
class Plan:
    """What this invocation will do, decided before anything is written."""
    cfg: Config                 # for a continuation: the parent's experiment with our epochs and machine keys
    parent: Optional[dict]      # run.json of the run continued (resume), or None
    init: Optional[dict]        # run.json of the run whose weights start a new run (init_from), or None
    notes: list[str]            # lines for train.log: applied and ignored keys, warnings
    changed: dict               # the experiment's keys that differ from the defaults, as the user set them
    task: Task                  # the task (tasks/<name>/): everything specific to what is trained
    group: Optional[dict] = None  # a member of a group: {"id", "seed", "fold"} for run.json
    sweep: Optional[dict] = None  # a trial of a sweep: {"id", "trial", "params"} for run.json
    judge: Optional[Callable] = None  # a sweep's pruner: sees each epoch's row, may end the run (Trainer.judge)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_arguments(argv)
    if args.list or args.store_command:
        return store_command(args)
    if args.sweep:
        return sweep_command(args)
    cfg = load_config(args.config, args.overrides, configs)
    from utils.groups import is_group

    return train_group(cfg) if is_group(cfg) else train_run(plan_run(cfg))


def train_run(plan: Plan) -> int:
    """One run, new or continued: everything from the machine to the final weights."""
    from tasks.base import resolve_auto

    task = plan.task  # what is specific to the task: tasks/<name>/
    device = prepare_machine(plan.cfg)
    data, plan.cfg = load_data(plan.cfg)
    data = task.prepare_data(plan.cfg, data)
    model = build_model_for(plan, task, data)
    plan.cfg = cfg = resolve_auto(plan.cfg, device, model, task)  # as config.yaml will record it
    place_model(model, cfg, device)
    train_loader, val_loader = make_loaders(cfg, task, data, device)
    parts = task.build_parts(cfg, model, train_loader.batch_sampler.steps_per_epoch(), device)
    state = restore(plan, parts, device)
    run = start_run(plan, state, data, model, device)
    trainer = make_trainer(cfg, task, parts, (train_loader, val_loader), device, run, state, task.weights_meta(cfg, data.info),
                           plan.judge)
    return fit_and_finish(trainer, task, run, cfg)


def parse_arguments(argv: Optional[list[str]]):
    parser = make_parser("train.py", "Train a model; every run is kept in experiments/<run id>/.", configs)
    store = parser.add_argument_group("looking after experiments/ (each refuses what is unsafe, changing nothing)")
    store.add_argument("--tag", nargs="+", metavar=("ID", "TAG"), help="add tags to a run (weights and config untouched)")
    store.add_argument("--note", nargs=2, metavar=("ID", "TEXT"), help="add a note to a run")
    store.add_argument("--delete", nargs="+", metavar="ID", help="move runs to experiments/.trash/")
    store.add_argument("--restore", nargs="+", metavar="ID", help="bring runs back from experiments/.trash/")
    store.add_argument("--prune-states", action="store_true", help="delete the state.pt of finished runs nothing needs")
    store.add_argument("--dry-run", action="store_true", help="with --delete, --restore, --prune-states: only say what would happen")
    sweeps = parser.add_argument_group("sweeps (README: Sweeps; pip install -r requirements-sweeps.txt)")
    sweeps.add_argument("--sweep", metavar="FILE", help="an Optuna sweep: FILE holds trials, metric, sampler, pruner, fixed and "
                        "space; KEY=VALUE fixes keys of every trial; the same command again continues it")
    sweeps.add_argument("--sweep-id", metavar="ID", help="join this sweep (several machines: with storage: postgresql://...)")
    sweeps.add_argument("--workers", type=int, default=1, metavar="N", help="with --sweep: N trials at once on this machine, "
                        "the cores split between them (default 1)")
    args = parse_args(parser, argv)
    if (args.sweep_id or args.workers != 1) and not args.sweep:
        raise UsageError("--sweep-id and --workers go with --sweep FILE")
    if args.workers < 1:
        raise UsageError(f"--workers: {args.workers} is not a number of workers; give 1 or more")
    commands = [c for c in ("tag", "note", "delete", "restore", "prune_states") if getattr(args, c)]
    if len(commands) + args.list > 1:
        raise UsageError("give one of --list, --tag, --note, --delete, --restore, --prune-states at a time")
    if args.tag is not None and len(args.tag) < 2:
        raise UsageError("--tag needs a run id and at least one tag: --tag ID TAG [TAG ...]")
    if args.overrides and commands:
        raise UsageError(f"--{commands[0].replace('_', '-')} takes no KEY=VALUE words (got {args.overrides[0]})")
    args.store_command = commands[0] if commands else None
    return args


def store_command(args) -> int:
    """--list, and the commands that label, delete, restore or prune runs; then the index is rewritten."""
    from utils import cleanup
    from utils.listing import list_command

    if args.list:
        return list_command(args.overrides, args.sort, args.json, configs)
    if args.tag:
        cleanup.add_labels(args.tag[0], tags=args.tag[1:], option="--tag")
    elif args.note:
        cleanup.add_labels(args.note[0], note=args.note[1], option="--note")
    elif args.delete:
        cleanup.delete_runs(args.delete, args.dry_run)
    elif args.restore:
        cleanup.restore_runs(args.restore, args.dry_run)
    else:
        cleanup.prune_states(args.dry_run)
    if not args.dry_run:
        rewrite_index()
    return 0


# ---------------------------------------------------------------- before anything is written
def plan_run(cfg: Config) -> Plan:
    """Resolve resume and init_from; everything that can be refused is refused here."""
    changed = changed_keys(cfg)  # before a continuation or `auto` replaces values
    parent, cfg, notes = resolve_parent(cfg)
    init = None
    if cfg.init_from is not None:
        init = find_run(cfg.init_from, "init_from", lambda r: r["status"] == "finished", "finished",
                        lambda r: None if r["status"] == "finished" else
                        f"has no final weights (status {r['status']}); choose a finished run")
    if parent is not None:
        changed = parent["changed"] if isinstance(parent.get("changed"), dict) else changed_keys(cfg)
    # a continuation of a group's member or a sweep's trial stays one (its group or sweep finds it)
    return Plan(cfg, parent, init, notes, changed, task_dict[cfg.task](), (parent or {}).get("group"), (parent or {}).get("sweep"))


def resolve_parent(cfg: Config) -> tuple[Optional[dict], Config, list[str]]:
    """For resume: the parent run, the config to continue it with (the experiment from the
    parent's config.yaml, CONTINUATION_KEYS from ours) and lines that say what differs."""
    if cfg.resume is None:
        return None, cfg, []
    from utils.groups import find_group

    if find_group(cfg.resume) is not None:
        raise UsageError(f"resume: {cfg.resume} is a group; to continue it, run the command that started it again "
                         f"(its seeds and folds), or continue one member: --list group={cfg.resume}")
    parent = find_run(cfg.resume, "resume", lambda r: find_state(EXPERIMENTS, r["id"]) is not None, "with saved state",
                      refuse_parent)
    config_file = EXPERIMENTS / parent["id"] / "config.yaml"
    try:  # run.json keeps the config too, for a run killed before it wrote config.yaml
        values = read_yaml(config_file) if config_file.exists() else parent["config"]
        parent_cfg = saved_config(values, configs, run_format(parent))
    except (UsageError, KeyError) as e:
        raise UsageError(f"resume: the config of run {parent['id']} is unusable ({e})") from None
    done = parent.get("epochs_done", 0)
    if cfg.epochs < done or (cfg.epochs == done and parent["status"] == "finished"):
        raise UsageError(f"epochs: run {parent['id']} has done {done} epochs ({parent['status']}); "
                         f"to continue it set epochs above {done}, e.g. epochs={done + 5}")
    labels = {"name": cfg.name or parent.get("name"), "tags": cfg.tags or parent.get("tags") or [], "notes": cfg.notes}
    child = dataclasses.replace(parent_cfg, **{k: getattr(cfg, k) for k in CONTINUATION_KEYS} | labels | {"resume": parent["id"]})
    return parent, child, continuation_notes(cfg, parent_cfg, child)


def refuse_parent(run: dict) -> Optional[str]:
    """Why a run cannot be continued, or None."""
    if run["status"] == "running":
        return "is still running; wait for it to end or stop it first"
    if run["status"] in ("finished", "damaged") and find_state(EXPERIMENTS, run["id"]) is None:
        return (f"has no state.pt (deleted by --prune-states), so it cannot be continued exactly; start a new run "
                f"from its weights instead: python train.py init_from={run['id']}")
    return None


def continuation_notes(ours: Config, parent_cfg: Config, child: Config) -> list[str]:
    """'applied: ...' for the keys taken from our config, 'ignored: ...' for the experiment's keys we set otherwise."""
    notes = []
    applied = [f"{k}={getattr(child, k)} (parent: {getattr(parent_cfg, k)})" for k in CONTINUATION_KEYS
               if k != "resume" and getattr(child, k) != getattr(parent_cfg, k)]
    ignored = [f"{k}={yaml_value(ours, k, getattr(ours, k))} (kept the parent's {getattr(parent_cfg, k)})"
               for k in dataclasses.asdict(ours) if k in fields_of(type(parent_cfg))
               and k not in CONTINUATION_KEYS + LABEL_KEYS and getattr(ours, k) != getattr(parent_cfg, k)
               and yaml_value(ours, k, getattr(ours, k)) != "auto"]  # `auto` asks for nothing: the parent resolved it
    if applied:
        notes.append("applied: " + ", ".join(applied))
    if ignored:
        notes.append("ignored, the experiment comes from the parent: " + ", ".join(ignored))
    return notes


def prepare_machine(cfg: Config) -> torch.device:
    """The device (joining the DDP group under torchrun), checked against the config, seeded."""
    from train.device import check_amp, resolve_device, set_determinism
    from utils import dist

    device = resolve_device(cfg.device)
    check_amp(cfg.amp, device)
    device = dist.setup(device)
    if cfg.batch_size is not None:
        check_batch_size(cfg, None)
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise UsageError("tensorboard: the tensorboard package is not installed; pip install tensorboard, or set tensorboard: false")
    set_determinism(cfg.seed, cfg.deterministic, cfg.compile, device)
    return device


# ---------------------------------------------------------------- building
def load_data(cfg: Config) -> tuple[Data, Config]:
    """The data, and the config with `batch_size: auto` resolved for its training split."""
    from train.build import auto_batch_size
    from utils.dataloader import build_data

    data = build_data(cfg)
    auto = cfg.batch_size is None
    if auto:
        cfg = dataclasses.replace(cfg, batch_size=auto_batch_size(len(data.train)))
    check_batch_size(cfg, len(data.train), auto)
    return data, cfg


def check_batch_size(cfg: Config, train_size: Optional[int], auto: bool = False) -> None:
    """batch_size against the processes and accumulation, and against the training split once known."""
    from utils import dist

    world, said = dist.world_size(), f"batch_size: {cfg.batch_size}{' (what auto chose)' if auto else ''}"
    if cfg.batch_size % (world * cfg.grad_accum_steps):
        raise UsageError(f"{said} is not divisible by {world} processes x grad_accum_steps {cfg.grad_accum_steps}; "
                         f"choose a multiple of {world * cfg.grad_accum_steps}")
    if train_size is not None and train_size < cfg.batch_size:
        raise UsageError(f"{said} is larger than the {train_size} training samples; lower it")


def build_model_for(plan: Plan, task: Task, data: Data) -> torch.nn.Module:
    """The task's model (from model_dict) for the data, from init_from's weights if set."""
    from train.build import load_weights

    model = task.build_model(plan.cfg, data.info)
    if plan.init is not None:
        load_weights(model, EXPERIMENTS / plan.init["id"] / "model.safetensors", plan.init["weights"], "init_from")
    return model


def place_model(model: torch.nn.Module, cfg: Config, device: torch.device) -> None:
    """Move the model to the device, in channels_last layout when that is on."""
    import torch

    if cfg.channels_last:  # channels_last_3d for volume models: their weights are 5-D
        volumetric = any(isinstance(m, torch.nn.Conv3d) for m in model.modules())
        model.to(device, memory_format=torch.channels_last_3d if volumetric else torch.channels_last)
    else:
        model.to(device)


def make_loaders(cfg: Config, task: Task, data: Data, device: torch.device) -> tuple:
    """The training loader (this process's share of every global batch, in the order and with the
    augmentation that (seed, epoch, index) fix) and the validation loader (this process's share)."""
    from utils import dist
    from utils.dataloader import EpochBatchSampler, EvalBatchSampler, make_loader

    world, rank = dist.world_size(), dist.rank()
    sampler = EpochBatchSampler(len(data.train), cfg.batch_size, cfg.seed, rank, world, cfg.grad_accum_steps)
    aug = task.augmentation(cfg, data.info)
    if aug.policy != "none" or aug.random_erasing or aug.mixes:
        data.train.augment = aug
    pin = device.type == "cuda"
    per_process = cfg.batch_size // (world * cfg.grad_accum_steps)
    val_sampler = EvalBatchSampler(len(data.val), per_process, rank, world)
    return make_loader(data.train, sampler, cfg.num_workers, pin), make_loader(data.val, val_sampler, cfg.num_workers, pin)


def restore(plan: Plan, parts: TrainingParts, device: torch.device) -> TrainState:
    """Where the run starts: the state the parent's lineage saved last, or step 0."""
    from train import checkpoint
    from train.device import environment_warnings

    path = find_state(EXPERIMENTS, plan.parent["id"]) if plan.parent else None
    if path is None:
        return checkpoint.TrainState()
    state, notes = checkpoint.load_state_dict(checkpoint.read_state(path), parts)
    plan.notes += notes + environment_warnings(plan.parent, device)
    return state


def make_trainer(cfg: Config, task: Task, parts: TrainingParts, loaders: tuple, device: torch.device,
                 run: Optional[RunFolder], state: TrainState, meta: dict, judge: Optional[Callable] = None) -> Trainer:
    """The Trainer, with the model wrapped for DDP and torch.compile as configured."""
    import torch

    from train.trainer import Trainer
    from utils import dist

    def wrapper(net: torch.nn.Module) -> torch.nn.Module:
        if dist.enabled():
            net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
        return torch.compile(net) if cfg.compile else net
    net = task.wrap(parts.model, wrapper)
    tb = None
    if run is not None and cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter
        try:
            tb = SummaryWriter(log_dir=str(run.folder / "tb"))
        except Exception as e:  # noqa: BLE001 - a side output never fails the run
            run.warn(f"TensorBoard could not write to {run.folder / 'tb'} ({type(e).__name__}: {e}); metrics.csv holds the figures")
    return Trainer(cfg=cfg, phases=task.phases(cfg), validate_epoch=functools.partial(task.validate_epoch, cfg),
                   mode=task.modes[cfg.monitor], parts=parts, net=net, train_loader=loaders[0], val_loader=loaders[1],
                   device=device, run=run, state=state, weights_meta=meta, tb=tb, judge=judge,
                   norm_forward=functools.partial(task.norm_forward, cfg))


# ---------------------------------------------------------------- groups: seeds and folds
def train_group(cfg: Config) -> int:
    """One ordinary run per seed and fold, in turn (utils/groups.py). The same command again continues
    the group: finished members are kept, a killed one continues from its state, missing ones start."""
    from utils import dist
    from utils.groups import GroupFolder, group_spec, member_tips, members_of, unfinished_group

    if dist.launched():
        raise UsageError("seeds, folds: a group trains its members one after another in one process; under torchrun, "
                         "train one member at a time: seed=S folds=K fold=F, without seeds")
    task = task_dict[cfg.task]()
    monitor = task.default_monitor(cfg) if cfg.monitor == "auto" else cfg.monitor
    if monitor not in task.modes:
        raise UsageError(f"monitor: '{monitor}' is not a validation metric of task {cfg.task}; use auto or one of "
                         f"{' | '.join(task.modes)}")
    found = unfinished_group(group_spec(cfg))
    group = GroupFolder.reopen(found) if found else GroupFolder.create(cfg, task.name, monitor, task.modes[monitor])
    plan = members_of(cfg)
    print(f"group {group.id}: {'continuing' if found else 'new'}, {len(plan)} members (seeds {group.info['seeds']}"
          f"{f', {cfg.folds} folds' if cfg.folds else ''}); experiments/groups/{group.id}/", flush=True)
    status = "failed"
    try:
        write_folds(group, cfg)
        for seed, fold in plan:
            train_member(group, cfg, seed, fold)
            group.refresh()
        finish_group(group, task, cfg)
        status = "finished"
    except UsageError:
        if not found and not member_tips(group.id):  # refused before its first member started: as if never asked
            status = "discard"
        raise
    except (KeyboardInterrupt, Interrupted):
        status = "interrupted"
        raise
    finally:
        group.close(status)
        if status != "discard":
            rewrite_index()
    print(f"group {group.id}: finished, {group_line(group.info)}")
    return 0


def write_folds(group, cfg: Config) -> None:
    """folds.csv, the fold of every pooled sample, read-only, and its sha256 in group.json (once)."""
    from utils.dataloader import build_data
    from utils.groups import FOLDS_FILE
    from utils.runstore import write_text

    if not cfg.folds or group.info.get("fold_sha256"):
        return
    table = build_data(dataclasses.replace(cfg, fold=0, cache_mb=0)).fold_table  # labels only: nothing is decoded
    write_text(group.folder / FOLDS_FILE, table, readonly=True)
    group.write(fold_sha256=hashlib.sha256(table.encode()).hexdigest())


def train_member(group, cfg: Config, seed: int, fold: Optional[int]) -> None:
    """Train one member unless it finished: a new run, or the continuation of its killed run."""
    from utils.groups import member_tips

    tip = member_tips(group.id).get((seed, fold))
    if tip is not None and tip.get("status") == "finished":
        return
    if tip is not None and tip.get("status") == "running":
        raise UsageError(f"group {group.id}: member run {tip['id']} is running in another process; wait for it")
    resume = tip["id"] if tip is not None and find_state(EXPERIMENTS, tip["id"]) is not None else None
    plan = plan_run(dataclasses.replace(cfg, seeds=[], seed=seed, fold=fold, resume=resume))
    plan.group = {"id": group.id, "seed": seed, "fold": fold}
    train_run(plan)


def finish_group(group, task: Task, cfg: Config) -> None:
    """With every member finished: their predictions of the samples each held out, and the curves."""
    from utils.groups import PREDICTION_FILES, member_tips, members_of
    from utils.plots import plot_group_curves
    from utils.runstore import read_metrics, write_text

    tips = member_tips(group.id)
    runs = [tips[m] for m in members_of(cfg)]
    table = task.member_predictions(cfg, runs)
    if table:
        write_text(group.folder / PREDICTION_FILES[0 if cfg.folds else 1], table)
    curves = {f"seed {r['group']['seed']}" + (f" fold {r['group']['fold']}" if cfg.folds else ""): read_metrics(EXPERIMENTS / r["id"])
              for r in runs}
    plot_group_curves(curves, group.folder / "curves.png", title=f"group {group.id}: {len(runs)} members")
    group.refresh()


def group_line(info: dict) -> str:
    """The monitor's mean and 95% interval over the finished members, in one line."""
    agg = (info.get("aggregate") or {}).get(info["monitor"])
    if not agg:
        return f"{info.get('members_done', 0)} of {len(info['plan'])} members done"
    ci = agg["ci95"]
    interval = f" (95% interval {ci[0]:.4f} to {ci[1]:.4f}, sd {agg['std']:.4f})" if ci else ""
    return f"{info['monitor']} {agg['mean']:.4f}{interval} over {agg['n']} members; experiments/groups/{info['id']}/group.json"


# ---------------------------------------------------------------- sweeps
def sweep_command(args) -> int:
    """--sweep FILE: an Optuna study (utils/sweeps.py) whose every trial is an ordinary run; --workers N
    run N trials at once. The same command again continues an unfinished sweep and its lost trials."""
    from utils.groups import group_spec, is_group
    from utils.sweepfile import read_sweep_file
    from utils.sweeps import open_sweep, require_optuna

    require_optuna()
    from utils import dist

    if dist.launched():
        raise UsageError("--sweep: a sweep runs its trials as single-process runs; start it without torchrun (--workers N for "
                         "several at once)")
    base = load_config(args.config, args.overrides, configs)
    file = read_sweep_file(args.sweep, type(base))
    require_optuna(file.storage)
    base = load_config(args.config, [f"{k}={yaml_text(v)}" for k, v in file.fixed.items()] + args.overrides, configs)
    task = task_dict[base.task]()
    metric = file.metric or (task.default_monitor(base) if base.monitor == "auto" else base.monitor)
    if metric not in task.modes:
        raise UsageError(f"{args.sweep}: metric '{metric}' is not reported by task {task.name}{suggest(metric, list(task.modes))}; "
                         f"use one of {' | '.join(task.modes)}")
    if is_group(base):
        raise UsageError("seeds, folds: a sweep's trials are single runs; drop seeds and folds (compare the best trials as groups after)")
    if base.resume is not None:
        raise UsageError("resume: a sweep starts its own trials; drop resume (run the same --sweep command again to continue it)")
    if base.init_from is not None:
        plan_run(base)  # init_from must name a finished run: refused here, before the sweep exists
    direction = file.direction or ("maximize" if task.modes[metric] == "max" else "minimize")
    sweep, new = open_sweep(file, args.sweep_id, group_spec(base), metric, direction)
    child = os.environ.get("TEMPLATE_SWEEP_WORKER") == "1"
    if not child:
        print(f"sweep {sweep.id}: {'new' if new else 'continuing'}, {file.trials} trials, {file.sampler} sampler, pruner "
              f"{file.pruner}, {metric} ({direction}), storage {sweep.info['storage']}, {args.workers} worker(s); "
              f"experiments/sweeps/{sweep.id}/", flush=True)
    code = spawn_workers(args, sweep.id) if args.workers > 1 else sweep_worker(sweep, base)
    if not child:
        print(sweep_line(sweep))
    trials = sweep.study.get_trials(deepcopy=False)
    if trials and all(t.state.name == "FAIL" for t in trials):
        raise RunFailure(f"sweep {sweep.id}: every trial failed; trial {trials[0].number}: {trials[0].user_attrs.get('error')}")
    return code


def yaml_text(value) -> str:
    """A value of the sweep file's `fixed` as KEY=VALUE text."""
    return value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")


def spawn_workers(args, sweep_id: str) -> int:
    """N worker processes on this machine, the cores split between them; each takes the next trial as
    soon as its last one ends. Returns 0, or 1 when a worker failed."""
    import signal
    import subprocess
    import sys

    threads = max(1, (os.cpu_count() or 1) // args.workers)
    env = {**os.environ, "TEMPLATE_SWEEP_WORKER": "1", "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, __file__, "--sweep", args.sweep, "--sweep-id", sweep_id, *(["--config", args.config] if args.config
                                                                                          else []), *args.overrides]
    procs = [subprocess.Popen(command, env=env) for _ in range(args.workers)]
    received = []

    def forward(signum: int, _frame) -> None:  # SIGTERM to the workers (Ctrl-C reaches them from the terminal)
        received.append(signum)
        if signum == signal.SIGTERM:
            for p in procs:
                p.send_signal(signum)
    handlers = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    codes = [p.wait() for p in procs]
    for s, h in handlers.items():
        signal.signal(s, h)
    if received:
        raise Interrupted(143 if signal.SIGTERM in received else 130)
    bad = [c for c in codes if c]
    if bad:
        print(f"sweep {sweep_id}: {len(bad)} of {len(codes)} workers failed (exit {bad[0]}); run the same command again to "
              "continue their trials")
    return 1 if bad else 0


def sweep_worker(sweep, base: Config) -> int:
    """Take trials until the study has its `trials`: a lost trial of this machine first, else a new one."""
    from utils.sweeps import finish_trial, mark_finished, next_trial

    while (ticket := next_trial(sweep)) is not None:
        state, value, run_id = run_trial(sweep, base, ticket)
        finish_trial(sweep, ticket, state, value, run_id)
    mark_finished(sweep)
    return 0


def run_trial(sweep, base: Config, ticket) -> tuple[str, Optional[float], Optional[str]]:
    """Train trial `ticket` as a run (continuing its killed run from state.pt): (state, value, run id).
    A trial whose values make an invalid config, or whose loss becomes NaN, fails; the sweep goes on."""
    from utils.sweepfile import trial_config
    from utils.sweeps import trial_runs

    runs = trial_runs(sweep.id, ticket.number)
    tip = runs[-1] if runs else None
    if tip is None or tip.get("status") != "finished":
        resume = tip["id"] if tip is not None and find_state(EXPERIMENTS, tip["id"]) is not None else None
        try:
            plan = plan_run(dataclasses.replace(trial_config(base, ticket.params), resume=resume))
            plan.sweep = {"id": sweep.id, "trial": ticket.number, "params": ticket.params}
            plan.judge = pruning_judge(sweep, ticket, plan.cfg.epochs)
            train_run(plan)
        except (UsageError, RunFailure) as e:
            print(f"sweep {sweep.id}: trial {ticket.number} failed: {e}", flush=True)
            ticket.trial.set_user_attr("error", str(e)[:500])
            runs = trial_runs(sweep.id, ticket.number)
            return "fail", None, runs[-1]["id"] if runs else None
        tip = trial_runs(sweep.id, ticket.number)[-1]
    value = (tip.get("metrics") or {}).get(sweep.metric)
    return ("pruned" if tip.get("pruned") else "complete"), value, tip["id"]


def pruning_judge(sweep, ticket, epochs: int) -> Callable[[dict], Optional[str]]:
    """Reports each epoch's metric to the study; a reason to stop when the sweep's pruner says so
    (never after the last epoch: a trial that trained to the end is complete)."""
    def judge(row: dict) -> Optional[str]:
        if sweep.metric not in row:
            return None
        ticket.trial.report(row[sweep.metric], row["epoch"])
        if row["epoch"] < epochs and ticket.trial.should_prune():
            return f"the sweep's {sweep.file.pruner} pruner ({sweep.metric} {row[sweep.metric]:.4f} at epoch {row['epoch']})"
        return None
    return judge


def sweep_line(sweep) -> str:
    """The last line: how many trials ended how, and the best."""
    from collections import Counter

    trials = sweep.study.get_trials(deepcopy=False)
    counts = Counter(t.state.name.lower() for t in trials)
    done = ", ".join(f"{n} {state}" for state, n in counts.items())
    best = [t for t in trials if t.state.name == "COMPLETE"]
    if not best:
        return f"sweep {sweep.id}: {len(trials)} of {sweep.file.trials} trials ({done}); no trial completed yet"
    top = sweep.study.best_trial
    return (f"sweep {sweep.id}: {len(trials)} of {sweep.file.trials} trials ({done}); best trial {top.number}, run "
            f"{top.user_attrs.get('run')}, {sweep.metric} {top.value:.4f}; report: python inference.py --sweep {sweep.id}")


# ---------------------------------------------------------------- the run folder
def start_run(plan: Plan, state: TrainState, data: Data, model: torch.nn.Module, device: torch.device) -> Optional[RunFolder]:
    """Create the run folder (rank 0 only) with config.yaml and run.json, and say what starts."""
    from utils import dist

    if not dist.is_main():
        return None
    cfg, parent = plan.cfg, plan.parent
    run = RunFolder.create(to_yaml(cfg), run_info(plan, state, data, model, device))
    fault_point("started")
    inherit_best(run, parent)
    what = f"continuing run {parent['id']} from epoch {state.epoch + 1}, step {state.step}" if parent else "new run"
    run.log(f"run {run.id}: {what}; {'+'.join(plan.task.model_names(cfg))} on {cfg.dataset} ({len(data.train)} train / "
            f"{len(data.val)} val), {device} x{dist.world_size()}, {cfg.epochs} epochs")
    for line in plan.notes:
        run.log(line)
    return run


def inherit_best(run: RunFolder, parent: Optional[dict]) -> None:
    """A continuation starts with its parent's best epoch: the weights (a hard link) and their record."""
    best = (parent or {}).get("best")
    if best and (EXPERIMENTS / parent["id"] / BEST_FILE).exists():
        link_or_copy(EXPERIMENTS / parent["id"] / BEST_FILE, run.folder / BEST_FILE)
        run.write_info(best=best)


def run_info(plan: Plan, state: TrainState, data: Data, model: torch.nn.Module, device: torch.device) -> dict:
    """What run.json records at the start of a run."""
    from train.build import model_source_hash
    from train.device import environment
    from utils.dataloader import data_fields

    cfg = plan.cfg
    return {"format": RUN_FORMAT, "config": dataclasses.asdict(cfg),
            "parent": {"id": plan.parent["id"], "epoch": state.epoch, "step": state.step} if plan.parent else None,
            "init_from": plan.init["id"] if plan.init else None, "task": cfg.task, "modes": plan.task.modes,
            "model": "+".join(plan.task.model_names(cfg)), "epochs": cfg.epochs,
            "name": cfg.name, "tags": cfg.tags, "notes": cfg.notes, "changed": plan.changed,
            "epochs_done": state.epoch, "steps_done": state.global_step,
            "class_names": data.info.class_names,
            "data": data_fields(data.info) | {"dataset": cfg.dataset, "val_split": data.val_split}
            | ({"geometry": data.geometry} if data.geometry else {}),
            "val_hash": data.val_hash, "train_size": len(data.train), "val_size": len(data.val),
            "group": plan.group, "sweep": plan.sweep,
            "fold_sha256": hashlib.sha256(data.fold_table.encode()).hexdigest() if data.fold_table else None,
            "params": sum(p.numel() for p in model.parameters()),
            "model_source_sha256": model_source_hash(*plan.task.model_names(cfg)), **environment(device)}


def fit_and_finish(trainer: Trainer, task: Task, run: Optional[RunFolder], cfg: Config) -> int:
    """Train, then write the final weights; a failure or Ctrl-C marks the run and is re-raised."""
    import gc

    from utils import dist

    finished = False
    try:
        final = trainer.fit()
        if run is not None:
            finish(run, trainer, task.summary(final))
        finished = True
    except (Exception, KeyboardInterrupt) as e:
        if run is not None and run.info["status"] == "running":
            failed = not isinstance(e, KeyboardInterrupt)
            run.close("failed" if failed else "interrupted", **({"error": str(e)} if failed else {}))
        if isinstance(e, OSError) and not isinstance(e, BrokenPipeError) and run is not None:
            raise RunFailure(f"could not write to run {run.id} ({e.strerror}: {e.filename}); the run is marked failed and "
                             f"other runs are untouched. Free space or fix permissions, then continue it: "
                             f"python train.py resume={run.id} epochs={cfg.epochs}") from e
        raise
    finally:
        trainer.close_tensorboard()
        problem = rewrite_index(say=not finished) if run is not None else None
        if problem and finished:  # a side output: recorded with the finished run
            run.warn(problem)
        trainer.net = None  # the DDP wrappers (and their reducers) go before the process group they use
        gc.collect()
        dist.teardown(finished)
    return 0


def finish(run: RunFolder, trainer: Trainer, summary: str) -> None:
    """Write the final weights (the EMA when on) and the curves, then mark the run finished."""
    from train.checkpoint import write_weights
    from train.trainer import recorded
    from utils.plots import plot_curves

    fault_point("weights")
    weights = run.folder / "model.safetensors"
    write_weights(weights, trainer.parts.eval_model(), trainer.weights_meta)
    try:  # a side output: a picture that cannot be drawn never fails the trained run
        plot_curves(trainer.history, run.folder / "curves.png", title=f"run {run.id} ({run.info['model']})")
    except Exception as e:  # noqa: BLE001 - whatever the plotting library raises
        run.warn(f"curves.png could not be drawn ({type(e).__name__}: {e}); metrics.csv holds the figures")
    run.log(f"finished run {run.id}: {summary}; weights in experiments/{run.id}/model.safetensors")
    fault_point("final")
    run.finish(weights, metrics=recorded(trainer.history[-1]))


if __name__ == "__main__":
    run_main(main)
