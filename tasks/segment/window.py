"""Sliding-window inference with Gaussian weighting (nnU-Net's): the logits of every window are
weighted by a Gaussian centred on the window (sigma: an eighth of the patch side), summed, and
divided by the summed weights, so the centre of a window, where the network sees the most
context, counts the most. Windows overlap by `overlap` of a patch; with `mirror`, each window's
logits are averaged over the 8 mirrorings of the axes. Cases smaller than the patch are padded with
zeros (the normalised mean). serve/predict_onnx.py repeats this in NumPy: keep the two alike.
"""
import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F

SIGMA_SCALE = 1 / 8


def gaussian(patch: tuple) -> np.ndarray:
    """(X, Y, Z) float32 weights, 1 at the centre; the smallest is clipped above zero (no division by zero)."""
    axes = [np.exp(-0.5 * ((np.arange(p) - (p - 1) / 2) / (p * SIGMA_SCALE)) ** 2) for p in patch]
    g = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    g = g / g.max()
    g[g == 0] = g[g > 0].min()
    return g.astype(np.float32)


def starts(size: int, patch: int, overlap: float) -> list[int]:
    """Window starts along one axis: evenly spread from 0 to size - patch, at most patch * (1 - overlap) apart."""
    if size <= patch:
        return [0]
    n = math.ceil((size - patch) / (patch * (1 - overlap))) + 1
    return [int(round(i * (size - patch) / (n - 1))) for i in range(n)]


def windows(shape: tuple, patch: tuple, overlap: float) -> list[tuple]:
    """Every window's start (x, y, z) over a (padded) volume of `shape`."""
    return list(itertools.product(*(starts(n, p, overlap) for n, p in zip(shape, patch))))


def padding(shape: tuple, patch: tuple) -> list[tuple]:
    """(before, after) per axis that makes each side at least the patch, centred."""
    out = []
    for n, p in zip(shape, patch):
        extra = max(0, p - n)
        out.append((extra // 2, extra - extra // 2))
    return out


MIRRORS = [axes for k in range(4) for axes in itertools.combinations((2, 3, 4), k)]  # the 8 mirrorings, identity first


@torch.inference_mode()
def sliding_window(net, image: torch.Tensor, patch: tuple, classes: int, overlap: float = 0.5, mirror: bool = False,
                   batch: int = 4) -> torch.Tensor:
    """image (C, X, Y, Z) on the model's device -> logits (classes, X, Y, Z) float32, Gaussian-weighted."""
    pads = padding(tuple(image.shape[1:]), patch)
    x = F.pad(image, [v for a in (2, 1, 0) for v in pads[a]]) if any(sum(p) for p in pads) else image
    shape = tuple(x.shape[1:])
    weight = torch.from_numpy(gaussian(patch)).to(image.device)
    total = torch.zeros((classes, *shape), device=image.device)
    norm = torch.zeros(shape, device=image.device)
    corners = windows(shape, patch, overlap)
    for i in range(0, len(corners), batch):
        group = corners[i:i + batch]
        tiles = torch.stack([x[:, a:a + patch[0], b:b + patch[1], c:c + patch[2]] for a, b, c in group])
        logits = _mirrored(net, tiles, mirror)
        for (a, b, c), tile in zip(group, logits):
            total[:, a:a + patch[0], b:b + patch[1], c:c + patch[2]] += tile * weight
            norm[a:a + patch[0], b:b + patch[1], c:c + patch[2]] += weight
    out = total / norm
    (x0, _), (y0, _), (z0, _) = pads
    return out[:, x0:x0 + image.shape[1], y0:y0 + image.shape[2], z0:z0 + image.shape[3]]


def _mirrored(net, tiles: torch.Tensor, mirror: bool) -> torch.Tensor:
    """The network's float32 logits, averaged over the mirrorings when asked."""
    if not mirror:
        return net(tiles).float()
    out = sum(net(tiles.flip(axes)).float().flip(axes) if axes else net(tiles).float() for axes in MIRRORS)
    return out / len(MIRRORS)
