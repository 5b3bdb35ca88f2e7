"""Measures of a 3D generator that measure the right thing (volumes in [-1, 1], data range 2):

- SSIM in 3D: a Gaussian window (11 voxels, sigma 1.5, narrowed to the volume's side when that is
  smaller), K = (0.01, 0.03), over the window's valid positions, as pytorch-msssim computes it
  (tests/test_alpha_gan.py checks it against pytorch-msssim). It scores reconstructions against
  their inputs.
- MS-SSIM in 3D (ms_ssim3d, also checked against pytorch-msssim) scores the diversity of samples:
  the mean MS-SSIM of pairs of generated volumes beside that of pairs of real ones (a collapsed
  generator has a high pairwise MS-SSIM). The reference code's MS-SSIM raised the last scale to a
  wrong power and assumed a data range of 1 for data in [-1, 1].
- An unbiased kernel MMD^2 between generated and held-out real volumes: a Gaussian (RBF) kernel on
  the volumes average-pooled to POOLED^3 voxels, its bandwidth the median distance between the
  held-out real volumes (the same for every run on the same data, so runs compare). The
  reference code's "MMD" was a squared distance between one real and one generated volume,
  which rewards a generator with less variance.
"""
import math

import torch
import torch.nn.functional as F

POOLED = 8       # MMD features: volumes average-pooled to 8^3 = 512 values
DATA_RANGE = 2.0  # volumes in [-1, 1]
MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # MS-SSIM's weights per scale, finest first (Wang et al., 2003)


def gaussian(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return (w / w.sum()).float()


def blur(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """(N, C, X, Y, Z) filtered by the separable window along each axis, valid positions only."""
    channels = x.shape[1]
    for axis in range(3):
        shape = [1, 1, 1]
        shape[axis] = len(window)
        x = F.conv3d(x, window.view(1, 1, *shape).repeat(channels, 1, 1, 1, 1).to(x), groups=channels)
    return x


def ssim_parts(a: torch.Tensor, b: torch.Tensor, data_range: float, size: int, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample SSIM and its contrast-structure term cs of (N, C, X, Y, Z) float64 volumes: two (N,)."""
    side = min(a.shape[2:])
    window = gaussian(min(size, side if side % 2 else side - 1), sigma).double()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a, window), blur(b, window)
    var_a = blur(a * a, window) - mu_a ** 2
    var_b = blur(b * b, window) - mu_b ** 2
    cov = blur(a * b, window) - mu_a * mu_b
    cs = (2 * cov + c2) / (var_a + var_b + c2)
    luminance = (2 * mu_a * mu_b + c1) / (mu_a ** 2 + mu_b ** 2 + c1)
    return (luminance * cs).flatten(1).mean(1), cs.flatten(1).mean(1)


def ssim3d(a: torch.Tensor, b: torch.Tensor, data_range: float = DATA_RANGE, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-sample SSIM of two batches of volumes (N, C, X, Y, Z): (N,)."""
    return ssim_parts(a.double(), b.double(), data_range, size, sigma)[0].float()


def scales_of(side: int) -> int:
    """MS-SSIM's scales for a side: as many as keep the coarsest at 8 voxels or more, 1 to 5 (32: 3, 64: 4)."""
    return max(1, min(len(MS_WEIGHTS), int(math.log2(max(side, 1) / 8)) + 1))


def ms_ssim3d(a: torch.Tensor, b: torch.Tensor, data_range: float = DATA_RANGE, size: int = 11, sigma: float = 1.5,
              levels: int = 0) -> torch.Tensor:
    """Per-sample 3D MS-SSIM (Wang et al., 2003) of (N, C, X, Y, Z) volumes: (N,). cs at each of `levels`
    scales (0: scales_of the side), halved by 2^3 average pooling, and SSIM at the coarsest, each to
    the power of its weight: the first `levels` of Wang's five, renormalised to sum to 1. As
    pytorch-msssim computes it (tests/test_alpha_gan.py checks it), which needs a side of 16 window
    widths; here a window is narrowed to its scale's side, so 32^3 volumes take 3 scales."""
    levels = levels or scales_of(min(a.shape[2:]))
    weights = torch.tensor(MS_WEIGHTS[:levels], dtype=torch.float64)
    a, b, terms = a.double(), b.double(), []
    for level in range(levels):
        ssim, cs = ssim_parts(a, b, data_range, size, sigma)
        if level < levels - 1:
            terms.append(cs)
            pad = [side % 2 for side in a.shape[2:]]
            a, b = F.avg_pool3d(a, 2, padding=pad), F.avg_pool3d(b, 2, padding=pad)
    terms = torch.stack([*terms, ssim]).clamp(min=0)  # (levels, N); a negative term counts as 0, as pytorch-msssim
    return torch.prod(terms ** (weights / weights.sum())[:, None], 0).float()


def pairwise_msssim(volumes: torch.Tensor, pairs: int = 64, seed: int = 0) -> torch.Tensor:
    """3D MS-SSIM of `pairs` seeded pairs of distinct volumes: (pairs,); near 1 for a collapsed generator."""
    n = len(volumes)
    if n < 2:
        return torch.full((1,), float("nan"))
    gen = torch.Generator().manual_seed(seed)
    i = torch.randint(n, (pairs,), generator=gen)
    j = (i + torch.randint(1, n, (pairs,), generator=gen)) % n  # never i itself
    return ms_ssim3d(volumes[i], volumes[j])


def pooled(volumes: torch.Tensor) -> torch.Tensor:
    """(N, C, X, Y, Z) -> (N, C * POOLED^3) float64, the MMD's features."""
    return F.adaptive_avg_pool3d(volumes.double(), POOLED).flatten(1)


def median_distance(x: torch.Tensor) -> float:
    d = torch.cdist(x, x)
    return float(d[~torch.eye(len(x), dtype=torch.bool)].median())


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> float:
    """Unbiased MMD^2 (Gretton et al., 2012) between samples x (n, d) and y (m, d) with the Gaussian
    kernel exp(-|a - b|^2 / (2 bandwidth^2)): the diagonals of the within-set sums are left out."""
    n, m = len(x), len(y)
    if min(n, m) < 2:
        return float("nan")

    def kernel(a, b):
        return torch.exp(-torch.cdist(a, b) ** 2 / (2 * bandwidth ** 2))
    within_x = (kernel(x, x).sum() - n) / (n * (n - 1))
    within_y = (kernel(y, y).sum() - m) / (m * (m - 1))
    return float(within_x + within_y - 2 * kernel(x, y).mean())


def bandwidth_of(real_features: torch.Tensor) -> float:
    """The kernel's bandwidth: the median distance between the real volumes' features (1 if degenerate)."""
    b = median_distance(real_features)
    return b if math.isfinite(b) and b > 0 else 1.0
