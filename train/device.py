"""Where training runs and how reproducibly: the device, the mixed-precision dtype, the seeds and
deterministic kernels, and the environment that run.json records."""
import dataclasses
import importlib.metadata
import os
import platform
import random

import numpy as np
import torch

from utils import dist
from utils.config import Config
from utils.errors import UsageError

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str, key: str = "device") -> torch.device:
    """auto picks cuda, then mps, then cpu. Asking for what is not there is exit 2."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= count:
            raise UsageError(f"{key}: {name} requested but this machine has {count} CUDA device(s); "
                             f"set {key}: cpu (or auto)")
    if name == "mps" and not _mps_available():
        raise UsageError(f"{key}: mps requested but MPS is not available here; set {key}: cpu (or auto)")
    return torch.device(name)


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes in bf16 natively: CUDA GPUs that support it, CPUs with
    AVX512-BF16 or AMX. Elsewhere bf16 autocast is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def check_amp(amp: str, device: torch.device) -> None:
    if amp == "fp16" and device.type != "cuda":
        raise UsageError(f"amp: fp16 needs a CUDA device, training runs on {device}; use amp: bf16 or none")


def set_determinism(seed: int, deterministic: bool, compile: bool, device: torch.device) -> None:
    """Seed every RNG; with `deterministic` also pick deterministic kernels only."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too
    if not deterministic:
        torch.backends.cudnn.benchmark = device.type == "cuda"
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
    torch.backends.cudnn.benchmark = False
    # warn_only on CUDA: an op without a deterministic kernel warns (naming itself) rather than failing.
    warn_only = device.type == "cuda"
    if compile:
        torch.use_deterministic_algorithms(True, warn_only=warn_only)
    else:
        # The public call also sets torch._inductor's flag, which imports inductor, a slow start-up
        # cost; without torch.compile only the ATen flag matters.
        torch._C._set_deterministic_algorithms(True, warn_only=warn_only)


def environment(device: torch.device) -> dict:
    """What bit-identical results depend on besides the config; run.json keeps it."""
    try:
        tv = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        tv = None
    return {"threads": torch.get_num_threads(), "device": str(device), "world_size": dist.world_size(),
            "versions": {"python": platform.python_version(), "torch": torch.__version__, "torchvision": tv}}


def environment_warnings(recorded: dict, device: torch.device) -> list[str]:
    """Warnings when a continuation runs where bit-identical results are not promised."""
    now = environment(device)
    return [f"warning: {k} differs from the parent's ({recorded.get(k)} -> {now[k]}); results may not be bit-identical"
            for k in ("threads", "versions", "world_size", "device") if recorded.get(k) != now[k]]


def resolve_machine(cfg: Config, device: torch.device, model: torch.nn.Module, low_precision: bool = True) -> Config:
    """amp and channels_last with `auto` replaced by what they mean on this device for this model, as
    config.yaml records them: amp bf16 where the device runs it natively (and the task allows it:
    Task.low_precision), else none; channels_last (a bool from here on) for convolutional models
    where measured."""
    from torch import nn

    amp = ("bf16" if low_precision and native_bf16(device) else "none") if cfg.amp == "auto" else cfg.amp
    # channels_last (channels_last_3d for 3D models): measured faster on CPU for both (bench/bench.py,
    # bench/volumes.py: 0.92x the epoch time in bf16, 0.82x in fp32 for small_cnn3d); on CUDA for 2D models.
    places = {nn.Conv2d: ("cpu", "cuda"), nn.Conv3d: ("cpu",)}
    measured = any(device.type in places.get(type(m), ()) for m in model.modules())
    channels_last = measured if cfg.channels_last is None else cfg.channels_last
    return dataclasses.replace(cfg, amp=amp, channels_last=channels_last)
