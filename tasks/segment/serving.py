"""A segmentation run as a service (inference.py --serve).

    input   FP32 (1, C, X, Y, Z): a case preprocessed as in training (canonical RAS+, the run's spacing,
            each channel's intensity rule); any size, the sliding window covers it
    labels  UINT8 (1, X, Y, Z): the argmax of the Gaussian sliding window (the config's overlap, mirror)

Each request is one whole case, so requests are not batched together (the windows of one case are).
The file route takes a one-channel NIfTI file and answers with the label map in that file's own
geometry (shape, affine, orientation), as `inference.py --input` writes it (infer.py: predict_case).
"""
import tempfile
from pathlib import Path

import numpy as np
import torch

from infer.onnx_backend import INPUT_NAME
from infer.runs import load_run, weights_sha256
from infer.served import FileAnswer, ServedModel, TensorSpec
from tasks.segment.infer import CaseInput, predict_case, probabilities, write_like
from utils.config import Config
from utils.errors import UsageError


def served_segmenter(task, cfg: Config, run: dict, device: torch.device) -> ServedModel:
    if cfg.backend != "torch":
        raise UsageError("--serve: a segmentation run is served by torch (its sliding window runs outside the ONNX graph); "
                         "drop backend=onnxruntime")
    loaded = load_run(run, device, task, cfg.weights)
    names, channels = list(loaded.info.class_names), loaded.info.in_channels
    geometry = run["data"]["geometry"]

    def infer(x: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            labels = [probabilities([loaded], torch.from_numpy(case), device, cfg.overlap, cfg.mirror).argmax(0) for case in x]
        return {"labels": torch.stack(labels).numpy().astype(np.uint8)}

    def predict_file(path: Path) -> FileAnswer:
        if channels != 1:
            raise UsageError(f"the file route takes one file, but run {run['id']} takes {channels} channels; send the "
                             "preprocessed case to /infer instead")
        with torch.inference_mode():
            label, _ = predict_case([loaded], CaseInput("request", [path]), device, cfg.overlap, cfg.mirror)
        with tempfile.TemporaryDirectory(prefix="serve-") as tmp:
            out = Path(tmp) / "labels.nii.gz"
            write_like(label, path, out)
            body = out.read_bytes()
        counts = np.bincount(label.ravel(), minlength=len(names)).tolist()
        return FileAnswer(row={"shape": list(label.shape), "voxels": dict(zip(names, counts))}, body=body, media_type="application/gzip")

    sha = weights_sha256(run, cfg.weights)
    own = loaded.cfg  # the run's own config: its spacing and patch
    preprocessing = {"spacing_mm": list(own.spacing), "channels": geometry["channels"], "orientation": "RAS+ (closest canonical)",
                     "resample": "image trilinear; labels back to the file's grid from trilinear probabilities",
                     "window": {"patch_size": list(own.patch_size), "overlap": cfg.overlap, "mirror": cfg.mirror, "weights": "Gaussian"}}
    return ServedModel(
        run_id=run["id"], weights_sha256=sha, task=task.name,
        inputs=[TensorSpec(INPUT_NAME, "FP32", [1, channels, -1, -1, -1])],
        outputs=[TensorSpec("labels", "UINT8", [1, -1, -1, -1])],
        batchable=False, infer=infer, predict_file=predict_file, file_endings=(geometry.get("file_ending", ".nii.gz"),),
        parameters={"class_names": names, "preprocessing": preprocessing, "backend": "torch", "device": str(device),
                    "weights": cfg.weights})
