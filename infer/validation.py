"""What inference.py does for a task that writes nothing of its own: the run's validation metrics
(the task's validate_epoch on the run's validation split, rebuilt and checked), and an A/B report
of two runs measured the same way on the same samples."""
import torch

from data.loading import Data, EvalBatchSampler, make_loader
from infer.report import config_diff, config_lines, model_source_changed, model_source_line, write_report
from infer.runs import LoadedRun, Task, checked_data, inference_dir, load_run, rebuild_data
from store.runs import read_metrics, write_json
from train.device import resolve_device
from utils.config import Config
from utils.errors import UsageError


def measure(loaded: LoadedRun, data: Data, device: torch.device) -> dict:
    """The task's validation metrics of a loaded run on `data`'s validation split."""
    batch = loaded.cfg.batch_size // loaded.cfg.grad_accum_steps
    loader = make_loader(data.val, EvalBatchSampler(len(data.val), batch), 0, device.type == "cuda")
    with torch.no_grad():
        return loaded.task.validate_epoch(loaded.cfg, loaded.model, loader, device)


def evaluate_validation(task: Task, cfg: Config, run: dict) -> dict:
    """Print the run's validation metrics beside those recorded at training; write val_metrics.json."""
    device = resolve_device(cfg.inference_device, "inference_device")
    loaded = load_run(run, device, task, cfg.weights)
    data = checked_data(loaded)
    metrics = measure(loaded, data, device)
    recorded = loaded.recorded_metrics()
    shown = "  ".join(f"{k} {v:.4f} (recorded {recorded.get(k, float('nan')):.4f})" for k, v in metrics.items())
    print(f"run {run['id']} ({task.name}, {cfg.weights} weights) on {device}, {len(data.val)} validation samples: {shown}")
    out = inference_dir(loaded)
    write_json(out / "val_metrics.json", {"run": run["id"], "weights": cfg.weights, "device": str(device),
                                          "samples": len(data.val), **metrics, "recorded": recorded})
    print(f"wrote {out}/val_metrics.json")
    return metrics


def compare_validation(task: Task, cfg: Config, run_a: dict, run_b: dict) -> int:
    """Both runs' validation metrics on B's validation split (refused when A trained on any of it)."""
    device = resolve_device(cfg.inference_device, "inference_device")
    a, b = (load_run(run, device, task, cfg.weights) for run in (run_a, run_b))
    data = checked_data(b)
    overlap = set(data.val_ids) & set(rebuild_data(a.cfg, task).train_ids)
    if a.cfg.dataset != b.cfg.dataset or a.cfg.data_dir != b.cfg.data_dir or overlap:
        raise UsageError(f"--compare: run {run_a['id']} trained on other data or on {len(overlap)} of run {run_b['id']}'s "
                         "validation samples; compare runs of the same data and split_seed")
    metrics = {"A": measure(a, data, device), "B": measure(b, data, device)}
    report = {"a": run_a["id"], "b": run_b["id"], "task": task.name, "samples": len(data.val), "metrics": metrics,
              "modes": {k: task.modes.get(k) for k in metrics["B"]}, "config_diff": config_diff(a.cfg, b.cfg),
              "model_source_changed": model_source_changed(run_a, run_b)}
    history = {"A": read_metrics(a.folder), "B": read_metrics(b.folder)}
    write_report(inference_dir(b) / f"compare_{run_a['id']}_vs_{run_b['id']}", markdown(report), report,
                 lambda path: plot_histories(history, list(metrics["B"]), path))
    return 0


def markdown(r: dict) -> str:
    lines = [f"# A/B: {r['a']} (A) vs {r['b']} (B), {r['task']}", "",
             f"{r['samples']} samples: the validation split of {r['b']}.", "",
             "| metric | A | B | better |", "| --- | --- | --- | --- |"]
    for k, b in r["metrics"]["B"].items():
        a, mode = r["metrics"]["A"][k], r["modes"][k]
        better = "-" if a == b or mode is None else "B" if (b > a) == (mode == "max") else "A"
        lines.append(f"| {k} | {a:.4f} | {b:.4f} | {better} |")
    lines += ["", *config_lines(r["config_diff"]), "", model_source_line(r["model_source_changed"])]
    return "\n".join(lines) + "\n"


def plot_histories(history: dict, keys: list[str], path) -> None:
    """Each validation metric per epoch, A dashed and B solid."""
    from utils.plots import new_figure, save_figure

    fig = new_figure(5 * len(keys), 4, layout="tight")
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys):
        for side, style in (("A", "--"), ("B", "-")):
            rows = [r for r in history[side] if key in r]
            ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], style, label=side)
        ax.set(title=key, xlabel="epoch")
        ax.legend()
    save_figure(fig, path)
