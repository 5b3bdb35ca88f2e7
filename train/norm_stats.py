"""BatchNorm statistics recomputed before every evaluation ("precise BN").

Why: BatchNorm's running averages (momentum 0.1) trail the weights. A small data set gives a few
steps an epoch, so after a few epochs the averages are still partly their initial values and
partly statistics of weights long gone: validation in eval mode then measures another model than
the one trained (docs/data.md, "Small data sets"). So before each validation the Trainer recomputes
them, for the weights it is about to evaluate, over the epoch's first `bn_stats_samples`
training samples: the same order and augmentation as training (a pure function of seed, epoch
and index), the same micro-batches (so deeper layers see inputs normalised as in training), the
BatchNorm layers in train mode and everything else (dropout) in eval mode, no gradients.

Each layer's statistics are exact over those samples: per channel, the sum and the sum of
squares of its inputs (float64), summed over every process under torchrun, so that every process
holds the same statistics (as fvcore's update_bn_stats and torch.optim.swa_utils.update_bn, but
pooled exactly instead of averaging per-batch variances).
"""
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from train.phases import Batch
from utils import dist


def batchnorms(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers (1d, 2d, 3d, Sync) that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches: Iterable[Batch], forward: Callable[[nn.Module, Batch], None]) -> int:
    """Replace the running mean and variance of every BatchNorm layer of `model` by the exact
    statistics of its inputs while `forward(model, batch)` runs over `batches`. Returns the number
    of samples seen (over every process); 0 (and nothing changed) when the model has no BatchNorm."""
    norms = batchnorms(model)
    if not norms:
        return 0
    # per layer: [sum, sum of squares] per channel, then the count of inputs per channel, on this process
    moments = {m: torch.zeros(2 * m.num_features + 1, dtype=torch.float64, device=m.running_mean.device) for m in norms}
    # the train-mode forwards move the running averages and count batches: kept, and put back below
    kept = {m: [b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked)] for m in norms}
    modes = {m: m.training for m in model.modules()}
    hooks = [m.register_forward_pre_hook(_recorder(moments[m])) for m in norms]
    samples = 0
    try:
        model.eval()
        for m in norms:
            m.train()  # normalise by the batch, as in training
        for batch in batches:
            forward(model, batch)
            samples += batch.size
    finally:
        for hook in hooks:
            hook.remove()
        for m, training in modes.items():
            m.training = training
    totals = dist.all_reduce_sum(torch.cat(list(moments.values())))  # every process's data: the same statistics everywhere
    offset = 0
    for m in norms:
        _set_statistics(m, totals[offset:offset + 2 * m.num_features + 1], kept[m])
        offset += 2 * m.num_features + 1
    return int(dist.all_reduce_sum(torch.tensor(samples, device=totals.device)))


def _recorder(moments: torch.Tensor) -> Callable:
    """A forward pre-hook that adds its BatchNorm's input to `moments` ([sums, sums of squares, count])."""
    def record(module: _BatchNorm, inputs: tuple) -> None:
        x = inputs[0].detach().float()  # (N, C, *spatial) or (N, C)
        dims = [d for d in range(x.ndim) if d != 1]
        c, n = x.shape[1], x.numel() // x.shape[1]
        # the batch's own mean and variance (one fused float32 pass), added as float64 sums
        var, mean = (t.double() for t in torch.var_mean(x, dim=dims, correction=0))
        moments[:c] += n * mean
        moments[c:2 * c] += n * (var + mean * mean)
        moments[2 * c] += n
    return record


def _set_statistics(m: _BatchNorm, moments: torch.Tensor, kept: list) -> None:
    """The layer's buffers as they were, then its mean and unbiased variance (as BatchNorm keeps
    it) from `moments`, where at least two inputs were seen."""
    for buffer, old in zip((m.running_mean, m.running_var, m.num_batches_tracked), kept):
        buffer.copy_(old)
    c, n = m.num_features, float(moments[-1])
    if n >= 2:
        mean = moments[:c] / n
        m.running_mean.copy_(mean)
        m.running_var.copy_((moments[c:2 * c] / n - mean * mean).clamp_min_(0) * (n / (n - 1)))
