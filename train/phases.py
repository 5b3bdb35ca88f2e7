"""The phases of a training step: what a task declares and the Trainer runs (train/trainer.py).

A phase is a loss whose backward feeds one optimizer. The Trainer owns the mechanics around it
(autocast, accumulation, DDP's no_sync, the scaler, backward, clipping, the optimizer and
schedule steps, the EMA, zero_grad); the loss returns (loss, metrics) and reads nothing of the
Trainer's state.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import torch
    from torch import nn


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


# ---------------------------------------------------------------- a step's own randomness
def stream(seed: int, step: int, name: str) -> torch.Generator:
    """A CPU generator seeded by (seed, step, name): the randomness of one step (latent codes, the
    penalty's interpolation weights), from nothing else, so a resumed run draws the same."""
    import hashlib

    import torch

    digest = hashlib.sha256(f"{seed}:{step}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def rows_of_micro_batch(t: torch.Tensor, micro: int, index: int) -> torch.Tensor:
    """This process's rows of micro-batch `index` of a global batch drawn whole: (world x accum)
    slices, so the draws do not depend on the number of processes or on accumulation."""
    from utils import dist

    start = (index * dist.world_size() + dist.rank()) * micro
    return t[start:start + micro]
