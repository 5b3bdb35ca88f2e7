"""Measuring a generator: images from latent codes, a classifier run's features and class
probabilities, the Frechet distance between two sets of features (with a bootstrap interval),
the share of confidently classified samples per class, sample grids."""
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from data.loading import normalise, to_unit
from infer.runs import LoadedRun, load_run, rebuild_data
from tasks.base import Task
from tasks.classify import Classify
from utils.config import Config

CONFIDENT = 0.9  # a generated sample counts for a class when the classifier gives it at least this


@torch.no_grad()
def generate(generator: nn.Module, codes: torch.Tensor, device: torch.device, batch: int = 256) -> torch.Tensor:
    """(N, latent) codes -> (N, C, H, W) images in [0, 1], on the CPU, with the generator in eval mode."""
    was_training = generator.training
    generator.eval()
    out = [generator(codes[i:i + batch].to(device)).float().cpu() for i in range(0, len(codes), batch)]
    generator.train(was_training)
    return ((torch.cat(out) + 1) / 2).clamp_(0, 1)


def real_images(cfg: Config) -> torch.Tensor:
    """The validation images of the GAN run's data, in [0, 1]: (N, C, H, W)."""
    data = rebuild_data(cfg, Task())  # the images as stored: to_unit() below is the only preparation
    x, _ = data.val.source.load([data.val.positions[i] for i in range(len(data.val))])
    return to_unit(x)


def last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the classifier has no linear head to take features before")
    return linears[-1]


@torch.no_grad()
def features_and_probs(classifier, images: torch.Tensor, device: torch.device, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """A classifier run's view of images in [0, 1]: the input of its last linear layer (N, F) and its
    class probabilities (N, classes), in float64, computed in fp32."""
    model, info = classifier.model, classifier.info
    captured = []
    hook = last_linear(model).register_forward_pre_hook(lambda m, args: captured.append(args[0].float().cpu()))
    probs = []
    try:
        for i in range(0, len(images), batch):
            x = normalise(images[i:i + batch], info).to(device)
            probs.append(model(x).float().softmax(1).cpu())
    finally:
        hook.remove()
    return torch.cat(captured).double().numpy(), torch.cat(probs).double().numpy()


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (N, F) and b (M, F):
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))."""
    import warnings

    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # singular with fewer samples than features: measure() says so once
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(s_a @ s_b)
    root = root.real  # numerical noise gives tiny imaginary parts
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * root))


def frechet_interval(real: np.ndarray, fake: np.ndarray, seed: int = 0, rounds: int = 200) -> tuple[float, float]:
    """A seeded bootstrap 95% interval of the Frechet distance, resampling both sets of samples."""
    rng = np.random.default_rng(seed)
    values = [frechet(real[rng.integers(0, len(real), len(real))], fake[rng.integers(0, len(fake), len(fake))])
              for _ in range(rounds)]
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def class_shares(probs: np.ndarray, names: list[str]) -> dict:
    """Per class, the share of samples the classifier assigns to it with confidence >= CONFIDENT;
    and the share of samples confident at all. Mode collapse shows as classes near 0."""
    conf, pred = probs.max(1), probs.argmax(1)
    confident = conf >= CONFIDENT
    return {"confident": float(confident.mean()),
            "per_class": {n: float((confident & (pred == i)).mean()) for i, n in enumerate(names)}}


def picture_grid(images: torch.Tensor, columns: int = 8) -> np.ndarray:
    """(H, W, C) grid of images in [0, 1], or of volumes as their three mid-slices (4 to a row)."""
    from torchvision.utils import make_grid

    from utils.plots import triptych

    if images.ndim == 5:
        images, columns = triptych(images), max(1, columns // 2)
    return make_grid(images, nrow=columns, padding=1, pad_value=1.0).permute(1, 2, 0).numpy()


def save_grid(images: torch.Tensor, path: Path, columns: int = 8, title: Optional[str] = None) -> None:
    """A grid of images (or volumes) in [0, 1] as a PNG (atomically): at least 4 pixels per pixel of
    the grid and 600 wide, with the title in a band of its own above it."""
    from utils.plots import new_figure, save_figure

    grid = picture_grid(images, columns)
    width = max(6.0, 4 * grid.shape[1] / 100)  # inches at 100 dpi
    height, band = width * grid.shape[0] / grid.shape[1], 0.4 if title else 0.0
    fig = new_figure(width, height + band)
    ax = fig.add_axes((0, 0, 1, height / (height + band)))
    ax.imshow(grid if grid.shape[2] == 3 else grid[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.08 / (height + band))
    save_figure(fig, path)


def load_classifier(run_id: str, device: torch.device) -> LoadedRun:
    from store.runs import EXPERIMENTS, read_run

    return load_run(read_run(EXPERIMENTS / run_id), device, Classify())


def real_confident_share(classifier: LoadedRun, real_probs: np.ndarray) -> float:
    """The share of real validation images the classifier is confident on: the ceiling of what a
    generator can score (a classifier trained with label smoothing is rarely confident)."""
    return float((real_probs.max(1) >= CONFIDENT).mean())


class Reference:
    """The measuring classifier and the real images' features, for the Frechet distance at each
    epoch of training: loaded on first use, once per run (the task object holds it)."""

    def __init__(self):
        self.key, self.classifier, self.real = None, None, None

    def frechet(self, cfg: Config, generator: nn.Module, codes: torch.Tensor, device: torch.device) -> float:
        """The Frechet distance of `codes`' images to the validation images, in fid_features' feature space."""
        if self.key != (cfg.fid_features, str(device)):
            self.classifier = load_classifier(cfg.fid_features, device)
            self.real = features_and_probs(self.classifier, real_images(cfg), device)[0]
            self.key = (cfg.fid_features, str(device))
        fake, _ = features_and_probs(self.classifier, generate(generator, codes, device), device)
        return frechet(self.real, fake)
