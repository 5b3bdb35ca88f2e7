"""Load a trained run and use it: evaluate it, predict on images, or compare two runs (A/B).

    python inference.py [KEY=VALUE ...]                  evaluate the run `resume` selects on its validation split
    python inference.py --input PATH                     predict on an image file or a folder of images
    python inference.py --compare RUN_A [RUN_B]          A/B report on the same samples
    python inference.py --list                           a table of all runs

torch and what needs it (~2 s to import) are imported inside the functions that use them, so
that --list and --help are instant.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from utils.config import Config, build_config, load_config, make_parser, parse_args, read_yaml
from utils.errors import RunFailure, UsageError, run_main
from utils.runstore import EXPERIMENTS, children_of, find_run, format_table, list_runs, write_json, write_text

if TYPE_CHECKING:
    import torch

    from utils.dataloader import DataInfo


def select_run(spec: Optional[str], key: str = "resume") -> dict:
    """The run to use: spec None or 'latest' -> the newest finished run; an id -> that run."""
    finished = lambda r: r.get("status") == "finished"  # noqa: E731
    run = find_run(spec or "latest", key, finished, "that finished")
    if spec in (None, "latest"):
        newer = [r for r in list_runs() if r.get("start_utc", "") > run["start_utc"]]
        if newer:
            print(f"note: newer run {newer[-1]['id']} is {newer[-1].get('status')}; using the latest finished run "
                  f"{run['id']}", file=sys.stderr)
    elif not finished(run):
        raise UsageError(f"{key}: run {run['id']} has no final weights (status {run.get('status')}); continue it "
                         f"with python train.py resume={run['id']}, or pick a finished run (--list)")
    else:
        kids = children_of(run["id"])
        if kids:
            print(f"note: run {run['id']} was continued by {', '.join(kids)}", file=sys.stderr)
    return run


@dataclasses.dataclass
class LoadedRun:
    run: dict
    cfg: Config
    info: DataInfo
    model: torch.nn.Module
    folder: Path


def load_run(run: dict, device: torch.device) -> LoadedRun:
    """Rebuild a run's model from its folder alone (config.yaml + model.safetensors, checked
    against run.json's sha256), in eval mode on `device`."""
    from train.setup import build_model, load_weights
    from utils.dataloader import info_from_run

    folder = EXPERIMENTS / run["id"]
    try:
        cfg = build_config(read_yaml(folder / "config.yaml"))
    except UsageError as e:
        raise RunFailure(f"run {run['id']}: its config.yaml is unusable ({e})") from None
    info = info_from_run(run)
    model = build_model(dataclasses.replace(cfg, pretrained=False), info)  # weights come from the run
    load_weights(model, folder / "model.safetensors", run["weights"]["sha256"])
    return LoadedRun(run, cfg, info, model.to(device).eval(), folder)


def amp_dtype(cfg: Config, device: torch.device) -> Optional[torch.dtype]:
    """Evaluate in the precision the run trained in, where the device supports it."""
    from train.setup import AMP_DTYPES

    return None if cfg.amp == "fp16" and device.type != "cuda" else AMP_DTYPES[cfg.amp]


def evaluate_split(lr: LoadedRun, device: torch.device) -> dict:
    """The run's validation split (rebuilt from its config and checked against run.json)."""
    from train import evaluate
    from utils.dataloader import EvalBatchSampler, build_data, make_loader

    data = build_data(lr.cfg)
    if data.val_hash != lr.run["val_hash"]:
        raise RunFailure(f"the validation split of run {lr.run['id']} cannot be rebuilt: the data changed since "
                         "training (validation hash differs); restore the data or evaluate with --input")
    loader = make_loader(data.val, EvalBatchSampler(len(data.val), lr.cfg.batch_size // lr.cfg.grad_accum_steps),
                         0, device.type == "cuda")
    out = evaluate(lr.model, loader, device, amp_dtype(lr.cfg, device), lr.cfg.channels_last)
    out["ids"] = data.val_ids
    return out


def per_class_accuracy(pred: torch.Tensor, target: torch.Tensor, n: int) -> list[Optional[float]]:
    import torch

    correct = torch.bincount(target[pred == target], minlength=n)
    total = torch.bincount(target, minlength=n)
    return [float(c) / float(t) if t else None for c, t in zip(correct, total)]


def report_validation(lr: LoadedRun, out: dict, device: torch.device) -> dict:
    """Print accuracy, loss and per-class accuracy; write predictions and metrics under inference/."""
    names = lr.info.class_names
    count = len(out["target"])
    acc = float((out["pred"] == out["target"]).sum()) / count
    metrics = {"run": lr.run["id"], "device": str(device), "samples": count, "val_acc": acc,
               "val_loss": float(out["loss_sum"]) / count, "recorded_val_acc": (lr.run.get("metrics") or {}).get("val_acc"),
               "per_class_acc": dict(zip(names, per_class_accuracy(out["pred"], out["target"], len(names))))}
    print(f"run {lr.run['id']} ({lr.cfg.base_model}) on {device}: val_acc {acc:.4f}  val_loss {metrics['val_loss']:.4f}"
          f"  ({count} samples; recorded at training: {metrics['recorded_val_acc']})")
    for name, a in metrics["per_class_acc"].items():
        print(f"  {name:>12}  {'-' if a is None else f'{a:.4f}'}")
    rows = [(i, names[t], names[p], f"{c:.6f}", int(p == t))
            for i, t, p, c in zip(out["ids"], out["target"].tolist(), out["pred"].tolist(), out["confidence"].tolist())]
    out_dir = lr.folder / "inference"
    out_dir.mkdir(exist_ok=True)
    write_text(out_dir / "val_predictions.csv", to_csv(("sample", "target", "predicted", "confidence", "correct"), rows))
    write_json(out_dir / "val_metrics.json", metrics)
    print(f"wrote {out_dir}/val_predictions.csv and val_metrics.json")
    return metrics


def predict_files(lr: LoadedRun, path: Path, device: torch.device, batch_size: int = 64) -> list[tuple]:
    """(path, predicted class name, confidence) for every image at `path`."""
    import torch

    from utils.dataloader import list_images, load_image

    files = list_images(path)
    rows = []
    dtype = amp_dtype(lr.cfg, device)
    for i in range(0, len(files), batch_size):
        chunk = files[i:i + batch_size]
        try:
            x = torch.stack([load_image(f, lr.info) for f in chunk]).to(device)
        except OSError as e:
            raise UsageError(f"--input: cannot read an image in {path} ({e}); remove or fix the file") from None
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            probs = lr.model(x).float().softmax(1)
        conf, pred = probs.max(1)
        rows += [(str(f), lr.info.class_names[p], f"{c:.6f}") for f, p, c in zip(chunk, pred.tolist(), conf.tolist())]
    return rows


def to_csv(header: tuple, rows: list) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def main(argv: Optional[list[str]] = None) -> int:
    parser = make_parser("inference.py", "Evaluate a trained run, predict on images, or compare two runs (A/B).")
    parser.add_argument("--input", metavar="PATH", help="an image file or a folder of images to predict on "
                        "(with --compare: a labelled folder of class sub-folders)")
    parser.add_argument("--compare", nargs="+", metavar="RUN", help="RUN_A [RUN_B]: A/B report; RUN_B defaults to the run resume selects")
    args = parse_args(parser, argv)
    if args.compare:  # --compare A [B] also swallows the KEY=VALUE words after it
        args.overrides += [w for w in args.compare if "=" in w]
        args.compare = [w for w in args.compare if "=" not in w]
        if not args.compare:
            raise UsageError("--compare needs a run id: --compare RUN_A [RUN_B]")
    if args.list:
        print(format_table(list_runs()))
        return 0
    cfg = load_config(args.config, args.overrides)
    from train.setup import resolve_device

    if args.compare:
        from utils.compare import compare_main
        return compare_main(cfg, args.compare, args.input)
    device = resolve_device(cfg.inference_device, "inference_device")
    lr = load_run(select_run(cfg.resume), device)
    try:
        return infer(lr, args.input, device)
    except BrokenPipeError:
        raise
    except OSError as e:
        raise RunFailure(f"cannot write under {lr.folder}/inference ({e.strerror}); make experiments/ writable") from None


def infer(lr: LoadedRun, input_path: Optional[str], device: torch.device) -> int:
    """Predict on image files (input_path), or evaluate the run's validation split."""
    if input_path:
        rows = predict_files(lr, Path(input_path), device)
        out_dir = lr.folder / "inference"
        out_dir.mkdir(exist_ok=True)
        write_text(out_dir / "predictions.csv", to_csv(("path", "predicted", "confidence"), rows))
        for row in rows[:20]:
            print("  ".join(row))
        more = f" (first 20 of {len(rows)} shown)" if len(rows) > 20 else ""
        print(f"wrote {len(rows)} predictions to {out_dir}/predictions.csv{more}")
        return 0
    report_validation(lr, evaluate_split(lr, device), device)
    return 0


if __name__ == "__main__":
    run_main(main)
