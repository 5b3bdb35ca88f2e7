"""Finding a trained run and rebuilding it for use: what inference.py and the A/B report share."""
import dataclasses
import sys
from pathlib import Path
from typing import Optional, Protocol

import torch

from data.loading import Data, DataInfo, build_data, info_from_run
from store.runs import BEST_FILE, EXPERIMENTS, children_of, find_run, list_runs
from store.upgrade import run_format, saved_config
from train.build import load_weights
from train.device import AMP_DTYPES
from utils.config import Config, read_yaml
from utils.errors import RunFailure, UsageError


class Task(Protocol):
    """What rebuilding a run needs of its task (tasks/base.py's Task has these and more)."""
    name: str
    config: type

    def rebuild_model(self, cfg: Config, info: DataInfo) -> torch.nn.Module: ...

    def prepare_data(self, cfg: Config, data: Data) -> Data: ...

    def validate_epoch(self, cfg: Config, model: torch.nn.Module, loader, device: torch.device) -> dict: ...


def is_finished(run: dict) -> bool:
    return run.get("status") == "finished"


def select_run(spec: Optional[str], key: str = "resume") -> dict:
    """The run to use: spec None or 'latest' -> the newest finished run; an id -> that run, which
    must have final weights. Prints a notice when a newer run did not finish, or the run was continued."""
    def refuse(run: dict) -> Optional[str]:
        if run.get("status") in ("finished", "damaged"):  # damaged: load_weights says what differs (exit 1)
            return None
        return (f"has no final weights (status {run.get('status')}); continue it with python train.py "
                f"resume={run['id']}, or pick a finished run (--list)")

    run = find_run(spec or "latest", key, is_finished, "that finished", refuse)
    if spec in (None, "latest"):
        newer = [r for r in list_runs() if r.get("start_utc", "") > run["start_utc"]]
        if newer:
            print(f"note: newer run {newer[-1]['id']} is {newer[-1].get('status')}; using the latest finished run "
                  f"{run['id']}", file=sys.stderr)
    else:
        kids = children_of(run["id"])
        if kids:
            print(f"note: run {run['id']} was continued by {', '.join(kids)}", file=sys.stderr)
    return run


@dataclasses.dataclass
class LoadedRun:
    """A finished run rebuilt from its folder: its run.json, config, data description and model."""
    run: dict
    task: Task
    cfg: Config
    info: DataInfo
    model: torch.nn.Module
    folder: Path
    weights: str = "final"  # which weights file: final or best
    backend: str = "torch"  # what runs `model`: torch, or onnxruntime (infer/onnx_backend.py)

    def recorded_metrics(self) -> dict:
        """The validation metrics run.json records for these weights."""
        return (self.run.get("best") or {}).get("metrics", {}) if self.weights == "best" else self.run.get("metrics") or {}


def weights_sha256(run: dict, weights: str) -> str:
    """The sha256 run.json records for its final (or, weights='best', best) weights."""
    return (run["best"]["weights"] if weights == "best" else run["weights"])["sha256"]


def run_config(run: dict, task: Task) -> Config:
    """A run's config.yaml as its task's config, upgraded from the run's format. An unusable one is
    exit 2, as in train.py resume=<id>: the run named cannot be used, and nothing was written."""
    try:
        return saved_config(read_yaml(EXPERIMENTS / run["id"] / "config.yaml"), {task.name: task.config}, run_format(run))
    except UsageError as e:
        raise UsageError(f"run {run['id']}: its config.yaml is unusable ({e}); choose another run") from None


def load_run(run: dict, device: torch.device, task: Task, weights: str = "final") -> LoadedRun:
    """Rebuild a run of `task` from its folder alone (config.yaml and model.safetensors, or
    best.safetensors for weights='best', checked against run.json's size and sha256), in eval
    mode on `device`."""
    folder = EXPERIMENTS / run["id"]
    file, recorded = "model.safetensors", run.get("weights")
    if weights == "best":
        if not run.get("best"):
            raise UsageError(f"weights: run {run['id']} has no best weights (it predates them); use weights=final")
        file, recorded = BEST_FILE, run["best"]["weights"]
    cfg = run_config(run, task)
    info = info_from_run(run)
    model = task.rebuild_model(cfg, info)
    load_weights(model, folder / file, recorded or {"sha256": "", "size": -1})
    return LoadedRun(run, task, cfg, info, model.to(device).eval(), folder, weights)


def amp_dtype(cfg: Config, device: torch.device) -> Optional[torch.dtype]:
    """Evaluate in the precision the run trained in, where the device supports it."""
    return None if cfg.amp == "fp16" and device.type != "cuda" else AMP_DTYPES[cfg.amp]


def rebuild_data(cfg: Config, task: Task) -> Data:
    """A run's data, split and prepared as in training, without the image-folder cache: inference
    reads the validation images once, and decoding the training split up front would be wasted work."""
    return task.prepare_data(cfg, build_data(dataclasses.replace(cfg, cache_mb=0)))


def checked_data(loaded: LoadedRun) -> Data:
    """The run's data rebuilt from its config, its validation split checked against run.json."""
    data = rebuild_data(loaded.cfg, loaded.task)
    if data.val_hash != loaded.run["val_hash"]:
        raise RunFailure(f"the validation split of run {loaded.run['id']} cannot be rebuilt: the data changed since "
                         "training (validation hash differs); restore the data or evaluate with --input")
    return data


def inference_dir(loaded: LoadedRun, by_backend: bool = False) -> Path:
    """experiments/<id>/inference/, where everything inference writes for a run goes; with by_backend,
    a backend other than torch writes its predictions and metrics in its own sub-folder
    (inference/onnxruntime/), so each backend's files stay side by side."""
    out = loaded.folder / "inference"
    out.mkdir(exist_ok=True)
    if by_backend and loaded.backend != "torch":
        out = out / loaded.backend
        out.mkdir(exist_ok=True)
    return out
