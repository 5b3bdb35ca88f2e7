"""What inference produces for a classifier run: evaluation on its validation split and
predictions on image files."""
import csv
import io
import sys
from pathlib import Path

import torch

from data.loading import Data, EvalBatchSampler, list_images, load_image, make_loader, normalise, to_unit
from data.volumes import list_volumes, load_volume
from infer.runs import LoadedRun, amp_dtype, checked_data, inference_dir
from store.runs import write_json, write_text
from tasks.classify.training import Evaluation, evaluate, per_class_accuracy
from utils.errors import RunFailure, UsageError
from utils.plots import plot_samples


def evaluate_split(loaded: LoadedRun, device: torch.device) -> tuple[Evaluation, Data]:
    """evaluate() on the run's validation split, rebuilt from its config and checked against run.json;
    with the sample ids; and the data."""
    data = checked_data(loaded)
    batch = loaded.cfg.batch_size // loaded.cfg.grad_accum_steps
    loader = make_loader(data.val, EvalBatchSampler(len(data.val), batch), 0, device.type == "cuda")
    out = evaluate(loaded.model, loader, device, amp_dtype(loaded.cfg, device), bool(loaded.cfg.channels_last))
    out.ids = data.val_ids
    return out, data


def held_out_predictions(task, cfg, runs: list[dict]) -> str:
    """CSV of every member's prediction of each sample it held out: index (the sample's position in
    the data), id, fold, seed, true and predicted class, correct. With folds, per seed, every pooled
    sample once (out of fold)."""
    from infer.onnx_backend import inference_device
    from infer.runs import load_run

    device = inference_device(cfg)
    rows = []
    for run in runs:
        loaded = load_run(run, device, task)
        out, data = evaluate_split(loaded, device)
        names = loaded.info.class_names
        g = run["group"]
        rows += [(p, i, "" if g["fold"] is None else g["fold"], g["seed"], names[t], names[q], int(t == q))
                 for p, i, t, q in zip(data.val.positions, out.ids, out.target.tolist(), out.pred.tolist())]
    return to_csv(("index", "id", "fold", "seed", "true", "predicted", "correct"), rows)


def evaluate_on_split(loaded: LoadedRun, device: torch.device) -> dict:
    """Evaluate on the run's validation split: print accuracy, loss and per-class accuracy; write
    predictions and metrics under inference/."""
    out, data = evaluate_split(loaded, device)
    names = loaded.info.class_names
    count = len(out.target)
    acc = float((out.pred == out.target).sum()) / count
    metrics = {"run": loaded.run["id"], "device": str(device), "samples": count, "val_acc": acc,
               "val_loss": float(out.loss_sum) / count,
               "weights": loaded.weights, "backend": loaded.backend, "recorded_val_acc": loaded.recorded_metrics().get("val_acc"),
               "per_class_acc": dict(zip(names, per_class_accuracy(out.pred, out.target, len(names))))}
    via = "" if loaded.backend == "torch" else f" via {loaded.backend}"
    print(f"run {loaded.run['id']} ({loaded.cfg.base_model}, {loaded.weights} weights) on {device}{via}: val_acc {acc:.4f}  "
          f"val_loss {metrics['val_loss']:.4f}  ({count} samples; recorded at training: {metrics['recorded_val_acc']})")
    print(f"  {'class':>12}  accuracy")
    for name, a in metrics["per_class_acc"].items():
        print(f"  {name:>12}  {'-' if a is None else f'{a:.4f}'}")
    rows = [(i, names[t], names[p], f"{c:.6f}", int(p == t))
            for i, t, p, c in zip(out.ids, out.target.tolist(), out.pred.tolist(), out.confidence.tolist())]
    out_dir = inference_dir(loaded, by_backend=True)
    write_text(out_dir / "val_predictions.csv", to_csv(("sample", "target", "predicted", "confidence", "correct"), rows))
    write_json(out_dir / "val_metrics.json", metrics)
    drawn = plot_mistakes(out, data, out_dir / "mistakes.png")
    print(f"wrote {out_dir}/val_predictions.csv, val_metrics.json" + (" and mistakes.png" if drawn else
                                                                       " (no mistakes on the split: no mistakes.png)"))
    return metrics


def plot_mistakes(out: Evaluation, data: Data, path: Path, most: int = 8) -> bool:
    """The most confident mistakes on the validation split (a volume as its three mid-slices); False,
    and no picture (an older one removed), when there is none."""
    wrong = (out.pred != out.target).nonzero().flatten()
    if len(wrong) == 0:
        path.unlink(missing_ok=True)  # under inference/: a picture of earlier mistakes would mislead
        return False
    wrong = wrong[out.confidence[wrong].argsort(descending=True)][:most].tolist()
    x, _ = data.val.source.load([data.val.positions[i] for i in wrong])
    names = data.info.class_names
    titles = [f"{names[out.target[i]]} as {names[out.pred[i]]} ({out.confidence[i]:.2f})" for i in wrong]
    plot_samples(to_unit(x), titles, path, data.info.volumetric)
    return True


def predict(loaded: LoadedRun, path: Path, device: torch.device) -> None:
    """Predict on the image file or folder `path`; print the first rows, write predictions.csv. A file
    that cannot be read is named (unreadable.csv) and skipped; the others are predicted, then exit 1."""
    files = list_inputs(path, loaded.info.volumetric)
    probs, good, bad = file_probabilities(loaded, files, device)
    conf, pred = probs.max(1)
    rows = [(str(f), loaded.info.class_names[p], f"{c:.6f}") for f, p, c in zip(good, pred.tolist(), conf.tolist())]
    out_dir = inference_dir(loaded, by_backend=True)
    write_text(out_dir / "predictions.csv", to_csv(("path", "predicted", "confidence"), rows))
    for row in rows[:20]:
        print("  ".join(row))
    more = f" (first 20 of {len(rows)} shown)" if len(rows) > 20 else ""
    print(f"wrote {len(rows)} predictions to {out_dir}/predictions.csv{more}")
    refuse_unreadable(bad, len(files), out_dir)


def list_inputs(path: Path, volumetric: bool) -> list[Path]:
    return list_volumes(path) if volumetric else list_images(path)


def refuse_unreadable(bad: list[tuple[Path, str]], total: int, out_dir: Path) -> None:
    """After the readable files were predicted: name every unreadable one (unreadable.csv) and fail (exit 1)."""
    if not bad:
        return
    write_text(out_dir / "unreadable.csv", to_csv(("path", "problem"), [(str(f), why) for f, why in bad]))
    for f, why in bad:
        print(f"  unreadable: {f} ({why})", file=sys.stderr)
    raise RunFailure(f"--input: {len(bad)} of {total} files could not be read and were skipped (listed above and in "
                     f"{out_dir}/unreadable.csv); the other {total - len(bad)} were predicted. Fix or remove those files")


def read_inputs(files: list[Path], loaded: LoadedRun) -> tuple[list[torch.Tensor], list[Path], list[tuple[Path, str]]]:
    """Each file preprocessed as in training; a file that cannot be read goes to the third list, with why."""
    tensors, good, bad = [], [], []
    kind = "volume" if loaded.info.volumetric else "image"
    for f in files:
        try:
            tensors.append(read_input(f, loaded))
            good.append(f)
        except UsageError as e:
            bad.append((f, str(e).split(": ", 1)[-1]))
        except OSError as e:
            bad.append((f, f"cannot be read ({e.strerror or 'not a readable ' + kind + ' file'})"))
        except Exception:  # noqa: BLE001 - a decoder's own error, in its own words: not a user's message
            bad.append((f, f"not a readable {kind} file (the decoder refused it)"))
    return tensors, good, bad


def file_probabilities(loaded: LoadedRun, files: list[Path], device: torch.device, batch_size: int = 64
                       ) -> tuple[torch.Tensor, list[Path], list[tuple[Path, str]]]:
    """(readable files, classes): the run's class probabilities for each file read as in training; the
    readable files; the unreadable ones, with why. None readable: exit 2, nothing written."""
    out, good, bad = [], [], []
    dtype = amp_dtype(loaded.cfg, device)
    for i in range(0, len(files), batch_size):
        tensors, ok, wrong = read_inputs(files[i:i + batch_size], loaded)
        good, bad = good + ok, bad + wrong
        if tensors:
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                out.append(loaded.model(torch.stack(tensors).to(device)).float().softmax(1).cpu())
    if not good:
        f, why = bad[0]
        hint = "NIfTI or .npy volumes" if loaded.info.volumetric else "image files (PNG, JPEG, ...)"
        raise UsageError(f"--input: none of the {len(files)} files could be read ({f}: {why}{' ...' if len(bad) > 1 else ''}); "
                         f"give {hint}")
    return torch.cat(out), good, bad


def ensemble_predict(task, cfg, group: dict, runs: list[dict], path: Path, out_dir: Path) -> int:
    """A group's prediction on the files at `path`: the mean of its members' probabilities, with each
    member's own class beside it; written to out_dir/predictions.csv (the group's inference/ folder)."""
    from infer.onnx_backend import inference_device
    from infer.runs import load_run

    device = inference_device(cfg)
    members = [load_run(run, device, task, cfg.weights) for run in runs]
    if len({tuple(m.info.class_names) for m in members}) > 1:
        raise UsageError(f"group {group['id']}: its members have different class names; predict with one member instead")
    files = list_inputs(path, members[0].info.volumetric)
    each_member = [file_probabilities(m, files, device) for m in members]
    probs, files, bad = torch.stack([p for p, _, _ in each_member]), each_member[0][1], each_member[0][2]  # (members, files, classes)
    names = members[0].info.class_names
    conf, pred = probs.mean(0).max(1)
    each = probs.argmax(2).T.tolist()  # (files, members)
    rows = [(str(f), names[p], f"{c:.6f}", *(names[k] for k in ks)) for f, p, c, ks in zip(files, pred.tolist(), conf.tolist(), each)]
    out_dir.mkdir(exist_ok=True)
    write_text(out_dir / "predictions.csv", to_csv(("path", "predicted", "confidence", *(r["id"] for r in runs)), rows))
    for row in rows[:20]:
        print("  ".join(row[:3]))
    print(f"ensemble of {len(members)} members: wrote {len(rows)} predictions to {out_dir}/predictions.csv "
          "(the mean of their probabilities; one column per member)")
    refuse_unreadable(bad, len(files) + len(bad), out_dir)
    return 0


def read_input(path: Path, loaded: LoadedRun) -> torch.Tensor:
    """One file, preprocessed exactly as in training: an image, or a volume (reoriented, resampled, normalised)."""
    if loaded.info.volumetric:
        return normalise(load_volume(path, loaded.info.image_size, loaded.cfg.intensity), loaded.info)
    return load_image(path, loaded.info)


def to_csv(header: tuple, rows: list) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()
