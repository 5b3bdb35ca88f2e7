"""Task wgan_gp: a generator and a critic (model_dict's dcgan_generator and dcgan_critic by default)
trained with the Wasserstein loss and the gradient penalty (Gulrajani et al., 2017), n_critic
critic steps per generator step. Everything specific to it is in this package: its keys and
recipe (config.py), its models, losses and validation (training.py), measuring a generator
(measure.py) and what inference.py does with a run, A/B included (report.py).

A critic step takes one batch of real images, so the Trainer's steps, accumulation, saving and
resuming are the same as a classifier's; the generator's phase runs every n_critic steps on codes.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Optional

from tasks.base import Task
from tasks.wgan_gp.config import WganGpConfig
from train.phases import Batch, Phase

if TYPE_CHECKING:
    import torch
    from torch import nn

    from data.loading import Data, DataInfo
    from train.checkpoint import TrainingParts


class WganGp(Task):
    name = "wgan_gp"
    config = WganGpConfig
    modes = {"val_fd": "min", "val_wdist": "min"}  # lower is better for both
    low_precision = False  # fp32 unless asked: the gradient penalty differentiates twice

    def __init__(self):
        self.reference = None  # the measuring classifier of val_fd, loaded on first use (measure.Reference)

    def default_monitor(self, cfg: WganGpConfig) -> str:
        return "val_fd" if cfg.fid_features else "val_wdist"

    # ------------------------------------------------------------ building
    def resolve(self, cfg: WganGpConfig) -> dict:
        """No augmentation; fid_features pinned to a run id; the default DCGAN pair in 3D on volumes."""
        from tasks.wgan_gp.report import find_classifier
        from tasks.wgan_gp.training import gan_names

        generator, critic = gan_names(cfg)
        out = {"augment": "none" if cfg.augment == "auto" else cfg.augment, "generator": generator, "critic": critic}
        if cfg.fid_features is not None:
            out["fid_features"] = find_classifier(cfg.fid_features, cfg)["id"]
        return out

    def prepare_data(self, cfg: WganGpConfig, data: Data) -> Data:
        """The same images, normalised to [-1, 1]."""
        from tasks.wgan_gp.training import UNIT_RANGE

        channels = data.info.in_channels
        info = dataclasses.replace(data.info, mean=UNIT_RANGE * channels, std=UNIT_RANGE * channels)
        data.info = data.train.info = data.val.info = info
        return data

    def model_names(self, cfg: WganGpConfig) -> list[str]:
        from tasks.wgan_gp.training import gan_names

        return list(gan_names(cfg))

    def build_model(self, cfg: WganGpConfig, info: DataInfo) -> nn.Module:
        from tasks.wgan_gp.training import build_pair

        return build_pair(cfg, info)

    def weights_meta(self, cfg: WganGpConfig, info: DataInfo) -> dict:
        from tasks.wgan_gp.training import gan_names

        generator, critic = gan_names(cfg)
        return {"task": "wgan_gp", "generator": generator, "critic": critic, "latent_dim": cfg.latent_dim,
                "data": dataclasses.asdict(info)}

    def build_parts(self, cfg: WganGpConfig, model: nn.Module, steps_per_epoch: int, device: torch.device) -> TrainingParts:
        """Two Adams and two schedules: the critic's steps every batch, the generator's every n_critic."""
        from tasks.wgan_gp.training import ADAM_BETAS
        from train.build import build_ema, build_optimizer, build_scaler, build_scheduler
        from train.checkpoint import TrainingParts

        opt_g = build_optimizer(cfg, model.generator, cfg.lr, ADAM_BETAS)
        opt_c = build_optimizer(cfg, model.critic, cfg.critic_lr or cfg.lr, ADAM_BETAS)
        schedulers = {"generator": build_scheduler(cfg, opt_g, steps_per_epoch / cfg.n_critic),
                      "critic": build_scheduler(cfg, opt_c, steps_per_epoch)}
        return TrainingParts(model, {"generator": opt_g, "critic": opt_c}, schedulers, build_scaler(cfg, device),
                             build_ema(cfg, model))

    def wrap(self, model: nn.Module, wrapper) -> nn.Module:
        """Each model wrapped (DDP, torch.compile) on its own, since each has its own forward."""
        from tasks.wgan_gp.training import GanPair

        return GanPair(wrapper(model.generator), wrapper(model.critic))

    # ------------------------------------------------------------ training
    def phases(self, cfg: WganGpConfig) -> list[Phase]:
        """The critic on every batch; the generator every n_critic steps, on codes (the EMA follows its steps)."""
        from tasks.wgan_gp.training import critic_loss, generator_loss

        return [Phase("critic", lambda pair, batch: critic_loss(cfg, pair, batch), moves_ema=False),
                Phase("generator", lambda pair, batch: generator_loss(cfg, pair, batch), every=cfg.n_critic, uses_data=False)]

    def norm_forward(self, cfg: WganGpConfig, model: nn.Module, batch: Batch) -> None:
        from tasks.wgan_gp.training import norm_forward

        norm_forward(cfg, model, batch)

    def validate_epoch(self, cfg: WganGpConfig, model: nn.Module, loader, device: torch.device) -> dict:
        """val_wdist, and val_fd when fid_features names a classifier."""
        from tasks.wgan_gp.measure import Reference
        from tasks.wgan_gp.training import latent, stream, validate

        row = validate(cfg, model, loader, device)
        if cfg.fid_features:
            self.reference = self.reference or Reference()
            codes = latent(cfg, cfg.fid_samples, stream(cfg.sample_seed, 0, "samples"))
            row["val_fd"] = self.reference.frechet(cfg, model.generator, codes, device)
        return row

    # ------------------------------------------------------------ inference
    def evaluate_run(self, cfg: WganGpConfig, run: dict, input_path: Optional[str]) -> None:
        from tasks.wgan_gp.report import evaluate_run

        evaluate_run(self, cfg, run, input_path)

    def compare(self, cfg: WganGpConfig, run_a: dict, run_b: dict, backends: tuple, input_path: Optional[str]) -> int:
        from tasks.wgan_gp.report import compare

        return compare(self, cfg, run_a, run_b, backends, input_path)
