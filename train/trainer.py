"""The Trainer: one class that runs the epochs, and evaluate(), which inference shares."""
import contextlib
import math
import signal
import sys
import time
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from train import checkpoint
from train.checkpoint import TrainingParts, TrainState
from train.device import AMP_DTYPES
from utils import dist
from utils.config import Config
from utils.errors import Interrupted, RunFailure, fault_point
from utils.runstore import BEST_FILE, RunFolder


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A batch on the device. memory_format is passed only for channels_last: asking for
    contiguous_format re-strides 1-channel batches onto a slower CPU convolution path."""
    if channels_last:
        return x.to(device, non_blocking=True, memory_format=torch.channels_last)
    return x.to(device, non_blocking=True)


@torch.inference_mode()
def evaluate(model: nn.Module, loader, device: torch.device, amp_dtype: Optional[torch.dtype] = None,
             channels_last: bool = False) -> dict:
    """Loss and predictions of `model` over `loader` (this process's share).

    Returns loss_sum and count (0-d tensors on device) and pred, confidence, target (CPU)."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    preds, confs, targets = [], [], []
    for x, y in loader:
        x, y = to_device(x, device, channels_last), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        logits = logits.float()  # (B, classes)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        conf, pred = logits.softmax(1).max(1)
        preds.append(pred)
        confs.append(conf)
        targets.append(y)
    cat = (lambda ts: torch.cat(ts).cpu()) if preds else (lambda ts: torch.zeros(0))
    return {"loss_sum": loss_sum, "count": torch.tensor(sum(len(t) for t in targets), device=device),
            "pred": cat(preds), "confidence": cat(confs), "target": cat(targets)}


def best_epoch(history: list[dict], monitor: str, mode: str = "max") -> int:
    """The epoch number of the best row (highest `monitor` for mode max, lowest for min), the earliest on ties."""
    sign = -1 if mode == "min" else 1
    return max(history, key=lambda r: (sign * r[monitor], -r["epoch"]))["epoch"]


class Trainer:
    """Runs epochs [state.epoch, cfg.epochs) of one run: train, validate, save, log.

    Everything it uses is built by train.py and passed in. What is specific to the task (the
    step, its running sums, the validation metrics) is the task's (tasks/); the Trainer keeps
    the rest the same for every task: the epochs, accumulation, saving, resuming, signals, NaNs.
    The position and running sums live in `self.state` (a TrainState), so that a save at any
    step boundary continues exactly.
    """

    def __init__(self, *, cfg: Config, task, parts: TrainingParts, net: nn.Module, train_loader, val_loader,
                 device: torch.device, run: Optional[RunFolder], state: TrainState, weights_meta: dict, tb=None):
        self.cfg, self.task, self.parts, self.device, self.run = cfg, task, parts, device, run
        self.net = net  # parts.model, wrapped by DDP and/or torch.compile: what the loop calls
        self.train_loader, self.val_loader = train_loader, val_loader
        self.sampler = train_loader.batch_sampler
        self.amp_dtype = AMP_DTYPES[cfg.amp]
        self.channels_last = cfg.channels_last == "true"
        self.state = state.to(device)
        self.weights_meta = weights_meta  # what model.safetensors and best.safetensors say about the model
        self.tb = tb  # a TensorBoard SummaryWriter, or None
        self.stop_signal = 0  # 130 or 143 once Ctrl-C or SIGTERM asked to stop

    @property
    def history(self) -> list[dict]:
        return self.state.history

    @property
    def mode(self) -> str:
        """Which way `monitor` is better: max or min."""
        return self.task.modes[self.cfg.monitor]

    # ------------------------------------------------------------ the loop
    def fit(self) -> dict:
        """Train to cfg.epochs, or until early stopping; returns the last epoch's metrics row."""
        with self._signal_handlers():
            while self.state.epoch < self.cfg.epochs:
                train = self.train_epoch()  # adds its time to state.seconds
                t0 = time.perf_counter()
                val = self.task.validate(self)
                row = {"epoch": self.state.epoch + 1, **train, **val,
                       "lr": self.parts.optimizer.param_groups[0]["lr"],
                       "seconds": round(self.state.seconds + time.perf_counter() - t0, 3)}
                self.state.history.append(row)
                self.state.next_epoch()
                if best_epoch(self.state.history, self.cfg.monitor, self.mode) == row["epoch"]:
                    self.save_best(row)
                self.save_state()
                self._report(row)
                if self._stop_early():
                    break
        return self.state.history[-1]

    def train_epoch(self) -> dict:
        """The rest of epoch state.epoch from step state.step; returns the task's training metrics."""
        s, accum = self.state, self.cfg.grad_accum_steps
        self.sampler.set_epoch(s.epoch, s.step)
        self.net.train()
        t0 = time.perf_counter()
        bar = self._progress_bar()
        for i, (x, y) in enumerate(self.train_loader):
            last = (i + 1) % accum == 0  # this micro-batch completes an optimizer step
            self.task.forward_backward(self, x, y, accum, sync=last)
            if not last:
                continue
            self.task.optimizer_step(self)
            s.step += 1
            s.global_step += 1
            bar.update()
            if s.step % 10 == 0:  # a NaN is caught within 10 steps, at one host sync per 10
                loss_so_far = self._check_finite()
                if not bar.disable:
                    bar.set_postfix(loss=f"{loss_so_far / s.count:.4f}")
            fault_point("step")
            s.seconds, t0 = s.seconds + time.perf_counter() - t0, time.perf_counter()
            if self._stop_requested():
                self._interrupt()
            every = self.cfg.checkpoint_every_steps
            if every and s.global_step % every == 0 and s.step < self.sampler.steps_per_epoch():
                self.save_state()
                t0 = time.perf_counter()  # saving is not training time
        bar.close()
        s.seconds += time.perf_counter() - t0
        self._check_finite()
        count = int(dist.all_reduce_sum(torch.tensor(s.count, device=self.device)))
        return self.task.train_row(self, count)

    # ------------------------------------------------------------ saving and reporting
    def save_state(self) -> None:
        """state.pt, then metrics.csv and run.json, at a step boundary; only rank 0 writes."""
        saved = checkpoint.state_dict(self.state, self.parts)  # every rank: it gathers the RNG states
        if self.run is None:
            return
        fault_point("save")
        checkpoint.write_state(self.run.folder, saved)
        self.run.write_metrics(self.state.history)
        last = self.state.history[-1] if self.state.history else {}
        self.run.write_info(epochs_done=self.state.epoch, steps_done=self.state.global_step,
                            state={"epoch": self.state.epoch, "step": self.state.step},
                            metrics={k: last[k] for k in self.task.metrics if k in last})

    def save_best(self, row: dict) -> None:
        """best.safetensors: the evaluated weights of the best epoch so far (rank 0 writes)."""
        if self.run is None:
            return
        weights = checkpoint.write_weights(self.run.folder / BEST_FILE, self.parts.eval_model(), self.weights_meta)
        self.run.write_info(best={"epoch": row["epoch"], "monitor": self.cfg.monitor, "mode": self.mode,
                                  "metrics": {k: row[k] for k in self.task.metrics if k in row}, "weights": weights})

    def _stop_early(self) -> bool:
        """Whether `monitor` has not improved for early_stop_patience epochs; records why in run.json."""
        patience, history = self.cfg.early_stop_patience, self.state.history
        best = best_epoch(history, self.cfg.monitor, self.mode)
        if not patience or history[-1]["epoch"] - best < patience:
            return False
        value = next(r for r in history if r["epoch"] == best)[self.cfg.monitor]
        reason = f"{self.cfg.monitor} did not improve for {patience} epochs (best {value:.4f} at epoch {best})"
        if self.run is not None:
            self.run.log(f"early stop after epoch {history[-1]['epoch']}: {reason}")
            self.run.write_info(stopped_early={"epoch": history[-1]["epoch"], "reason": reason})
        return True

    def _report(self, row: dict) -> None:
        """The epoch's line in train.log, and its scalars in TensorBoard."""
        scalars = {k: v for k, v in row.items() if k not in ("epoch", "seconds")}
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(key, value, row["epoch"])
            self.tb.flush()
        if self.run is not None:
            shown = [f"{k} {v:.2e}" if k == "lr" else f"{k} {v:.4f}" for k, v in scalars.items() if not k.startswith("train_acc")]
            self.run.log(f"epoch {row['epoch']}/{self.cfg.epochs}  " + "  ".join(shown) + f"  {row['seconds']:.1f}s")

    def _progress_bar(self) -> tqdm:
        """A bar on a terminal only (never in logs), drawn by rank 0."""
        show = self.cfg.progress and sys.stdout.isatty() and dist.is_main()
        return tqdm(total=self.sampler.steps_per_epoch(), initial=self.state.step, leave=False, disable=not show,
                    desc=f"epoch {self.state.epoch + 1}/{self.cfg.epochs}", dynamic_ncols=True)

    # ------------------------------------------------------------ stopping
    def _check_finite(self) -> float:
        """The epoch's loss sum so far; a NaN or infinity stops the run (marked failed)."""
        loss_sum = float(self.state.sums["loss_sum"])
        if not math.isfinite(loss_sum):
            raise RunFailure(f"the training loss became {loss_sum} in epoch {self.state.epoch + 1} near step "
                             f"{self.state.step}; lower lr (now {self.cfg.lr}) or check the data. The run is marked failed")
        return loss_sum

    def _stop_requested(self) -> bool:
        """Whether a signal asked to stop. Under DDP every process must stop at the same step, so
        the flag is agreed with an all-reduce every 10 steps (a host sync, hence not every step)."""
        if not dist.enabled():
            return bool(self.stop_signal)
        if self.state.step % 10:
            return False
        flag = dist.all_reduce_max(torch.tensor(self.stop_signal, device=self.device))
        self.stop_signal = int(flag)
        return bool(self.stop_signal)

    def _interrupt(self) -> None:
        """Save at this step boundary, mark the run interrupted, say how to continue, exit 130/143."""
        code = self.stop_signal
        self._check_finite()
        self.save_state()
        if self.run is not None:
            self.run.log(f"interrupted at epoch {self.state.epoch + 1}, step {self.state.step}; state saved. "
                         f"Continue with:\n  python train.py resume={self.run.id} epochs={self.cfg.epochs}")
            self.run.close("interrupted")
        raise Interrupted(code)

    @contextlib.contextmanager
    def _signal_handlers(self):
        """Ctrl-C or SIGTERM: stop at the next step boundary; a second Ctrl-C stops at once."""
        def handler(signum, frame):
            if signum == signal.SIGINT and self.stop_signal:
                raise KeyboardInterrupt
            self.stop_signal = 130 if signum == signal.SIGINT else 143
        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)
