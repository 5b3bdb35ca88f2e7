"""Export a segmentation run for services (inference.py --export onnx), parity checked.

The network is exported on CPU in fp32 with a dynamic batch and the run's patch as its spatial
shape: the sliding window stays outside the graph (tasks/segment/window.py here,
serve/predict_onnx.py without torch). The gate: every window of the first validation case through
both, logits within MAX_ABS_DIFF, and the case's label map (the whole sliding window, the export
against eager) identical in at least MIN_AGREEMENT of its voxels. preprocess.json says everything
serve/predict_onnx.py needs: the spacing, each channel's intensity rule and numbers, the patch, the
window's overlap and mirroring, the labels. The folder's handling (built beside, renamed into
place, read-only) is the classifier's (tasks/classify/export.py).
"""
import os
import shutil
import sys

import torch

from infer.onnx_backend import EXPORT_DIR, EXPORT_JSON, INPUT_NAME, ONNX_FILE, OUTPUT_NAME, OnnxModel, require_onnx
from infer.runs import LoadedRun, checked_data, load_run, weights_sha256
from store.runs import write_json
from tasks.classify.export import PARITY_JSON, PREPROCESS_JSON, export_model, file_entry, install, remove_stale
from tasks.segment.window import SIGMA_SCALE, sliding_window, windows
from utils.errors import RunFailure, UsageError

MAX_ABS_DIFF = 1e-3     # fp32 logits of a 3D U-Net: thousands of accumulations per voxel
MIN_AGREEMENT = 0.9999  # of the first validation case's voxels, the label map of the export against eager


def export_main(task, cfg, run: dict, formats: list[str]) -> int:
    if set(formats) != {"onnx"}:
        raise UsageError("--export: a segmentation run exports onnx (the network; the sliding window is serve/predict_onnx.py)")
    require_onnx()
    loaded = load_run(run, torch.device("cpu"), task, cfg.weights)
    remove_stale(loaded.folder)
    tmp = loaded.folder / f"export.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        patch = tuple(loaded.cfg.patch_size)
        example = torch.zeros(2, loaded.info.in_channels, *patch)
        details = export_model(loaded.model, "onnx", example, tmp / ONNX_FILE)
        parity = measure_parity(loaded, OnnxModel(tmp / ONNX_FILE), cfg)
        print(f"parity onnx vs eager fp32: max |diff| {parity['max_abs_diff']:.3g} over {parity['windows']} windows (bound "
              f"{MAX_ABS_DIFF:g}); label agreement {100 * parity['label_agreement']:.4f}% of case {parity['case']}")
        if not parity["passed"]:
            raise RunFailure(f"the onnx export of run {run['id']} failed the parity check; it was not kept")
        write_folder(loaded, cfg, {**details, "parity": parity}, tmp)
        final = loaded.folder / EXPORT_DIR
        install(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {final}/: {', '.join(sorted(p.name for p in final.iterdir()))}")
    return 0


@torch.inference_mode()
def measure_parity(loaded: LoadedRun, exported, cfg) -> dict:
    image, _, case = checked_data(loaded).val.cases()[0]
    patch, classes = tuple(loaded.cfg.patch_size), len(loaded.info.class_names)
    tiles = torch.stack([image[:, a:a + patch[0], b:b + patch[1], c:c + patch[2]]
                         for a, b, c in windows(tuple(image.shape[1:]), patch, cfg.overlap)
                         if a + patch[0] <= image.shape[1] and b + patch[1] <= image.shape[2] and c + patch[2] <= image.shape[3]][:8])
    diff = float((loaded.model(tiles) - exported(tiles)).abs().max()) if len(tiles) else 0.0
    eager = sliding_window(loaded.model, image, patch, classes, cfg.overlap).argmax(0)
    served = sliding_window(exported, image, patch, classes, cfg.overlap).argmax(0)
    agreement = float((eager == served).double().mean())
    return {"case": case, "windows": len(tiles), "max_abs_diff": diff, "label_agreement": agreement,
            "bounds": {"max_abs_diff": MAX_ABS_DIFF, "label_agreement": MIN_AGREEMENT},
            "passed": diff <= MAX_ABS_DIFF and agreement >= MIN_AGREEMENT}


def write_folder(loaded: LoadedRun, cfg, details: dict, tmp) -> None:
    sha = weights_sha256(loaded.run, loaded.weights)
    models = {ONNX_FILE: file_entry(tmp / ONNX_FILE)}
    os.chmod(tmp / ONNX_FILE, 0o444)
    write_json(tmp / PARITY_JSON, {"onnx": details["parity"]}, readonly=True)
    write_json(tmp / PREPROCESS_JSON, preprocess_spec(loaded, cfg, sha, models), readonly=True)
    files = {**models, **{n: file_entry(tmp / n) for n in (PREPROCESS_JSON, PARITY_JSON)}}
    write_json(tmp / EXPORT_JSON, {"source_run": loaded.run["id"], "weights": loaded.weights, "weights_sha256": sha,
                                   "formats": {"onnx": {"file": ONNX_FILE, **details}}, "files": files,
                                   "python": sys.version.split()[0]}, readonly=True)


def preprocess_spec(loaded: LoadedRun, cfg, sha: str, models: dict) -> dict:
    """What serve/predict_onnx.py needs to turn a case's files into a label map in their own geometry."""
    geometry, info = loaded.run["data"]["geometry"], loaded.info
    return {
        "source_run": loaded.run["id"], "weights": loaded.weights, "weights_sha256": sha, "files": models,
        "input": {"name": INPUT_NAME, "shape": ["batch", info.in_channels, *loaded.cfg.patch_size], "dtype": "float32",
                  "layout": "NCXYZ"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(info.class_names), *loaded.cfg.patch_size],
                   "meaning": "logits per voxel"},
        "channels": info.in_channels, "class_names": list(info.class_names),
        "segmentation": {
            "file_ending": geometry.get("file_ending", ".nii.gz"), "channel_rules": geometry["channels"],
            "orientation": "the closest canonical one, RAS+ (nibabel.as_closest_canonical)",
            "spacing_mm": list(loaded.cfg.spacing), "patch": list(loaded.cfg.patch_size),
            "resample": "trilinear, align_corners=False (torch's interpolate), to round(shape * spacing / spacing_mm)",
            "order": "intensity rule per channel on the file's voxels, then the resampling",
            "window": {"overlap": cfg.overlap, "mirror": cfg.mirror, "gaussian_sigma": f"{SIGMA_SCALE} x patch side",
                       "padding": "zeros, centred, to at least the patch"},
            "output": "softmax, resampled back trilinearly to the file's canonical grid, argmax, reoriented to the file's axes",
        },
    }
