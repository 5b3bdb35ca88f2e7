"""A DCGAN-style generator and critic, the WGAN-GP task's defaults.

Sized from the image: the generator starts at ceil(size / 4) px and doubles twice, then crops to
size; the critic halves until the map is at most 4 px. The critic has no batch normalisation:
the gradient penalty is taken per sample, which batch statistics would couple.
"""
import torch
from torch import nn


class DCGANGenerator(nn.Module):
    """(B, latent_dim) -> (B, out_channels, image_size, image_size) in [-1, 1]."""

    def __init__(self, latent_dim: int, out_channels: int, image_size: int, width: int = 64):
        super().__init__()
        self.image_size, self.start = image_size, -(-image_size // 4)
        self.project = nn.Sequential(nn.Linear(latent_dim, 4 * width * self.start ** 2, bias=False),
                                     nn.BatchNorm1d(4 * width * self.start ** 2), nn.ReLU(inplace=True))
        self.body = nn.Sequential(  # (B, 4w, s, s) -> (B, 2w, 2s, 2s) -> (B, w, 4s, 4s) -> (B, C, 4s, 4s)
            nn.ConvTranspose2d(4 * width, 2 * width, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, out_channels, 3, 1, 1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z).view(len(z), -1, self.start, self.start)
        x = self.body(x)  # (B, C, 4 * start, 4 * start)
        cut = (x.shape[-1] - self.image_size) // 2  # centre crop when size is not a multiple of 4
        return x[..., cut:cut + self.image_size, cut:cut + self.image_size]


class DCGANCritic(nn.Module):
    """(B, in_channels, image_size, image_size) -> (B,) scores (higher: more like the data)."""

    def __init__(self, in_channels: int, image_size: int, width: int = 64):
        super().__init__()
        layers, channels, side = [], in_channels, image_size
        while side > 4 or len(layers) < 4:  # two 4x4 stride-2 convs at least: 8 -> 4 -> 2, 28 -> 14 -> 7 -> 3, 32 -> 16 -> 8 -> 4
            out = width * 2 ** min(len(layers) // 2, 2)
            layers += [nn.Conv2d(channels, out, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            channels, side = out, side // 2
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(channels * side * side, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)
