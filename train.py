"""Train a model. Every run is kept in experiments/<run id>/; checkpoints/ shows the latest.

    python train.py [--config FILE] [KEY=VALUE ...]     a new run, or resume=<id> to continue one
    python train.py --list                              a table of all runs
    torchrun --nproc_per_node=N train.py ...            the same on N processes (DDP)

torch and what needs it (~2 s to import) are imported inside main, after --list and --help
have answered, so that those two are instant.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from utils.config import MACHINE_KEYS, Config, build_config, load_config, make_parser, parse_args, read_yaml, to_yaml
from utils.errors import RunFailure, UsageError, fault_point, run_main
from utils.runstore import EXPERIMENTS, RunFolder, atomic_write, find_run, format_table, list_runs, read_run

if TYPE_CHECKING:
    import torch


def resolve_parent(cfg: Config) -> tuple[Optional[dict], Config, list[str]]:
    """For resume: the parent run, the config to continue it with (the experiment from the
    parent's config.yaml, epochs and machine keys from ours) and lines that say what differs."""
    if cfg.resume is None:
        return None, cfg, []
    if cfg.init_from is not None:
        raise UsageError("init_from: cannot be combined with resume; set one of them to null")
    parent = find_run(cfg.resume, "resume", lambda r: state_path(r["id"]) is not None, "with saved state")
    if parent["status"] == "running":
        raise UsageError(f"resume: run {parent['id']} is still running; wait for it to end or stop it first")
    config_file = EXPERIMENTS / parent["id"] / "config.yaml"
    try:  # run.json keeps the config too, for a run killed before it wrote config.yaml
        parent_cfg = build_config(read_yaml(config_file) if config_file.exists() else parent["config"])
    except (UsageError, KeyError) as e:
        raise UsageError(f"resume: the config of run {parent['id']} is unusable ({e})") from None
    done = parent.get("epochs_done", 0)
    if cfg.epochs < done or (cfg.epochs == done and parent["status"] == "finished"):
        raise UsageError(f"epochs: run {parent['id']} has done {done} epochs ({parent['status']}); "
                         f"to continue it set epochs above {done}, e.g. epochs={done + 5}")
    values = dataclasses.asdict(parent_cfg)
    values.update({k: getattr(cfg, k) for k in MACHINE_KEYS}, resume=parent["id"])
    child = Config(**values)
    notes = []
    applied = [f"{k}={getattr(child, k)} (parent: {getattr(parent_cfg, k)})" for k in MACHINE_KEYS
               if k != "resume" and getattr(child, k) != getattr(parent_cfg, k)]
    ignored = [f"{k}={getattr(cfg, k)} (kept the parent's {getattr(parent_cfg, k)})"
               for k in dataclasses.asdict(cfg) if k not in MACHINE_KEYS and getattr(cfg, k) != getattr(parent_cfg, k)]
    if applied:
        notes.append("applied: " + ", ".join(applied))
    if ignored:
        notes.append("ignored, the experiment comes from the parent: " + ", ".join(ignored))
    return parent, child, notes


def state_path(run_id: str) -> Optional[Path]:
    """The state a run would continue from: its state.pt, or, for a continuation killed before
    its first save, the state its parent left (and so on up the lineage); None: from step 0."""
    for _ in range(10_000):  # a lineage is finite; the bound guards against a hand-edited loop
        path = EXPERIMENTS / run_id / "state.pt"
        if path.exists():
            return path
        parent = (read_run(EXPERIMENTS / run_id) or {}).get("parent")
        if not parent:
            return None
        run_id = parent["id"]
    return None


def load_state(path: Optional[Path]) -> Optional[dict]:
    """A state.pt loaded safely (weights_only=True); None for None."""
    if path is None:
        return None
    import torch
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged or unsafe file has one fix
        raise RunFailure(f"{path} cannot be loaded safely ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                         "it is damaged or not a state file; continue from another run") from None


def version_notes(parent: dict, device: torch.device) -> list[str]:
    """Warnings when the continuation runs where bit-identical results are not promised."""
    now = current_environment(device)
    return [f"warning: {k} differs from the parent's ({parent.get(k)} -> {now[k]}); results may not be bit-identical"
            for k in ("threads", "versions", "world_size", "device") if parent.get(k) != now[k]]


def current_environment(device: torch.device) -> dict:
    import importlib.metadata as md

    import torch

    from utils import dist
    try:
        tv = md.version("torchvision")
    except md.PackageNotFoundError:
        tv = None
    return {"threads": torch.get_num_threads(), "device": str(device), "world_size": dist.world_size(),
            "versions": {"python": platform.python_version(), "torch": torch.__version__, "torchvision": tv}}


def main(argv: Optional[list[str]] = None) -> int:
    parser = make_parser("train.py", "Train a model; every run is kept in experiments/<run id>/.")
    args = parse_args(parser, argv)
    if args.list:
        print(format_table(list_runs()))
        return 0
    cfg = load_config(args.config, args.overrides)
    import torch

    from train import Trainer
    from train.setup import build_model, build_optimizer, build_scheduler, check_amp, load_weights, resolve_device, set_determinism
    from utils import dist
    from utils.dataloader import EpochBatchSampler, EvalBatchSampler, build_data, make_loader

    # Everything that can be refused is checked before anything is written.
    parent, cfg, notes = resolve_parent(cfg)
    init = find_run(cfg.init_from, "init_from", lambda r: r["status"] == "finished", "finished") if cfg.init_from else None
    if init is not None and init["status"] != "finished":
        raise UsageError(f"init_from: run {init['id']} has no final weights (status {init['status']}); choose a finished run")
    device = resolve_device(cfg.device)
    check_amp(cfg.amp, device)
    device = dist.setup(device)
    per_process = check_machine(cfg, dist.world_size())
    set_determinism(cfg, device)
    data = build_data(cfg)
    if len(data.train) < cfg.batch_size:
        raise UsageError(f"batch_size: {cfg.batch_size} is larger than the {len(data.train)} training samples; lower it")
    model = build_model(cfg, data.info)
    if init is not None:
        load_weights(model, EXPERIMENTS / init["id"] / "model.safetensors", init["weights"]["sha256"], "init_from")
    if cfg.channels_last:
        model.to(device, memory_format=torch.channels_last)
    else:
        model.to(device)

    sampler = EpochBatchSampler(len(data.train), cfg.batch_size, cfg.seed, dist.rank(), dist.world_size(), cfg.grad_accum_steps)
    if cfg.augment:
        data.train.enable_augment(cfg.seed, data.info)
    pin = device.type == "cuda"
    train_loader = make_loader(data.train, sampler, cfg.num_workers, pin)
    val_loader = make_loader(data.val, EvalBatchSampler(len(data.val), per_process, dist.rank(), dist.world_size()),
                             cfg.num_workers, pin)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, sampler.steps_per_epoch())
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    start = restore(load_state(state_path(parent["id"])) if parent else None, model, optimizer, scheduler, scaler, notes)
    if parent is not None:
        notes += version_notes(parent, device)

    net = model  # what the loop calls; `model` stays unwrapped for saving
    if dist.enabled():
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)

    run = RunFolder.create(to_yaml(cfg), run_info(cfg, parent, init, start, data, model, device)) if dist.is_main() else None
    fault_point("started")
    tb = None
    if run is not None and cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter
        tb = SummaryWriter(log_dir=str(run.folder / "tb"))
    trainer = Trainer(cfg, model, net, optimizer, scheduler, scaler, train_loader, val_loader, device, run, start, tb)
    if run is not None:
        what = f"continuing run {parent['id']} from epoch {start['epoch'] + 1}, step {start['step']}" if parent else "new run"
        run.log(f"run {run.id}: {what}; {cfg.base_model} on {cfg.dataset} ({len(data.train)} train / "
                f"{len(data.val)} val), {device} x{dist.world_size()}, {cfg.epochs} epochs")
        for line in notes:
            run.log(line)
    try:
        final = trainer.fit()
        if run is not None:
            finish(run, model, cfg, data, final, trainer.history)
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
        if tb is not None:
            tb.close()
        dist.teardown()
    return 0


def check_machine(cfg: Config, world: int) -> int:
    """What depends on this launch rather than on the config; returns the per-process batch."""
    if cfg.batch_size % (world * cfg.grad_accum_steps):
        raise UsageError(f"batch_size: {cfg.batch_size} is not divisible by {world} processes x "
                         f"grad_accum_steps {cfg.grad_accum_steps}; choose a multiple of {world * cfg.grad_accum_steps}")
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise UsageError("tensorboard: the tensorboard package is not installed; pip install tensorboard, or set tensorboard: false")
    return cfg.batch_size // (world * cfg.grad_accum_steps)


def restore(state: Optional[dict], model, optimizer, scheduler, scaler, notes: list[str]) -> dict:
    """Load a state.pt into the objects; returns where the run starts (step 0 without one)."""
    import torch

    from train.setup import set_rng_state
    from utils import dist

    start = {"epoch": 0, "step": 0, "global_step": 0, "history": [],
             "sums": {"loss_sum": torch.zeros(()), "correct": torch.zeros((), dtype=torch.int64), "count": 0, "seconds": 0.0}}
    if state is None:
        return start
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])  # moves the state beside the parameters
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    rngs = state["rng"]  # one per process of the run that saved it
    if len(rngs) != dist.world_size():
        notes.append(f"warning: the parent ran on {len(rngs)} process(es), this run on {dist.world_size()}; "
                     "exact continuation needs the same number")
    set_rng_state(rngs[dist.rank() % len(rngs)])
    return {k: state[k] for k in start}


def run_info(cfg: Config, parent: Optional[dict], init: Optional[dict], start: dict, data, model, device) -> dict:
    """What run.json records at the start of a run."""
    from train.setup import model_source_hash
    from utils.dataloader import data_fields

    return {"config": dataclasses.asdict(cfg),
            "parent": {"id": parent["id"], "epoch": start["epoch"], "step": start["step"]} if parent else None,
            "init_from": init["id"] if init else None, "model": cfg.base_model, "epochs": cfg.epochs,
            "epochs_done": start["epoch"], "steps_done": start["global_step"],
            "class_names": data.info.class_names, "data": data_fields(data.info) | {"dataset": cfg.dataset},
            "val_hash": data.val_hash, "train_size": len(data.train), "val_size": len(data.val),
            "params": sum(p.numel() for p in model.parameters()),
            "model_source_sha256": model_source_hash(cfg.base_model), **current_environment(device)}


def finish(run: RunFolder, model: torch.nn.Module, cfg: Config, data, final: dict, history: list[dict]) -> None:
    """Write the weights (self-describing: config and data info in the metadata) and the
    curves, then mark the run finished."""
    from safetensors.torch import save_file

    from utils.plots import plot_curves

    weights = run.folder / "model.safetensors"
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    # Self-describing: what rebuilds the model, and nothing run-specific, so the same experiment
    # gives the same file (and sha256) whatever its run id. One key: safetensors writes the
    # metadata map in hash order, which would make the bytes differ between runs.
    meta = {"template": json.dumps({"base_model": cfg.base_model, "dropout": cfg.dropout,
                                    "data": dataclasses.asdict(data.info)}, sort_keys=True)}
    fault_point("weights")
    atomic_write(weights, lambda tmp: save_file(tensors, tmp, metadata=meta))
    plot_curves(history, run.folder / "curves.png", title=f"run {run.id} ({cfg.base_model})")
    run.log(f"finished run {run.id}: val_acc {final['val_acc']:.4f}; weights in experiments/{run.id}/model.safetensors")
    fault_point("final")
    run.finish(weights, metrics={k: final[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")})


if __name__ == "__main__":
    run_main(main)
