"""The HTTP side of inference.py --serve: the Open Inference Protocol (KServe V2) routes, on Starlette.

    GET  /v2/health/live, /v2/health/ready, /v2                 liveness, readiness, server metadata
    GET  /v2/models/<name>[/versions/<run id>][/ready]         model metadata (run id, weights sha256, shapes,
                                                               class names, preprocessing), readiness
    POST /v2/models/<name>[/versions/<run id>]/infer           V2 tensors: JSON, or Triton's binary extension
    POST /v2/models/<name>/predict?filename=<name.ext>         the bytes of one file, read as inference.py --input

Every response carries X-Run-Id, and an infer's `model_version` is the run that computed it. A bad
request is 4xx with {"error": "..."} and never reaches the model: 401 without the token (when one is
set), 404 for another model or version, 413 over the body limit, 400 for malformed JSON or a wrong
name, shape or datatype. No route reads a path from a request: an uploaded file is written under a
name the server chooses, of which only the ending comes from `filename`.
"""
import asyncio
import hmac
import json
import re
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from infer.served import NUMPY_DTYPES, ServedModel, TensorSpec
from serve.batching import Batcher
from serve.slot import Slot
from utils.errors import UsageError

FILENAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,200}$")
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:+-]{1,128}$")
BINARY_HEADER = "inference-header-content-length"


class Refusal(Exception):
    """A request the server answers with `status` and one line, without touching the model."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Service:
    slot: Slot
    batcher: Batcher
    model_name: str
    max_body: int                  # bytes
    token: Optional[str] = None    # every request must carry "Authorization: Bearer <token>"
    shadow: Optional[object] = None  # serve/shadow.py Shadow, or None
    pool: Optional[object] = None  # the model thread, for the file route


# ---------------------------------------------------------------- reading a request
async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) past `limit` bytes, before it is all read where Content-Length says so."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise Refusal(413, f"the body is {int(declared)} bytes; the limit is {limit} (--max-body-mb)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refusal(413, f"the body is over {limit} bytes, the limit (--max-body-mb)")
        chunks.append(chunk)
    return b"".join(chunks)


def split_body(body: bytes, header_length: Optional[str]) -> tuple[dict, bytes]:
    """The JSON part of an infer request, and the binary tensors after it (Triton's binary extension)."""
    n = len(body)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise Refusal(400, f"Inference-Header-Content-Length {header_length!r} does not fit a body of {len(body)} bytes")
        n = int(header_length)
    try:
        header = json.loads(body[:n])
    except (ValueError, UnicodeDecodeError) as e:
        raise Refusal(400, f"the request is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise Refusal(400, "the request must be a JSON object with an 'inputs' list")
    return header, body[n:]


def input_array(header: dict, blob: bytes, spec: TensorSpec) -> np.ndarray:
    """The one input tensor of a V2 request, checked against the model's: name, datatype, shape, size."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise Refusal(400, f"'inputs' must be a list of one tensor, named '{spec.name}'")
    t = inputs[0]
    if t.get("name") != spec.name:
        raise Refusal(400, f"unknown input {t.get('name')!r}; this model takes '{spec.name}'")
    if t.get("datatype") != spec.datatype:
        raise Refusal(400, f"input '{spec.name}' is {spec.datatype}, not {t.get('datatype')!r}")
    shape = t.get("shape")
    if (not isinstance(shape, list) or len(shape) != len(spec.shape) or not all(isinstance(s, int) and s > 0 for s in shape)
            or any(w != -1 and s != w for s, w in zip(shape, spec.shape))):
        raise Refusal(400, f"input '{spec.name}' has shape {shape}; this model takes {spec.shape} (-1: any size)")
    return tensor_data(t, blob, NUMPY_DTYPES[spec.datatype], shape)


def tensor_data(t: dict, blob: bytes, dtype: str, shape: list) -> np.ndarray:
    count = int(np.prod(shape))
    size = parameters(t).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != count * np.dtype(dtype).itemsize or size > len(blob):
            raise Refusal(400, f"binary_data_size {size!r} does not hold {count} {dtype} values of shape {shape}")
        return np.frombuffer(blob[:size], dtype=dtype).reshape(shape).copy()  # writable, as torch wants
    try:
        x = np.asarray(t.get("data"), dtype=dtype)
    except (TypeError, ValueError) as e:
        raise Refusal(400, f"input data is not a list of {dtype} numbers ({e})") from None
    if x.size != count:
        raise Refusal(400, f"input data holds {x.size} values; shape {shape} needs {count}")
    return x.reshape(shape)


def requested_outputs(header: dict, model: ServedModel) -> list[tuple[TensorSpec, bool]]:
    """The outputs asked for (all when none are named), each with whether it goes back as binary."""
    specs = {o.name: o for o in model.outputs}
    default_binary = bool(parameters(header).get("binary_data_output", False))
    asked = header.get("outputs")
    if asked is None:
        return [(o, default_binary) for o in model.outputs]
    if not isinstance(asked, list) or not all(isinstance(o, dict) and o.get("name") in specs for o in asked):
        raise Refusal(400, f"'outputs' must name some of {', '.join(specs)}")
    return [(specs[o["name"]], bool(parameters(o).get("binary_data", default_binary))) for o in asked]


def parameters(part: dict) -> dict:
    """A request part's V2 `parameters`: an object, or absent."""
    found = part.get("parameters")
    if found is None:
        return {}
    if not isinstance(found, dict):
        raise Refusal(400, f"'parameters' must be a JSON object, not {type(found).__name__}")
    return found


def request_id(header: dict, request: Request) -> str:
    rid = header.get("id") or request.headers.get("x-request-id") or uuid.uuid4().hex
    if not isinstance(rid, str) or not REQUEST_ID_RE.match(rid):
        raise Refusal(400, "the request id must be 1 to 128 letters, digits or ._:+-")
    return rid


# ---------------------------------------------------------------- answering
def infer_response(model_name: str, rid: str, answer, outputs: list[tuple[TensorSpec, bool]]) -> Response:
    entries, blobs = [], []
    for spec, binary in outputs:
        a = np.ascontiguousarray(answer.outputs[spec.name])
        entry = {"name": spec.name, "datatype": spec.datatype, "shape": list(a.shape)}
        if binary:
            blobs.append(a.tobytes())
            entry["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            entry["data"] = a.ravel().tolist()
        entries.append(entry)
    body = json.dumps({"model_name": model_name, "model_version": answer.model.run_id, "id": rid, "outputs": entries}).encode()
    headers = {"X-Run-Id": answer.model.run_id}
    if not blobs:
        return Response(body, media_type="application/json", headers=headers)
    headers["Inference-Header-Content-Length"] = str(len(body))
    return Response(body + b"".join(blobs), media_type="application/octet-stream", headers=headers)


def metadata(service: Service) -> dict:
    model = service.slot.current
    platform = "onnxruntime_onnx" if model.parameters.get("backend") == "onnxruntime" else "pytorch_torch"
    return {"name": service.model_name, "versions": [model.run_id], "platform": platform,
            "inputs": [t.as_json() for t in model.inputs], "outputs": [t.as_json() for t in model.outputs],
            "parameters": {"run_id": model.run_id, "weights_sha256": model.weights_sha256, "task": model.task,
                           "alias": service.slot.alias, "refused": service.slot.refused, "batching": {
                               "max_batch": service.batcher.max_batch if model.batchable else 1,
                               "max_delay_ms": 1000 * service.batcher.max_delay},
                           "file_route": {"endings": list(model.file_endings)}, **model.parameters}}


def check_model(service: Service, request: Request) -> None:
    name, version = request.path_params["name"], request.path_params.get("version")
    if name != service.model_name:
        raise Refusal(404, f"unknown model {name!r}; this server serves '{service.model_name}'")
    if version is not None and version != service.slot.current.run_id:
        raise Refusal(404, f"version {version!r} is not served; the version is the run id, now {service.slot.current.run_id}")


# ---------------------------------------------------------------- routes
def build_app(service: Service, lifespan=None) -> Starlette:
    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def server_metadata(request: Request) -> Response:
        return JSONResponse({"name": "pytorch-template", "version": "2", "extensions": ["binary_tensor_data"]})

    async def model_metadata(request: Request) -> Response:
        check_model(service, request)
        return JSONResponse(metadata(service))

    async def infer(request: Request) -> Response:
        check_model(service, request)
        service.batcher.arriving += 1  # a batch being collected waits for this one
        try:
            header, blob = split_body(await read_body(request, service.max_body), request.headers.get(BINARY_HEADER))
            rid, model = request_id(header, request), service.slot.current
            x = input_array(header, blob, model.inputs[0])
            outputs = requested_outputs(header, model)
        finally:
            service.batcher.arriving -= 1
        t0 = time.perf_counter()
        answer = await service.batcher.submit(np.ascontiguousarray(x))
        if service.shadow is not None:
            service.shadow.observe_tensor(rid, x, answer, 1000 * (time.perf_counter() - t0))
        return infer_response(service.model_name, rid, answer, outputs)

    async def predict(request: Request) -> Response:
        check_model(service, request)
        return await predict_file(service, request)

    routes = [Route("/v2/health/live", live), Route("/v2/health/ready", live), Route("/v2", server_metadata),
              Route("/v2/models/{name}", model_metadata), Route("/v2/models/{name}/ready", model_metadata),
              Route("/v2/models/{name}/versions/{version}", model_metadata),
              Route("/v2/models/{name}/versions/{version}/ready", model_metadata),
              Route("/v2/models/{name}/infer", infer, methods=["POST"]),
              Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
              Route("/v2/models/{name}/predict", predict, methods=["POST"])]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={Refusal: refused, 404: not_found, 405: not_allowed})
    app.add_middleware(Guard, service=service)
    return app


async def predict_file(service: Service, request: Request) -> Response:
    """The file route: the body is the file; `filename` gives only its ending (and the row's name)."""
    filename = request.query_params.get("filename", "")
    model = service.slot.current
    ending = next((e for e in sorted(model.file_endings, key=len, reverse=True) if filename.lower().endswith(e)), None)
    if not FILENAME_RE.match(filename) or ending is None:
        raise Refusal(400, f"filename={filename!r}: give the file's name, ending in one of {', '.join(model.file_endings)}")
    body = await read_body(request, service.max_body)
    rid = request_id({}, request)
    tmp = tempfile.TemporaryDirectory(prefix="serve-")
    path = Path(tmp.name) / f"upload{ending}"
    path.write_bytes(body)
    t0 = time.perf_counter()
    try:
        answer = await asyncio.get_running_loop().run_in_executor(service.pool, model.predict_file, path)
    except UsageError as e:
        tmp.cleanup()
        raise Refusal(400, f"{filename}: {str(e).split(': ', 1)[-1]}") from None
    except Exception:  # noqa: BLE001 - a decoder's own error: the file is not what its ending says
        tmp.cleanup()
        raise Refusal(400, f"{filename}: not a readable {ending} file (the decoder refused it)") from None
    ms = 1000 * (time.perf_counter() - t0)
    headers = {"X-Run-Id": model.run_id, "X-Request-Id": rid}
    if service.shadow is not None:
        service.shadow.observe_file(rid, path, tmp, model, answer, ms)
    else:
        tmp.cleanup()
    if answer.body:
        return Response(answer.body, media_type=answer.media_type, headers={**headers, "X-Prediction": json.dumps(answer.row)})
    return JSONResponse({"model_name": service.model_name, "model_version": model.run_id, "id": rid, "path": filename, **answer.row},
                        headers=headers)


async def refused(request: Request, e: Refusal) -> Response:
    return JSONResponse({"error": str(e)}, status_code=e.status)


async def not_found(request: Request, e) -> Response:
    return JSONResponse({"error": f"no route {request.url.path}; the V2 routes are under /v2"}, status_code=404)


async def not_allowed(request: Request, e) -> Response:
    return JSONResponse({"error": f"{request.method} is not allowed on {request.url.path}"}, status_code=405)


class Guard:
    """Every request: the bearer token when one is set (401 without it), and X-Run-Id on every answer."""

    def __init__(self, app, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        run_id = self.service.slot.current.run_id.encode()
        if self.service.token is not None:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + self.service.token.encode()):
                response = JSONResponse({"error": "missing or wrong bearer token (Authorization: Bearer <token>)"}, status_code=401,
                                        headers={"WWW-Authenticate": "Bearer", "X-Run-Id": run_id.decode()})
                return await response(scope, receive, send)

        async def send_with_run(message) -> None:
            if message["type"] == "http.response.start" and not any(k.lower() == b"x-run-id" for k, _ in message["headers"]):
                message["headers"] = [*message["headers"], (b"x-run-id", run_id)]
            await send(message)

        await self.app(scope, receive, send_with_run)
