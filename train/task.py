"""What a task is to the rest of the template: the `Task` base class, and the `Phase`s of its
training step that the Trainer runs.

A task (tasks/<name>/) holds everything specific to what is trained: its config keys, models,
optimizers, losses, validation metrics, inference, A/B report and export. The Trainer owns the
mechanics of a step (autocast, accumulation, DDP's no_sync, the scaler, backward, clipping, the
optimizer and schedule steps, the EMA, zero_grad) and never asks what the task is; a task
returns losses and reads nothing of the Trainer's. README's "Adding a task" lists the members.

torch is imported inside the methods: the mains read the task registry (its config classes)
for --help and --list, which answer without importing torch.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from utils.config import Config
from utils.errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from train.checkpoint import TrainingParts
    from utils.augment import Augment
    from utils.dataloader import Data, DataInfo


@dataclass(frozen=True)
class Batch:
    """What a phase's loss gets for one micro-batch."""
    x: Optional[torch.Tensor]   # (B, ...) inputs on the device (channels_last when on); None for a phase without data
    y: Optional[torch.Tensor]   # (B,) labels, or (B, classes) mixed label weights; None without data
    size: int                   # B, the samples of this micro-batch on this process
    index: int                  # which micro-batch of the optimizer step, 0 .. grad_accum_steps - 1
    step: int                   # the optimizer step being taken, counted over the lineage from 0: seeds a step's randomness


# (net, batch) -> (loss, metrics). net is the model as the loop calls it (DDP, torch.compile);
# loss is what backward starts from; metrics are 0-d tensors, each the mean over the micro-batch,
# named as metrics.csv names them (the Trainer averages them over the epoch's samples).
LossFn = Callable[["nn.Module", Batch], tuple["torch.Tensor", dict]]


@dataclass(frozen=True)
class Phase:
    """One part of a training step: a loss whose backward feeds one optimizer.

    In every optimizer step the Trainer runs the phases that are due, in order. Each runs its
    loss on grad_accum_steps micro-batches (the step's data, or none), then steps its optimizer."""
    optimizer: str            # the TrainingParts.optimizers entry it steps (and the schedule of that name)
    loss: LossFn
    every: int = 1            # due on the steps s with (s + 1) % every == 0: a second network stepped every few steps
    uses_data: bool = True    # False: the loss gets x = y = None and draws its inputs (random codes) itself
    moves_ema: bool = True    # the EMA follows the model after this phase's steps (its decay warms up over them)


class Task:
    """The base of every task: defaults, so that a simple task writes only what is its own.

    A task must set `name`, `config` and `modes`, and write `model_names`, `build_model`,
    `phases` and `validate_epoch`. The rest have defaults."""
    name: str = ""                      # its key in task_dict
    config: type = Config               # its config class: Config plus its own keys (and its recipe's defaults)
    modes: dict[str, str] = {}          # its validation metrics `monitor` may name -> "max" or "min" (which is better)

    # ------------------------------------------------------------ building (train.py calls these)
    def default_monitor(self, cfg: Config) -> str:
        """What `monitor: auto` means: the first of `modes` unless the task says otherwise."""
        return next(iter(self.modes))

    def resolve(self, cfg: Config) -> dict:
        """Config values that replace `auto` (and run specs) for this task, before config.yaml is written."""
        return {}

    def prepare_data(self, cfg: Config, data: Data) -> Data:
        """The data as this task trains on it (e.g. normalised otherwise)."""
        return data

    def model_names(self, cfg: Config) -> list[str]:
        """The model_dict names it trains (run.json's model, the model source hash)."""
        raise NotImplementedError

    def build_model(self, cfg: Config, info: DataInfo) -> nn.Module:
        """One nn.Module (several models: one module holding them, so weights and state are one file each)."""
        raise NotImplementedError

    def rebuild_model(self, cfg: Config, info: DataInfo) -> nn.Module:
        """The model of a trained run, before its weights are loaded from the run folder: nothing
        may be downloaded. build_model unless the task says otherwise."""
        return self.build_model(cfg, info)

    def weights_meta(self, cfg: Config, info: DataInfo) -> dict:
        """What model.safetensors says about itself: enough to rebuild the model."""
        return {"task": self.name, "models": self.model_names(cfg), "data": dataclasses.asdict(info)}

    def augmentation(self, cfg: Config, info: DataInfo) -> Augment:
        """What is done to the training samples (utils/augment.py), a pure function of (seed, epoch, index)."""
        from utils.augment import Augment

        return Augment(cfg.seed, cfg.augment, cfg.random_erasing)

    def build_parts(self, cfg: Config, model: nn.Module, steps_per_epoch: int, device: torch.device) -> TrainingParts:
        """The model, its optimizers and schedules by name, the scaler and the EMA. By default one
        optimizer (cfg.optimizer at cfg.lr) named "model"."""
        from train.build import build_ema, build_optimizer, build_scaler, build_scheduler
        from train.checkpoint import TrainingParts

        optimizer = build_optimizer(cfg, model)
        return TrainingParts(model, {"model": optimizer}, {"model": build_scheduler(cfg, optimizer, steps_per_epoch)},
                             build_scaler(cfg, device), build_ema(cfg, model))

    def wrap(self, model: nn.Module, wrapper: Callable) -> nn.Module:
        """What the loop calls: `wrapper` applies DDP and torch.compile (to each model on its own, for several)."""
        return wrapper(model)

    # ------------------------------------------------------------ training (the Trainer calls these)
    def phases(self, cfg: Config) -> list[Phase]:
        """The losses of one training step, in order."""
        raise NotImplementedError

    def validate_epoch(self, cfg: Config, model: nn.Module, loader: Any, device: torch.device) -> dict:
        """The epoch's validation metrics of `model` (in eval mode) over this process's share of
        `loader`, summed over the processes: {name: float}, with every key of `modes`."""
        raise NotImplementedError

    def summary(self, row: dict) -> str:
        """The end of the run's last log line."""
        return "  ".join(f"{k} {row[k]:.4f}" for k in self.modes if k in row)

    # ------------------------------------------------------------ inference (inference.py calls these)
    def evaluate_run(self, cfg: Config, run: dict, input_path: Optional[str]) -> None:
        """inference.py: measure the run (and with --input, predict on the files at input_path)."""
        raise UsageError(f"inference.py: task {self.name} has no inference")

    def compare(self, cfg: Config, run_a: dict, run_b: dict, backends: tuple, input_path: Optional[str]) -> int:
        """inference.py --compare: the A/B report of two runs of this task."""
        raise UsageError(f"--compare: task {self.name} has no A/B report")

    def export(self, cfg: Config, run: dict, formats: list[str]) -> int:
        """inference.py --export: the model for services, parity checked."""
        raise UsageError(f"--export: run {run['id']} is a {self.name} run, and task {self.name} has no export")


def resolve_auto(cfg: Config, device: torch.device, model: nn.Module, task: Task) -> Config:
    """The config with every `auto` replaced by what it means here, as config.yaml records it (so a
    continuation repeats the same experiment): amp bf16 where the device runs it natively, else
    none; channels_last (a bool from here on) for 2D convolutional models; the monitor and the
    rest as the task says."""
    from torch import nn

    from train.device import native_bf16

    amp = ("bf16" if native_bf16(device) else "none") if cfg.amp == "auto" else cfg.amp
    convolutional = any(isinstance(m, nn.Conv2d) for m in model.modules())
    channels_last = convolutional and device.type in ("cpu", "cuda") if cfg.channels_last is None else cfg.channels_last
    monitor = task.default_monitor(cfg) if cfg.monitor == "auto" else cfg.monitor
    if monitor not in task.modes:
        raise UsageError(f"monitor: '{monitor}' is not a validation metric of task {cfg.task}; use auto or one of "
                         f"{' | '.join(task.modes)}")
    resolved = {"amp": amp, "channels_last": channels_last, "monitor": monitor} | task.resolve(cfg)
    return dataclasses.replace(cfg, **resolved)
