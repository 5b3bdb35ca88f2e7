"""Groups in inference.py: the A/B report of two groups (--compare GROUP_A GROUP_B, members paired by
seed and fold), evaluating every member (resume=<group id>) and predicting with the ensemble
(--input). Groups themselves are groups/folder.py."""
import csv
from pathlib import Path
from typing import Optional

import numpy as np

from groups.folder import PREDICTION_FILES, final_rows, find_group, groups_dir, list_groups, member_name, member_tips, missing_members
from store.runs import write_json, write_text
from utils.errors import UsageError, a_an
from utils.stats import mcnemar, p_text, paired_bootstrap

BOOTSTRAP = 10_000  # resamples of the matched pairs


def group_pair(specs: list[str]) -> Optional[tuple[dict, dict]]:
    """The two groups of --compare when it names a group; None when it names runs only. A group
    against a run is refused (exit 2)."""
    given = [find_group(s) for s in specs]
    if not any(given):
        return None
    if len(specs) < 2:
        raise UsageError(f"--compare {specs[0]}: {specs[0]} is a group; compare it with another group: "
                         f"--compare GROUP_A GROUP_B{recent_groups()}")
    if all(given) and given[0]["id"] == given[1]["id"]:
        raise UsageError(f"--compare {specs[0]} {specs[1]}: that compares group {given[0]['id']} with itself; name two groups"
                         f"{recent_groups()}")
    if not all(given):
        run, group = (specs[0], specs[1]) if given[1] else (specs[1], specs[0])
        raise UsageError(f"--compare: {group} is a group and {run} a single run; compare a group with a group "
                         f"(train the run's config as a group with the same seeds and folds){recent_groups()}")
    return given[0], given[1]


def recent_groups() -> str:
    ids = [g["id"] for g in list_groups()][-5:]
    return f"; recent groups: {', '.join(ids)}" if ids else ""


def pairing_problem(a: dict, b: dict) -> Optional[str]:
    """Why two groups cannot be paired member by member, or None."""
    for g in (a, b):
        if g.get("status") != "finished":
            return f"group {g['id']} is {g.get('status')}; finish it first by running its command again"
        if missing := missing_members(g):
            return (f"group {g['id']} is missing its member {member_name(missing[0])} (its run was deleted); restore it with "
                    f"python train.py --restore, or retrain it by running the group's command again")
    if a["task"] != b["task"] or a["monitor"] != b["monitor"]:
        return f"A is {a_an(a['task'])} group judged by {a['monitor']}, B {a_an(b['task'])} group judged by {b['monitor']}"
    if a["folds"] != b["folds"]:
        return f"the folds differ: A has {a['folds'] or 'no'} folds, B {b['folds'] or 'no'}"
    if a.get("fold_sha256") != b.get("fold_sha256"):
        return ("the fold assignments differ (folds.csv sha256 differs: another split_seed or other data); "
                "train both with the same split_seed on the same data")
    if sorted(a["seeds"]) != sorted(b["seeds"]):
        return f"the seeds differ: A has {a['seeds']}, B {b['seeds']}; train both with the same seeds"
    tips_a, tips_b = member_tips(a["id"]), member_tips(b["id"])
    for key in [tuple(m) for m in a["plan"]]:
        if tips_a[key].get("val_hash") != tips_b[key].get("val_hash"):
            return (f"the held-out samples of the members with seed {key[0]}{f', fold {key[1]}' if key[1] is not None else ''} "
                    "differ (validation hash): other data or another split; train both on the same data and split")
    return None


def paired_values(a: dict, b: dict) -> tuple[list[tuple], np.ndarray, np.ndarray]:
    """(seed, fold) of each matched pair, and A's and B's final value of the monitor (metrics.csv)."""
    tips_a, tips_b = member_tips(a["id"]), member_tips(b["id"])
    keys = [tuple(m) for m in a["plan"]]
    metric = a["monitor"]
    va = [r[metric] for r in final_rows([tips_a[k]["id"] for k in keys])]
    vb = [r[metric] for r in final_rows([tips_b[k]["id"] for k in keys])]
    return keys, np.array(va), np.array(vb)


def paired_test(diffs: np.ndarray) -> tuple[str, float]:
    """Wilcoxon's signed-rank test from 6 pairs, the paired t-test below (Wilcoxon cannot reach p < 0.05
    with fewer than 6); p = 1 when every difference is 0."""
    from scipy import stats

    if not np.any(diffs):
        return ("Wilcoxon signed-rank" if len(diffs) >= 6 else "paired t-test"), 1.0
    if len(diffs) >= 6:
        return "Wilcoxon signed-rank", float(stats.wilcoxon(diffs).pvalue)
    if len(diffs) < 2:
        return "paired t-test", float("nan")
    return "paired t-test", float(stats.ttest_1samp(diffs, 0.0).pvalue)


def read_predictions(group: dict, column: str = "correct") -> Optional[dict]:
    """(seed, index) -> the column (correct: 0/1; score: a task's per-sample score, such as a case's
    Dice) from the group's predictions file, or None without one or without that column."""
    for name in PREDICTION_FILES:
        path = groups_dir() / group["id"] / name
        if path.exists():
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            if not rows or column not in rows[0]:
                return None
            return {(int(r["seed"]), int(r["index"])): float(r[column]) for r in rows}
    return None


def pooled_scores(a: dict, b: dict) -> Optional[dict]:
    """The held-out samples' scores (e.g. each case's Dice) paired by seed and sample: the mean difference
    B - A, its paired bootstrap interval and Wilcoxon's signed-rank test. None without scores."""
    from scipy import stats

    pa, pb = read_predictions(a, "score"), read_predictions(b, "score")
    if pa is None or pb is None or pa.keys() != pb.keys():
        return None
    diffs = np.array([pb[k] - pa[k] for k in sorted(pa)])
    p = 1.0 if not np.any(diffs) else float(stats.wilcoxon(diffs).pvalue)
    return {"pairs": len(diffs), "mean_difference": float(diffs.mean()), "bootstrap_ci95": list(paired_bootstrap(diffs, BOOTSTRAP)),
            "wilcoxon_p": p}


def pooled_mcnemar(a: dict, b: dict) -> Optional[dict]:
    """McNemar's exact test on the pooled held-out predictions, matched by seed and sample: the samples
    only A got right against those only B got right. None without predictions (a task without classes)."""
    pa, pb = read_predictions(a), read_predictions(b)
    if pa is None or pb is None or pa.keys() != pb.keys():
        return None
    keys = sorted(pa)
    test = mcnemar(np.array([pa[k] for k in keys]).astype(bool), np.array([pb[k] for k in keys]).astype(bool))
    return {"pairs": len(keys), **test}


def verdict(metric: str, mode: str, mean: float, interval: list[float], test: str, p: float) -> str:
    """The sentence a person can act on."""
    lo, hi = interval
    if lo == hi == 0 and mean == 0:
        return (f"No difference: every matched pair gave the same {metric} (B - A is 0 for each), so the keys that differ "
                "do not change what is trained; keep either.")
    if lo <= 0 <= hi:
        return (f"No difference detected: B - A in {metric} is {mean:+.4f}, and its 95% interval [{lo:+.4f}, {hi:+.4f}] includes 0 "
                f"({test}, {p_text(p)}); the change does not matter at this size, so keep the simpler of the two, or add seeds "
                f"or folds to detect an effect smaller than {max(abs(lo), abs(hi)):.4f}.")
    better = (mean > 0) == (mode == "max")
    who, act = ("B", "adopt B's change") if better else ("A", "keep A and drop B's change")
    if not p < 0.05:
        return (f"{who} looks better ({metric} {mean:+.4f} B - A, interval [{lo:+.4f}, {hi:+.4f}]) but the {test} does not "
                f"confirm it ({p_text(p)}); add seeds or folds before you {act}.")
    return (f"{who} is better: {metric} {mean:+.4f} B - A over the matched members (95% interval [{lo:+.4f}, {hi:+.4f}], "
            f"{test}, {p_text(p)}); {act}.")


def compare_groups(a: dict, b: dict) -> int:
    """inference.py --compare GROUP_A GROUP_B: print and write the paired report under groups/<B>/."""
    problem = pairing_problem(a, b)
    if problem:
        raise UsageError(f"--compare {a['id']} {b['id']}: {problem}")
    keys, va, vb = paired_values(a, b)
    diffs = vb - va
    interval = list(paired_bootstrap(diffs, BOOTSTRAP))
    test, p = paired_test(diffs)
    report = {"A": a["id"], "B": b["id"], "metric": a["monitor"], "mode": a["mode"], "matched_by": matched_by(a),
              "pairs": [{"seed": k[0], "fold": k[1], "A": float(x), "B": float(y), "B_minus_A": float(y - x)}
                        for k, x, y in zip(keys, va, vb)],
              "mean_difference": float(diffs.mean()), "bootstrap_ci95": interval, "bootstrap_resamples": BOOTSTRAP,
              "test": test, "p": p, "mcnemar": pooled_mcnemar(a, b), "per_sample": pooled_scores(a, b),
              "config_diff": spec_diff(a, b)}
    report["verdict"] = verdict(a["monitor"], a["mode"], report["mean_difference"], interval, test, p)
    stem = groups_dir() / b["id"] / f"compare_{a['id']}_vs_{b['id']}"
    text = markdown(report)
    print(text)
    write_text(stem.with_suffix(".md"), text)
    write_json(stem.with_suffix(".json"), report)
    plot_pairs(report, stem.with_suffix(".png"))
    print(f"wrote {stem}.md, .json and .png")
    return 0


def matched_by(a: dict) -> str:
    return " and ".join(w for w, on in (("seed", len(a["seeds"]) > 1), ("fold", bool(a["folds"]))) if on) or "seed"


def spec_diff(a: dict, b: dict) -> dict:
    sa, sb = a.get("spec") or {}, b.get("spec") or {}
    return {k: {"A": sa.get(k), "B": sb.get(k)} for k in dict.fromkeys([*sa, *sb]) if sa.get(k) != sb.get(k)}


def markdown(r: dict) -> str:
    """The report as markdown: what differs, each pair, the paired statistics, McNemar, the verdict."""
    lines = [f"# Group A/B: {r['A']} (A) vs {r['B']} (B)", "",
             "Config keys that differ: " + (", ".join(f"`{k}` A {v['A']!r}, B {v['B']!r}" for k, v in r["config_diff"].items())
                                           or "none"), "",
             f"{len(r['pairs'])} members matched by {r['matched_by']}; final {r['metric']} ({r['mode']} is better):", "",
             "| seed | fold | A | B | B - A |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {q['seed']} | {'-' if q['fold'] is None else q['fold']} | {q['A']:.4f} | {q['B']:.4f} | {q['B_minus_A']:+.4f} |"
              for q in r["pairs"]]
    lo, hi = r["bootstrap_ci95"]
    lines += ["", f"- mean difference B - A: {r['mean_difference']:+.4f}, paired bootstrap 95% interval [{lo:+.4f}, {hi:+.4f}] "
              f"({r['bootstrap_resamples']:,} resamples of the pairs)",
              f"- {r['test']} on the {len(r['pairs'])} paired differences: {p_text(r['p'])}"]
    m = r["mcnemar"]
    lines.append(f"- McNemar's exact test on {m['pairs']:,} pooled held-out predictions: only A right {m['only_a_right']}, "
                 f"only B right {m['only_b_right']}, {p_text(m['p_value'])}" if m else
                 "- McNemar's test: not available (a task without class predictions)")
    q = r.get("per_sample")
    if q:
        lo, hi = q["bootstrap_ci95"]
        lines.append(f"- paired by held-out sample ({q['pairs']:,} pairs, e.g. cases' Dice): mean B - A {q['mean_difference']:+.4f}, "
                     f"bootstrap 95% interval [{lo:+.4f}, {hi:+.4f}], Wilcoxon signed-rank {p_text(q['wilcoxon_p'])}")
    return "\n".join(lines + ["", r["verdict"], ""])


def plot_pairs(r: dict, path: Path) -> None:
    """Each pair's difference B - A, their mean and the bootstrap interval."""
    from utils.plots import new_figure, save_figure

    fig = new_figure(6, 3.2)
    ax = fig.subplots()
    diffs = [q["B_minus_A"] for q in r["pairs"]]
    ax.plot(range(len(diffs)), diffs, "o", label="B - A per pair")
    ax.axhline(r["mean_difference"], color="black", label="mean")
    ax.axhspan(*r["bootstrap_ci95"], color="grey", alpha=0.3, label="95% interval")
    ax.axhline(0, color="red", lw=0.8)
    ax.set(xlabel="pair", ylabel=f"{r['metric']} B - A", title=f"A {r['A']} against B {r['B']}")
    ax.set_xticks(range(len(diffs)), [f"seed {q['seed']}" + ("" if q.get("fold") is None else f"\nfold {q['fold']}")
                                       for q in r["pairs"]], fontsize=7)
    ax.legend(fontsize=7)
    fig.subplots_adjust(left=0.17, right=0.97, bottom=0.16, top=0.9)
    save_figure(fig, path)
