"""What main builds from the config and hands to the Trainer: the model (from model_dict), its
weights, the optimizer and the learning-rate schedule."""
import hashlib
import inspect
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from model import model_dict
from utils.config import Config
from utils.dataloader import DataInfo
from utils.errors import RunFailure, UsageError
from utils.runstore import sha256_file


def build_model(cfg: Config, info: DataInfo) -> nn.Module:
    """The model_dict class named by base_model, sized for the data. A model refuses what it cannot
    build with ValueError (exit 2) and weights it cannot get with OSError (exit 1)."""
    cls = model_dict[cfg.base_model]
    try:
        return cls(in_channels=info.in_channels, num_classes=len(info.class_names),
                   image_size=info.image_size, dropout=cfg.dropout, pretrained=cfg.pretrained)
    except ValueError as e:
        raise UsageError(f"base_model: {e}") from None
    except OSError as e:
        raise RunFailure(str(e)) from None


def model_source_hash(name: str) -> str:
    """sha256 of the source of the module that defines the model class."""
    module = sys.modules[model_dict[name].__module__]
    return hashlib.sha256(inspect.getsource(module).encode()).hexdigest()


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """sgd, adam or adamw; no weight decay on biases and normalisation weights."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """An lr factor per optimizer step, for a run of cfg.epochs epochs in all. A LambdaLR keeps
    only its step count in state.pt, so a continuation with more epochs rebuilds the schedule
    for the new total while keeping its place in it."""
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.scheduler == "cosine":
        def factor(step: int) -> float:
            return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    elif cfg.scheduler == "step":
        def factor(step: int) -> float:
            return cfg.gamma ** (step // (cfg.step_size * steps_per_epoch))
    else:
        def factor(step: int) -> float:
            return 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def load_weights(model: nn.Module, weights: Path, recorded: dict, key: str = "") -> None:
    """Load model.safetensors after checking it against the size and sha256 that run.json records
    (`recorded`). A changed or damaged file is exit 1; weights that do not fit the model are exit 2
    for `key` (init_from)."""
    if not weights.exists():
        raise RunFailure(f"{weights} is missing; restore it from a backup or retrain the run")
    size, sha256 = weights.stat().st_size, recorded["sha256"]
    if size != recorded["size"]:
        raise RunFailure(f"{weights} is {size} bytes, run.json records {recorded['size']}; the file was cut short or "
                         "changed; restore it from a backup or retrain the run")
    actual = sha256_file(weights)
    if actual != sha256:
        raise RunFailure(f"{weights} does not match run.json (sha256 {actual[:12]}... != {sha256[:12]}...); "
                         "the file was changed or damaged; restore it from a backup or retrain the run")
    try:
        state = load_file(weights)
    except Exception as e:  # noqa: BLE001 - a damaged file has one fix
        raise RunFailure(f"{weights} cannot be loaded ({e}); retrain or restore it") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        error = UsageError if key else RunFailure
        raise error(f"{key or 'weights'}: {weights} does not fit the model "
                    f"({str(e).splitlines()[0]}); use the same base_model and data") from None
