"""Serving a run's ONNX export with onnxruntime on CPU (backend=onnxruntime), behind the same
model-like callable as a torch model, so evaluation, prediction and --compare stay shared.

A run's export lives in experiments/<id>/export/ (written by a task's export, e.g. tasks/classify/export.py): export.json
records every file's sha256, and a model is checked against it before it is loaded.
"""
import dataclasses
import json
from pathlib import Path

import torch

from infer.runs import LoadedRun, weights_sha256
from store.runs import sha256_file
from train.device import resolve_device
from utils.config import Config
from utils.errors import RunFailure, UsageError

EXPORT_DIR = "export"
EXPORT_JSON = "export.json"
ONNX_FILE = "model.onnx"
INPUT_NAME, OUTPUT_NAME = "input", "logits"
INSTALL = "pip install -r requirements-export.txt"
BACKENDS = {"torch": "", "onnxruntime": "@onnx"}  # backend -> suffix of a run spec in --compare


def require_onnx() -> None:
    """Exit 2 naming the install command when onnx, onnxscript or onnxruntime is missing."""
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            raise UsageError(f"--export onnx needs {name}, which is not installed; {INSTALL}") from None


def onnxruntime():
    """The onnxruntime module, or exit 2 naming the install command."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UsageError(f"onnxruntime is not installed; export and backend=onnxruntime need {INSTALL}") from None
    return ort


def read_export(folder: Path, run_id: str, fmt: str = "onnx") -> dict:
    """export.json of a run folder; exit 2 with the export command when the format was not exported."""
    path = folder / EXPORT_DIR / EXPORT_JSON
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        meta = {}
    except (OSError, ValueError) as e:
        raise RunFailure(f"{path} is unreadable ({e}); export again: python inference.py --export {fmt} resume={run_id}") from None
    if fmt not in meta.get("formats", {}):
        raise UsageError(f"run {run_id} has no {fmt} export; make it with: python inference.py --export {fmt} resume={run_id}")
    return meta


def checked_file(folder: Path, meta: dict, name: str, fmt: str = "onnx") -> Path:
    """export/<name>, after checking its sha256 against export.json (exit 1 on a mismatch)."""
    path = folder / EXPORT_DIR / name
    expected = meta["files"][name]["sha256"]
    found = sha256_file(path) if path.exists() else "missing"
    if found != expected:
        raise RunFailure(f"{path} does not match export.json (expected sha256 {expected}, found {found}); "
                         f"export again: python inference.py --export {fmt} resume={meta['source_run']}")
    return path


class OnnxModel(torch.nn.Module):
    """An onnxruntime CPU session as a model: a float32 batch (N, C, H, W) in, logits (N, classes) out,
    on the input's device. `parameter_count` is the source model's, for reports."""

    def __init__(self, path: Path, parameter_count: int = 0, threads: int = 0):
        super().__init__()
        ort = onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.parameter_count = parameter_count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        return torch.from_numpy(logits).to(x.device)


def with_backend(loaded: LoadedRun, backend: str) -> LoadedRun:
    """A loaded run with its model served by `backend`: torch (eager, as loaded) or onnxruntime
    (the run's checked export/model.onnx, made from the same weights)."""
    if backend == "torch":
        return loaded
    run, weights = loaded.run, loaded.weights
    meta = read_export(loaded.folder, run["id"])
    sha = weights_sha256(run, weights)
    if meta.get("weights_sha256") != sha:
        raise UsageError(f"run {run['id']}'s export was made from weights={meta.get('weights')}, not weights={weights}; "
                         f"use weights={meta.get('weights')}, or export again: python inference.py --export onnx "
                         f"resume={run['id']} weights={weights}")
    params = sum(p.numel() for p in loaded.model.parameters())
    model = OnnxModel(checked_file(loaded.folder, meta, ONNX_FILE), params)
    return dataclasses.replace(loaded, model=model, backend=backend)


def inference_device(cfg: Config) -> torch.device:
    """inference_device, which onnxruntime always reads as cpu (config validation refuses others)."""
    return torch.device("cpu") if cfg.backend == "onnxruntime" else resolve_device(cfg.inference_device, "inference_device")


def split_spec(spec: str, default: str) -> tuple[str, str]:
    """'<run>@onnx' -> (run, 'onnxruntime'); '<run>' -> (run, default)."""
    for backend, suffix in BACKENDS.items():
        if suffix and spec.endswith(suffix):
            return spec[:-len(suffix)], backend
    return spec, default


def label(loaded: LoadedRun) -> str:
    """The run's id, with @onnx when it is served by onnxruntime."""
    return loaded.run["id"] + BACKENDS[loaded.backend]
