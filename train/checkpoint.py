"""state.pt: everything a run needs to continue exactly from a step boundary. Every read and
write of the file goes through this module.

A state.pt is one dict, saved with torch.save and loaded with torch.load(weights_only=True):
its format number, the state_dicts of the training objects (TrainingParts), the run's position
and running sums (TrainState), and the RNG states of every process. Older formats are upgraded
when read (store/upgrade.py).
"""
import dataclasses
import json
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from store.runs import STATE_FILE, atomic_write, sha256_file
from store.upgrade import STATE_FORMAT, upgrade_state
from utils import dist
from utils.errors import RunFailure


@dataclass
class TrainingParts:
    """The objects whose state_dicts state.pt holds; main builds them (through the task), the
    Trainer steps them. Optimizers and schedules are named, each schedule after its optimizer."""
    model: nn.Module                      # unwrapped (not DDP, not compiled): what is saved
    optimizers: dict                      # name -> torch.optim.Optimizer ("model" for a single one)
    schedulers: dict                      # name -> LRScheduler, stepped with the optimizer of its name
    scaler: torch.amp.GradScaler
    ema: Optional[nn.Module] = None       # the moving average of the model (ema_decay > 0)

    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and saved as final: the EMA when there is one."""
        return self.ema if self.ema is not None else self.model


@dataclass
class TrainState:
    """Where a run is in its schedule, and what the epoch in progress has summed so far."""
    epoch: int = 0                        # the epoch in progress, 0-based
    step: int = 0                         # optimizer steps done in that epoch
    global_step: int = 0                  # optimizer steps done in the whole lineage
    # The epoch's training metrics so far (this process): per metric, the sum over its samples (a
    # 0-d float tensor) and how many there were (0-d int64). On the device: added without a host sync.
    sums: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    seconds: float = 0.0                  # training time of the epoch so far
    history: list = field(default_factory=list)  # one metrics row per finished epoch, lineage included

    def to(self, device: torch.device) -> "TrainState":
        return dataclasses.replace(self, sums={k: v.to(device) for k, v in self.sums.items()},
                                   counts={k: v.to(device) for k, v in self.counts.items()})

    def add(self, metrics: dict, count: int) -> None:
        """Add a micro-batch's metrics (means over `count` samples) to the epoch's sums."""
        for name, value in metrics.items():
            if name not in self.sums:
                self.sums[name] = torch.zeros((), device=value.device)
                self.counts[name] = torch.zeros((), dtype=torch.int64, device=value.device)
            self.sums[name] += value.detach().float() * count  # no .item(): no host sync per step
            self.counts[name] += count

    def next_epoch(self) -> None:
        """Move to the start of the next epoch with empty sums (the metric names stay, in order)."""
        self.epoch, self.step = self.epoch + 1, 0
        for t in [*self.sums.values(), *self.counts.values()]:
            t.zero_()
        self.seconds = 0.0


# ---------------------------------------------------------------- saving
def state_dict(state: TrainState, parts: TrainingParts) -> dict:
    """The dict state.pt holds. Under DDP every process must call it: it gathers their RNG states."""
    return {
        "format": STATE_FORMAT,
        "model": parts.model.state_dict(),
        "optimizers": {k: o.state_dict() for k, o in parts.optimizers.items()},
        "schedulers": {k: s.state_dict() for k, s in parts.schedulers.items()},
        "scaler": parts.scaler.state_dict(),
        **({"ema": parts.ema.state_dict()} if parts.ema is not None else {}),
        "epoch": state.epoch, "step": state.step, "global_step": state.global_step,
        "sums": {"metrics": {k: v.detach().cpu() for k, v in state.sums.items()},
                 "counts": {k: v.detach().cpu() for k, v in state.counts.items()}, "seconds": state.seconds},
        "history": state.history,
        "world_size": dist.world_size(),
        "rng": dist.gather_objects(capture_rng()),  # one entry per process
    }


def write_state(folder: Path, checkpoint: dict) -> None:
    """Write `checkpoint` to folder/state.pt atomically and durably, without the zip records'
    CRC32: torch.load never checks it (pytorch#28858), and computing it is a large share of the
    save time of a big state. Only a zip tool's test notices its absence."""
    old = torch.serialization.get_crc32_options()  # torch >= 2.6 (pytorch#137735)
    torch.serialization.set_crc32_options(False)
    try:
        atomic_write(folder / STATE_FILE, lambda tmp: torch.save(checkpoint, tmp))
    finally:
        torch.serialization.set_crc32_options(old)


def write_weights(path: Path, model: nn.Module, meta: dict) -> dict:
    """model's weights as safetensors at `path` (atomically); returns their sha256 and size. `meta`
    describes how to rebuild the model; one key, since safetensors writes the metadata map in hash
    order, which would make the bytes of the same weights differ between runs."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"template": json.dumps(meta, sort_keys=True)}))
    return {"sha256": sha256_file(path), "size": path.stat().st_size}


# ---------------------------------------------------------------- loading
def read_state(path: Path) -> dict:
    """A state.pt loaded safely: weights_only=True unpickles tensors and plain containers only."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged or unsafe file has one fix
        raise RunFailure(f"{path} cannot be loaded safely ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                         "it is damaged or not a state file; continue from another run") from None


def load_state_dict(checkpoint: dict, parts: TrainingParts) -> tuple[TrainState, list[str]]:
    """Put a state.pt's contents back into the objects and the RNGs; returns where the run
    continues, and warnings for what may keep it from being exact."""
    checkpoint = upgrade_state(checkpoint)
    parts.model.load_state_dict(checkpoint["model"])
    for name, optimizer in parts.optimizers.items():
        optimizer.load_state_dict(checkpoint["optimizers"][name])  # moves the state beside the parameters
        parts.schedulers[name].load_state_dict(checkpoint["schedulers"][name])
    parts.scaler.load_state_dict(checkpoint["scaler"])
    if parts.ema is not None and "ema" in checkpoint:
        parts.ema.load_state_dict(checkpoint["ema"])
    notes = []
    rngs = checkpoint["rng"]
    if len(rngs) != dist.world_size():
        notes.append(f"warning: the parent ran on {len(rngs)} process(es), this run on {dist.world_size()}; "
                     "exact continuation needs the same number")
    restore_rng(rngs[dist.rank() % len(rngs)])
    sums = checkpoint["sums"]
    counts = {k: torch.as_tensor(v, dtype=torch.int64) for k, v in sums["counts"].items()}
    state = TrainState(epoch=checkpoint["epoch"], step=checkpoint["step"], global_step=checkpoint["global_step"],
                       sums=dict(sums["metrics"]), counts=counts, seconds=sums["seconds"], history=checkpoint["history"])
    return state, notes


# ---------------------------------------------------------------- random number generators
def capture_rng() -> dict:
    """The RNG states of python, numpy, torch CPU and every CUDA device, loadable with
    weights_only=True (numpy's key array as a tensor)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        if len(state["cuda"]) != torch.cuda.device_count():
            warnings.warn("state.pt has CUDA RNG states for another number of devices; continuation may differ", stacklevel=2)
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
