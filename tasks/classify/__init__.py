"""Task classify: cross-entropy on labelled samples, accuracy. Everything specific to it is in this
package: its keys (config.py), its model, loss and validation (training.py), what inference.py
does with a run (infer.py), the A/B report (compare.py) and the export for services (export.py)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from tasks.base import Task
from tasks.classify.config import ClassifyConfig
from train.phases import Phase
from utils.errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from data.augment import Augment
    from data.loading import Data, DataInfo
    from infer.served import ServedModel

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # what torchvision's pretrained weights expect


def classifier_name(cfg: ClassifyConfig) -> str:
    """base_model, where the default small_cnn follows the data: on volumes it is small_cnn3d, the same
    adaptive design in 3D, so that `python train.py dataset=mni152` needs no other key."""
    from utils.config import VOLUME_DATASETS

    return "small_cnn3d" if cfg.base_model == "small_cnn" and cfg.dataset in VOLUME_DATASETS else cfg.base_model


class Classify(Task):
    name = "classify"
    config = ClassifyConfig
    modes = {"val_acc": "max", "val_loss": "min"}

    # ------------------------------------------------------------ building
    def resolve(self, cfg: ClassifyConfig) -> dict:
        """augment: auto picks the data set's policy (data/augment.py's AUTO_POLICY); small_cnn on
        volumes is small_cnn3d, as config.yaml records."""
        from data.augment import AUTO_POLICY

        return {"augment": AUTO_POLICY[cfg.dataset] if cfg.augment == "auto" else cfg.augment,
                "base_model": classifier_name(cfg)}

    def prepare_data(self, cfg: ClassifyConfig, data: Data) -> Data:
        """ImageNet's normalisation for pretrained weights on colour images. Unlabelled data are exit 2."""

        if not data.info.class_names:
            raise UsageError(f"data_dir: {cfg.data_dir} holds volumes without class sub-folders, which a classifier cannot "
                             "learn from; put each class in a sub-folder of its own (a flat folder is for task=wgan_gp)")
        if cfg.pretrained and data.info.in_channels == 3:
            info = dataclasses.replace(data.info, mean=IMAGENET_MEAN, std=IMAGENET_STD)
            data.info = data.train.info = data.val.info = info
        return data

    def model_names(self, cfg: ClassifyConfig) -> list[str]:
        return [classifier_name(cfg)]

    def build_model(self, cfg: ClassifyConfig, info: DataInfo) -> nn.Module:
        from tasks.classify.training import build_classifier

        return build_classifier(dataclasses.replace(cfg, base_model=classifier_name(cfg)), info)

    def rebuild_model(self, cfg: ClassifyConfig, info: DataInfo) -> nn.Module:
        """Without ImageNet weights: the run's own are loaded next."""
        return self.build_model(dataclasses.replace(cfg, pretrained=False), info)

    def weights_meta(self, cfg: ClassifyConfig, info: DataInfo) -> dict:
        return {"base_model": classifier_name(cfg), "dropout": cfg.dropout, "data": dataclasses.asdict(info)}

    def augmentation(self, cfg: ClassifyConfig, info: DataInfo) -> Augment:
        """The shared policies, and mixup / cutmix, which mix the labels too."""
        from data.augment import Augment, check_policy

        check_policy(cfg.augment, info.volumetric)
        if info.volumetric and (cfg.random_erasing or cfg.cutmix_alpha):
            raise UsageError("random_erasing, cutmix_alpha: 2D boxes, not for volumes; set them to 0 (mixup_alpha works)")
        return Augment(cfg.seed, cfg.augment, cfg.random_erasing, cfg.mixup_alpha, cfg.cutmix_alpha, len(info.class_names),
                       tuple(cfg.flip_axes))

    # ------------------------------------------------------------ training
    def phases(self, cfg: ClassifyConfig) -> list[Phase]:
        from tasks.classify.training import cross_entropy

        return [Phase("model", lambda net, batch: cross_entropy(net, batch, cfg.label_smoothing))]

    def validate_epoch(self, cfg: ClassifyConfig, model: nn.Module, loader, device: torch.device) -> dict:
        from tasks.classify.training import validate

        return validate(cfg, model, loader, device)

    def member_predictions(self, cfg: ClassifyConfig, runs: list[dict]) -> str:
        """Each member's final weights on the samples it held out (infer.py)."""
        from tasks.classify.infer import held_out_predictions

        return held_out_predictions(self, cfg, runs)

    # ------------------------------------------------------------ inference
    def evaluate_run(self, cfg: ClassifyConfig, run: dict, input_path: Optional[str]) -> None:
        """Evaluate the run on its validation split, or predict on the files at input_path."""
        from infer.onnx_backend import inference_device, with_backend
        from infer.runs import load_run
        from tasks.classify.infer import evaluate_on_split, predict

        if input_path and not Path(input_path).exists():
            raise UsageError(f"--input: '{input_path}' does not exist; give an image file or a folder of them "
                             f"(it would have been predicted with run {run['id']})")
        device = inference_device(cfg)
        loaded = with_backend(load_run(run, device, self, cfg.weights), cfg.backend)  # eager torch, or the run's ONNX export
        if input_path:
            predict(loaded, Path(input_path), device)
        else:
            evaluate_on_split(loaded, device)

    def predict_ensemble(self, cfg: ClassifyConfig, group: dict, runs: list[dict], input_path: str, out_dir: Path) -> int:
        """The mean of the members' probabilities on the files at input_path, and each member's class (infer.py)."""
        from tasks.classify.infer import ensemble_predict

        return ensemble_predict(self, cfg, group, runs, Path(input_path), out_dir)

    def compare(self, cfg: ClassifyConfig, run_a: dict, run_b: dict, backends: tuple, input_path: Optional[str]) -> int:
        """Two classifiers on the same samples, each served by its backend (compare.py)."""
        from tasks.classify.compare import compare_main

        return compare_main(self, cfg, run_a, run_b, backends, input_path)

    def serving(self, cfg: ClassifyConfig, run: dict, device: torch.device) -> ServedModel:
        """Samples in, logits, probabilities and classes out; the file route as --input (serving.py)."""
        from tasks.classify.serving import served_classifier

        return served_classifier(self, cfg, run, device)

    def export(self, cfg: ClassifyConfig, run: dict, formats: list[str]) -> int:
        """ONNX and torch.export, parity checked (export.py)."""
        from tasks.classify.export import export_main

        return export_main(self, cfg, run, formats)
