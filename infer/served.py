"""A run as a service sees it (inference.py --serve, serve/): what its task's `serving` returns.

The server knows nothing of tasks: it feeds `infer` a batch of preprocessed samples in the V2
tensor layout, and `predict_file` the bytes of one file a client sent, written to a temporary file
whose name the server chose. Both run in the server's one model thread.
"""
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# V2 (Open Inference Protocol) datatypes of the numpy dtypes a served model takes or gives
DATATYPES = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32", "uint8": "UINT8", "bool": "BOOL"}
NUMPY_DTYPES = {v: k for k, v in DATATYPES.items()}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str      # a V2 datatype: FP32, INT64, ...
    shape: list[int]   # -1 where any size goes (the batch, a volume's sides)

    def as_json(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class FileAnswer:
    """The file route's answer: a JSON row (a classifier's), or a file (a segmentation's label map)."""
    row: dict = field(default_factory=dict)
    body: bytes = b""
    media_type: str = "application/json"


@dataclass(frozen=True)
class ServedModel:
    run_id: str
    weights_sha256: str
    task: str
    inputs: list[TensorSpec]        # one input: the preprocessed samples, (batch, C, *spatial)
    outputs: list[TensorSpec]
    batchable: bool                 # samples of several requests can share one forward pass (fixed sample shape)
    infer: Callable[[np.ndarray], dict[str, np.ndarray]]   # (B, C, ...) float32 -> {output name: (B, ...)}
    predict_file: Callable[[Path], FileAnswer]             # one file, preprocessed as in training -> its answer
    file_endings: tuple[str, ...]   # what the file route accepts
    parameters: dict                # metadata: class names, preprocessing, backend, device
