"""Training a group: one ordinary run per seed and fold, in turn, then the group's predictions and
curves. The same command again continues the group: finished members are kept, a killed one
continues from its state, missing ones start."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Optional

from data.loading import build_data
from groups.folder import FOLDS_FILE, PREDICTION_FILES, GroupFolder, member_tips, members_of, unfinished_group
from store.page import rewrite_index
from store.runs import EXPERIMENTS, find_state, read_metrics, write_text
from tasks import task_dict
from tasks.base import Task
from train.run import plan_run, train_run
from utils import dist
from utils.config import Config, experiment_spec
from utils.errors import Interrupted, UsageError
from utils.plots import new_figure, save_figure


def train_group(cfg: Config) -> int:
    """One ordinary run per seed and fold, in turn (groups/folder.py). The same command again continues
    the group: finished members are kept, a killed one continues from its state, missing ones start."""
    if dist.launched():
        raise UsageError("seeds, folds: a group trains its members one after another in one process; under torchrun, "
                         "train one member at a time: seed=S folds=K fold=F, without seeds")
    task = task_dict[cfg.task]()
    monitor = task.default_monitor(cfg) if cfg.monitor == "auto" else cfg.monitor
    if monitor not in task.modes:
        raise UsageError(f"monitor: '{monitor}' is not a validation metric of task {cfg.task}; use auto or one of "
                         f"{' | '.join(task.modes)}")
    found = unfinished_group(experiment_spec(cfg))
    group = GroupFolder.reopen(found) if found else GroupFolder.create(cfg, task.name, monitor, task.modes[monitor])
    plan = members_of(cfg)
    print(f"group {group.id}: {'continuing' if found else 'new'}, {len(plan)} members (seeds {group.info['seeds']}"
          f"{f', {cfg.folds} folds' if cfg.folds else ''}); experiments/groups/{group.id}/", flush=True)
    status = "failed"
    try:
        write_folds(group, cfg)
        for seed, fold in plan:
            train_member(group, cfg, seed, fold)
            group.refresh()
        finish_group(group, task, cfg)
        status = "finished"
    except UsageError:
        if not found and not member_tips(group.id):  # refused before its first member started: as if never asked
            status = "discard"
        raise
    except (KeyboardInterrupt, Interrupted):
        status = "interrupted"
        raise
    finally:
        group.close(status)
        if status != "discard":
            rewrite_index()
    print(f"group {group.id}: finished, {group_line(group.info)}")
    return 0


def write_folds(group, cfg: Config) -> None:
    """folds.csv, the fold of every pooled sample, read-only, and its sha256 in group.json (once)."""
    if not cfg.folds or group.info.get("fold_sha256"):
        return
    table = build_data(dataclasses.replace(cfg, fold=0, cache_mb=0)).fold_table  # labels only: nothing is decoded
    write_text(group.folder / FOLDS_FILE, table, readonly=True)
    group.write(fold_sha256=hashlib.sha256(table.encode()).hexdigest())


def train_member(group, cfg: Config, seed: int, fold: Optional[int]) -> None:
    """Train one member unless it finished: a new run, or the continuation of its killed run."""
    tip = member_tips(group.id).get((seed, fold))
    if tip is not None and tip.get("status") == "finished":
        return
    if tip is not None and tip.get("status") == "running":
        raise UsageError(f"group {group.id}: member run {tip['id']} is running in another process; wait for it")
    resume = tip["id"] if tip is not None and find_state(EXPERIMENTS, tip["id"]) is not None else None
    plan = plan_run(dataclasses.replace(cfg, seeds=[], seed=seed, fold=fold, resume=resume), task_dict)
    plan.group = {"id": group.id, "seed": seed, "fold": fold}
    train_run(plan)


def finish_group(group, task: Task, cfg: Config) -> None:
    """With every member finished: their predictions of the samples each held out, and the curves."""
    tips = member_tips(group.id)
    runs = [tips[m] for m in members_of(cfg)]
    table = task.member_predictions(cfg, runs)
    if table:
        write_text(group.folder / PREDICTION_FILES[0 if cfg.folds else 1], table)
    curves = {f"seed {r['group']['seed']}" + (f" fold {r['group']['fold']}" if cfg.folds else ""): read_metrics(EXPERIMENTS / r["id"])
              for r in runs}
    plot_group_curves(curves, group.folder / "curves.png", title=f"group {group.id}: {len(runs)} members")
    group.refresh()


def group_line(info: dict) -> str:
    """The monitor's mean and 95% interval over the finished members, in one line."""
    agg = (info.get("aggregate") or {}).get(info["monitor"])
    if not agg:
        return f"{info.get('members_done', 0)} of {len(info['plan'])} members done"
    ci = agg["ci95"]
    interval = f" (95% interval {ci[0]:.4f} to {ci[1]:.4f}, sd {agg['std']:.4f})" if ci else ""
    return f"{info['monitor']} {agg['mean']:.4f}{interval} over {agg['n']} members; experiments/groups/{info['id']}/group.json"


def plot_group_curves(members: dict[str, list[dict]], path: Path, title: str = "") -> None:
    """A group's curves: for each loss and metric, every member's (thin) and their mean (thick, over
    the epochs all members reached)."""
    from matplotlib.ticker import MaxNLocator  # matplotlib's import is slow: only when drawing

    rows = [r for runs in members.values() for r in runs]
    columns = list(dict.fromkeys(k for r in rows for k in r if k not in ("epoch", "seconds")
                                 and not k.startswith(("lr", "grad_norm"))))
    fig = new_figure(4 * max(1, len(columns)), 3.6)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.15, top=0.8, wspace=0.25)
    for ax, key in zip(fig.subplots(1, max(1, len(columns)), squeeze=False)[0], columns):
        for runs in members.values():
            ax.plot([r["epoch"] for r in runs], [r.get(key, float("nan")) for r in runs], lw=0.8, alpha=0.5, marker=".")
        last = min(len(runs) for runs in members.values())
        mean = [sum(runs[i].get(key, float("nan")) for runs in members.values()) / len(members) for i in range(last)]
        ax.plot([next(iter(members.values()))[i]["epoch"] for i in range(last)], mean, lw=2.5, color="black", label="mean",
                marker="o", ms=4)
        ax.set(xlabel="epoch", title=key)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if last == 1:  # one epoch: one tick, not 0.945 ... 1.050
            ax.set_xticks([next(iter(members.values()))[0]["epoch"]])
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
