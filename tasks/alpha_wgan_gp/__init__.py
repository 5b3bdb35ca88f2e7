"""Task alpha_wgan_gp: the 3D alpha-WGAN-GP of Kwon, Han and Kim (MICCAI 2019), an auto-encoding GAN
of four networks (encoder E, generator G, critic D, code critic CD; model_dict's alpha_* and
code_critic), trained in three phases per iteration with the reference code's defects fixed
(training.py says which and how). Everything specific to it is in this package: its keys and
recipe (config.py), its networks' assembly, losses and validation (training.py).

Each phase takes the iteration's batch and steps its own optimizer: "critic" (D), "code_critic"
(CD) and "autoencoder" (E and G: one Adam over both, which is two Adams, Adam being per parameter).
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Optional

from tasks.alpha_wgan_gp.config import AlphaWganGpConfig
from tasks.base import Task
from train.phases import Batch, Phase

if TYPE_CHECKING:
    import torch
    from torch import nn

    from data.loading import Data, DataInfo
    from train.checkpoint import TrainingParts


class AlphaWganGp(Task):
    name = "alpha_wgan_gp"
    config = AlphaWganGpConfig
    # val_pair_msssim (diversity) is recorded too, but is no monitor: noise has the lowest
    modes = {"val_l1": "min", "val_mmd": "min", "val_ssim": "max", "val_wdist": "min"}
    low_precision = False  # fp32 unless asked: the penalties differentiate twice
    compares_with = ("wgan_gp",)  # a 3D wgan_gp run on the same volumes: the paper's ablation (report.compare)

    # ------------------------------------------------------------ building
    def resolve(self, cfg: AlphaWganGpConfig) -> dict:
        """Left-right flips alone (volume_flip: the training patches of mni152 are the left hemisphere's, the
        held-out ones the right's)."""
        return {"augment": "volume_flip" if cfg.augment == "auto" else cfg.augment}

    def prepare_data(self, cfg: AlphaWganGpConfig, data: Data) -> Data:
        """The volumes normalised to [-1, 1], the generator's tanh range."""
        from tasks.wgan_gp.training import UNIT_RANGE

        info = dataclasses.replace(data.info, mean=UNIT_RANGE, std=UNIT_RANGE)
        data.info = data.train.info = data.val.info = info
        return data

    def model_names(self, cfg: AlphaWganGpConfig) -> list[str]:
        from tasks.alpha_wgan_gp.training import NAMES

        return list(NAMES)

    def build_model(self, cfg: AlphaWganGpConfig, info: DataInfo) -> nn.Module:
        from tasks.alpha_wgan_gp.training import build_networks

        return build_networks(cfg, info)

    def build_parts(self, cfg: AlphaWganGpConfig, model: nn.Module, steps_per_epoch: int, device: torch.device) -> TrainingParts:
        """Three optimizers over four networks, each with its schedule: critic (D), code_critic (CD), autoencoder (E and G)."""
        from torch import nn

        from tasks.alpha_wgan_gp.training import ADAM_BETAS
        from train.build import build_ema, build_optimizer, build_scaler, build_scheduler
        from train.checkpoint import TrainingParts

        cfg = dataclasses.replace(cfg, optimizer="adam")  # the paper's; weight_decay stays the key's
        groups = {"critic": model.critic, "code_critic": model.code_critic,
                  "autoencoder": nn.ModuleList([model.encoder, model.generator])}
        optimizers = {name: build_optimizer(cfg, part, cfg.lr, ADAM_BETAS) for name, part in groups.items()}
        schedulers = {name: build_scheduler(cfg, opt, steps_per_epoch) for name, opt in optimizers.items()}
        return TrainingParts(model, optimizers, schedulers, build_scaler(cfg, device), build_ema(cfg, model))

    def wrap(self, model: nn.Module, wrapper) -> nn.Module:
        """Each network wrapped (DDP, torch.compile) on its own, since each has its own forward."""
        from tasks.alpha_wgan_gp.training import AlphaGan

        return AlphaGan(wrapper(model.encoder), wrapper(model.generator), wrapper(model.critic), wrapper(model.code_critic))

    # ------------------------------------------------------------ training
    def phases(self, cfg: AlphaWganGpConfig) -> list[Phase]:
        """D, then CD, then E and G, each on the iteration's batch (the EMA follows the E and G step)."""
        from tasks.alpha_wgan_gp.training import autoencoder_loss, code_critic_loss, critic_loss

        return [Phase("critic", lambda nets, batch: critic_loss(cfg, nets, batch), moves_ema=False),
                Phase("code_critic", lambda nets, batch: code_critic_loss(cfg, nets, batch), moves_ema=False),
                Phase("autoencoder", lambda nets, batch: autoencoder_loss(cfg, nets, batch))]

    def norm_forward(self, cfg: AlphaWganGpConfig, model: nn.Module, batch: Batch) -> None:
        from tasks.alpha_wgan_gp.training import norm_forward

        norm_forward(cfg, model, batch)

    def validate_epoch(self, cfg: AlphaWganGpConfig, model: nn.Module, loader, device: torch.device) -> dict:
        from tasks.alpha_wgan_gp.training import validate

        return validate(cfg, model, loader, device)

    # ------------------------------------------------------------ inference
    def evaluate_run(self, cfg: AlphaWganGpConfig, run: dict, input_path: Optional[str]) -> None:
        from tasks.alpha_wgan_gp.report import evaluate_run

        evaluate_run(self, cfg, run, input_path)

    def compare(self, cfg: AlphaWganGpConfig, run_a: dict, run_b: dict, backends: tuple, input_path: Optional[str]) -> int:
        from tasks.alpha_wgan_gp.report import compare

        return compare(self, cfg, run_a, run_b, backends, input_path)
