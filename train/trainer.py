"""The Trainer: one class that runs the epochs, and evaluate(), which inference.py shares."""
import contextlib
import math
import signal
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from train.setup import AMP_DTYPES, rng_state
from utils import dist
from utils.config import Config
from utils.errors import Interrupted, RunFailure, fault_point
from utils.runstore import RunFolder, atomic_write


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A batch on the device. memory_format is passed only for channels_last: asking for
    contiguous_format re-strides 1-channel batches and sends CPU convolutions down a path
    that is ~7% slower (measured by bench/bench.py)."""
    if channels_last:
        return x.to(device, non_blocking=True, memory_format=torch.channels_last)
    return x.to(device, non_blocking=True)


def save_state_file(state: dict, path: Path) -> None:
    """torch.save `state` to `path` atomically and durably (runstore.atomic_write), without the
    zip records' CRC32: torch.load does not check it (pytorch#28858), and computing it is 30-40%
    of the save time of a 128 MB state (bench/bench.py). Only `unzip -t` notices its absence."""
    old = torch.serialization.get_crc32_options()  # torch >= 2.6 (pytorch#137735)
    torch.serialization.set_crc32_options(False)
    try:
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    finally:
        torch.serialization.set_crc32_options(old)


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


class Trainer:
    """Runs epochs [start epoch, cfg.epochs) of one run: train, validate, save, log.

    Everything it uses is built by train.py and passed in. Position and running sums live on
    the Trainer, so that a save at any step boundary can be continued exactly.
    """

    def __init__(self, cfg: Config, model: nn.Module, net: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler, scaler: torch.amp.GradScaler, train_loader, val_loader, device: torch.device,
                 run: Optional[RunFolder], start: dict, tb=None):
        self.cfg, self.model, self.net = cfg, model, net  # net: model wrapped by DDP / compile
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.train_loader, self.val_loader, self.device, self.run = train_loader, val_loader, device, run
        self.sampler = train_loader.batch_sampler
        self.amp_dtype = AMP_DTYPES[cfg.amp]
        # Position in the run, and the running sums of the current epoch (restored from state.pt).
        self.epoch, self.step, self.global_step = start["epoch"], start["step"], start["global_step"]
        sums = start["sums"]
        self.loss_sum, self.correct = sums["loss_sum"].to(device), sums["correct"].to(device)
        self.count, self.seconds = sums["count"], sums["seconds"]
        self.history: list[dict] = start["history"]
        self.tb = tb  # a TensorBoard SummaryWriter, or None
        self.stop_signal = 0

    # ------------------------------------------------------------ the loop
    def fit(self) -> dict:
        """Train to cfg.epochs; returns the last epoch's metrics row."""
        with self._signal_handlers():
            while self.epoch < self.cfg.epochs:
                train = self.train_epoch()  # adds its time to self.seconds
                t0 = time.perf_counter()
                val = self.validate()
                row = {"epoch": self.epoch + 1, **train, **val,
                       "lr": self.optimizer.param_groups[0]["lr"],
                       "seconds": round(self.seconds + time.perf_counter() - t0, 3)}
                self.history.append(row)
                self.epoch, self.step = self.epoch + 1, 0
                self.loss_sum.zero_()
                self.correct.zero_()
                self.count, self.seconds = 0, 0.0
                self.save_state()
                if self.tb is not None:
                    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
                        self.tb.add_scalar(key, row[key], row["epoch"])
                    self.tb.flush()
                self._log(f"epoch {row['epoch']}/{self.cfg.epochs}  train_loss {row['train_loss']:.4f}  "
                          f"val_loss {row['val_loss']:.4f}  val_acc {row['val_acc']:.4f}  "
                          f"lr {row['lr']:.2e}  {row['seconds']:.1f}s")
        return self.history[-1]

    def train_epoch(self) -> dict:
        """The rest of epoch self.epoch from step self.step; returns its train loss and accuracy."""
        cfg, accum = self.cfg, self.cfg.grad_accum_steps
        steps = self.sampler.steps_per_epoch()
        self.sampler.set_epoch(self.epoch, self.step)
        self.net.train()
        t0 = time.perf_counter()
        show = cfg.progress and sys.stdout.isatty() and dist.is_main()
        bar = tqdm(total=steps, initial=self.step, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not show, dynamic_ncols=True)
        for i, (x, y) in enumerate(self.train_loader):
            x = to_device(x, self.device, self.cfg.channels_last)
            y = y.to(self.device, non_blocking=True)
            last = (i + 1) % accum == 0
            # DDP: all-reduce the gradients only on the micro-batch that completes the step.
            sync = contextlib.nullcontext() if last or not hasattr(self.net, "no_sync") else self.net.no_sync()
            with sync:
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    logits = self.net(x)  # (B, classes)
                    loss = F.cross_entropy(logits, y)
                self.scaler.scale(loss / accum if accum > 1 else loss).backward()
            self.loss_sum += loss.detach().float() * len(y)  # no .item(): no host sync per step
            self.correct += (logits.detach().argmax(1) == y).sum()
            self.count += len(y)
            if not last:
                continue
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.step, self.global_step = self.step + 1, self.global_step + 1
            bar.update()
            if self.step % 10 == 0:  # a NaN is caught within 10 steps, at one host sync per 10
                loss_so_far = self._check_finite()
                if show:
                    bar.set_postfix(loss=f"{loss_so_far / self.count:.4f}")
            fault_point("step")
            if self._stop_requested():
                self.seconds += time.perf_counter() - t0
                self._interrupt()
            every = cfg.checkpoint_every_steps
            if every and self.global_step % every == 0 and self.step < steps:
                self.seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                self.save_state()
        bar.close()
        self.seconds += time.perf_counter() - t0
        self._check_finite()
        count = int(dist.all_reduce_sum(torch.tensor(self.count, device=self.device)))
        loss_sum, correct = (dist.all_reduce_sum(t.clone()) for t in (self.loss_sum, self.correct))
        return {"train_loss": float(loss_sum) / max(1, count), "train_acc": int(correct) / max(1, count)}

    def validate(self) -> dict:
        out = evaluate(self.net, self.val_loader, self.device, self.amp_dtype, self.cfg.channels_last)
        correct = (out["pred"] == out["target"]).sum().to(self.device)
        loss_sum, count, correct = (dist.all_reduce_sum(t) for t in (out["loss_sum"], out["count"], correct))
        return {"val_loss": float(loss_sum) / max(1, int(count)), "val_acc": int(correct) / max(1, int(count))}

    # ------------------------------------------------------------ saving
    def state_dict(self) -> dict:
        """Everything needed to continue exactly from this step boundary."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,            # the epoch in progress (0-based)
            "step": self.step,              # optimizer steps done in it
            "global_step": self.global_step,
            "sums": {"loss_sum": self.loss_sum.detach().cpu(), "correct": self.correct.cpu(), "count": self.count,
                     "seconds": self.seconds},
            "history": self.history,        # metrics rows of the finished epochs, lineage included
            "world_size": dist.world_size(),
            "rng": dist.gather_objects(rng_state()),  # one entry per process
        }

    def save_state(self) -> None:
        """state.pt (then metrics.csv and run.json) at a step boundary; only rank 0 writes."""
        state = self.state_dict()
        if self.run is None:
            return
        fault_point("save")
        save_state_file(state, self.run.folder / "state.pt")
        self.run.write_metrics(self.history)
        last = self.history[-1] if self.history else {}
        self.run.write_info(epochs_done=self.epoch, steps_done=self.global_step,
                            state={"epoch": self.epoch, "step": self.step},
                            metrics={k: last[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc") if k in last})

    # ------------------------------------------------------------ stopping
    def _check_finite(self) -> float:
        """The epoch's loss sum so far; a NaN or infinity stops the run (marked failed)."""
        loss_sum = float(self.loss_sum)
        if not math.isfinite(loss_sum):
            raise RunFailure(f"the training loss became {float(self.loss_sum)} in epoch {self.epoch + 1} near step "
                             f"{self.step}; lower lr (now {self.cfg.lr}) or check the data. The run is marked failed")
        return loss_sum

    def _stop_requested(self) -> bool:
        """Whether a signal asked to stop. Under DDP every process must stop at the same step, so
        the flag is agreed with an all-reduce every 10 steps (a host sync, hence not every step)."""
        if not dist.enabled():
            return bool(self.stop_signal)
        if self.step % 10:
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
            self.run.log(f"interrupted at epoch {self.epoch + 1}, step {self.step}; state saved. Continue with:\n"
                         f"  python train.py resume={self.run.id} epochs={self.cfg.epochs}")
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

    def _log(self, message: str) -> None:
        if self.run is not None:
            self.run.log(message)

