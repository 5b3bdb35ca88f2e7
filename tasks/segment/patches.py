"""Training patches and validation cases of task segment.

A training epoch is `patches_per_epoch` patches. Patch `index` of epoch `epoch` is a pure function
of (seed, epoch, index): the case, whether it is centred on foreground, where it lies, and every
augmentation draw come from one generator seeded by their hash (data/augment.py's hash_ints), so a
run continued mid-epoch, or loaded by other num_workers, sees the same patches.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from data.augment import hash_ints

MAX_FOREGROUND_POINTS = 10_000  # per case and class, as nnU-Net keeps for oversampling
STREAM = 0x5E6


def foreground_points(label: torch.Tensor, classes: int) -> list[np.ndarray]:
    """Per foreground class, up to MAX_FOREGROUND_POINTS voxel coordinates (K, 3), evenly spaced in scan order."""
    out = []
    for c in range(1, classes):
        points = torch.nonzero(label == c).numpy()
        if len(points) > MAX_FOREGROUND_POINTS:
            points = points[np.linspace(0, len(points) - 1, MAX_FOREGROUND_POINTS).round().astype(np.int64)]
        out.append(points)
    return out


def crop(volume: torch.Tensor, start: tuple, patch: tuple) -> torch.Tensor:
    """(..., X, Y, Z)[start : start + patch], zero outside the volume."""
    size = volume.shape[-3:]
    lo = [max(0, s) for s in start]
    hi = [min(n, s + p) for n, s, p in zip(size, start, patch)]
    inner = volume[..., lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    pad = []
    for a in (2, 1, 0):  # F.pad lists the last axis first
        pad += [lo[a] - start[a], start[a] + patch[a] - hi[a]]
    return F.pad(inner, pad) if any(pad) else inner


def rotation_scale(rng: np.random.Generator) -> "np.ndarray | None":
    """nnU-Net's spatial draws, smaller rotations: with p 0.2 a rotation of up to 15 degrees about each
    axis, with p 0.2 a zoom in 0.85..1.25; None when neither is drawn."""
    rotate, scale = rng.random() < 0.2, rng.random() < 0.2
    angles = rng.uniform(-math.pi / 12, math.pi / 12, 3)
    zoom = rng.uniform(0.85, 1.25)
    if not (rotate or scale):
        return None
    m = np.eye(3)
    if rotate:
        for axis, a in enumerate(angles):
            c, s = math.cos(a), math.sin(a)
            i, j = [k for k in range(3) if k != axis]
            r = np.eye(3)
            r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
            m = m @ r
    return m / zoom if scale else m


def spatial(x: torch.Tensor, y: torch.Tensor, m: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """x (C, X, Y, Z) trilinear and y (X, Y, Z) nearest, resampled through the 3x3 matrix m about the centre."""
    theta = torch.zeros(1, 3, 4)
    theta[0, :, :3] = torch.from_numpy(m[::-1, ::-1].copy()).float()  # affine_grid's coordinates run (z, y, x)
    grid = F.affine_grid(theta, [1, 1, *x.shape[-3:]], align_corners=False)
    x = F.grid_sample(x[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    y = F.grid_sample(y[None, None].float(), grid, mode="nearest", padding_mode="border", align_corners=False)[0, 0]
    return x, y.to(torch.uint8)


def intensity(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """With p 0.3 a gamma in 0.7..1.5 on the patch's range, with p 0.1 Gaussian noise of variance up to 0.1."""
    gamma, noise = rng.random() < 0.3, rng.random() < 0.1
    g, variance, noise_seed = rng.uniform(0.7, 1.5), rng.uniform(0, 0.1), int(rng.integers(2**62))
    if gamma:
        lo, hi = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
        span = (hi - lo).clamp(min=1e-8)
        x = ((x - lo) / span).pow(g) * span + lo
    if noise:
        x = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(noise_seed)) * math.sqrt(variance)
    return x


class PatchSet(Dataset):
    """The training split as patches: `__getitems__` takes (epoch, index) keys and returns
    x (B, C, *patch) float32 and y (B, *patch) int64."""

    def __init__(self, source, positions: list, patch: tuple, seed: int, per_epoch: int, oversample: float,
                 augment: bool, classes: int):
        self.source, self.positions, self.patch, self.seed = source, positions, tuple(patch), seed
        self.per_epoch, self.oversample, self.augment = per_epoch, oversample, augment
        self.points = [foreground_points(source.labels[p], classes) for p in positions]

    def __len__(self) -> int:
        return self.per_epoch

    def __getitem__(self, key):
        return self.__getitems__([key])

    def __getitems__(self, keys: list) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self.sample(epoch, index) for epoch, index in keys]
        return torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs]).long()

    def sample(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch `index` of epoch `epoch`: (C, *patch) float32, (*patch) uint8."""
        rng = np.random.default_rng(int(hash_ints(self.seed, epoch, index, STREAM)[0]))
        case = int(rng.integers(len(self.positions)))
        image, label = self.source.images[self.positions[case]], self.source.labels[self.positions[case]]
        size, patch = label.shape, self.patch
        lo_hi = [(min(0, n - p), max(0, n - p)) for n, p in zip(size, patch)]
        present = [pts for pts in self.points[case] if len(pts)]
        if rng.random() < self.oversample and present:
            pts = present[int(rng.integers(len(present)))]
            centre = pts[int(rng.integers(len(pts)))]
            start = tuple(int(np.clip(c - p // 2, lo, hi)) for c, p, (lo, hi) in zip(centre, patch, lo_hi))
        else:
            start = tuple(int(rng.integers(lo, hi + 1)) for lo, hi in lo_hi)
        x, y = crop(image, start, patch), crop(label, start, patch)
        if self.augment:
            x, y = self.augmented(x, y, rng)
        return x.contiguous(), y.contiguous()

    @staticmethod
    def augmented(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        m = rotation_scale(rng)
        if m is not None:
            x, y = spatial(x, y, m)
        x = intensity(x, rng)
        flips = [a for a in range(3) if rng.random() < 0.5]
        if flips:
            x, y = x.flip([a + 1 for a in flips]), y.flip(flips)
        return x, y


class CaseSet(Dataset):
    """Whole cases (the validation split): items are (image (C, X, Y, Z), label (X, Y, Z), case id)."""

    def __init__(self, source, positions: list, class_names: list):
        self.source, self.positions, self.class_names = source, positions, class_names

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, key):
        return self.__getitems__([key])

    def __getitems__(self, keys: list) -> list:
        return [(self.source.images[self.positions[p]], self.source.labels[self.positions[p]].long(),
                 self.source.ids[self.positions[p]]) for _, p in keys]

    def cases(self) -> list:
        """Every case, in order."""
        return self.__getitems__([(-1, p) for p in range(len(self))])
