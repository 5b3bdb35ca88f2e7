"""The Trainer: runs the epochs of a run and owns every training step.

A step is the same for every task: for each phase the task declares (train/phases.py) that is due,
the phase's loss on each micro-batch under autocast (DDP's no_sync until the last), the scaled
backward, then clipping, the optimizer and schedule steps, zero_grad and the EMA. The task
returns losses and metrics and reads nothing of the Trainer's state.
"""
import contextlib
import math
import signal
import time
from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import nn

from store.runs import BEST_FILE, RunFolder
from train import checkpoint
from train.build import ema_update
from train.checkpoint import TrainingParts, TrainState
from train.device import AMP_DTYPES
from train.norm_stats import batchnorms, recompute_batchnorm
from train.phases import Batch, Phase
from train.progress import progress
from utils import dist
from utils.config import Config
from utils.errors import Interrupted, RunFailure, count, fault_nan, fault_point


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A batch on the device. memory_format is passed only for channels_last: asking for
    contiguous_format re-strides 1-channel batches onto a slower CPU convolution path."""
    if channels_last:
        return x.to(device, non_blocking=True, memory_format=torch.channels_last_3d if x.ndim == 5 else torch.channels_last)
    return x.to(device, non_blocking=True)


def best_epoch(history: list[dict], monitor: str, mode: str = "max") -> int:
    """The epoch number of the best row (highest `monitor` for mode max, lowest for min), the earliest on ties."""
    sign = -1 if mode == "min" else 1
    return max(history, key=lambda r: (sign * r[monitor], -r["epoch"]))["epoch"]


def recorded(row: dict) -> dict:
    """The metrics of an epoch row that run.json keeps: all but the epoch, the time and the learning rates."""
    return {k: v for k, v in row.items() if k not in ("epoch", "seconds") and not k.startswith("lr")}


def in_model_order(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    """The optimizer's parameters in the model's order (the order clipping sums their norms in)."""
    mine = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return [p for p in model.parameters() if id(p) in mine]


class Trainer:
    """Runs epochs [state.epoch, cfg.epochs) of one run: train, validate, save, log.

    Everything it uses is built by train.py and passed in. The position and running sums live in
    `self.state` (a TrainState), so that a save at any step boundary continues exactly.
    """

    def __init__(self, *, cfg: Config, phases: list[Phase], validate_epoch: Callable[[nn.Module, Any, torch.device], dict], mode: str,
                 parts: TrainingParts, net: nn.Module, train_loader, val_loader, device: torch.device, run: Optional[RunFolder],
                 state: TrainState, weights_meta: dict, tb=None, judge: Optional[Callable[[dict], Optional[str]]] = None,
                 norm_forward: Optional[Callable[[nn.Module, Batch], None]] = None):
        self.cfg, self.parts, self.device, self.run = cfg, parts, device, run
        self.judge = judge  # sees each epoch's row; a reason to stop (a sweep's pruner) ends the run there, or None
        self.phases = phases      # the task's losses of a step (train/phases.py)
        self._validate_epoch = validate_epoch  # (model, val_loader, device) -> the task's validation metrics
        self.norm_forward = norm_forward  # (model, batch): what BatchNorm sees in training (train/norm_stats.py); None: no recompute
        self.mode = mode          # which way cfg.monitor is better: max or min
        self.net = net  # parts.model, wrapped by DDP and/or torch.compile: what the loop calls
        self.train_loader, self.val_loader = train_loader, val_loader
        self.sampler = train_loader.batch_sampler
        self.amp_dtype = AMP_DTYPES[cfg.amp]
        self.channels_last = bool(cfg.channels_last)
        self.micro_size = cfg.batch_size // (cfg.grad_accum_steps * dist.world_size())  # samples a process takes per micro-batch
        self.state = state.to(device)
        self.weights_meta = weights_meta  # what model.safetensors and best.safetensors say about the model
        self.tb = tb  # a TensorBoard SummaryWriter, or None
        self.stop_signal = 0  # 130 or 143 once Ctrl-C or SIGTERM asked to stop
        self.ddp = [m for m in net.modules() if isinstance(m, nn.parallel.DistributedDataParallel)]
        self.bar = None  # this epoch's progress (train/progress.py)
        self.clipped = {name: in_model_order(parts.model, o) for name, o in parts.optimizers.items()}
        several = len(parts.optimizers) > 1
        self.norm_names = {name: f"grad_norm_{name}" if several else "grad_norm" for name in parts.optimizers}
        self.losses, self.loss_calls = torch.zeros((), device=device), 0  # this epoch's losses, for the NaN check

    @property
    def history(self) -> list[dict]:
        return self.state.history

    # ------------------------------------------------------------ the loop
    def fit(self) -> dict:
        """Train to cfg.epochs, or until early stopping; returns the last epoch's metrics row."""
        with self._signal_handlers():
            while self.state.epoch < self.cfg.epochs:
                train = self.train_epoch()  # adds its time to state.seconds
                t0 = time.perf_counter()
                val = self.validate_epoch()
                row = {"epoch": self.state.epoch + 1, **train, **val, **self.learning_rates(),
                       "seconds": round(self.state.seconds + time.perf_counter() - t0, 3)}
                self.state.history.append(row)
                self.state.next_epoch()
                if best_epoch(self.state.history, self.cfg.monitor, self.mode) == row["epoch"]:
                    self.save_best(row)
                self.save_state()
                self._report(row)
                if self._stop_early() or self._pruned(row):
                    break
        return self.state.history[-1]

    def train_epoch(self) -> dict:
        """The rest of epoch state.epoch from step state.step; returns its training metrics."""
        state, accum = self.state, self.cfg.grad_accum_steps
        self.sampler.set_epoch(state.epoch, state.step)
        self.net.train()
        self.losses.zero_()
        self.loss_calls = 0
        t0, bar, micro = time.perf_counter(), self._progress_bar(), []
        self.bar = bar  # closed before an interruption's message, which then starts on its own line
        for x, y in self.train_loader:
            micro.append((x, y))
            if len(micro) < accum:
                continue
            self.train_step(micro)
            micro = []
            state.step, state.global_step = state.step + 1, state.global_step + 1
            bar.update()
            if state.step % 10 == 0:  # a NaN is caught within 10 steps, at one host sync per 10
                loss_so_far = self._check_finite()
                if not bar.disable:
                    bar.set_postfix(loss=f"{loss_so_far / max(1, self.loss_calls):.4f}")
            fault_point("step")
            state.seconds, t0 = state.seconds + time.perf_counter() - t0, time.perf_counter()
            if self._stop_requested():
                self._interrupt()
            every = self.cfg.checkpoint_every_steps
            if every and state.global_step % every == 0 and state.step < self.sampler.steps_per_epoch():
                self.save_state()
                t0 = time.perf_counter()  # saving is not training time
        bar.close()
        state.seconds += time.perf_counter() - t0
        self._check_finite()
        return self.epoch_metrics()

    # ------------------------------------------------------------ one optimizer step
    def train_step(self, micro: list[tuple]) -> None:
        """One optimizer step: every phase that is due runs its loss on each micro-batch of the
        step (summing gradients), then steps its optimizer."""
        for phase in self.phases:
            if (self.state.global_step + 1) % phase.every:
                continue
            for index, (x, y) in enumerate(micro):
                self.backward(phase, self.batch(phase, x, y, index), last=index == len(micro) - 1)
            self.optimizer_step(phase)

    def batch(self, phase: Phase, x: torch.Tensor, y: torch.Tensor, index: int) -> Batch:
        """What the phase's loss gets: the micro-batch on the device, or only its place for a phase without data."""
        if not phase.uses_data:
            return Batch(None, None, self.micro_size, index, self.state.global_step)
        return Batch(to_device(x, self.device, self.channels_last), y.to(self.device, non_blocking=True), len(x), index,
                     self.state.global_step)

    def backward(self, phase: Phase, batch: Batch, last: bool) -> None:
        """The phase's loss on one micro-batch under autocast, and its scaled backward; DDP
        all-reduces the gradients only on the micro-batch that completes the step."""
        accum = self.cfg.grad_accum_steps
        with self._no_sync(not last):
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                loss, metrics = phase.loss(self.net, batch)
            if fault_nan():
                loss = loss * float("nan")
            self.parts.scaler.scale(loss / accum if accum > 1 else loss).backward()
        self.state.add(metrics, batch.size)
        self.losses += loss.detach().float()  # no .item(): no host sync per step
        self.loss_calls += 1

    def optimizer_step(self, phase: Phase) -> None:
        """Clip (if on), step the phase's optimizer and schedule, clear every gradient, move the EMA."""
        parts, cfg = self.parts, self.cfg
        optimizer = parts.optimizers[phase.optimizer]
        if cfg.grad_clip:
            parts.scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
            norm = torch.nn.utils.clip_grad_norm_(self.clipped[phase.optimizer], cfg.grad_clip)
            self.state.add({self.norm_names[phase.optimizer]: norm}, 1)  # the mean norm before clipping, per step
        parts.scaler.step(optimizer)
        parts.scaler.update()
        for each in parts.optimizers.values():  # gradients another phase's loss left on these parameters are not used
            each.zero_grad(set_to_none=True)
        parts.schedulers[phase.optimizer].step()
        # The EMA's decay warms up (as timm's), so early epochs' EMA is not mostly the initial weights.
        if parts.ema is not None and phase.moves_ema:
            done = (self.state.global_step + 1) // phase.every  # the phase's steps, this one included
            ema_update(parts.ema, parts.model, min(cfg.ema_decay, (1 + done) / (10 + done)))

    @contextlib.contextmanager
    def _no_sync(self, skip: bool):
        """DDP's no_sync on every DDP-wrapped model when `skip`: gradients accumulate locally."""
        with contextlib.ExitStack() as stack:
            for module in self.ddp if skip else []:
                stack.enter_context(module.no_sync())
            yield

    # ------------------------------------------------------------ the epoch's figures
    def epoch_metrics(self) -> dict:
        """The epoch's training metrics: each summed over its samples on every process, divided by their number."""
        state = self.state
        return {k: float(dist.all_reduce_sum(state.sums[k].clone())) / max(1, int(dist.all_reduce_sum(state.counts[k].clone())))
                for k in state.sums}

    def recompute_norm_stats(self) -> int:
        """BatchNorm statistics of the weights about to be evaluated, exact over the epoch's first
        bn_stats_samples training samples (train/norm_stats.py); returns how many samples."""
        model, cfg, sampler = self.parts.eval_model(), self.cfg, self.sampler
        if not cfg.bn_stats_samples or self.norm_forward is None or not batchnorms(model):
            return 0
        steps = max(1, -(-min(cfg.bn_stats_samples, sampler.n) // cfg.batch_size))
        sampler.set_epoch(self.state.epoch, 0, steps)
        accum, base = cfg.grad_accum_steps, self.state.global_step  # base: a step number no training step of this epoch drew from

        batches = (Batch(to_device(x, self.device, self.channels_last), y.to(self.device, non_blocking=True), len(x),
                         i % accum, base + i // accum) for i, (x, y) in enumerate(self.train_loader))

        def forward(net: nn.Module, batch: Batch) -> None:
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                self.norm_forward(net, batch)
        try:
            return recompute_batchnorm(model, batches, forward)
        finally:
            sampler.set_epoch(self.state.epoch, self.state.step)

    def validate_epoch(self) -> dict:
        """The task's validation metrics of the EMA weights when on, else of the model."""
        self.recompute_norm_stats()
        model = self.parts.ema if self.parts.ema is not None else self.net
        model.eval()
        with torch.no_grad():
            return self._validate_epoch(model, self.val_loader, self.device)

    def learning_rates(self) -> dict:
        """The learning rate of every optimizer: `lr` for one, `lr_<name>` for several."""
        optimizers = self.parts.optimizers
        if len(optimizers) == 1:
            return {"lr": next(iter(optimizers.values())).param_groups[0]["lr"]}
        return {f"lr_{name}": o.param_groups[0]["lr"] for name, o in optimizers.items()}

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
                            metrics=recorded(last))

    def save_best(self, row: dict) -> None:
        """best.safetensors: the evaluated weights of the best epoch so far (rank 0 writes)."""
        if self.run is None:
            return
        weights = checkpoint.write_weights(self.run.folder / BEST_FILE, self.parts.eval_model(), self.weights_meta)
        self.run.write_info(best={"epoch": row["epoch"], "monitor": self.cfg.monitor, "mode": self.mode,
                                  "metrics": recorded(row), "weights": weights})

    def _stop_early(self) -> bool:
        """Whether `monitor` has not improved for early_stop_patience epochs; records why in run.json."""
        patience, history = self.cfg.early_stop_patience, self.state.history
        best = best_epoch(history, self.cfg.monitor, self.mode)
        if not patience or history[-1]["epoch"] - best < patience:
            return False
        value = next(r for r in history if r["epoch"] == best)[self.cfg.monitor]
        reason = f"{self.cfg.monitor} did not improve for {count(patience, 'epoch')} (best {value:.4f} at epoch {best})"
        if self.run is not None:
            self.run.log(f"early stop after epoch {history[-1]['epoch']}: {reason}")
            self.run.write_info(stopped_early={"epoch": history[-1]["epoch"], "reason": reason})
        return True

    def _pruned(self, row: dict) -> bool:
        """Whether `judge` ends the run after this epoch; records why in run.json (pruned: true)."""
        reason = self.judge(row) if self.judge is not None else None
        if reason and self.run is not None:
            self.run.log(f"pruned after epoch {row['epoch']}: {reason}")
            self.run.write_info(stopped_early={"epoch": row["epoch"], "reason": reason}, pruned=True)
        return bool(reason)

    def _report(self, row: dict) -> None:
        """The epoch's line in train.log, and its scalars in TensorBoard."""
        scalars = {k: v for k, v in row.items() if k not in ("epoch", "seconds")}
        if self.tb is not None:
            try:
                for key, value in scalars.items():
                    self.tb.add_scalar(key, value, row["epoch"])
                self.tb.flush()
            except Exception as e:  # noqa: BLE001 - a side output never fails the run
                self.close_tensorboard()
                if self.run is not None:
                    self.run.warn(f"TensorBoard could not be written ({type(e).__name__}: {e}); metrics.csv holds the figures")
        if self.run is not None:
            shown = [f"{k} {v:.2e}" if k.startswith("lr") else f"{k} {v:.4f}" for k, v in scalars.items()]
            self.run.log(f"epoch {row['epoch']}/{self.cfg.epochs}  " + "  ".join(shown) + f"  {row['seconds']:.1f}s")

    def close_tensorboard(self) -> None:
        """Close the TensorBoard writer (if any); a writer that cannot close is dropped."""
        tb, self.tb = self.tb, None
        if tb is not None:
            with contextlib.suppress(Exception):
                tb.close()

    def _progress_bar(self):
        """A bar on a terminal, plain lines every 30 s in a log (train/progress.py), drawn by rank 0."""
        return progress(self.sampler.steps_per_epoch(), self.state.step, f"epoch {self.state.epoch + 1}/{self.cfg.epochs}",
                        self.cfg.progress and dist.is_main())

    # ------------------------------------------------------------ stopping
    def _check_finite(self) -> float:
        """The sum of the epoch's losses so far; a NaN or infinity stops the run (marked failed)."""
        loss_sum = float(self.losses)
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
        if self.bar is not None:
            self.bar.close()
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
        old = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, previous in old.items():
                signal.signal(signum, previous)
