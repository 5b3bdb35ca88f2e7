"""Training a WGAN-GP: the generator and the critic as one module, the critic's and the generator's
losses (Gulrajani et al., 2017), and the epoch's validation.

The latent codes and the penalty's interpolation weights of step s are drawn whole for the global
batch from a generator seeded by (seed, s), and each process takes its micro-batch's rows: they do
not depend on where a run was cut, on num_workers or on the number of processes.
"""
import dataclasses

import torch
from torch import nn

from data.loading import DataInfo
from model import model_dict
from tasks.wgan_gp.config import WganGpConfig
from train.phases import Batch, rows_of_micro_batch, stream  # noqa: F401 - stream: the seeded draws of a step
from train.trainer import to_device
from utils import dist
from utils.errors import UsageError

ADAM_BETAS = (0.0, 0.9)  # the WGAN-GP paper's; momentum destabilises the critic
UNIT_RANGE = (0.5,)      # mean and std that normalise images to [-1, 1], the generator's tanh range


class GanPair(nn.Module):
    """The generator and the critic as one module: one state_dict ("generator.*", "critic.*"), so
    model.safetensors, state.pt, EMA and init_from treat the pair as one model."""

    def __init__(self, generator: nn.Module, critic: nn.Module):
        super().__init__()
        self.generator, self.critic = generator, critic


def gan_names(cfg: WganGpConfig) -> tuple[str, str]:
    """generator and critic, where the 2D defaults follow the data: dcgan3d_* on volumes."""
    from utils.config import VOLUME_DATASETS

    volumes = cfg.dataset in VOLUME_DATASETS
    return tuple("dcgan3d_" + name[len("dcgan_"):] if volumes and name == f"dcgan_{part}" else name
                 for name, part in ((cfg.generator, "generator"), (cfg.critic, "critic")))


def build_pair(cfg: WganGpConfig, info: DataInfo) -> GanPair:
    for name in gan_names(cfg):
        if getattr(model_dict[name], "volumetric", False) != info.volumetric:
            raise UsageError(f"generator/critic: {name} is a {'2D' if info.volumetric else '3D'} model and dataset {cfg.dataset} "
                             f"holds {'volumes' if info.volumetric else 'images'}; use "
                             f"{'dcgan3d_generator and dcgan3d_critic' if info.volumetric else 'dcgan_generator and dcgan_critic'}")
    cfg = dataclasses.replace(cfg, generator=gan_names(cfg)[0], critic=gan_names(cfg)[1])
    try:
        generator = model_dict[cfg.generator](latent_dim=cfg.latent_dim, out_channels=info.in_channels, image_size=info.image_size)
        critic = model_dict[cfg.critic](in_channels=info.in_channels, image_size=info.image_size)
    except (TypeError, ValueError) as e:
        raise UsageError(f"generator/critic: {cfg.generator}, {cfg.critic} cannot be built for task wgan_gp ({e}); "
                         "use dcgan_generator and dcgan_critic, or classes with their arguments") from None
    return GanPair(generator, critic)


def latent(cfg: WganGpConfig, count: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(count, cfg.latent_dim, generator=gen)  # (count, latent_dim)


def critic_loss(cfg: WganGpConfig, pair: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict]:
    """Real images, generated ones and their interpolations in one critic pass:
    D(fake) - D(real) + gp_weight * (|grad D(interpolation)| - 1)^2, the norm over each whole sample."""
    real, b = batch.x, batch.size  # (B, C, H, W), or (B, C, X, Y, Z) for volumes, in [-1, 1]
    total = b * cfg.grad_accum_steps * dist.world_size()
    gen = stream(cfg.seed, batch.step, "critic")
    z = rows_of_micro_batch(latent(cfg, total, gen), b, batch.index).to(real.device)
    eps = rows_of_micro_batch(torch.rand(total, *[1] * (real.ndim - 1), generator=gen), b, batch.index).to(real.device)
    with torch.no_grad():
        fake = pair.generator(z)
    mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
    scores = pair.critic(torch.cat([real, fake, mixed])).float()  # (3B,)
    with torch.autocast(real.device.type, enabled=False):  # the penalty's double backward in fp32
        d_real, d_fake, d_mixed = scores.split(b)
        grad, = torch.autograd.grad(d_mixed.sum(), mixed, create_graph=True)
        gp = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
        loss = d_fake.mean() - d_real.mean() + cfg.gp_weight * gp
    return loss, {"critic_loss": loss, "gp": gp, "train_wdist": d_real.mean() - d_fake.mean()}


def generator_loss(cfg: WganGpConfig, pair: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict]:
    """-D(G(z)) on this micro-batch's rows of a fresh global batch of codes."""
    codes = latent(cfg, cfg.batch_size, stream(cfg.seed, batch.step, "generator"))
    device = next(pair.parameters()).device
    z = rows_of_micro_batch(codes, batch.size, batch.index).to(device)
    loss = -pair.critic(pair.generator(z)).float().mean()
    return loss, {"gen_loss": loss}


def norm_forward(cfg: WganGpConfig, pair: nn.Module, batch: Batch) -> None:
    """What the BatchNorm layers see in training, for their statistics (train/norm_stats.py): the
    generator on this micro-batch's rows of a global batch of codes drawn for the purpose, and the
    critic on the real images where it has BatchNorm (DCGAN's critic has none)."""
    from train.norm_stats import batchnorms

    codes = latent(cfg, cfg.batch_size, stream(cfg.seed, batch.step, "norm_stats"))
    pair.generator(rows_of_micro_batch(codes, batch.size, batch.index).to(batch.x.device))
    if batchnorms(pair.critic):
        pair.critic(batch.x)


def validate(cfg: WganGpConfig, pair: nn.Module, loader, device: torch.device) -> dict:
    """val_wdist: the critic's estimate of the Wasserstein distance between the validation images
    and as many generated ones (codes from sample_seed)."""
    real_sum, fake_sum, count = (torch.zeros((), device=device) for _ in range(3))
    codes = latent(cfg, len(loader.dataset), stream(cfg.sample_seed, 0, "samples"))
    for x, _ in loader:
        real = to_device(x, device, bool(cfg.channels_last))
        z = codes[int(count): int(count) + len(real)].to(device)
        real_sum += pair.critic(real).float().sum()
        fake_sum += pair.critic(pair.generator(z)).float().sum()
        count += len(real)
    real_sum, fake_sum, count = (dist.all_reduce_sum(t) for t in (real_sum, fake_sum, count))
    return {"val_wdist": float(real_sum - fake_sum) / max(1, int(count))}
