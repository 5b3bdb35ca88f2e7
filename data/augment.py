"""Training augmentation in named policies, and the counter-based randomness behind it.

Every random choice here (the order of an epoch, the shift, flip, erased box and mixing partner of
a sample) is a pure function of (seed, epoch, sample index): a hash, not an RNG stream. So a run
continued mid-epoch, or run with other num_workers or another number of processes, sees exactly
the same augmented batches. Mixing partners are drawn per sample for the same reason: mixing
within a process's micro-batch would make the data depend on how a batch is split.

The geometric policies are torchvision.transforms.v2's, applied to a whole batch at once with
parameters from the hash: `translate` is v2.RandomCrop(size, padding=size // 8) (black fill),
`crop_flip` adds v2.RandomHorizontalFlip, random erasing is v2.RandomErasing's box (area 2-33%,
aspect 0.3-3.3, value 0 after normalisation). `trivialaugment` runs v2.TrivialAugmentWide per
sample, its RNG seeded from the hash. `volume` is the 3D policy: a random translation of up to
1/8 of each side (zero fill), a flip of each axis in `flip_axes` with probability 1/2, and an
intensity scale in [0.9, 1.1] and shift in [-0.1, 0.1] of the [0, 1] intensities.
"""
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

POLICIES = ("none", "translate", "crop_flip", "trivialaugment", "volume", "volume_flip")
VOLUME_POLICIES = ("volume", "volume_flip")  # volume_flip: the flips alone (generative tasks: no shift or intensity change)
# augment: auto. No flips for digits: a flipped digit is another digit (or none).
AUTO_POLICY = {"digits": "translate", "mnist": "translate", "fake": "translate", "image_folder": "translate",
               "fashion_mnist": "crop_flip", "cifar10": "crop_flip", "cifar100": "crop_flip", "volume_folder": "volume",
               "mni152": "volume"}

# Streams: independent hash outputs for the same (seed, epoch, index).
_DY, _DX, _FLIP, _ERASE, _PARTNER, _MIX, _LAM, _BOX, _TRIVIAL = range(1, 10)
_SHIFT_3D, _FLIP_3D, _SCALE, _OFFSET = (10, 11, 12), (13, 14, 15), 16, 17
_M = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A 64-bit integer hash (splitmix64's finaliser); uint64 arrays wrap on overflow."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_ints(*parts) -> np.ndarray:
    """hash(parts...) elementwise; each part an int or an int array."""
    h = np.zeros(1, dtype=np.uint64)
    for p in parts:
        h = _splitmix64(h ^ (np.asarray(p, dtype=np.int64).astype(np.uint64) & _M))
    return h


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch `epoch`'s order, a positive int64."""
    return int(hash_ints(seed, epoch, 0x5EED)[0] >> np.uint64(1))


def sample_randint(seed: int, epoch: np.ndarray, index: np.ndarray, stream: int, high: int) -> np.ndarray:
    """One integer in [0, high) per sample, a pure function of (seed, epoch, index, stream)."""
    return (hash_ints(seed, epoch, index, stream) % np.uint64(high)).astype(np.int64)


def sample_uniform(seed: int, epoch: np.ndarray, index: np.ndarray, stream: int) -> np.ndarray:
    """One float in [0, 1) per sample (53 random bits), a pure function of its arguments."""
    return (hash_ints(seed, epoch, index, stream) >> np.uint64(11)).astype(np.float64) * 2.0**-53


@dataclass
class Augment:
    """What augment_batch does to the training split; built once from the config."""
    seed: int
    policy: str = "none"          # one of POLICIES
    random_erasing: float = 0.0   # probability per sample
    mixup: float = 0.0      # Beta(alpha, alpha) mixing weight; 0: off
    cutmix: float = 0.0
    num_classes: int = 0
    flip_axes: tuple = (0,)       # volume: the axes a sample may be flipped along

    @property
    def mixes(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0


def check_policy(policy: str, volumetric: bool) -> None:
    """`volume` and `volume_flip` are for volumes, the others for images: exit 2 otherwise."""
    from utils.errors import UsageError

    if policy != "none" and (policy in VOLUME_POLICIES) != volumetric:
        raise UsageError(f"augment: '{policy}' is for {'images' if volumetric else 'volumes'}; use "
                         f"{'volume or volume_flip' if volumetric else 'translate, crop_flip or trivialaugment'} (or auto, or none)")


def translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int, fill: Optional[torch.Tensor] = None,
              flip: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Shift each image of x (N, C, H, W) by (dy[n], dx[n]) pixels, |d| <= pad, filling the
    uncovered border with `fill` (C, 1, 1; None: 0), and mirror it left-right where flip[n]: one
    gather for both, so a crop_flip batch is copied once."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad,) * 4) if fill is None else F.pad(x - fill, (pad,) * 4) + fill
    cols = torch.arange(w).expand(n, w)
    if flip is not None:
        cols = torch.where(flip.view(n, 1), w - 1 - cols, cols)
    rows = (pad - dy).view(n, 1) + torch.arange(h)              # (N, H)
    cols = (pad - dx).view(n, 1) + cols                         # (N, W)
    return padded[torch.arange(n).view(n, 1, 1, 1), torch.arange(c).view(1, c, 1, 1),
                  rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]  # (N, C, H, W)


def geometric(x: torch.Tensor, aug: Augment, epochs: np.ndarray, index: np.ndarray) -> torch.Tensor:
    """The policy's per-sample transform of x (N, C, H, W), uint8 or float in [0, 1] (volumes:
    (N, C, X, Y, Z) float)."""
    if x.ndim == 5:
        return volume_policy(x, aug, epochs, index) if aug.policy in VOLUME_POLICIES else x
    if aug.policy in ("translate", "crop_flip"):
        pad = max(1, x.shape[-1] // 8)
        dy = torch.from_numpy(sample_randint(aug.seed, epochs, index, _DY, 2 * pad + 1) - pad)
        dx = torch.from_numpy(sample_randint(aug.seed, epochs, index, _DX, 2 * pad + 1) - pad)
        flip = None
        if aug.policy == "crop_flip":
            flip = torch.from_numpy(sample_randint(aug.seed, epochs, index, _FLIP, 2) == 1)
        x = translate(x, dy, dx, pad, flip=flip)
    elif aug.policy == "trivialaugment":
        x = _trivialaugment(x, aug.seed, epochs, index)
    return x


def volume_policy(x: torch.Tensor, aug: Augment, epochs: np.ndarray, index: np.ndarray) -> torch.Tensor:
    """Shift, flip and intensity of each volume of x (N, C, X, Y, Z), float; volume_flip: the flips alone."""
    n, sizes = len(x), x.shape[2:]
    flips_only = aug.policy == "volume_flip"
    pads = [0 if flips_only else max(1, s // 8) for s in sizes]
    shifts = [torch.from_numpy(sample_randint(aug.seed, epochs, index, _SHIFT_3D[a], 2 * pads[a] + 1) - pads[a]) for a in range(3)]
    flips = [torch.from_numpy(sample_randint(aug.seed, epochs, index, _FLIP_3D[a], 2) == 1) if a in aug.flip_axes
             else torch.zeros(n, dtype=torch.bool) for a in range(3)]
    x = translate_3d(x, shifts, pads, flips)
    if flips_only:
        return x
    scale = torch.from_numpy(0.9 + 0.2 * sample_uniform(aug.seed, epochs, index, _SCALE)).float().view(n, 1, 1, 1, 1)
    offset = torch.from_numpy(-0.1 + 0.2 * sample_uniform(aug.seed, epochs, index, _OFFSET)).float().view(n, 1, 1, 1, 1)
    return x * scale + offset


def translate_3d(x: torch.Tensor, shifts: list, pads: list, flips: list) -> torch.Tensor:
    """Shift each volume of x (N, C, X, Y, Z) by shifts[a][n] voxels along axis a (|shift| <= pads[a],
    zero fill) and mirror it along axis a where flips[a][n]: one gather."""
    n, c = x.shape[:2]
    padded = F.pad(x, [p for a in (2, 1, 0) for p in (pads[a], pads[a])])  # F.pad lists the last axis first
    index = []
    for a, size in enumerate(x.shape[2:]):
        coords = torch.arange(size).expand(n, size)
        coords = torch.where(flips[a].view(n, 1), size - 1 - coords, coords)
        view = [n, 1, 1, 1, 1]
        view[2 + a] = size
        index.append(((pads[a] - shifts[a]).view(n, 1) + coords).view(view))
    return padded[(torch.arange(n).view(n, 1, 1, 1, 1), torch.arange(c).view(1, c, 1, 1, 1), *index)]


def _trivialaugment(x: torch.Tensor, seed: int, epochs: np.ndarray, index: np.ndarray) -> torch.Tensor:
    """v2.TrivialAugmentWide on each uint8 image, with torch's RNG seeded per sample and restored after."""
    from torchvision.transforms import v2

    policy = v2.TrivialAugmentWide()
    seeds = hash_ints(seed, epochs, index, _TRIVIAL) >> np.uint64(1)
    out = torch.empty_like(x)
    with torch.random.fork_rng(devices=[]):
        for n in range(len(x)):
            torch.manual_seed(int(seeds[n]))
            out[n] = policy(x[n])
    return out


def erase(x: torch.Tensor, aug: Augment, epochs: np.ndarray, index: np.ndarray) -> torch.Tensor:
    """Random erasing of normalised x (N, C, H, W): with probability p, one box set to 0."""
    n, _, h, w = x.shape
    u = [sample_uniform(aug.seed, epochs, index, _ERASE + 100 * k) for k in range(5)]
    area = (0.02 + 0.31 * u[1]) * h * w
    ratio = np.exp(math.log(0.3) + (math.log(3.3) - math.log(0.3)) * u[2])
    bh = np.clip(np.round(np.sqrt(area * ratio)), 1, h).astype(np.int64)
    bw = np.clip(np.round(np.sqrt(area / ratio)), 1, w).astype(np.int64)
    top = (u[3] * (h - bh + 1)).astype(np.int64)
    left = (u[4] * (w - bw + 1)).astype(np.int64)
    on = torch.from_numpy(u[0] < aug.random_erasing).view(n, 1, 1, 1)
    return x.masked_fill(on & _box_mask(top, left, bh, bw, h, w), 0.0)


def _box_mask(top: np.ndarray, left: np.ndarray, bh: np.ndarray, bw: np.ndarray, h: int, w: int) -> torch.Tensor:
    """(N, 1, H, W) True inside each sample's box."""
    t, l_, bh, bw = (torch.from_numpy(a).view(-1, 1) for a in (top, left, bh, bw))
    rows = (torch.arange(h) >= t) & (torch.arange(h) < t + bh)   # (N, H)
    cols = (torch.arange(w) >= l_) & (torch.arange(w) < l_ + bw)  # (N, W)
    return (rows.unsqueeze(2) & cols.unsqueeze(1)).unsqueeze(1)


def partners(aug: Augment, epochs: np.ndarray, index: np.ndarray, n: int) -> np.ndarray:
    """The split position each sample is mixed with, drawn from [0, n)."""
    return sample_randint(aug.seed, epochs, index, _PARTNER, n)


def mix(x: torch.Tensor, y: torch.Tensor, x2: torch.Tensor, y2: torch.Tensor, aug: Augment,
        epochs: np.ndarray, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or cutmix of each sample with its partner: x (N, C, H, W), y (N,) -> soft y (N, classes)."""
    from scipy.special import betaincinv

    n, _, h, w = x.shape
    use_cutmix = np.full(n, aug.cutmix > 0)
    if aug.mixup > 0 and aug.cutmix > 0:  # both on: each sample picks one, half and half
        use_cutmix = sample_randint(aug.seed, epochs, index, _MIX, 2) == 1
    alpha = np.where(use_cutmix, aug.cutmix, aug.mixup)
    lam = betaincinv(alpha, alpha, sample_uniform(aug.seed, epochs, index, _LAM))  # Beta(alpha, alpha) by inversion
    # cutmix: a box of area (1 - lam) from the partner, centred at random, clipped to the image
    cut = np.sqrt(1.0 - lam)
    cy, cx = (sample_uniform(aug.seed, epochs, index, _BOX + 100 * k) for k in range(2))
    top = np.clip(np.floor((cy - cut / 2) * h), 0, h).astype(np.int64)
    bottom = np.clip(np.floor((cy + cut / 2) * h), 0, h).astype(np.int64)
    left = np.clip(np.floor((cx - cut / 2) * w), 0, w).astype(np.int64)
    right = np.clip(np.floor((cx + cut / 2) * w), 0, w).astype(np.int64)
    box = _box_mask(top, left, bottom - top, right - left, h, w) & torch.from_numpy(use_cutmix).view(n, 1, 1, 1)
    lam = np.where(use_cutmix, 1.0 - (bottom - top) * (right - left) / (h * w), lam)
    lam_t = torch.from_numpy(lam).to(x.dtype).view(n, 1, 1, 1)
    mixed = torch.where(box, x2, x)
    mixed = torch.where(torch.from_numpy(use_cutmix).view(n, 1, 1, 1), mixed, lam_t * x + (1 - lam_t) * x2)
    k = aug.num_classes
    soft = lam_t.view(n, 1) * torch.nn.functional.one_hot(y, k).to(x.dtype)
    soft += (1 - lam_t.view(n, 1)) * torch.nn.functional.one_hot(y2, k).to(x.dtype)
    return mixed, soft
