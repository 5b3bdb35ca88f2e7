"""A/B of two segmentation runs on the same validation cases (inference.py --compare A B).

Each run predicts B's validation cases with its own preprocessing (its spacing, its intensity
rules), by the sliding window of the config's overlap and mirror; per case, the mean foreground
Dice. The report pairs the cases: the differences B - A, Wilcoxon's signed-rank test, a paired
bootstrap interval of the mean difference and a verdict. Refused when A trained on one of B's
validation cases, or when the runs were trained on other data.
"""
import math

import numpy as np
import torch

from infer.onnx_backend import inference_device
from infer.report import config_diff, config_lines, model_source_changed, model_source_line, write_report
from infer.runs import checked_data, inference_dir, load_run
from tasks.segment.infer import probabilities
from tasks.segment.metrics import dice_per_class
from utils.errors import UsageError
from utils.plots import new_figure, save_figure
from utils.stats import p_text, paired_bootstrap

BOOTSTRAP_SAMPLES = 2000


def case_dice(loaded, data, device: torch.device, cfg) -> dict:
    """{case id: [Dice per foreground class]} of one run on its rebuilt validation cases."""
    out = {}
    for image, label, case in data.val.cases():
        pred = probabilities([loaded], image, device, cfg.overlap, cfg.mirror).argmax(0)
        out[case] = dice_per_class(pred, label, len(loaded.info.class_names))
    return out


def wilcoxon(diffs: np.ndarray) -> float:
    """Two-sided p of Wilcoxon's signed-rank test (exact for few pairs); 1 when every difference is 0."""
    from scipy.stats import wilcoxon as test

    if not np.any(diffs):
        return 1.0
    return float(test(diffs).pvalue)


def verdict(lo: float, hi: float, p: float, a: str, b: str) -> str:
    if lo > 0 and p < 0.05:
        return f"{b} is better: its Dice is higher on these cases, and the interval excludes no difference ({p_text(p)})."
    if hi < 0 and p < 0.05:
        return f"{a} is better: its Dice is higher on these cases, and the interval excludes no difference ({p_text(p)})."
    return f"No evidence of a difference ({p_text(p)}; the interval includes 0); more cases would be needed to tell them apart."


def compare_main(task, cfg, run_a: dict, run_b: dict, backends: tuple, input_path) -> int:
    if input_path or set(backends) != {"torch"}:
        raise UsageError("--compare: segmentation runs are compared on B's validation cases, served by torch; drop --input and @onnx")
    device = inference_device(cfg)
    a, b = (load_run(run, device, task, cfg.weights) for run in (run_a, run_b))
    if a.info.class_names != b.info.class_names:
        raise UsageError(f"--compare: the runs have different labels ({a.info.class_names} vs {b.info.class_names})")
    if (a.cfg.dataset, a.cfg.data_dir) != (b.cfg.dataset, b.cfg.data_dir):
        raise UsageError(f"run {a.run['id']} was trained on other data ({a.cfg.dataset}) than run {b.run['id']} ({b.cfg.dataset})")
    data_a, data_b = checked_data(a), checked_data(b)
    seen = sorted(set(data_b.val_ids) & set(data_a.train_ids))
    if seen:
        raise UsageError(f"--compare: {len(seen)} of run {b.run['id']}'s validation cases are in run {a.run['id']}'s training "
                         f"cases (e.g. {seen[0]}); compare runs with the same split")
    dice_a, dice_b = case_dice(a, data_a, device, cfg), case_dice(b, data_b, device, cfg)
    cases = [c for c in data_b.val_ids if c in dice_a]
    mean = lambda v: float(np.nanmean(v)) if not all(map(math.isnan, v)) else 0.0  # noqa: E731
    per_a, per_b = np.array([mean(dice_a[c]) for c in cases]), np.array([mean(dice_b[c]) for c in cases])
    diffs = per_b - per_a
    lo, hi = paired_bootstrap(diffs, BOOTSTRAP_SAMPLES, 0)
    p = wilcoxon(diffs)
    report = {"a": a.run["id"], "b": b.run["id"], "cases": len(cases), "evaluated_on": f"the validation cases of {b.run['id']}",
              "dice": {"A": float(per_a.mean()), "B": float(per_b.mean())},
              "per_case": [{"case": c, "A": float(x), "B": float(y), "delta": float(y - x)} for c, x, y in zip(cases, per_a, per_b)],
              "wilcoxon_p": p, "dice_diff_B_minus_A": {"value": float(diffs.mean()), "ci95": [lo, hi],
                                                      "bootstrap_samples": BOOTSTRAP_SAMPLES, "seed": 0},
              "verdict": verdict(lo, hi, p, a.run["id"], b.run["id"]), "overlap": cfg.overlap, "mirror": cfg.mirror,
              "config_diff": config_diff(a.cfg, b.cfg), "model_source_changed": model_source_changed(a.run, b.run)}
    write_report(inference_dir(b) / f"compare_{a.run['id']}_vs_{b.run['id']}", markdown(report), report,
                 lambda path: plot(report, path))
    return 0


def markdown(r: dict) -> str:
    d = r["dice_diff_B_minus_A"]
    lines = [f"# A/B: {r['a']} (A) vs {r['b']} (B)", "", f"{r['cases']} cases: {r['evaluated_on']}, each run with its own "
             f"preprocessing (overlap {r['overlap']}, mirror {str(r['mirror']).lower()}).", "",
             "| case | A | B | delta (B - A) |", "| --- | --- | --- | --- |"]
    lines += [f"| {c['case']} | {c['A']:.4f} | {c['B']:.4f} | {c['delta']:+.4f} |" for c in r["per_case"]]
    lines += [f"| mean | {r['dice']['A']:.4f} | {r['dice']['B']:.4f} | {d['value']:+.4f} |", "",
              f"Mean foreground Dice difference B - A: {d['value']:+.4f}, 95% paired bootstrap interval "
              f"[{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]; Wilcoxon signed-rank {p_text(r['wilcoxon_p'])}.", "",
              r["verdict"], ""]
    return "\n".join(lines + config_lines(r["config_diff"]) + ["", model_source_line(r["model_source_changed"])]) + "\n"


def plot(r: dict, path) -> None:
    """Each case's Dice, A against B, with the diagonal."""
    fig = new_figure(5.5, 5.5, layout="tight")
    ax = fig.subplots()
    a, b = [c["A"] for c in r["per_case"]], [c["B"] for c in r["per_case"]]
    ax.scatter(a, b)
    lo, hi = min(a + b) - 0.02, max(a + b) + 0.02
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set(xlabel=f"A: {r['a']}", ylabel=f"B: {r['b']}", title="mean foreground Dice per case", xlim=(lo, hi), ylim=(lo, hi))
    ax.grid(alpha=0.3)
    save_figure(fig, path, dpi=90)
