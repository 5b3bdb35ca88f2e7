"""One run, new or continued: plan it (everything refusable is refused before anything is written),
build what it needs, train it with the Trainer and write its final weights. train.py calls
`train_run(plan_run(cfg, task_dict))`; a group's members and a sweep's trials are such runs too.

The phases, in order (train_run): the machine, the data, the model, the loaders, the optimizers,
the state to start from, the run folder, the Trainer, the final weights.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from store.page import rewrite_index
from store.runs import BEST_FILE, EXPERIMENTS, RunFolder, find_run, find_state, link_or_copy
from store.upgrade import RUN_FORMAT, run_format, saved_config
from utils.config import CONTINUATION_KEYS, LABEL_KEYS, Config, changed_keys, fields_of, read_yaml, to_yaml, yaml_value
from utils.errors import RunFailure, UsageError, count, fault_point
from utils.features import hooks

if TYPE_CHECKING:
    import torch

    from data.loading import Data
    from tasks.base import Task
    from train.checkpoint import TrainingParts, TrainState
    from train.trainer import Trainer


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


def train_run(plan: Plan) -> int:
    """One run, new or continued: everything from the machine to the final weights."""
    task = plan.task  # what is specific to the task: tasks/<name>/
    device = prepare_machine(plan.cfg)
    data, plan.cfg = load_data(plan.cfg, task)
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


def resolve_auto(cfg: Config, device: torch.device, model: torch.nn.Module, task: Task) -> Config:
    """The config with every `auto` replaced by what it means here, as config.yaml records it (so a
    continuation repeats the same experiment): the machine's keys (train/device.py), the monitor and
    the task's own (Task.resolve)."""
    from train.device import resolve_machine

    cfg = resolve_machine(cfg, device, model, task.low_precision)
    monitor = task.default_monitor(cfg) if cfg.monitor == "auto" else cfg.monitor
    if monitor not in task.modes:
        raise UsageError(f"monitor: '{monitor}' is not a validation metric of task {cfg.task}; use auto or one of "
                         f"{' | '.join(task.modes)}")
    return dataclasses.replace(cfg, monitor=monitor, **task.resolve(cfg))


def plan_run(cfg: Config, tasks: dict[str, type[Task]], typed: frozenset = frozenset()) -> Plan:
    """Resolve resume and init_from; everything that can be refused is refused here. `tasks` is
    tasks.task_dict (passed in: train/ sits below tasks/); `typed`, the keys given on the command line."""
    changed = changed_keys(cfg)  # before a continuation or `auto` replaces values
    parent, cfg, notes = resolve_parent(cfg, tasks, typed)
    init = None
    if cfg.init_from is not None:
        init = find_run(cfg.init_from, "init_from", lambda r: r["status"] == "finished", "finished",
                        lambda r: None if r["status"] == "finished" else
                        f"has no final weights (status {r['status']}); choose a finished run")
    if parent is not None:
        changed = parent["changed"] if isinstance(parent.get("changed"), dict) else changed_keys(cfg)
    # a continuation of a group's member or a sweep's trial stays one (its group or sweep finds it)
    return Plan(cfg, parent, init, notes, changed, tasks[cfg.task](), (parent or {}).get("group"), (parent or {}).get("sweep"))


def resolve_parent(cfg: Config, tasks: dict[str, type[Task]], typed: frozenset = frozenset()) -> tuple[Optional[dict], Config, list[str]]:
    """For resume: the parent run, the config to continue it with (the experiment from the
    parent's config.yaml, CONTINUATION_KEYS from ours) and lines that say what differs. An unfinished
    parent continues to its planned epochs (and schedule) unless epochs= is typed."""
    if cfg.resume is None:
        return None, cfg, []
    for refusal in hooks("resume_refusal"):  # resume=<group id>: a feature's own id, not a run's
        if (why := refusal(cfg.resume)) is not None:
            raise UsageError(why)
    parent = find_run(cfg.resume, "resume", lambda r: find_state(EXPERIMENTS, r["id"]) is not None, "with saved state",
                      refuse_parent)
    config_file = EXPERIMENTS / parent["id"] / "config.yaml"
    try:  # run.json keeps the config too, for a run killed before it wrote config.yaml
        values = read_yaml(config_file) if config_file.exists() else parent["config"]
        parent_cfg = saved_config(values, {n: t.config for n, t in tasks.items()}, run_format(parent))
    except (UsageError, KeyError) as e:
        raise UsageError(f"resume: the config of run {parent['id']} is unusable ({e})") from None
    done, planned, asked = parent.get("epochs_done", 0), parent_cfg.epochs, cfg.epochs
    if parent["status"] != "finished" and "epochs" not in typed:
        cfg = dataclasses.replace(cfg, epochs=planned)  # the run that was planned, with its schedule
    # Nothing left to train is refused, except for a run killed after saving its planned last epoch: its
    # continuation trains no step and writes the final weights (every killed run can be continued).
    if cfg.epochs < done or (cfg.epochs == done and (parent["status"] == "finished" or cfg.epochs != planned)):
        unfinished = "" if parent["status"] == "finished" else f" of its planned {planned}"
        raise UsageError(f"epochs: run {parent['id']} has done {count(done, 'epoch')}{unfinished} ({parent['status']}); "
                         f"to continue it set epochs above {done}, e.g. epochs={done + 5}")
    labels = {"name": cfg.name or parent.get("name"), "tags": cfg.tags or parent.get("tags") or [], "notes": cfg.notes}
    child = dataclasses.replace(parent_cfg, **{k: getattr(cfg, k) for k in CONTINUATION_KEYS} | labels | {"resume": parent["id"]})
    notes = continuation_notes(cfg, parent_cfg, child, typed)
    if asked != cfg.epochs:
        notes.insert(0, f"epochs: continuing to the planned {planned} (the config file says {asked}; epochs=N on the command line "
                        "changes it)")
    return parent, child, notes


def refuse_parent(run: dict) -> Optional[str]:
    """Why a run cannot be continued, or None."""
    if run["status"] == "running":
        return "is still running; wait for it to end or stop it first"
    if run["status"] in ("finished", "damaged") and find_state(EXPERIMENTS, run["id"]) is None:
        return (f"has no state.pt (deleted by --prune-states), so it cannot be continued exactly; start a new run "
                f"from its weights instead: python train.py init_from={run['id']}")
    return None


def continuation_notes(ours: Config, parent_cfg: Config, child: Config, typed: frozenset = frozenset()) -> list[str]:
    """'applied: ...' for the keys taken from our config, 'ignored: ...' for the experiment's keys the
    user set (typed, or changed in the config file) to something else than the parent's."""
    notes, asked = [], set(typed) | set(changed_keys(ours))
    applied = [f"{k}={getattr(child, k)} (parent: {getattr(parent_cfg, k)})" for k in CONTINUATION_KEYS
               if k != "resume" and getattr(child, k) != getattr(parent_cfg, k)]
    ignored = [f"{k}={yaml_value(ours, k, getattr(ours, k))} (kept the parent's {getattr(parent_cfg, k)})"
               for k in dataclasses.asdict(ours) if k in fields_of(type(parent_cfg))
               and k not in CONTINUATION_KEYS + LABEL_KEYS and getattr(ours, k) != getattr(parent_cfg, k) and k in asked
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


def load_data(cfg: Config, task: Task) -> tuple[Data, Config]:
    """The data as the task trains on them, and the config with `batch_size: auto` resolved for its
    training split."""
    from data.loading import build_data
    from train.build import auto_batch_size

    data = build_data(cfg)
    if data.voxel_labels != task.voxel_labels:
        what = "cases with a label per voxel (dataset.json)" if data.voxel_labels else "samples without a label per voxel"
        raise UsageError(f"dataset {cfg.dataset}: holds {what}, which task {cfg.task} does not train on; "
                         f"choose a task that does (--help lists them) or other data")
    data = task.prepare_data(cfg, data)
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
    from data.loading import EpochBatchSampler, EvalBatchSampler, make_loader
    from utils import dist

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
            f"{len(data.val)} val), {device} x{dist.world_size()}, {count(cfg.epochs, 'epoch')}")
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
    from data.loading import data_fields
    from train.build import model_source_hash
    from train.device import environment

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

