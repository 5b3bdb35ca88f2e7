"""Training a classifier: its model from model_dict, the cross-entropy phase, and the validation
metrics of an epoch (evaluate() is shared with inference)."""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from data.loading import DataInfo
from model import model_dict
from tasks.classify.config import ClassifyConfig
from train.device import AMP_DTYPES
from train.phases import Batch
from train.trainer import to_device
from utils import dist
from utils.errors import RunFailure, UsageError


def build_classifier(cfg: ClassifyConfig, info: DataInfo) -> nn.Module:
    """The model_dict class named by base_model, sized for the data. A model refuses what it cannot
    build with ValueError (exit 2) and weights it cannot get with OSError (exit 1); a 2D model for
    volumes, or a volume model for images, is exit 2."""
    volumetric = getattr(model_dict[cfg.base_model], "volumetric", False)
    if volumetric != info.volumetric:
        want = ", ".join(n for n, c in model_dict.items() if getattr(c, "volumetric", False) == info.volumetric
                         and n in ("small_cnn", "resnet18", "small_cnn3d", "resnet18_3d"))
        raise UsageError(f"base_model: {cfg.base_model} is a {'3D' if volumetric else '2D'} model and dataset {cfg.dataset} "
                         f"holds {'volumes' if info.volumetric else 'images'}; use one of {want}")
    try:
        return model_dict[cfg.base_model](in_channels=info.in_channels, num_classes=len(info.class_names),
                                          image_size=info.image_size, dropout=cfg.dropout, pretrained=cfg.pretrained)
    except ValueError as e:
        raise UsageError(f"base_model: {e}") from None
    except TypeError:
        raise UsageError(f"base_model: {cfg.base_model} is not a classifier (it is a part of another task's model); "
                         "choose a classifier such as small_cnn, or set task") from None
    except OSError as e:
        raise RunFailure(str(e)) from None


def cross_entropy(net: nn.Module, batch: Batch, label_smoothing: float) -> tuple[torch.Tensor, dict]:
    """The phase's loss: y is (B,) class indices, or (B, classes) probabilities when mixup or cutmix mixed the batch."""
    logits = net(batch.x)  # (B, classes)
    loss = F.cross_entropy(logits, batch.y, label_smoothing=label_smoothing)
    target = batch.y.argmax(1) if batch.y.ndim == 2 else batch.y
    return loss, {"train_loss": loss, "train_acc": (logits.detach().argmax(1) == target).float().mean()}


@dataclass
class Evaluation:
    """A classifier's output over a loader (this process's share)."""
    loss_sum: torch.Tensor     # 0-d, on the device: the summed cross-entropy
    count: torch.Tensor        # 0-d, on the device
    pred: torch.Tensor         # (N,) predicted class, CPU
    confidence: torch.Tensor   # (N,) its softmax probability, CPU
    target: torch.Tensor       # (N,) the label, CPU
    ids: Optional[list] = None  # the samples' ids, where the caller knows them


@torch.inference_mode()
def evaluate(model: nn.Module, loader, device: torch.device, amp_dtype: Optional[torch.dtype] = None,
             channels_last: bool = False) -> Evaluation:
    """Loss and predictions of `model` over `loader`."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    preds, confs, targets = [], [], []
    for x, y in loader:
        x, y = to_device(x, device, channels_last), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        logits = logits.float()  # (B, classes)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        conf, pred = logits.softmax(1).max(1)
        preds.append(pred)
        confs.append(conf)
        targets.append(y)
    cat = (lambda ts: torch.cat(ts).cpu()) if preds else (lambda ts: torch.zeros(0))
    return Evaluation(loss_sum, torch.tensor(sum(len(t) for t in targets), device=device), cat(preds), cat(confs), cat(targets))


def validate(cfg: ClassifyConfig, model: nn.Module, loader, device: torch.device) -> dict:
    """Validation loss and accuracy over every process's share."""
    out = evaluate(model, loader, device, AMP_DTYPES[cfg.amp], bool(cfg.channels_last))
    correct = (out.pred == out.target).sum().to(device)
    loss_sum, count, correct = (dist.all_reduce_sum(t) for t in (out.loss_sum, out.count, correct))
    return {"val_loss": float(loss_sum) / max(1, int(count)), "val_acc": int(correct) / max(1, int(count))}


def per_class_accuracy(pred: torch.Tensor, target: torch.Tensor, n: int) -> list[Optional[float]]:
    correct = torch.bincount(target[pred == target], minlength=n)
    total = torch.bincount(target, minlength=n)
    return [float(c) / float(t) if t else None for c, t in zip(correct, total)]
