"""The `Task` base class: what a task is to the rest of the template, with defaults, so that a
simple task writes only what is its own.

A task (tasks/<name>/) holds everything specific to what is trained: its config keys, models,
optimizers, the losses of its training phases (train/phases.py), validation metrics, inference,
A/B report and export. The Trainer owns the mechanics of a step and is handed the phases; it
never asks what the task is. docs/tasks.md's "Adding a task" lists the members.

torch is imported inside the methods: the mains read the task registry (its config classes)
for --help and --list, which answer without importing torch.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from train.phases import Batch, Phase
from utils.config import Config
from utils.errors import UsageError, a_an

if TYPE_CHECKING:
    import torch
    from torch import nn

    from data.augment import Augment
    from data.loading import Data, DataInfo
    from infer.served import ServedModel
    from train.checkpoint import TrainingParts


class Task:
    """The base of every task: defaults, so that a simple task writes only what is its own.

    A task must set `name`, `config` and `modes`, and write `model_names`, `build_model`,
    `phases` and `validate_epoch`. The rest have defaults."""
    name: str = ""                      # its key in task_dict
    config: type = Config               # its config class: Config plus its own keys (and its recipe's defaults)
    modes: dict[str, str] = {}          # its validation metrics `monitor` may name -> "max" or "min" (which is better)
    compares_with: tuple[str, ...] = ()  # other tasks whose runs its --compare takes beside its own
    low_precision: bool = True          # amp: auto may pick bf16 (False: fp32 unless asked, e.g. a loss differentiated twice)
    voxel_labels: bool = False          # it trains on cases with a label per voxel (data/cases.py), not on classed samples

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
        """What is done to the training samples (data/augment.py), a pure function of (seed, epoch, index)."""
        from data.augment import Augment, check_policy

        check_policy(cfg.augment, info.volumetric)
        return Augment(cfg.seed, cfg.augment, cfg.random_erasing, flip_axes=tuple(cfg.flip_axes))

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

    def norm_forward(self, cfg: Config, model: nn.Module, batch: Batch) -> None:
        """One forward of the evaluated (unwrapped) model that shows its BatchNorm layers what they
        see in training, for their statistics before validation (train/norm_stats.py). By default
        the model on the training micro-batch."""
        model(batch.x)

    def validate_epoch(self, cfg: Config, model: nn.Module, loader: Any, device: torch.device) -> dict:
        """The epoch's validation metrics of `model` (in eval mode) over this process's share of
        `loader`, summed over the processes: {name: float}, with every key of `modes`."""
        raise NotImplementedError

    def summary(self, row: dict) -> str:
        """The end of the run's last log line."""
        return "  ".join(f"{k} {row[k]:.4f}" for k in self.modes if k in row)

    def member_predictions(self, cfg: Config, runs: list[dict]) -> str:
        """A finished group's table (CSV: seed, index, ...) of each member's prediction of every sample it
        held out, for the group's folder and a group A/B: a `correct` column (McNemar's test) or a `score`
        column (paired by sample); '' when the task has neither."""
        return ""

    # ------------------------------------------------------------ inference (inference.py calls these)
    def evaluate_run(self, cfg: Config, run: dict, input_path: Optional[str]) -> None:
        """inference.py: measure the run (and with --input, predict on the files at input_path). By
        default its validate_epoch metrics on its validation split (infer/validation.py); no --input."""
        from infer.validation import evaluate_validation

        if input_path:
            raise UsageError(f"--input: task {self.name} does not predict on files; drop --input to measure the run")
        evaluate_validation(self, cfg, run)

    def predict_ensemble(self, cfg: Config, group: dict, runs: list[dict], input_path: str, out_dir: Path) -> int:
        """inference.py resume=<group id> --input PATH: predict with the members together, writing to out_dir."""
        raise UsageError(f"--input: task {self.name} does not predict on files; drop --input to evaluate the group's members")

    def compare(self, cfg: Config, run_a: dict, run_b: dict, backends: tuple, input_path: Optional[str]) -> int:
        """inference.py --compare: the A/B report of two runs of this task. By default both runs'
        validate_epoch metrics on B's validation split (infer/validation.py)."""
        from infer.validation import compare_validation

        if input_path or set(backends) != {"torch"}:
            raise UsageError(f"--compare: runs of task {self.name} are compared on their validation split, served by torch; "
                             "drop --input and @onnx")
        return compare_validation(self, cfg, run_a, run_b)

    def serving(self, cfg: Config, run: dict, device: torch.device) -> ServedModel:
        """inference.py --serve: the run rebuilt for a server (infer/served.py), its weights checked."""
        raise UsageError(f"--serve: run {run['id']} is {a_an(self.name)} run, and task {self.name} cannot be served")

    def export(self, cfg: Config, run: dict, formats: list[str]) -> int:
        """inference.py --export: the model for services, parity checked."""
        raise UsageError(f"--export: run {run['id']} is {a_an(self.name)} run, and task {self.name} has no export")
