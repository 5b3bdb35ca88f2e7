"""The classification task: cross-entropy on labelled images, accuracy, and everything that is
specific to it, in one place: the model it builds, its training step and running sums, its
validation metrics and which of them is better, what inference produces and what an A/B report
compares (those two live in infer/classify.py and infer/compare.py; this file names them)."""
import contextlib
import dataclasses
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from train import evaluate, to_device
from train.build import build_ema, build_model, build_optimizer, build_scheduler, ema_update
from train.checkpoint import TrainingParts, zero
from utils import dist
from utils.augment import AUTO_POLICY
from utils.config import Config
from utils.dataloader import Data, DataInfo


class Classify:
    name = "classify"
    metrics = ("train_loss", "train_acc", "val_loss", "val_acc")  # what run.json keeps of an epoch
    modes = {"val_acc": "max", "val_loss": "min"}                  # the metrics `monitor` may name, and which way is better

    # ------------------------------------------------------------ building (train.py calls these)
    def model_names(self, cfg: Config) -> list[str]:
        """The model_dict names the task trains."""
        return [cfg.base_model]

    def resolve(self, cfg: Config) -> dict:
        """What `auto` means for this task, besides amp and channels_last (train/build.py)."""
        return {"augment": AUTO_POLICY[cfg.dataset] if cfg.augment == "auto" else cfg.augment}

    def prepare_data(self, cfg: Config, data: Data) -> Data:
        return data

    def build_model(self, cfg: Config, info: DataInfo) -> nn.Module:
        return build_model(cfg, info)

    def weights_meta(self, cfg: Config, info: DataInfo) -> dict:
        """What a weights file says about itself: enough to rebuild the model, nothing run-specific."""
        return {"base_model": cfg.base_model, "dropout": cfg.dropout, "data": dataclasses.asdict(info)}

    def build_parts(self, cfg: Config, model: nn.Module, steps_per_epoch: int, device: torch.device) -> TrainingParts:
        optimizer = build_optimizer(cfg, model)
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
        return TrainingParts(model, {"model": optimizer}, {"model": build_scheduler(cfg, optimizer, steps_per_epoch)},
                             scaler, build_ema(cfg, model))

    def default_monitor(self, cfg: Config) -> str:
        return "val_acc"

    def wrap(self, model: nn.Module, wrapper) -> nn.Module:
        """What the loop calls: the model wrapped by DDP and/or torch.compile."""
        return wrapper(model)

    def new_sums(self) -> dict:
        return {"loss_sum": zero(), "correct": torch.zeros((), dtype=torch.int64), "grad_norm_sum": zero()}

    # ------------------------------------------------------------ the training step (the Trainer calls these)
    def forward_backward(self, loop, x: torch.Tensor, y: torch.Tensor, accum: int, sync: bool) -> None:
        """One micro-batch: forward, loss, backward (gradients summed over `accum` micro-batches).
        y is (B,) class indices, or (B, classes) probabilities when mixup or cutmix mixed the batch."""
        x = to_device(x, loop.device, loop.channels_last)
        y = y.to(loop.device, non_blocking=True)
        # DDP: all-reduce the gradients only on the micro-batch that completes the step.
        no_sync = not sync and hasattr(loop.net, "no_sync")
        with loop.net.no_sync() if no_sync else contextlib.nullcontext():
            with torch.autocast(loop.device.type, dtype=loop.amp_dtype, enabled=loop.amp_dtype is not None):
                logits = loop.net(x)  # (B, classes)
                loss = F.cross_entropy(logits, y, label_smoothing=loop.cfg.label_smoothing)
            loop.parts.scaler.scale(loss / accum if accum > 1 else loss).backward()
        sums = loop.state.sums
        sums["loss_sum"] += loss.detach().float() * len(y)  # no .item(): no host sync per step
        sums["correct"] += (logits.detach().argmax(1) == (y.argmax(1) if y.ndim == 2 else y)).sum()
        loop.state.count += len(y)

    def optimizer_step(self, loop) -> None:
        """Clip (if on), step the optimizer, the schedule and the EMA, clear the gradients."""
        p, cfg = loop.parts, loop.cfg
        if cfg.grad_clip:
            p.scaler.unscale_(p.optimizer)  # clip the true gradients, not the fp16-scaled ones
            norm = torch.nn.utils.clip_grad_norm_(p.model.parameters(), cfg.grad_clip)
            loop.state.sums["grad_norm_sum"] += norm.detach().float()
        p.scaler.step(p.optimizer)
        p.scaler.update()
        p.optimizer.zero_grad(set_to_none=True)
        p.scheduler.step()
        if p.ema is not None:  # the decay warms up (as timm's), so early epochs' EMA is not mostly the initial weights
            g = loop.state.global_step + 1  # the step this call completes
            ema_update(p.ema, p.model, min(cfg.ema_decay, (1 + g) / (10 + g)))

    def train_row(self, loop, count: int) -> dict:
        """The epoch's training metrics from the running sums (summed over processes)."""
        sums = loop.state.sums
        loss_sum, correct = (dist.all_reduce_sum(sums[k].clone()) for k in ("loss_sum", "correct"))
        row = {"train_loss": float(loss_sum) / max(1, count), "train_acc": int(correct) / max(1, count)}
        if loop.cfg.grad_clip:  # the mean norm before clipping; every process has the same gradients
            row["grad_norm"] = float(sums["grad_norm_sum"]) / max(1, loop.sampler.steps_per_epoch())
        return row

    def validate(self, loop) -> dict:
        """Validation loss and accuracy of the EMA weights when on, else of the model."""
        model = loop.parts.ema if loop.parts.ema is not None else loop.net
        out = evaluate(model, loop.val_loader, loop.device, loop.amp_dtype, loop.channels_last)
        correct = (out["pred"] == out["target"]).sum().to(loop.device)
        loss_sum, count, correct = (dist.all_reduce_sum(t) for t in (out["loss_sum"], out["count"], correct))
        return {"val_loss": float(loss_sum) / max(1, int(count)), "val_acc": int(correct) / max(1, int(count))}

    def summary(self, row: dict) -> str:
        """The end of the run's last log line."""
        return f"val_acc {row['val_acc']:.4f}"

    # ------------------------------------------------------------ inference (inference.py calls these)
    def infer(self, cfg: Config, run: dict, input_path: Optional[str]) -> None:
        """Evaluate the run on its validation split, or predict on the images at input_path."""
        from infer.classify import predict, validate
        from infer.onnx_backend import inference_device, with_backend

        device = inference_device(cfg)
        loaded = with_backend(run, device, cfg.weights, cfg.backend)  # eager torch, or the run's ONNX export
        if input_path:
            predict(loaded, Path(input_path), device)
        else:
            validate(loaded, device)

    def compare(self, cfg: Config, run_a: dict, run_b: dict, backends: tuple, input_path: Optional[str]) -> int:
        """The A/B report of two classifiers on the same samples (infer/compare.py), each served by its backend."""
        from infer.compare import compare_main

        return compare_main(cfg, run_a, run_b, backends, input_path)

    def export(self, cfg: Config, run: dict, formats: list[str]) -> int:
        """inference.py --export onnx|pt2: the model for services, parity checked (infer/export.py)."""
        from infer.export import export_main

        return export_main(cfg, run, formats)
