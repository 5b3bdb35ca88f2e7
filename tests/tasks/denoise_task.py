"""Task denoise: a denoising autoencoder on the digits, written from README's "Adding a task" alone.
tests/test_tasks.py installs it as tasks/denoise/__init__.py with one line in task_dict, and runs
the guarantees every task gets on it."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model import model_dict
from tasks.base import Task
from train.phases import Phase
from utils import dist
from utils.config import Config, key


@dataclass
class DenoiseConfig(Config):
    task: str = key("denoise", "what the loop trains")
    epochs: int = key(5, "total epochs of the run", at_least=1)
    noise: float = key(0.5, "std of the Gaussian noise added to the inputs", at_least=0)


def reconstruction_loss(net, batch, noise: float):
    """MSE between the clean images and the model's output for noisy ones; the noise of step s,
    micro-batch i, is drawn from a generator seeded by (s, i), so a resumed run draws the same."""
    gen = torch.Generator().manual_seed(batch.step * 1000 + batch.index)
    noisy = batch.x + noise * torch.randn(batch.x.shape, generator=gen).to(batch.x.device)
    loss = F.mse_loss(net(noisy).view_as(batch.x), batch.x)
    return loss, {"train_mse": loss}


class Denoise(Task):
    name = "denoise"
    config = DenoiseConfig
    modes = {"val_mse": "min"}

    def model_names(self, cfg):
        return ["mlp"]

    def build_model(self, cfg, info):
        pixels = info.in_channels * info.image_size ** 2
        return model_dict["mlp"](in_channels=info.in_channels, num_classes=pixels, image_size=info.image_size)

    def phases(self, cfg):
        return [Phase("model", lambda net, batch: reconstruction_loss(net, batch, cfg.noise))]

    def validate_epoch(self, cfg, model, loader, device):
        total, count = torch.zeros((), device=device), torch.zeros((), device=device)
        for x, _ in loader:
            x = x.to(device)
            total += F.mse_loss(model(x).view_as(x), x, reduction="sum") / x[0].numel()
            count += len(x)
        return {"val_mse": float(dist.all_reduce_sum(total)) / max(1, int(dist.all_reduce_sum(count)))}
