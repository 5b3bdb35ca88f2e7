"""A classifier run as a service (inference.py --serve): samples in, logits, probabilities and classes out.

    input          FP32 (batch, C, S, S), or (batch, C, X, Y, Z) for volumes: preprocessed as in training
    logits         FP32 (batch, classes)
    probabilities  FP32 (batch, classes): the softmax of the logits
    predicted      INT64 (batch,): the class index (parameters.class_names names it)

The file route reads one image or volume as `inference.py --input` does (infer.py: read_input) and
answers with the fields of its predictions.csv row.
"""
from pathlib import Path

import numpy as np
import torch

from data.loading import IMAGE_EXTENSIONS
from data.volumes import VOLUME_EXTENSIONS
from infer.onnx_backend import INPUT_NAME, OUTPUT_NAME, with_backend
from infer.runs import amp_dtype, load_run, weights_sha256
from infer.served import FileAnswer, ServedModel, TensorSpec
from tasks.classify.export import preprocess_spec
from tasks.classify.infer import read_input
from utils.config import Config


def served_classifier(task, cfg: Config, run: dict, device: torch.device) -> ServedModel:
    loaded = with_backend(load_run(run, device, task, cfg.weights), cfg.backend)
    info, dtype = loaded.info, amp_dtype(loaded.cfg, device)
    names = list(info.class_names)
    sample = [info.in_channels, *(info.image_size if info.volumetric else (info.image_size, info.image_size))]

    @torch.inference_mode()
    def infer(x: np.ndarray) -> dict[str, np.ndarray]:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = loaded.model(torch.from_numpy(x).to(device)).float().cpu()
        return {OUTPUT_NAME: logits.numpy(), "probabilities": logits.softmax(1).numpy(), "predicted": logits.argmax(1).numpy()}

    def predict_file(path: Path) -> FileAnswer:
        probs = infer(read_input(path, loaded)[None].numpy())["probabilities"][0]
        k = int(probs.argmax())
        return FileAnswer(row={"predicted": names[k], "confidence": round(float(probs[k]), 6), "probabilities": probs.tolist()})

    sha = weights_sha256(run, cfg.weights)
    spec = preprocess_spec(loaded, sha, {})
    spec.pop("files")
    k = len(names)
    return ServedModel(
        run_id=run["id"], weights_sha256=sha, task=task.name,
        inputs=[TensorSpec(INPUT_NAME, "FP32", [-1, *sample])],
        outputs=[TensorSpec(OUTPUT_NAME, "FP32", [-1, k]), TensorSpec("probabilities", "FP32", [-1, k]),
                 TensorSpec("predicted", "INT64", [-1])],
        batchable=True, infer=infer, predict_file=predict_file,
        file_endings=VOLUME_EXTENSIONS if info.volumetric else IMAGE_EXTENSIONS,
        parameters={"class_names": names, "preprocessing": spec, "backend": loaded.backend, "device": str(device),
                    "weights": cfg.weights})
