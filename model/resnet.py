"""torchvision's ResNets, adapted to the data's channels, image size and number of classes."""
import os
import socket

import torch
from torch import nn


def _imagenet_state_dict(weights) -> dict:
    """torchvision's ImageNet weights from the torch hub cache, downloading them when online.

    Fails within seconds with an OSError naming where to put the file, when they cannot be had."""
    filename = os.path.basename(weights.url)
    path = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)  # offline machines fail fast instead of hanging
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # noqa: BLE001 - any download or read failure has the same fix
        raise OSError(f"pretrained weights unavailable ({type(e).__name__}); download {weights.url} "
                         f"and put it at {path}, or set pretrained: false") from e
    finally:
        socket.setdefaulttimeout(old)


class _ResNet(nn.Module):
    arch = ""

    def __init__(self, in_channels: int, num_classes: int, image_size: int,
                 dropout: float = 0.0, pretrained: bool = False):
        super().__init__()
        import torchvision  # slow to import: only when a resnet is built

        builder = getattr(torchvision.models, self.arch)
        net = builder(weights=None)
        if pretrained:
            weights = torchvision.models.get_model_weights(self.arch).IMAGENET1K_V1
            net.load_state_dict(_imagenet_state_dict(weights))
        if image_size <= 64:
            # Small images: a 3x3 stride-1 stem and no max-pool (as for CIFAR), else an 8x8
            # input would shrink to nothing before the first residual stage.
            net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            old = net.conv1.weight.data  # (64, 3, 7, 7); summed over RGB keeps pretrained filters
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            net.conv1.weight.data.copy_(old.sum(1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels)
        net.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(net.fc.in_features, num_classes))
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, num_classes) logits


class ResNet18(_ResNet):
    arch = "resnet18"


class ResNet50(_ResNet):
    arch = "resnet50"
