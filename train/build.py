"""What main builds from the config for the Trainer, the same for every task: optimizers,
learning-rate schedules, the scaler, the EMA, weights, and the model source hash."""
import copy
import hashlib
import inspect
import itertools
import math
import sys
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load
from torch import nn

from model import model_dict
from utils.config import Config
from utils.errors import RunFailure, UsageError


def model_source_hash(*names: str) -> str:
    """sha256 of the source of the module that defines the model class (of each, in order, for several)."""
    h = hashlib.sha256()
    for name in names:
        h.update(inspect.getsource(sys.modules[model_dict[name].__module__]).encode())
    return h.hexdigest()


# batch_size: auto. 64 suits the digits and the named sets; a small training split (medical volumes are
# tens to hundreds) would give only a step or two an epoch at 64, too few to train or to learn
# BatchNorm statistics from, so the batch is halved until an epoch has AUTO_MIN_STEPS steps
# (measured in docs/data.md, "Small data sets").
AUTO_BATCH, AUTO_MIN_BATCH, AUTO_MIN_STEPS = 64, 4, 20


def auto_batch_size(train_size: int) -> int:
    """What `batch_size: auto` means for a training split of `train_size` samples: AUTO_BATCH, halved
    (not below AUTO_MIN_BATCH) until the split gives at least AUTO_MIN_STEPS optimizer steps an epoch."""
    batch = AUTO_BATCH
    while batch > AUTO_MIN_BATCH and train_size // batch < AUTO_MIN_STEPS:
        batch //= 2
    return min(batch, max(1, train_size))


def build_optimizer(cfg: Config, model: nn.Module, lr: Optional[float] = None,
                    betas: tuple = (0.9, 0.999)) -> torch.optim.Optimizer:
    """sgd, adam or adamw over `model`'s parameters at `lr` (default cfg.lr); no weight decay on
    biases and normalisation weights."""
    lr = cfg.lr if lr is None else lr
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas)
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """An lr factor per optimizer step, for a run of cfg.epochs epochs in all: a linear warmup over
    warmup_epochs, then the schedule over the remaining steps. A LambdaLR keeps only its step count
    in state.pt, so a continuation with more epochs rebuilds the schedule for the new total while
    keeping its place in it."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = min(total - 1, round(cfg.warmup_epochs * steps_per_epoch))

    def schedule(step: int) -> float:
        if cfg.scheduler == "cosine":
            progress = min(step - warm, total - warm) / max(1, total - warm)
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if cfg.scheduler == "step":
            return cfg.gamma ** (step // (cfg.step_size * steps_per_epoch))
        return 1.0

    def factor(step: int) -> float:
        return (step + 1) / warm if step < warm else schedule(step)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_scaler(cfg: Config, device: torch.device) -> torch.amp.GradScaler:
    """The loss scaler: on for fp16 only (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")


def build_ema(cfg: Config, model: nn.Module) -> Optional[nn.Module]:
    """A copy of the model that the Trainer moves towards it after the steps of the phases that
    move it (an exponential moving average of weights and BatchNorm statistics); None when
    ema_decay is 0."""
    if not cfg.ema_decay:
        return None
    return copy.deepcopy(model).eval().requires_grad_(False)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, for the parameters and floating-point buffers;
    integer buffers (BatchNorm's batch counter) are copied."""
    pairs = list(zip(itertools.chain(ema.parameters(), ema.buffers()), itertools.chain(model.parameters(), model.buffers())))
    floats = [(e, m) for e, m in pairs if e.is_floating_point()]
    torch._foreach_lerp_([e for e, _ in floats], [m for _, m in floats], 1.0 - decay)
    for e, m in pairs:
        if not e.is_floating_point():
            e.copy_(m)


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
    data = weights.read_bytes()  # read once: the bytes checked are the bytes loaded, even if the file is replaced meanwhile
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise RunFailure(f"{weights} does not match run.json (sha256 {actual[:12]}... != {sha256[:12]}...); "
                         "the file was changed or damaged; restore it from a backup or retrain the run")
    try:
        state = load(data)
    except Exception as e:  # noqa: BLE001 - a damaged file has one fix
        raise RunFailure(f"{weights} cannot be loaded ({e}); retrain or restore it") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        error = UsageError if key else RunFailure
        raise error(f"{key or 'weights'}: {weights} does not fit the model "
                    f"({str(e).splitlines()[0]}); use the same models and data") from None
