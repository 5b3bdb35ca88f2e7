"""Export a trained run for services (inference.py --export onnx|pt2), with parity proven at export time.

    experiments/<id>/export/
        model.onnx        torch.onnx.export (the dynamo exporter), dynamic batch dimension
        model.pt2         torch.export.save of torch.export.export, dynamic batch dimension
        preprocess.json   what a service needs to feed the model an image, the model files' sha256
        parity.json       exported vs eager fp32 logits on the first 512 validation samples, per format
        export.json       every file's sha256 and size, the source run and weights, versions, opset

Export is done on CPU in fp32, whatever the run's amp. The folder is built in export.tmp-<pid>/ beside
it and renamed into place; exporting the other format keeps the first one (same weights only). A
failed parity check is exit 1 and leaves the previous export/ as it was.
"""
import json
import os
import re
import shutil
import sys
from pathlib import Path

import torch
from torch import nn

from infer.onnx_backend import EXPORT_DIR, EXPORT_JSON, INPUT_NAME, ONNX_FILE, OUTPUT_NAME, OnnxModel, require_onnx
from infer.runs import LoadedRun, checked_data, load_run, weights_sha256
from store.runs import fsync_dir, link_or_copy, sha256_file, write_json
from tasks.base import Task
from utils.config import Config
from utils.errors import RunFailure

FILES = {"onnx": ONNX_FILE, "pt2": "model.pt2"}
PREPROCESS_JSON, PARITY_JSON = "preprocess.json", "parity.json"
PARITY_SAMPLES = 512    # the first ones of the validation split
MAX_ABS_DIFF = 1e-4     # on fp32 logits
MIN_ARGMAX_AGREEMENT = 1.0
BATCH = 64


def export_main(task: Task, cfg: Config, run: dict, formats: list[str]) -> int:
    """inference.py --export onnx|pt2 ...: export the classifier run `resume` selects, prove parity, install export/."""
    if "onnx" in formats:
        require_onnx()
    loaded = load_run(run, torch.device("cpu"), task, cfg.weights)
    for fmt in dict.fromkeys(formats):
        export_run(loaded, fmt)
    return 0


def export_run(loaded: LoadedRun, fmt: str) -> dict:
    """Export `loaded` (its model on CPU, fp32) to `fmt` under its folder's export/; returns the parity figures."""
    x = parity_inputs(loaded)
    remove_stale(loaded.folder)
    tmp = loaded.folder / f"export.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        path = tmp / FILES[fmt]
        details = export_model(loaded.model, fmt, x[:2] if len(x) > 1 else x.repeat(2, *[1] * (x.ndim - 1)), path)
        parity = measure_parity(loaded.model, load_exported(fmt, path), x)
        print(f"parity {fmt} vs eager fp32 on the first {parity['samples']} validation samples: max |diff| "
              f"{parity['max_abs_diff']:.3g} (bound {MAX_ABS_DIFF:g}), argmax agreement {100 * parity['argmax_agreement']:.2f}% "
              f"(bound {100 * MIN_ARGMAX_AGREEMENT:g}%)")
        if not parity["passed"]:
            raise RunFailure(f"the {fmt} export of run {loaded.run['id']} failed the parity check (max |diff| "
                             f"{parity['max_abs_diff']:.3g} > {MAX_ABS_DIFF:g} or argmax agreement "
                             f"{100 * parity['argmax_agreement']:.2f}% < 100%); it was not kept")
        final = loaded.folder / EXPORT_DIR
        write_folder(loaded, fmt, {**details, "parity": parity}, tmp, final)
        install(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {final}/: {', '.join(sorted(p.name for p in final.iterdir()))}")
    return parity


def parity_inputs(loaded: LoadedRun) -> torch.Tensor:
    """The first PARITY_SAMPLES validation samples, preprocessed as in training: (N, C, S, S) float32."""
    val = checked_data(loaded).val
    x, _ = val.__getitems__([(-1, p) for p in range(min(PARITY_SAMPLES, len(val)))])
    return x.float().contiguous()


def export_model(model: nn.Module, fmt: str, example: torch.Tensor, path: Path) -> dict:
    """Write `model` (in eval mode, on CPU) to `path` as onnx or pt2, its batch dimension dynamic.
    An op with no ONNX form is exit 1, one line naming it. Returns what export.json records."""
    dynamic = ({0: torch.export.Dim("batch", min=1)},)
    try:
        if fmt == "pt2":
            torch.export.save(torch.export.export(model, (example,), dynamic_shapes=dynamic), str(path))
            return {"torch": torch.__version__}
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=dynamic, optimize=True, verbose=False)
    except Exception as e:  # noqa: BLE001 - every exporter failure is reported as one line
        raise RunFailure(f"cannot export {type(model).__name__} to {fmt}: {failure_reason(e)}") from None
    program.save(str(path))
    import onnx
    import onnxruntime
    import onnxscript

    opset = next(o.version for o in program.model_proto.opset_import if o.domain in ("", "ai.onnx"))
    return {"opset": opset, "torch": torch.__version__, "onnx": onnx.__version__, "onnxscript": onnxscript.__version__,
            "onnxruntime": onnxruntime.__version__}


def failure_reason(e: BaseException) -> str:
    """One line out of an exporter exception: the op with no ONNX form when it names one."""
    chain, c = [], e
    while c is not None and len(chain) < 10:
        chain.append(re.sub(r"\x1b\[[0-9;]*m", "", str(c)))
        c = c.__cause__ or c.__context__
    text = "\n".join(chain)
    found = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)', overload='([^']+)'\)>", text)
    if found:
        return (f"the op {found[1]}.{found[2]} has no ONNX form (torch {torch.__version__}); replace it in the model, "
                "or export pt2 instead")
    found = re.search(r"target=([\w.]+)", text)
    if found:
        return f"the op {found[1]} could not be converted ({type(e).__name__}); replace it in the model, or export pt2 instead"
    first = next((line.strip() for line in chain[0].splitlines() if line.strip()), type(e).__name__)
    return f"{type(e).__name__}: {first[:200]}"


def load_exported(fmt: str, path: Path) -> nn.Module:
    """The exported model as a callable: an onnxruntime CPU session, or the pt2 program's module."""
    if fmt == "onnx":
        return OnnxModel(path)
    return torch.export.load(str(path)).module()


@torch.inference_mode()
def measure_parity(eager: nn.Module, exported: nn.Module, x: torch.Tensor) -> dict:
    """fp32 logits of both models on `x`, in batches of BATCH (so the last one exercises the dynamic batch)."""
    a = torch.cat([eager(x[i:i + BATCH]).float() for i in range(0, len(x), BATCH)])
    b = torch.cat([exported(x[i:i + BATCH]).float() for i in range(0, len(x), BATCH)])
    diff = (a - b).abs()
    agreement = float((a.argmax(1) == b.argmax(1)).double().mean())
    max_diff = float(diff.max())
    return {"samples": len(x), "dtype": "float32", "max_abs_diff": max_diff, "mean_abs_diff": float(diff.mean()),
            "argmax_agreement": agreement, "bounds": {"max_abs_diff": MAX_ABS_DIFF, "argmax_agreement": MIN_ARGMAX_AGREEMENT},
            "passed": max_diff <= MAX_ABS_DIFF and agreement >= MIN_ARGMAX_AGREEMENT}


def file_entry(path: Path) -> dict:
    return {"sha256": sha256_file(path), "size": path.stat().st_size}


def write_folder(loaded: LoadedRun, fmt: str, details: dict, tmp: Path, final: Path) -> None:
    """Fill `tmp` beside the new model file: the other format's files from the previous export (when it
    came from the same weights), then parity.json, preprocess.json and export.json, all read-only."""
    sha = weights_sha256(loaded.run, loaded.weights)
    try:
        old = json.loads((final / EXPORT_JSON).read_text())
    except (OSError, ValueError):
        old = {}
    kept = {k: v for k, v in old.get("formats", {}).items() if k != fmt and old.get("weights_sha256") == sha}
    for other in kept:
        link_or_copy(final / FILES[other], tmp / FILES[other])
    formats = dict(sorted({**kept, fmt: {"file": FILES[fmt], **details}}.items()))
    models = {FILES[k]: file_entry(tmp / FILES[k]) for k in formats}
    for name in models:
        os.chmod(tmp / name, 0o444)
    write_json(tmp / PARITY_JSON, {k: v["parity"] for k, v in formats.items()}, readonly=True)
    write_json(tmp / PREPROCESS_JSON, preprocess_spec(loaded, sha, models), readonly=True)
    files = {**models, **{n: file_entry(tmp / n) for n in (PREPROCESS_JSON, PARITY_JSON)}}
    write_json(tmp / EXPORT_JSON, {"source_run": loaded.run["id"], "weights": loaded.weights, "weights_sha256": sha,
                                   "formats": formats, "files": files, "python": sys.version.split()[0]}, readonly=True)


def preprocess_spec(loaded: LoadedRun, weights_sha256: str, models: dict) -> dict:
    """What a service needs to turn an image file into the model's input, as utils/dataloader.load_image
    does it (serve/predict_onnx.py follows it to the bit); for a volume, as utils/volumes.load_volume does."""
    info = loaded.info
    if info.volumetric:
        return volume_spec(loaded, weights_sha256, models)
    side = info.image_size
    return {
        "source_run": loaded.run["id"], "weights": loaded.weights, "weights_sha256": weights_sha256, "files": models,
        "input": {"name": INPUT_NAME, "shape": ["batch", info.in_channels, side, side], "dtype": "float32", "layout": "NCHW"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(info.class_names)], "meaning": "logits (softmax: confidences)"},
        "channels": info.in_channels, "color_mode": "L" if info.in_channels == 1 else "RGB",
        "decode": ("uint8; .png/.jpg/.jpeg as torchvision.io decodes them (a colour PNG to L: (9794 R + 19234 G + 3740 B) >> 15; "
                   "a JPEG to L: the decoder's luma), other files with PIL's convert(color_mode); alpha dropped"),
        "image_size": side,
        "resize": {"to": [side, side], "when": "the image is not already that size", "keep_aspect": False,
                   "method": "bilinear, antialiased, on uint8 (torch's int16 fixed-point weights; width pass, then height pass, "
                             "each rounded to uint8)"},
        "scale": "float32(x) / 255", "mean": list(info.mean), "std": list(info.std), "normalise": "(x - mean) / std per channel",
        "class_names": list(info.class_names),
    }


def volume_spec(loaded: LoadedRun, weights_sha256: str, models: dict) -> dict:
    """preprocess.json for a volume classifier (serve/predict_onnx.py reads .nii.gz with nibabel and numpy)."""
    info, size = loaded.info, list(loaded.info.image_size)
    return {
        "source_run": loaded.run["id"], "weights": loaded.weights, "weights_sha256": weights_sha256, "files": models,
        "input": {"name": INPUT_NAME, "shape": ["batch", info.in_channels, *size], "dtype": "float32", "layout": "NCXYZ"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(info.class_names)], "meaning": "logits (softmax: confidences)"},
        "channels": info.in_channels,
        "volume": {"size": size, "orientation": "the closest canonical one, RAS+ (nibabel.as_closest_canonical); .npy as stored",
                   "intensity": loaded.cfg.intensity, "resample": "trilinear, align_corners=False (as torch's interpolate)",
                   "order": "intensity rule on the file's voxels (float32), then the resampling"},
        "mean": list(info.mean), "std": list(info.std), "normalise": "(x - mean) / std per channel",
        "class_names": list(info.class_names),
    }


def install(tmp: Path, final: Path) -> None:
    """Put the finished `tmp` folder at `final`, replacing a previous export: two renames, then the old
    folder is deleted (a crash between the renames leaves it as export.old-<pid>, which the next export removes)."""
    for p in tmp.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(tmp)
    old = final.with_name(f"export.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def remove_stale(folder: Path) -> None:
    """Delete export.tmp-<pid> and export.old-<pid> folders whose process is gone (a killed export)."""
    for p in list(folder.glob("export.tmp-*")) + list(folder.glob("export.old-*")):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
