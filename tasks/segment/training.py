"""Task segment's model, loss and validation."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from data.loading import DataInfo
from model import model_dict
from tasks.segment.config import SegmentConfig
from tasks.segment.metrics import dice_per_class
from tasks.segment.window import sliding_window
from train.device import AMP_DTYPES
from train.phases import Batch
from utils import dist
from utils.errors import UsageError


def build_network(cfg: SegmentConfig, info: DataInfo) -> nn.Module:
    """base_model from model_dict, for the patch (info.image_size) and the resampled spacing."""
    if cfg.base_model not in model_dict or not getattr(model_dict[cfg.base_model], "volumetric", False) \
            or "spacing" not in model_dict[cfg.base_model].__init__.__code__.co_varnames:
        raise UsageError(f"base_model: {cfg.base_model} is not a segmentation network of model_dict; use unet3d")
    return model_dict[cfg.base_model](info.in_channels, len(info.class_names), tuple(info.image_size), tuple(cfg.spacing),
                                      width=cfg.width, deep_supervision=cfg.deep_supervision)


def soft_dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """The mean over foreground classes of the batch's soft Dice (nnU-Net's, background left out)."""
    probs = logits.float().softmax(1)
    onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).float()
    dims = (0, *range(2, logits.ndim))
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    return ((2 * intersection + smooth) / (denominator + smooth).clamp(min=1e-8))[1:].mean()


def scale_weights(n: int) -> list[float]:
    """Deep supervision's weights, finest first: 1/2^k, the coarsest 0 (nnU-Net), normalised to sum to 1."""
    w = [1 / 2**k for k in range(n)]
    if n > 1:
        w[-1] = 0.0
    return [v / sum(w) for v in w]


def dice_ce(net: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict]:
    """Cross-entropy plus (1 - soft Dice), on every output of the network (deep supervision: each
    coarser output against the labels downsampled by nearest neighbour)."""
    outs = net(batch.x)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    total, first = 0.0, None
    for w, logits in zip(scale_weights(len(outs)), outs):
        target = batch.y
        if logits.shape[2:] != target.shape[1:]:
            target = F.interpolate(target[:, None].float(), size=logits.shape[2:], mode="nearest-exact")[:, 0].long()
        ce, dice = F.cross_entropy(logits.float(), target), soft_dice(logits, target)
        first = first or (ce.detach(), dice.detach())
        total = total + w * (ce + 1 - dice)  # weight 0 too: under DDP every head must be in the graph
    return total, {"train_ce": first[0], "train_dice": first[1]}


@torch.inference_mode()
def validate(cfg: SegmentConfig, model: nn.Module, loader, device: torch.device, class_names: list) -> dict:
    """Sliding-window Dice of every validation case (this process's share, summed over the processes):
    each foreground class's mean over the cases where it is present in the truth or the prediction,
    and their mean, val_dice."""
    model.eval()
    classes = len(class_names)
    sums, counts = torch.zeros(classes - 1, dtype=torch.float64), torch.zeros(classes - 1, dtype=torch.float64)
    amp = AMP_DTYPES[cfg.amp]
    for cases in loader:
        for image, label, _ in cases:
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = sliding_window(model, image.to(device), tuple(cfg.patch_size), classes, cfg.overlap, mirror=False)
            for c, d in enumerate(dice_per_class(logits.argmax(0).cpu(), label, classes)):
                if not math.isnan(d):
                    sums[c] += d
                    counts[c] += 1
    sums, counts = (dist.all_reduce_sum(t.to(device)).cpu() for t in (sums, counts))
    per_class = [float(s / n) if n else 0.0 for s, n in zip(sums, counts)]
    row = {"val_dice": sum(per_class) / len(per_class)}
    return row | {f"val_dice_{name}": v for name, v in zip(class_names[1:], per_class)}
