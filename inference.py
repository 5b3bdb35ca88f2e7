"""Load a trained run and use it: evaluate it, predict on images, or compare two runs (A/B).

    python inference.py [KEY=VALUE ...]                  evaluate the run `resume` selects on its validation split
    python inference.py --input PATH                     predict on an image file or a folder of images
    python inference.py --compare RUN_A [RUN_B]          A/B report on the same samples (RUN@onnx: its ONNX export)
    python inference.py --export onnx [pt2]              export the run for services, parity checked (export/)
    python inference.py backend=onnxruntime [--input P]  evaluate or predict with the run's export/model.onnx on CPU
    python inference.py --list                           a table of all runs

torch and what needs it are imported inside the functions that use them, so that --list and
--help answer at once.
"""
from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from utils.config import load_config, make_parser, parse_args
from utils.errors import RunFailure, UsageError, run_main
from utils.runstore import format_table, list_runs, write_json, write_text

if TYPE_CHECKING:
    import torch

    from infer.runs import LoadedRun


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_arguments(argv)
    if args.list:
        print(format_table(list_runs()))
        return 0
    cfg = load_config(args.config, args.overrides)
    if args.compare:
        from infer.compare import compare_main
        return compare_main(cfg, args.compare, args.input)
    if args.export:
        from infer.export import export_main
        return export_main(cfg, args.export)
    from infer.onnx_backend import inference_device, with_backend
    from infer.runs import select_run

    device = inference_device(cfg)
    loaded = with_backend(select_run(cfg.resume), device, cfg.weights, cfg.backend)
    try:
        if args.input:
            predict(loaded, Path(args.input), device)
        else:
            validate(loaded, device)
    except BrokenPipeError:
        raise
    except OSError as e:
        raise RunFailure(f"cannot write under {loaded.folder}/inference ({e.strerror}); make experiments/ writable") from None
    return 0


def parse_arguments(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = make_parser("inference.py", "Evaluate a trained run, predict on images, or compare two runs (A/B).")
    parser.add_argument("--input", metavar="PATH", help="an image file or a folder of images to predict on "
                        "(with --compare: a labelled folder of class sub-folders)")
    parser.add_argument("--compare", nargs="+", metavar="RUN", help="RUN_A [RUN_B]: A/B report; RUN_B defaults to the run resume "
                        "selects; RUN@onnx compares the run's ONNX export (served by onnxruntime), e.g. --compare ID@onnx ID")
    parser.add_argument("--export", nargs="+", metavar="FORMAT", help="onnx and/or pt2: export the run resume selects to "
                        "experiments/<id>/export/ (model.onnx, model.pt2, preprocess.json, parity.json, export.json), "
                        "checking parity with the eager model")
    args = parse_args(parser, argv)
    if args.compare:  # --compare A [B] also swallows the KEY=VALUE words after it
        args.overrides += [w for w in args.compare if "=" in w]
        args.compare = [w for w in args.compare if "=" not in w]
        if not args.compare:
            raise UsageError("--compare needs a run id: --compare RUN_A [RUN_B]")
    if args.export:  # so does --export
        args.overrides += [w for w in args.export if "=" in w]
        args.export = [w for w in args.export if "=" not in w]
        wrong = [w for w in args.export if w not in ("onnx", "pt2")] or ([] if args.export else ["no format"])
        if wrong or args.compare or args.input:
            raise UsageError(f"--export takes onnx and/or pt2, and no --compare or --input (got {' '.join(wrong) or 'those'}); "
                             "e.g. --export onnx resume=<id>")
    return args


def validate(loaded: LoadedRun, device: torch.device) -> dict:
    """Evaluate on the run's validation split: print accuracy, loss and per-class accuracy; write
    predictions and metrics under inference/."""
    from infer.runs import evaluate_split, inference_dir, per_class_accuracy

    out = evaluate_split(loaded, device)
    names = loaded.info.class_names
    count = len(out["target"])
    acc = float((out["pred"] == out["target"]).sum()) / count
    metrics = {"run": loaded.run["id"], "device": str(device), "samples": count, "val_acc": acc,
               "val_loss": float(out["loss_sum"]) / count,
               "weights": loaded.weights, "backend": loaded.backend, "recorded_val_acc": loaded.recorded_metrics().get("val_acc"),
               "per_class_acc": dict(zip(names, per_class_accuracy(out["pred"], out["target"], len(names))))}
    via = "" if loaded.backend == "torch" else f" via {loaded.backend}"
    print(f"run {loaded.run['id']} ({loaded.cfg.base_model}, {loaded.weights} weights) on {device}{via}: val_acc {acc:.4f}  "
          f"val_loss {metrics['val_loss']:.4f}  ({count} samples; recorded at training: {metrics['recorded_val_acc']})")
    for name, a in metrics["per_class_acc"].items():
        print(f"  {name:>12}  {'-' if a is None else f'{a:.4f}'}")
    rows = [(i, names[t], names[p], f"{c:.6f}", int(p == t))
            for i, t, p, c in zip(out["ids"], out["target"].tolist(), out["pred"].tolist(), out["confidence"].tolist())]
    out_dir = inference_dir(loaded)
    write_text(out_dir / "val_predictions.csv", to_csv(("sample", "target", "predicted", "confidence", "correct"), rows))
    write_json(out_dir / "val_metrics.json", metrics)
    print(f"wrote {out_dir}/val_predictions.csv and val_metrics.json")
    return metrics


def predict(loaded: LoadedRun, path: Path, device: torch.device) -> None:
    """Predict on the image file or folder `path`; print the first rows, write predictions.csv."""
    from infer.runs import inference_dir

    rows = predict_files(loaded, path, device)
    out_dir = inference_dir(loaded)
    write_text(out_dir / "predictions.csv", to_csv(("path", "predicted", "confidence"), rows))
    for row in rows[:20]:
        print("  ".join(row))
    more = f" (first 20 of {len(rows)} shown)" if len(rows) > 20 else ""
    print(f"wrote {len(rows)} predictions to {out_dir}/predictions.csv{more}")


def predict_files(loaded: LoadedRun, path: Path, device: torch.device, batch_size: int = 64) -> list[tuple]:
    """(path, predicted class name, confidence) for every image at `path`."""
    import torch

    from infer.runs import amp_dtype
    from utils.dataloader import list_images, load_image

    files = list_images(path)
    rows = []
    dtype = amp_dtype(loaded.cfg, device)
    for i in range(0, len(files), batch_size):
        chunk = files[i:i + batch_size]
        try:
            x = torch.stack([load_image(f, loaded.info) for f in chunk]).to(device)
        except OSError as e:
            raise UsageError(f"--input: cannot read an image in {path} ({e}); remove or fix the file") from None
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            probs = loaded.model(x).float().softmax(1)
        conf, pred = probs.max(1)
        rows += [(str(f), loaded.info.class_names[p], f"{c:.6f}") for f, p, c in zip(chunk, pred.tolist(), conf.tolist())]
    return rows


def to_csv(header: tuple, rows: list) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


if __name__ == "__main__":
    run_main(main)
