"""Measures of a 3D generator that measure the right thing (volumes in [-1, 1], data range 2):

- SSIM in 3D: a Gaussian window (11 voxels, sigma 1.5, narrowed to the volume's side when that is
  smaller), K = (0.01, 0.03), over the window's valid positions, as pytorch-msssim computes it
  (tests/test_alpha_gan.py checks it against pytorch-msssim). It scores reconstructions against
  their inputs, and the diversity of samples: the mean SSIM of pairs of generated volumes beside
  that of pairs of real ones (a collapsed generator has a high pairwise SSIM).
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


def ssim3d(a: torch.Tensor, b: torch.Tensor, data_range: float = DATA_RANGE, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-sample SSIM of two batches of volumes (N, C, X, Y, Z): (N,)."""
    side = min(a.shape[2:])
    window = gaussian(min(size, side if side % 2 else side - 1), sigma)
    a, b = a.double(), b.double()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a, window.double()), blur(b, window.double())
    var_a = blur(a * a, window.double()) - mu_a ** 2
    var_b = blur(b * b, window.double()) - mu_b ** 2
    cov = blur(a * b, window.double()) - mu_a * mu_b
    luminance = (2 * mu_a * mu_b + c1) / (mu_a ** 2 + mu_b ** 2 + c1)
    contrast = (2 * cov + c2) / (var_a + var_b + c2)
    return (luminance * contrast).flatten(1).mean(1).float()


def pairwise_ssim(volumes: torch.Tensor, pairs: int = 64, seed: int = 0) -> float:
    """The mean SSIM of `pairs` seeded pairs of distinct volumes: near 1 for a collapsed generator."""
    n = len(volumes)
    if n < 2:
        return float("nan")
    gen = torch.Generator().manual_seed(seed)
    i = torch.randint(n, (pairs,), generator=gen)
    j = (i + torch.randint(1, n, (pairs,), generator=gen)) % n  # never i itself
    return float(ssim3d(volumes[i], volumes[j]).mean())


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
