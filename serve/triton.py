"""inference.py --export triton [--model-name NAME] [--max-batch N] [--max-delay-ms MS]: a Triton model
repository of the run's ONNX export, the same file byte for byte.

    experiments/<id>/triton/<name>/config.pbtxt    platform onnxruntime_onnx, the input and output names,
                                                   dtypes and dims (batch aside), dynamic batching, and the
                                                   run id and weights sha256 as parameters
    experiments/<id>/triton/<name>/1/model.onnx    a hard link to experiments/<id>/export/model.onnx

Run it with `tritonserver --model-repository experiments/<id>/triton` (README). The export is made
first when the run has none yet (--export onnx, parity checked); the repository is built beside its
place and renamed into it, so a failure leaves the previous one.
"""
import json
import os
import shutil
from pathlib import Path

from infer.onnx_backend import EXPORT_DIR, EXPORT_JSON, ONNX_FILE, checked_file, read_export
from infer.runs import select_run, weights_sha256
from store.runs import EXPERIMENTS
from tasks import configs, task_of
from utils.config import load_config
from utils.errors import UsageError
from utils.files import link_or_copy, write_text

TRITON_DIR = "triton"
TYPES = {"float32": "TYPE_FP32", "float64": "TYPE_FP64", "int64": "TYPE_INT64", "uint8": "TYPE_UINT8"}


def export_main(args, shared) -> int:
    run = select_run(shared().resume)
    task = task_of(run)
    cfg = load_config(args.config, args.overrides, configs, task.name)
    folder = EXPERIMENTS / run["id"]
    sha = weights_sha256(run, cfg.weights)
    if "onnx" in args.export or stale(folder, sha):
        task.export(cfg, run, ["onnx"])
    meta = read_export(folder, run["id"])
    model = checked_file(folder, meta, ONNX_FILE)
    spec = json.loads((folder / EXPORT_DIR / "preprocess.json").read_text())
    repo = write_repository(folder, args.model_name, model, config_text(args, run["id"], sha, spec))
    print(f"wrote {repo}/{args.model_name}/: config.pbtxt, 1/{ONNX_FILE}; serve it with "
          f"tritonserver --model-repository {repo}")
    return 0


def stale(folder: Path, weights_sha256: str) -> bool:
    """Whether the run has no ONNX export of these weights yet."""
    try:
        meta = json.loads((folder / EXPORT_DIR / EXPORT_JSON).read_text())
    except (OSError, ValueError):
        return True
    return "onnx" not in meta.get("formats", {}) or meta.get("weights_sha256") != weights_sha256


def config_text(args, run_id: str, weights_sha256: str, spec: dict) -> str:
    """config.pbtxt: Triton's ModelConfig in protobuf text format."""
    if not all(s.isalnum() or s in "._-" for s in args.model_name):
        raise UsageError("--model-name must be letters, digits and ._-")
    inp, out = spec["input"], spec["output"]

    def tensor(t: dict, dtype: str) -> str:
        dims = ", ".join(str(d) for d in t["shape"][1:])  # the batch dimension is Triton's own (max_batch_size)
        return f'  {{\n    name: "{t["name"]}"\n    data_type: {TYPES[dtype]}\n    dims: [ {dims} ]\n  }}'

    delay_us = int(round(args.max_delay_ms * 1000))
    return "\n".join([
        f'name: "{args.model_name}"', 'platform: "onnxruntime_onnx"', f"max_batch_size: {args.max_batch}",
        "input [", tensor(inp, inp.get("dtype", "float32")), "]",
        "output [", tensor(out, out.get("dtype", "float32")), "]",
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {delay_us}\n}}",
        "instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]",
        f'parameters {{\n  key: "run_id"\n  value: {{ string_value: "{run_id}" }}\n}}',
        f'parameters {{\n  key: "weights_sha256"\n  value: {{ string_value: "{weights_sha256}" }}\n}}', ""])


def write_repository(folder: Path, name: str, model: Path, config: str) -> Path:
    repo = folder / TRITON_DIR
    tmp = folder / f"{TRITON_DIR}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / name / "1").mkdir(parents=True)
        link_or_copy(model, tmp / name / "1" / ONNX_FILE)
        write_text(tmp / name / "config.pbtxt", config)
        old = folder / f"{TRITON_DIR}.old-{os.getpid()}"
        if repo.exists():
            repo.rename(old)
        tmp.rename(repo)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return repo
