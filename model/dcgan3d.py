"""The DCGAN generator and critic of model/dcgan.py in 3D, the WGAN-GP task's defaults on volumes.

Sized from the volume (X, Y, Z): the generator starts at ceil(side / 4) voxels on each axis and
doubles twice, then crops to the volume; the critic halves every axis until the largest is at
most 4 voxels. Width 32 (not 2D's 64): a 3D map has a side's more voxels. No batch normalisation
in the critic: the gradient penalty is taken per sample, which batch statistics would couple.
"""
import torch
from torch import nn


class DCGAN3dGenerator(nn.Module):
    """(B, latent_dim) -> (B, out_channels, X, Y, Z) in [-1, 1]."""
    volumetric = True

    def __init__(self, latent_dim: int, out_channels: int, image_size: tuple, width: int = 32):
        super().__init__()
        self.size = tuple(image_size)
        self.start = tuple(-(-s // 4) for s in self.size)
        cells = 4 * width * self.start[0] * self.start[1] * self.start[2]
        self.project = nn.Sequential(nn.Linear(latent_dim, cells, bias=False), nn.BatchNorm1d(cells), nn.ReLU(inplace=True))
        self.body = nn.Sequential(  # (B, 4w, s) -> (B, 2w, 2s) -> (B, w, 4s) -> (B, C, 4s), s per axis
            nn.ConvTranspose3d(4 * width, 2 * width, 4, 2, 1, bias=False), nn.BatchNorm3d(2 * width), nn.ReLU(inplace=True),
            nn.ConvTranspose3d(2 * width, width, 4, 2, 1, bias=False), nn.BatchNorm3d(width), nn.ReLU(inplace=True),
            nn.Conv3d(width, out_channels, 3, 1, 1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.body(self.project(z).view(len(z), -1, *self.start))  # (B, C, 4 * start)
        cut = [(have - want) // 2 for have, want in zip(x.shape[2:], self.size)]  # centre crop to the volume
        return x[:, :, cut[0]:cut[0] + self.size[0], cut[1]:cut[1] + self.size[1], cut[2]:cut[2] + self.size[2]]


class DCGAN3dCritic(nn.Module):
    """(B, in_channels, X, Y, Z) -> (B,) scores (higher: more like the data)."""
    volumetric = True

    def __init__(self, in_channels: int, image_size: tuple, width: int = 32):
        super().__init__()
        layers, channels, size = [], in_channels, list(image_size)
        while max(size) > 4 or len(layers) < 4:  # two 4^3 stride-2 convs at least; a side of 1 stays 1
            out = width * 2 ** min(len(layers) // 2, 2)
            layers += [nn.Conv3d(channels, out, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            channels, size = out, [max(1, s // 2) for s in size]
        self.features = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():  # the flattened size, by running the stack once (odd sides round as Conv3d does)
            flat = self.features(torch.zeros(1, in_channels, *image_size)).shape[1]
        self.head = nn.Linear(flat, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)
