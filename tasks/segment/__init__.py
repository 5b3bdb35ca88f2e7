"""Task segment: a label per voxel, nnU-Net's defaults with the template's guarantees. Its keys
(config.py), patches and cases (patches.py), the network, loss and validation (training.py), the
sliding window (window.py), Dice and HD95 (metrics.py), and what inference.py does with a run
(infer.py). docs/segmentation.md is the reference."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from tasks.base import Task
from tasks.segment.config import SegmentConfig
from train.phases import Phase
from utils.errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from data.augment import Augment
    from data.loading import Data, DataInfo
    from infer.served import ServedModel

PATCH_CAP = 64  # patch_size auto: at most this many voxels a side (2 CPU cores; nnU-Net sizes it to a GPU's memory)


def plan_patch(cfg: SegmentConfig, data: Data) -> tuple:
    """patch_size: the configured one, checked; auto: the median case's shape capped at PATCH_CAP,
    each side rounded down to a multiple of what the network halves it by."""
    from model.unet3d import UNet3d

    spacing = tuple(data.geometry["spacing_mm"])
    largest = [max(data.train.source.labels[p].shape[a] for p in data.train.positions) for a in range(3)]
    if cfg.patch_size:
        patch = tuple(cfg.patch_size)
        too_big = [a for a in range(3) if patch[a] > largest[a]]
        if too_big:
            raise UsageError(f"patch_size: {list(patch)} is larger than the largest resampled training case {largest} "
                             f"along axis {too_big[0]}; lower it or use auto")
        divisor = UNet3d.divisor(patch, spacing)
        if any(p % d for p, d in zip(patch, divisor)):
            fit = [max(d, p // d * d) for p, d in zip(patch, divisor)]
            raise UsageError(f"patch_size: {list(patch)} is not a multiple of {list(divisor)} (what the U-Net halves "
                             f"each side by); use {fit}")
        return patch
    patch = tuple(min(PATCH_CAP, int(m)) for m in data.geometry["median_shape"])
    for _ in range(4):  # the divisor depends on the patch: settle
        divisor = UNet3d.divisor(patch, spacing)
        patch = tuple(max(d, p // d * d) for p, d in zip(patch, divisor))
    return patch


class Segment(Task):
    name = "segment"
    config = SegmentConfig
    modes = {"val_dice": "max"}
    voxel_labels = True

    # ------------------------------------------------------------ building
    def resolve(self, cfg: SegmentConfig) -> dict:
        """spacing and patch_size as the data fixed them (prepare_data), for config.yaml."""
        return dict(self.planned) if getattr(self, "planned", None) else {}

    def prepare_data(self, cfg: SegmentConfig, data: Data) -> Data:
        """Patches of the training cases, whole validation cases; the patch is the model's input size."""
        from tasks.segment.patches import CaseSet, PatchSet

        patch = plan_patch(cfg, data)
        spacing = [float(v) for v in data.geometry["spacing_mm"]]
        self.planned = {"patch_size": list(patch), "spacing": spacing}
        info = dataclasses.replace(data.info, image_size=patch)
        train = PatchSet(data.train.source, data.train.positions, patch, cfg.seed, cfg.patches_per_epoch,
                         cfg.oversample_foreground, cfg.augment != "none", len(info.class_names))
        return dataclasses.replace(data, train=train, val=CaseSet(data.val.source, data.val.positions, info.class_names), info=info)

    def model_names(self, cfg: SegmentConfig) -> list[str]:
        return [cfg.base_model]

    def build_model(self, cfg: SegmentConfig, info: DataInfo) -> nn.Module:
        from tasks.segment.training import build_network

        spacing = cfg.spacing or self.planned["spacing"]
        return build_network(dataclasses.replace(cfg, spacing=spacing), info)

    def augmentation(self, cfg: SegmentConfig, info: DataInfo) -> Augment:
        """None from the shared policies: the patches augment themselves (patches.py), from (seed, epoch, index)."""
        from data.augment import Augment

        return Augment(cfg.seed, "none", 0.0)

    # ------------------------------------------------------------ training
    def phases(self, cfg: SegmentConfig) -> list[Phase]:
        from tasks.segment.training import dice_ce

        return [Phase("model", dice_ce)]

    def validate_epoch(self, cfg: SegmentConfig, model: nn.Module, loader, device: torch.device) -> dict:
        from tasks.segment.training import validate

        return validate(cfg, model, loader, device, loader.dataset.class_names)

    def member_predictions(self, cfg: SegmentConfig, runs: list[dict]) -> str:
        """Each member's mean foreground Dice on every case it held out, for a group A/B paired by case (infer.py)."""
        from tasks.segment.infer import held_out_scores

        return held_out_scores(self, cfg, runs)

    def summary(self, row: dict) -> str:
        return "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith("val_dice"))

    # ------------------------------------------------------------ inference
    def evaluate_run(self, cfg: SegmentConfig, run: dict, input_path: Optional[str]) -> None:
        """Dice and HD95 of every validation case, or label maps of the files at input_path (infer.py)."""
        from tasks.segment.infer import evaluate_cases, predict_files

        if input_path:
            predict_files(self, cfg, [run], input_path)
        else:
            evaluate_cases(self, cfg, run)

    def predict_ensemble(self, cfg: SegmentConfig, group: dict, runs: list[dict], input_path: str, out_dir: Path) -> int:
        """The members' mean probabilities, label maps in each input's geometry (infer.py)."""
        from tasks.segment.infer import predict_files

        return predict_files(self, cfg, runs, input_path, out_dir)

    def compare(self, cfg: SegmentConfig, run_a: dict, run_b: dict, backends: tuple, input_path: Optional[str]) -> int:
        """Per-case paired Dice on B's validation cases: Wilcoxon, a bootstrap interval, a verdict (compare.py)."""
        from tasks.segment.compare import compare_main

        return compare_main(self, cfg, run_a, run_b, backends, input_path)

    def serving(self, cfg: SegmentConfig, run: dict, device: torch.device) -> ServedModel:
        """A case in, its label map out by sliding window; the file route as --input (serving.py)."""
        from tasks.segment.serving import served_segmenter

        return served_segmenter(self, cfg, run, device)

    def export(self, cfg: SegmentConfig, run: dict, formats: list[str]) -> int:
        """The network as ONNX, parity checked; serve/predict_onnx.py runs the sliding window (export.py)."""
        from tasks.segment.export import export_main

        return export_main(self, cfg, run, formats)
