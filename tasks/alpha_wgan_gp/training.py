"""Training the 3D alpha-WGAN-GP (Kwon, Han and Kim, MICCAI 2019): its four networks as one module,
the losses of its three phases with the reference code's defects fixed, and the epoch's validation.

One iteration, in this order (one batch x of real volumes; codes z ~ N(0, I) drawn per phase from
(seed, step, phase), so a resumed run draws the same):
1. critic D:       D(G(E(x))) + D(G(z)) - 2 D(x) + gp_weight * (penalty at x~G(E(x)) + penalty at x~G(z))
2. code critic CD: CD(E(x)) - CD(z) + gp_weight * penalty at E(x)~z, with E(x) detached: CD learns
                   from the encoder's codes (the reference computed CD(E(x)) while CD was frozen, so
                   that term gave CD no gradient, and reusing that graph raised its in-place errors)
3. E and G:        l1_weight * |G(E(x)) - x|_1 - CD(E(x)) - D(G(E(x))) - D(G(z)), one Adam step for
                   each of E and G (the reference stepped G twice per iteration)
A penalty is (|grad critic(interpolate)| - 1)^2 with the norm over each whole sample (the reference's
baseline took it per voxel). Each phase steps its own optimizer; the Trainer clears every gradient
after each step, so what phase 3 leaves on D and CD is never used.
"""
import torch
import torch.nn.functional as F
from torch import nn

from data.loading import DataInfo
from model import model_dict
from tasks.alpha_wgan_gp.config import AlphaWganGpConfig
from train.phases import Batch, rows_of_micro_batch, stream
from utils import dist
from utils.errors import UsageError

ADAM_BETAS = (0.5, 0.9)  # the paper's code; the WGAN-GP paper's (0, 0.9) without a momentum term also work
NAMES = ("alpha_encoder", "alpha_generator", "alpha_critic", "code_critic")


class AlphaGan(nn.Module):
    """E, G, D and CD as one module: one state_dict ("encoder.*", "generator.*", "critic.*",
    "code_critic.*"), so model.safetensors, state.pt and init_from treat them as one model."""

    def __init__(self, encoder: nn.Module, generator: nn.Module, critic: nn.Module, code_critic: nn.Module):
        super().__init__()
        self.encoder, self.generator, self.critic, self.code_critic = encoder, generator, critic, code_critic


def build_networks(cfg: AlphaWganGpConfig, info: DataInfo) -> AlphaGan:
    if not info.volumetric:
        raise UsageError(f"dataset: task alpha_wgan_gp trains on volumes and {cfg.dataset} holds images; "
                         "use dataset=mni152 or dataset=volume_folder")
    try:
        return AlphaGan(model_dict["alpha_encoder"](info.in_channels, info.image_size, cfg.code_dim, cfg.width),
                        model_dict["alpha_generator"](cfg.code_dim, info.in_channels, info.image_size, cfg.width),
                        model_dict["alpha_critic"](info.in_channels, info.image_size, cfg.width, cfg.critic_norm),
                        model_dict["code_critic"](cfg.code_dim, cfg.code_critic_width, cfg.critic_norm))
    except ValueError as e:
        raise UsageError(f"volume_size: {e}") from None


def codes(cfg: AlphaWganGpConfig, batch: Batch, name: str, device: torch.device) -> torch.Tensor:
    """This micro-batch's rows of a global batch of N(0, I) codes drawn for (seed, step, name): (B, code_dim)."""
    total = batch.size * cfg.grad_accum_steps * dist.world_size()
    every = torch.randn(total, cfg.code_dim, generator=stream(cfg.seed, batch.step, name))
    return rows_of_micro_batch(every, batch.size, batch.index).to(device)


def penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """(|grad critic(eps real + (1 - eps) fake)| - 1)^2, the norm over each whole sample, meaned; fp32."""
    mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
    with torch.autocast(real.device.type, enabled=False):
        grad, = torch.autograd.grad(critic(mixed).float().sum(), mixed, create_graph=True)
        return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def weights(cfg: AlphaWganGpConfig, batch: Batch, name: str, like: torch.Tensor) -> torch.Tensor:
    """The interpolation weights of a penalty, one per sample, drawn for (seed, step, name): (B, 1, ...)."""
    total = batch.size * cfg.grad_accum_steps * dist.world_size()
    every = torch.rand(total, *[1] * (like.ndim - 1), generator=stream(cfg.seed, batch.step, name))
    return rows_of_micro_batch(every, batch.size, batch.index).to(like.device)


def critic_loss(cfg: AlphaWganGpConfig, nets: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict]:
    x = batch.x  # (B, 1, S, S, S) in [-1, 1]
    with torch.no_grad():
        recon = nets.generator(nets.encoder(x))
        fake = nets.generator(codes(cfg, batch, "critic", x.device))
    scores = nets.critic(torch.cat([x, recon, fake])).float()  # (3B,)
    d_real, d_recon, d_fake = scores.split(batch.size)
    gp = (penalty(nets.critic, x, recon, weights(cfg, batch, "critic_gp_recon", x))
          + penalty(nets.critic, x, fake, weights(cfg, batch, "critic_gp_fake", x)))
    loss = d_recon.mean() + d_fake.mean() - 2 * d_real.mean() + cfg.gp_weight * gp
    return loss, {"d_loss": loss, "d_gp": gp, "train_wdist": d_real.mean() - d_fake.mean()}


def code_critic_loss(cfg: AlphaWganGpConfig, nets: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict]:
    with torch.no_grad():
        encoded = nets.encoder(batch.x)  # detached: this phase trains CD only
    prior = codes(cfg, batch, "code_critic", batch.x.device)
    scores = nets.code_critic(torch.cat([encoded, prior])).float()
    cd_encoded, cd_prior = scores.split(batch.size)
    gp = penalty(nets.code_critic, prior, encoded, weights(cfg, batch, "code_critic_gp", prior))
    loss = cd_encoded.mean() - cd_prior.mean() + cfg.gp_weight * gp
    return loss, {"cd_loss": loss, "cd_gp": gp}


def autoencoder_loss(cfg: AlphaWganGpConfig, nets: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict]:
    x = batch.x
    encoded = nets.encoder(x)
    recon = nets.generator(encoded)
    fake = nets.generator(codes(cfg, batch, "autoencoder", x.device))
    l1 = F.l1_loss(recon.float(), x.float())
    d_recon, d_fake = nets.critic(torch.cat([recon, fake])).float().split(batch.size)
    loss = cfg.l1_weight * l1 - nets.code_critic(encoded).float().mean() - d_recon.mean() - d_fake.mean()
    return loss, {"eg_loss": loss, "train_l1": l1}


def norm_forward(cfg: AlphaWganGpConfig, nets: nn.Module, batch: Batch) -> None:
    """What the BatchNorm layers see in training, for their statistics (train/norm_stats.py): the
    encoder on the real volumes, the generator on codes drawn for the purpose, and each critic on
    its input where it has BatchNorm (critic_norm: batch)."""
    from train.norm_stats import batchnorms

    nets.encoder(batch.x)
    z = codes(cfg, batch, "norm_stats", batch.x.device)
    nets.generator(z)
    if batchnorms(nets.critic):
        nets.critic(batch.x)
    if batchnorms(nets.code_critic):
        nets.code_critic(z)


@torch.no_grad()
def validate(cfg: AlphaWganGpConfig, nets: nn.Module, loader, device: torch.device) -> dict:
    """The epoch's measures (measure.py), on the held-out volumes and as many generated ones (codes of
    (seed, "validation"), the same every epoch): val_l1 and val_ssim of the volumes through E then G
    (mean absolute error in [-1, 1] units; SSIM, data range 2), val_mmd (unbiased kernel MMD^2 between
    generated and held-out volumes), val_pair_msssim (the mean 3D MS-SSIM of pairs of generated
    volumes: diversity, near 1 when collapsed) and val_wdist (D's estimate of the Wasserstein distance)."""
    from tasks.alpha_wgan_gp.measure import bandwidth_of, mmd2, pairwise_msssim, pooled, ssim3d
    from train.trainer import to_device

    sums = {k: torch.zeros((), dtype=torch.float64) for k in ("l1", "ssim", "real", "fake", "count")}
    real_features, fake_features, samples = [], [], []
    every = torch.randn(len(loader.dataset), cfg.code_dim, generator=stream(cfg.seed, 0, "validation"))
    for x, _ in loader:
        x = to_device(x, device, bool(cfg.channels_last))
        recon = nets.generator(nets.encoder(x)).float()
        fake = nets.generator(every[int(sums["count"]): int(sums["count"]) + len(x)].to(device)).float()
        sums["l1"] += (recon - x).abs().flatten(1).mean(1).sum().cpu()
        sums["ssim"] += ssim3d(recon, x.float()).sum().cpu()
        sums["real"] += nets.critic(x).float().sum().cpu()
        sums["fake"] += nets.critic(fake).float().sum().cpu()
        sums["count"] += len(x)
        real_features.append(pooled(x).cpu())
        fake_features.append(pooled(fake).cpu())
        samples.append(fake.cpu())
    sums = {k: float(dist.all_reduce_sum(v)) for k, v in sums.items()}
    real = torch.cat(dist.gather_objects(torch.cat(real_features)))  # every process's share, for one MMD
    fake = torch.cat(dist.gather_objects(torch.cat(fake_features)))
    n = max(1, int(sums["count"]))
    return {"val_l1": sums["l1"] / n, "val_ssim": sums["ssim"] / n, "val_mmd": mmd2(fake, real, bandwidth_of(real)),
            "val_pair_msssim": float(pairwise_msssim(torch.cat(samples)).mean()), "val_wdist": (sums["real"] - sums["fake"]) / n}
