"""The four networks of the 3D alpha-WGAN-GP (Kwon, Han and Kim, MICCAI 2019; its code is
cyclomon/3dbraingen), sized from the volume: a side S (a power of two, 8 to 256) and a width w.

- critic D and encoder E: Conv3d k4 s2 stages of w, 2w, 4w, ... down to 4^3, then a k4 conv to
  one score (D) or to the code (E). At S = 64 and w = 64 this is the paper's 64-128-256-512.
- generator G: the code through a ConvTranspose3d k4 to 4^3 at the widest stage, then upsample x2
  and Conv3d k3 stages (halving the width) up to S, ending in tanh.
- code critic CD: an MLP of width `hidden` on codes (the paper: 4096).

`norm` is the critics' normalisation (batch, layer or none). The gradient penalty is taken per
sample, which batch statistics couple, so the WGAN-GP paper advises against batch; layer is
GroupNorm(1, C), the normalisation over each sample's whole feature map.
"""
import math

import torch
from torch import nn

NORMS = ("none", "layer", "batch")


def stages(size: int) -> int:
    """Stride-2 stages between the volume and 4^3; a side that is not a power of two of at least 8 is a ValueError."""
    if size < 8 or size > 256 or 2 ** round(math.log2(size)) != size:
        raise ValueError(f"the alpha-WGAN-GP's networks take a cubic volume_size that is a power of two from 8 to 256, got {size}")
    return round(math.log2(size)) - 2


def cubic(image_size) -> int:
    size = tuple(image_size) if isinstance(image_size, (tuple, list)) else (image_size,) * 3
    if len(set(size)) != 1:
        raise ValueError(f"the alpha-WGAN-GP's networks take a cubic volume_size, got {list(size)}")
    return size[0]


def norm3d(kind: str, channels: int) -> nn.Module:
    return {"batch": lambda: nn.BatchNorm3d(channels), "layer": lambda: nn.GroupNorm(1, channels),
            "none": nn.Identity}[kind]()


def down_stack(in_channels: int, size: int, width: int, norm: str) -> tuple[nn.Sequential, int]:
    """The critic's and the encoder's Conv3d k4 s2 stages, S -> 4; no normalisation on the first (as DCGAN)."""
    layers, channels = [], in_channels
    for i in range(stages(size)):
        out = width * 2 ** i
        layers += [nn.Conv3d(channels, out, 4, 2, 1, bias=norm != "batch"), *([norm3d(norm, out)] if i else []),
                   nn.LeakyReLU(0.2, inplace=True)]
        channels = out
    return nn.Sequential(*layers), channels


class AlphaCritic(nn.Module):
    """D: (B, C, S, S, S) -> (B,) scores."""
    volumetric = True

    def __init__(self, in_channels: int, image_size, width: int = 64, norm: str = "none"):
        super().__init__()
        self.body, channels = down_stack(in_channels, cubic(image_size), width, norm)
        self.head = nn.Conv3d(channels, 1, 4, 1, 0)  # 4^3 -> 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)).flatten()


class AlphaEncoder(nn.Module):
    """E: (B, C, S, S, S) -> (B, code_dim) codes. Batch normalisation, as the paper: it is no critic."""
    volumetric = True

    def __init__(self, in_channels: int, image_size, code_dim: int = 1000, width: int = 64):
        super().__init__()
        self.body, channels = down_stack(in_channels, cubic(image_size), width, "batch")
        self.head = nn.Conv3d(channels, code_dim, 4, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)).flatten(1)


class AlphaGenerator(nn.Module):
    """G: (B, code_dim) -> (B, C, S, S, S) in [-1, 1]."""
    volumetric = True

    def __init__(self, code_dim: int, out_channels: int, image_size, width: int = 64):
        super().__init__()
        n = stages(cubic(image_size))
        channels = width * 2 ** (n - 1)
        layers = [nn.ConvTranspose3d(code_dim, channels, 4, 1, 0, bias=False), nn.BatchNorm3d(channels), nn.ReLU(inplace=True)]
        for _ in range(n - 1):  # 4 -> 8 -> ... -> S / 2
            layers += [nn.Upsample(scale_factor=2), nn.Conv3d(channels, channels // 2, 3, 1, 1, bias=False),
                       nn.BatchNorm3d(channels // 2), nn.ReLU(inplace=True)]
            channels //= 2
        layers += [nn.Upsample(scale_factor=2), nn.Conv3d(channels, out_channels, 3, 1, 1), nn.Tanh()]  # S / 2 -> S
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z[:, :, None, None, None])


class CodeCritic(nn.Module):
    """CD: (B, code_dim) -> (B,) scores; codes from N(0, I) are its "real" ones."""

    def __init__(self, code_dim: int = 1000, hidden: int = 4096, norm: str = "none"):
        super().__init__()
        norm1d = {"batch": lambda: nn.BatchNorm1d(hidden), "layer": lambda: nn.LayerNorm(hidden), "none": nn.Identity}[norm]
        self.body = nn.Sequential(nn.Linear(code_dim, hidden), nn.LeakyReLU(0.2, inplace=True),
                                  nn.Linear(hidden, hidden), norm1d(), nn.LeakyReLU(0.2, inplace=True), nn.Linear(hidden, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z).flatten()
