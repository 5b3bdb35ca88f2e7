"""What main builds before training and hands to the Trainer: device, determinism, model,
optimizer, scheduler; and the RNG state that state.pt carries."""
import inspect
import math
import os
import random
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from model import model_dict
from utils.config import Config
from utils.dataloader import DataInfo
from utils.errors import RunFailure, UsageError
from utils.runstore import sha256_file

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str, key: str = "device") -> torch.device:
    """auto picks cuda, then mps, then cpu. Asking for what is not there is exit 2."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= count:
            raise UsageError(f"{key}: {name} requested but this machine has {count} CUDA device(s); "
                             f"set {key}: cpu (or auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError(f"{key}: mps requested but MPS is not available here; set {key}: cpu (or auto)")
    return torch.device(name)


def check_amp(amp: str, device: torch.device) -> None:
    if amp == "fp16" and device.type != "cuda":
        raise UsageError(f"amp: fp16 needs a CUDA device, training runs on {device}; use amp: bf16 or none")


def set_determinism(cfg: Config, device: torch.device) -> None:
    """Seed every RNG; with deterministic: true also pick deterministic kernels only."""
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    torch.manual_seed(cfg.seed)  # seeds every CUDA device too
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
        torch.backends.cudnn.benchmark = False
        # warn_only on CUDA: an op without a deterministic kernel warns (naming itself) rather than failing.
        warn_only = device.type == "cuda"
        if cfg.compile:
            torch.use_deterministic_algorithms(True, warn_only=warn_only)
        else:
            # The public call also sets torch._inductor's flag, and importing inductor costs ~2 s
            # of start-up; without torch.compile only the ATen flag matters.
            torch._C._set_deterministic_algorithms(True, warn_only=warn_only)
    else:
        torch.backends.cudnn.benchmark = device.type == "cuda"


def build_model(cfg: Config, info: DataInfo) -> nn.Module:
    """The model_dict class named by base_model, sized for the data."""
    cls = model_dict[cfg.base_model]
    try:
        return cls(in_channels=info.in_channels, num_classes=len(info.class_names),
                   image_size=info.image_size, dropout=cfg.dropout, pretrained=cfg.pretrained)
    except ValueError as e:
        raise UsageError(f"base_model: {e}") from None


def model_source_hash(name: str) -> str:
    """sha256 of the source of the module that defines the model class."""
    import hashlib
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


def load_weights(model: nn.Module, weights: Path, sha256: str, key: str = "") -> None:
    """Load model.safetensors after checking it against the sha256 that run.json records.
    A damaged file is exit 1; weights that do not fit the model are exit 2 for `key` (init_from)."""
    if not weights.exists():
        raise RunFailure(f"{weights} is missing; the run has no final weights (continue it with train.py)")
    actual = sha256_file(weights)
    if actual != sha256:
        raise RunFailure(f"{weights} does not match run.json (sha256 {actual[:12]}... != {sha256[:12]}...); "
                         "the file was changed or damaged; retrain or restore it")
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


def rng_state() -> dict:
    """The RNG states of python, numpy, torch CPU and every CUDA device, loadable with
    weights_only=True (numpy's key array as a tensor)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        if len(state["cuda"]) != torch.cuda.device_count():
            warnings.warn("state.pt has CUDA RNG states for another number of devices; continuation may differ", stacklevel=2)
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
