"""torchvision's 3D ResNet-18 (the video model r3d_18, weights=None), adapted to the volumes'
channels, size and number of classes."""
import torch
from torch import nn


class ResNet18_3d(nn.Module):
    volumetric = True  # takes (B, C, X, Y, Z)

    def __init__(self, in_channels: int, num_classes: int, image_size, dropout: float = 0.0, pretrained: bool = False):
        super().__init__()
        from torchvision.models.video import r3d_18  # slow to import: only when one is built

        if pretrained:
            raise ValueError("resnet18_3d: no pretrained weights for volumes (torchvision's are for video); set pretrained: false")
        net = r3d_18(weights=None)
        if max(image_size) <= 64:
            # Small volumes: a 3x3x3 stride-1 stem, else a 32^3 input shrinks to 2^3 before the last stage.
            net.stem = nn.Sequential(nn.Conv3d(in_channels, 64, 3, stride=1, padding=1, bias=False),
                                     nn.BatchNorm3d(64), nn.ReLU(inplace=True))
        else:  # the video stem does not downsample time: use a stride-2 one on every axis
            net.stem = nn.Sequential(nn.Conv3d(in_channels, 64, 7, stride=2, padding=3, bias=False),
                                     nn.BatchNorm3d(64), nn.ReLU(inplace=True))
        net.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(net.fc.in_features, num_classes))
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, num_classes) logits
