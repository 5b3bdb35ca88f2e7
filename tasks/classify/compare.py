"""A/B comparison of two classifier runs on exactly the same samples (inference.py --compare)."""
import dataclasses
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from data.loading import EvalBatchSampler, FileSource, SplitSet, VolumeSource, folder_samples, make_loader, volume_samples
from infer.onnx_backend import inference_device, label, with_backend
from infer.report import config_diff, config_lines, model_source_changed, model_source_line, write_report
from infer.runs import LoadedRun, amp_dtype, inference_dir, load_run, rebuild_data
from store.runs import read_metrics
from tasks.base import Task
from tasks.classify.training import Evaluation, evaluate, per_class_accuracy
from utils.config import Config
from utils.errors import UsageError
from utils.plots import new_figure, save_figure
from utils.stats import mcnemar, p_text, paired_bootstrap

BOOTSTRAP_SAMPLES = 2000


def bootstrap_diff(a_correct: np.ndarray, b_correct: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Paired bootstrap 95% interval of accuracy(B) - accuracy(A), seeded."""
    return paired_bootstrap(b_correct.astype(np.float64) - a_correct.astype(np.float64), BOOTSTRAP_SAMPLES, seed)


def reading(test: dict, a: str, b: str) -> str:
    """One sentence that says what the p-value means."""
    p, nb, nc = test["p_value"], test["only_a_right"], test["only_b_right"]
    if nb + nc == 0:
        return "The two runs are right on exactly the same samples; there is no evidence of a difference (p = 1)."
    better = b if nc > nb else a
    if p < 0.05:
        return (f"{better} is right more often on the samples where they disagree, and this is unlikely to be chance "
                f"({p_text(p)}, below 0.05).")
    return (f"The difference in accuracy could well be chance ({p_text(p)}, not below 0.05); more samples would be needed to "
            "tell them apart.")


def _samples(a: LoadedRun, b: LoadedRun, input_path: Optional[str]) -> tuple[SplitSet, SplitSet, list, str]:
    """The same samples as each run sees them (own preprocessing): B's validation split, or a
    labelled folder. Refuses samples that A trained on."""
    if a.info.volumetric != b.info.volumetric:
        raise UsageError(f"--compare: run {a.run['id']} and run {b.run['id']} take different data (one images, one volumes); "
                         "compare runs of the same kind")
    if input_path:
        root = Path(input_path).expanduser().resolve()
        if not root.is_dir():
            raise UsageError(f"--input: '{input_path}' is not a folder; with --compare give a folder of class sub-folders")
        classes, samples = (volume_samples if b.info.volumetric else folder_samples)(root)
        if classes != b.info.class_names:
            raise UsageError(f"--input: the folder's classes {classes} differ from the runs' {b.info.class_names}")
        ids = [str(Path(p)) for p, _ in samples]
        a_train = _training_files(a)
        overlap = sorted(set(ids) & a_train)
        if overlap:
            raise UsageError(f"--compare: {len(overlap)} of these samples are in run {a.run['id']}'s training data "
                             f"(e.g. {overlap[0]}); compare on held-out samples")
        sources = [VolumeSource(samples, run.info, ids, run.cfg.intensity) if run.info.volumetric else FileSource(samples, run.info, ids)
                   for run in (a, b)]
        sets = [SplitSet(source, list(range(len(samples))), run.info) for source, run in zip(sources, (a, b))]
        return sets[0], sets[1], ids, f"the labelled folder {root}"
    data_b = rebuild_data(b.cfg, b.task)
    if data_b.val_hash != b.run["val_hash"]:
        raise UsageError(f"the validation split of run {b.run['id']} cannot be rebuilt (its data changed); compare with --input")
    same_source = all(getattr(a.cfg, k) == getattr(b.cfg, k) for k in ("dataset", "data_dir", "fake_size")) and (
        a.cfg.dataset != "fake" or a.cfg.split_seed == b.cfg.split_seed)
    if not same_source:
        raise UsageError(f"run {a.run['id']} was trained on other data ({a.cfg.dataset}) than run {b.run['id']} "
                         f"({b.cfg.dataset}); compare them on a labelled folder with --input")
    data_a = rebuild_data(a.cfg, a.task)
    overlap = set(data_b.val_ids) & set(data_a.train_ids)
    if overlap:
        raise UsageError(f"--compare: {len(overlap)} of run {b.run['id']}'s validation samples are in run {a.run['id']}'s "
                         f"training data (split_seed {a.cfg.split_seed} vs {b.cfg.split_seed}); compare on held-out "
                         "samples with --input")
    position = {sid: i for i, sid in enumerate(data_a.val.source.ids)}
    set_a = SplitSet(data_a.val.source, [position[sid] for sid in data_b.val_ids], data_a.info)
    return set_a, data_b.val, data_b.val_ids, f"the validation split of {b.run['id']}"


def _training_files(run: LoadedRun) -> set:
    """Absolute paths of the files a run trained on (empty for in-memory data sets)."""
    if run.cfg.dataset not in ("image_folder", "volume_folder"):
        return set()
    root = Path(run.cfg.data_dir).expanduser().resolve()
    return {str(root / i) for i in rebuild_data(run.cfg, run.task).train_ids}


def _latency(model: torch.nn.Module, x: torch.Tensor, device: torch.device, repeats: int = 10) -> float:
    """Median seconds per batch of a forward pass."""
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 2):
            t0 = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return float(np.median(times[2:]))


@dataclasses.dataclass
class Comparison:
    report: dict            # what the .md and .json say
    outs: dict              # "A", "B": evaluate()'s output for each run
    target: torch.Tensor    # (N,) the labels both runs were scored against


def compare(a: LoadedRun, b: LoadedRun, input_path: Optional[str], device: torch.device) -> Comparison:
    """Evaluate both runs on the same samples and build the A/B report."""
    if a.info.class_names != b.info.class_names:
        raise UsageError(f"--compare: the runs have different classes ({a.info.class_names} vs {b.info.class_names})")
    set_a, set_b, ids, where = _samples(a, b, input_path)
    outs: dict[str, Evaluation] = {}
    latency = {}
    for name, run, dataset in (("A", a, set_a), ("B", b, set_b)):
        loader = make_loader(dataset, EvalBatchSampler(len(dataset), run.cfg.batch_size), 0, device.type == "cuda")
        outs[name] = evaluate(run.model, loader, device, amp_dtype(run.cfg, device), bool(run.cfg.channels_last))
        x, _ = dataset.__getitems__([(-1, p) for p in range(min(len(dataset), run.cfg.batch_size))])
        latency[name] = _latency(run.model, x.to(device), device)
    target = outs["B"].target
    assert torch.equal(target, outs["A"].target), "both runs see the same labels"
    names = b.info.class_names
    ca = (outs["A"].pred == target).numpy()
    cb = (outs["B"].pred == target).numpy()
    n = len(target)
    test = mcnemar(ca, cb)
    lo, hi = bootstrap_diff(ca, cb)
    disagree = (outs["A"].pred != outs["B"].pred).numpy()
    per_a = per_class_accuracy(outs["A"].pred, target, len(names))
    per_b = per_class_accuracy(outs["B"].pred, target, len(names))
    report = {
        "a": a.run["id"], "b": b.run["id"], "samples": n, "evaluated_on": where, "device": str(device),
        "accuracy": {"A": float(ca.mean()), "B": float(cb.mean())},
        "loss": {"A": float(outs["A"].loss_sum) / n, "B": float(outs["B"].loss_sum) / n},
        "per_class": [{"class": c, "A": pa, "B": pb, "delta": None if pa is None or pb is None else pb - pa}
                      for c, pa, pb in zip(names, per_a, per_b)],
        "disagreements": {"count": int(disagree.sum()), "A_right": int((disagree & ca).sum()),
                          "B_right": int((disagree & cb).sum()), "neither": int((disagree & ~ca & ~cb).sum())},
        "mcnemar": test, "reading": reading(test, a.run["id"], b.run["id"]),
        "accuracy_diff_B_minus_A": {"value": float(cb.mean() - ca.mean()), "ci95": [lo, hi],
                                    "bootstrap_samples": BOOTSTRAP_SAMPLES, "seed": 0},
        "backend": {"A": a.backend, "B": b.backend},
        "params": {"A": _params(a.model), "B": _params(b.model)},
        "latency_s_per_batch": latency,
        "config_diff": config_diff(a.cfg, b.cfg),
        "model_source_changed": model_source_changed(a.run, b.run),
    }
    return Comparison(report, outs, target)


def _params(model: torch.nn.Module) -> int:
    """Parameters of the model, or of the model an export came from."""
    return getattr(model, "parameter_count", 0) or sum(p.numel() for p in model.parameters())


def to_markdown(r: dict) -> str:
    a, b = r["a"] + _suffix(r, "A"), r["b"] + _suffix(r, "B")
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    lines = [f"# A/B: {a} (A) vs {b} (B)", "",
             f"{r['samples']} samples: {r['evaluated_on']}, on {r['device']}, each run with its own preprocessing.", "",
             "| | A | B |", "| --- | --- | --- |",
             f"| accuracy | {pct(r['accuracy']['A'])} | {pct(r['accuracy']['B'])} |",
             f"| loss | {r['loss']['A']:.4f} | {r['loss']['B']:.4f} |",
             f"| backend | {r['backend']['A']} | {r['backend']['B']} |",
             f"| parameters | {r['params']['A']:,} | {r['params']['B']:,} |",
             f"| latency per batch | {1000 * r['latency_s_per_batch']['A']:.2f} ms | {1000 * r['latency_s_per_batch']['B']:.2f} ms |",
             "", "| class | A | B | delta (B - A) |", "| --- | --- | --- | --- |"]
    delta = lambda v: "-" if v is None else f"{100 * v:+.2f}"  # noqa: E731
    lines += [f"| {c['class']} | {pct(c['A'])} | {pct(c['B'])} | {delta(c['delta'])} |" for c in r["per_class"]]
    d, t, ci = r["disagreements"], r["mcnemar"], r["accuracy_diff_B_minus_A"]
    lines += ["", f"They disagree on {d['count']} samples: A right on {d['A_right']}, B right on {d['B_right']}, "
              f"neither on {d['neither']}.",
              f"McNemar's exact test: {t['only_a_right']} samples only A got right, {t['only_b_right']} only B; "
              f"{p_text(t['p_value'])}. {r['reading']}",
              f"Accuracy difference B - A: {100 * ci['value']:+.2f} points, 95% paired bootstrap interval "
              f"[{100 * ci['ci95'][0]:+.2f}, {100 * ci['ci95'][1]:+.2f}].", ""]
    lines += config_lines(r["config_diff"]) + ["", model_source_line(r["model_source_changed"])]
    return "\n".join(lines) + "\n"


def _suffix(r: dict, side: str) -> str:
    return "" if r["backend"][side] == "torch" else "@onnx"


def plot_compare(result: Comparison, names: list, history: dict, path: Path) -> None:
    """Confusion matrices side by side, and both runs' training curves."""
    r, outs, target = result.report, result.outs, result.target
    from matplotlib.ticker import MaxNLocator

    k = len(names)
    fig = new_figure(20, 4.8, layout="tight")
    axes = fig.subplots(1, 4)
    for ax, key in zip(axes[:2], ("A", "B")):
        cm = torch.bincount(target * k + outs[key].pred, minlength=k * k).view(k, k).numpy()
        ax.imshow(cm, cmap="Blues")
        ax.set(title=f"{key}: {r[key.lower()]} ({100 * r['accuracy'][key]:.2f}%)", xlabel="predicted", ylabel="true",
               xticks=range(k), yticks=range(k))
        if k <= 20:
            ax.set_xticklabels(names, rotation=90)
            ax.set_yticklabels(names)
            for i in range(k):
                for j in range(k):
                    if cm[i, j]:
                        ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=7)
    for key, style in (("A", "--"), ("B", "-")):
        rows = history[key]
        epochs = [row["epoch"] for row in rows]
        axes[2].plot(epochs, [row["val_loss"] for row in rows], style, label=f"{key} val")
        axes[2].plot(epochs, [row["train_loss"] for row in rows], style, alpha=0.5, label=f"{key} train")
        axes[3].plot(epochs, [row["val_acc"] for row in rows], style, label=key)
    axes[2].set(title="loss", xlabel="epoch")
    axes[3].set(title="validation accuracy", xlabel="epoch")
    for ax in axes[2:]:
        ax.legend()
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    save_figure(fig, path, dpi=90)


def compare_main(task: Task, cfg: Config, run_a: dict, run_b: dict, backends: tuple[str, str], input_path: Optional[str]) -> int:
    """inference.py --compare A [B] for classifiers: print the report, write .md, .json and .png under B's inference/."""
    device = inference_device(cfg)
    a, b = (with_backend(load_run(run, device, task, cfg.weights), backend) for run, backend in zip((run_a, run_b), backends))
    result = compare(a, b, input_path, device)
    history = {"A": read_metrics(a.folder), "B": read_metrics(b.folder)}
    write_report(inference_dir(b) / f"compare_{label(a)}_vs_{label(b)}", to_markdown(result.report), result.report,
                 lambda path: plot_compare(result, b.info.class_names, history, path))
    return 0
