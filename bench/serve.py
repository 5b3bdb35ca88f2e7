"""inference.py --serve on loopback: requests/s and latency at 1, 8 and 32 concurrent clients, with
dynamic batching on (--max-batch 32 --max-delay-ms 5) and off (--max-batch 1), against a plain
onnxruntime loop in one process. Prints a markdown table and writes bench/serve.md.

    python bench/serve.py [--seconds 6]     (~3 min on 2 cores)

The run: `python train.py` at the defaults (small_cnn on the 8x8 digits), exported to ONNX, served
by each backend: torch (the default) and onnxruntime, the same graph as the plain loop. Each client
is a keep-alive connection in one asyncio process that sends one sample per request (Triton's binary
tensor extension, as tritonclient sends it) as soon as its last answer arrives. Counts are bounded
by --seconds per setting, after a one-second warm-up. The client process shares the machine's cores
with the server, as a sidecar would.

Target (issue 31): with 32 clients, batching gives at least 2x the requests/s of no batching, and
its p99 latency stays under max_delay_ms plus two batch computations (of 32, from the plain loop).
"""
import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench import project_copy  # noqa: E402

MAX_BATCH, MAX_DELAY_MS = 32, 5.0
CLIENTS = (1, 8, 32)
BACKENDS = ("torch", "onnxruntime")


def train_and_export(project: Path) -> str:
    subprocess.run([sys.executable, "train.py"], cwd=project, check=True, capture_output=True)
    run_id = sorted(p.name for p in (project / "experiments").iterdir() if p.name[0].isdigit())[-1]
    subprocess.run([sys.executable, "inference.py", "--export", "onnx", f"resume={run_id}"], cwd=project, check=True,
                   capture_output=True)
    return run_id


def start_server(project: Path, run_id: str, backend: str, max_batch: int) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "inference.py", "--serve", "--port", "0", f"resume={run_id}", f"backend={backend}",
                             "inference_device=cpu", "--max-batch", str(max_batch), "--max-delay-ms", str(MAX_DELAY_MS)],
                            cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    found = re.search(r"127\.0\.0\.1:(\d+)", line)
    if not found:
        raise SystemExit(f"the server did not start: {line}{proc.stderr.read()[-2000:]}")
    return proc, int(found[1])


def request_bytes(x: np.ndarray) -> bytes:
    """One V2 infer request with its tensor in binary, asking for the binary predicted class."""
    blob = x.astype(np.float32).tobytes()
    header = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(blob)}}],
                         "outputs": [{"name": "predicted", "parameters": {"binary_data": True}}]}).encode()
    head = (f"POST /v2/models/model/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
            f"Inference-Header-Content-Length: {len(header)}\r\nContent-Length: {len(header) + len(blob)}\r\n\r\n")
    return head.encode() + header + blob


async def client(port: int, payload: bytes, until: float, warm: float, latencies: list) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while time.perf_counter() < until:
        t0 = time.perf_counter()
        writer.write(payload)
        status = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        if not status.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"request failed: {status!r}")
        if t0 >= warm:
            latencies.append(time.perf_counter() - t0)
    writer.close()


async def load(port: int, payload: bytes, clients: int, seconds: float) -> dict:
    latencies: list = []
    start = time.perf_counter()
    warm, until = start + 1.0, start + 1.0 + seconds
    await asyncio.gather(*(client(port, payload, until, warm, latencies) for _ in range(clients)))
    ms = 1000 * np.array(latencies)
    return {"rps": len(ms) / seconds, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def plain_loop(model: Path, x: np.ndarray, seconds: float) -> dict:
    """onnxruntime in this process, no HTTP: samples/s one at a time and in batches of MAX_BATCH."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    out = {}
    for batch in (1, MAX_BATCH):
        xb = np.repeat(x, batch, axis=0)
        session.run(None, {"input": xb})
        n, t0, times = 0, time.perf_counter(), []
        while time.perf_counter() - t0 < seconds / 2:
            t = time.perf_counter()
            session.run(None, {"input": xb})
            times.append(time.perf_counter() - t)
            n += batch
        out[batch] = {"samples_per_s": n / (time.perf_counter() - t0), "batch_ms": 1000 * float(np.median(times))}
    return out


def table(results: dict, plain: dict) -> str:
    lines = ["| backend | clients | batching | requests/s | p50 ms | p99 ms |", "| --- | --- | --- | --- | --- | --- |"]
    for (backend, clients, batching), r in results.items():
        lines.append(f"| {backend} | {clients} | {batching} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    for batch in (1, MAX_BATCH):
        lines.append(f"| plain onnxruntime loop, no HTTP | - | batch {batch} | {plain[batch]['samples_per_s']:.0f} (samples/s) | "
                     f"{plain[batch]['batch_ms']:.2f} (per call) | - |")
    lines.append("")
    bound = MAX_DELAY_MS + 2 * plain[MAX_BATCH]["batch_ms"]
    for backend in BACKENDS:
        on, off = results[(backend, 32, "on")], results[(backend, 32, "off")]
        lines.append(f"- {backend}, 32 clients: batching gives **{on['rps'] / off['rps']:.2f}x** the requests/s of no batching "
                     f"(target >= 2); p99 {on['p99_ms']:.1f} ms against max_delay_ms + two batch computations = {bound:.1f} ms "
                     f"({'met' if on['p99_ms'] <= bound else 'missed'}).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per setting (after 1 s of warm-up)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = project_copy(Path(tmp))
        run_id = train_and_export(project)
        x = np.random.default_rng(0).normal(size=(1, 1, 8, 8)).astype(np.float32)
        plain = plain_loop(project / "experiments" / run_id / "export" / "model.onnx", x, args.seconds)
        results = {}
        for backend in BACKENDS:
            for batching, max_batch in (("on", MAX_BATCH), ("off", 1)):
                proc, port = start_server(project, run_id, backend, max_batch)
                try:
                    for clients in CLIENTS:
                        results[(backend, clients, batching)] = asyncio.run(load(port, request_bytes(x), clients, args.seconds))
                finally:
                    proc.terminate()
                    proc.wait(60)
    results = dict(sorted(results.items(), key=lambda kv: (BACKENDS.index(kv[0][0]), kv[0][1], kv[0][2])))
    text = table(results, plain)
    print(text)
    (ROOT / "bench" / "serve.md").write_text(f"# bench/serve.py ({time.strftime('%Y-%m-%d')}, {args.seconds:g} s per setting)\n\n{text}")


if __name__ == "__main__":
    main()
