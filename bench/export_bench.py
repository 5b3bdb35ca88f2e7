"""onnxruntime (CPU) against eager PyTorch (fp32, CPU): throughput of small_cnn and resnet18 at batch 1 and 64.

    python bench/export_bench.py [--threads N] [--seconds S]

Untrained models (speed does not depend on the weights). Both sides use the same thread count; the
calls of the two sides are interleaved (A B, B A, ...) and the median time per call is reported.
Prints a markdown table (the one in README's "Export and serve").
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from infer.onnx_backend import OnnxModel  # noqa: E402
from model import model_dict  # noqa: E402
from tasks.classify.export import export_model  # noqa: E402

CASES = (("small_cnn", 1, 28, 10), ("resnet18", 3, 32, 10))  # name, channels, side, classes


def timed(fn, x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    fn(x)
    return time.perf_counter() - t0


@torch.inference_mode()
def measure(eager, onnx, x: torch.Tensor, seconds: float) -> tuple[float, float]:
    """Median seconds per call of each side, calls interleaved, for about `seconds` in all."""
    for _ in range(3):
        eager(x), onnx(x)
    times: dict = {"eager": [], "onnx": []}
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end or i < 10:
        order = (("eager", eager), ("onnx", onnx)) if i % 2 == 0 else (("onnx", onnx), ("eager", eager))
        for name, fn in order:
            times[name].append(timed(fn, x))
        i += 1
    return statistics.median(times["eager"]), statistics.median(times["onnx"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seconds", type=float, default=8.0, help="per model and batch size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = ["| model | batch | eager PyTorch (img/s) | onnxruntime (img/s) | onnxruntime / eager |", "| --- | --- | --- | --- | --- |"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, channels, side, classes in CASES:
            model = model_dict[name](in_channels=channels, num_classes=classes, image_size=side).eval()
            path = Path(tmp) / f"{name}.onnx"
            export_model(model, "onnx", torch.randn(2, channels, side, side), path)
            onnx = OnnxModel(path, threads=args.threads)
            for batch in (1, 64):
                x = torch.randn(batch, channels, side, side)
                eager_s, onnx_s = measure(model, onnx, x, args.seconds)
                rows.append(f"| {name} ({channels}x{side}x{side}) | {batch} | {batch / eager_s:,.0f} | {batch / onnx_s:,.0f} | "
                            f"{eager_s / onnx_s:.2f} |")
                print(rows[-1], flush=True)
    import onnxruntime

    print(f"\n{args.threads} threads, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
          "fp32, median of interleaved calls\n")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
