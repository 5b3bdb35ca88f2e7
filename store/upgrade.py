"""Compatibility: how a run folder written by an earlier version of the template is read today.

run.json and state.pt carry a format number (`format`); files written before the number existed
are format 1, and config.yaml files from before the training recipe are format 0 (their
run.json has no number either; `run_format` tells them apart). Each change of a format is one
numbered function here, applied in order to what is read; nothing on disk is rewritten, so a
finished run keeps its bytes. This is the one module that knows the history, so it is the one
place in the lower layers that names the tasks of those days (the layout test allows it).

| format | what changed |
| --- | --- |
| 0 -> 1 | the training recipe: label smoothing and warmup were added, and small_cnn was redesigned |
| 1 -> 2 | tasks: config.yaml holds its task's keys only; channels_last is a bool; state.pt: optimizers by name, sums per metric |
| 2 -> 3 | BatchNorm statistics recomputed before each validation (`bn_stats_samples`); batch_size may be `auto` |
"""
from typing import Any

from utils.config import Config, build_config, fields_of, task_config

RUN_FORMAT = 3    # run.json and the config.yaml beside it
STATE_FORMAT = 2  # state.pt


def run_format(run: dict) -> int:
    """The format of a run folder: run.json's number, or for older folders 1, or 0 for those
    written before the training recipe (their config lacks its keys)."""
    if "format" in run:
        return int(run["format"])
    return 1 if "label_smoothing" in (run.get("config") or {}) else 0


# ---------------------------------------------------------------- run.json and config.yaml
def upgrade_run(run: dict) -> dict:
    """run.json as today's code reads it (a new dict; the file is not touched)."""
    run = dict(run)
    if run_format(run) < 2:
        run = run_1_to_2(run)
    return run


MODES_1 = {"classify": {"val_acc": "max", "val_loss": "min"}, "wgan_gp": {"val_wdist": "min", "val_fd": "min"}}


def run_1_to_2(run: dict) -> dict:
    """Runs from before tasks were named are classifiers; the validation metrics' modes of each
    task of those days (run.json records them since)."""
    task = run.get("task") or "classify"
    config = {"monitor": "val_acc", **(run.get("config") or {})}  # before `monitor`, accuracy picked nothing but was shown
    return {**run, "task": task, "modes": MODES_1[task], "config": config}


def upgrade_config(values: dict, fmt: int) -> dict:
    """A run's config.yaml values, as written in format `fmt`, in today's format."""
    if fmt < 1:
        values = config_0_to_1(values)
    if fmt < 2:
        values = config_1_to_2(values)
    if fmt < 3:
        values = config_2_to_3(values)
    return values


def config_0_to_1(values: dict) -> dict:
    """Before the recipe, runs trained without label smoothing and warmup, with the first small_cnn."""
    values = {"label_smoothing": 0.0, "warmup_epochs": 0.0, **values}
    if values.get("base_model") == "small_cnn":
        values["base_model"] = "small_cnn_v1"
    return values


BOOLEAN_AUGMENT = {True: "translate", False: "none"}  # augment was a boolean before the named policies


def config_1_to_2(values: dict) -> dict:
    """The task is named; augment booleans are policies. (Keys of other tasks, which every
    config.yaml held, are dropped by utils.config.saved_config, which knows each task's keys.)"""
    values = {**values, "task": values.get("task") or "classify"}
    if isinstance(values.get("augment"), bool):
        values["augment"] = BOOLEAN_AUGMENT[values["augment"]]
    return values


def config_2_to_3(values: dict) -> dict:
    """Before bn_stats_samples, BatchNorm kept its running averages: a continuation does the same."""
    return {"bn_stats_samples": 0, **values}


# ---------------------------------------------------------------- state.pt
def upgrade_state(checkpoint: dict) -> dict:
    """A state.pt's contents in today's format (a new dict)."""
    checkpoint = dict(checkpoint)
    if checkpoint.get("format", 1) < 2:
        checkpoint = state_1_to_2(checkpoint)
    return checkpoint


# Format 1 kept each task's running sums under its own names; today they are named by the metric
# they become, each with its count. name -> (metric, the count it is divided by).
SUMS_1 = {"loss_sum": None, "correct": ("train_acc", "count"), "grad_norm_sum": ("grad_norm", "steps"),
          "wdist_sum": ("train_wdist", "count"), "gp_sum": ("gp", "count"), "gen_loss_sum": ("gen_loss", "gen_count")}


def state_1_to_2(checkpoint: dict) -> dict:
    """One optimizer was saved as "optimizer"/"scheduler": now always by name ("model" for one).
    The epoch's sums move to per-metric sums and counts."""
    out = {k: v for k, v in checkpoint.items() if k not in ("optimizer", "scheduler", "sums")}
    if "optimizer" in checkpoint:
        out["optimizers"] = {"model": checkpoint["optimizer"]}
        out["schedulers"] = {"model": checkpoint["scheduler"]}
    old = dict(checkpoint["sums"])
    count, seconds = old.pop("count"), old.pop("seconds")
    gan = "wdist_sum" in old
    divisors = {"count": count, "steps": checkpoint["step"], "gen_count": int(old.pop("gen_count", 0))}
    sums, counts = {}, {}
    for name, value in old.items():
        metric, divisor = SUMS_1[name] or ("critic_loss" if gan else "train_loss", "count")
        if name == "grad_norm_sum" and not float(value):  # every classifier kept it; only clipping filled it
            continue
        sums[metric], counts[metric] = _as_float(value), divisors[divisor]
    out["sums"] = {"metrics": sums, "counts": counts, "seconds": seconds}
    return out


def _as_float(value: Any) -> Any:
    return value.float() if hasattr(value, "float") else float(value)


def saved_config(values: dict, configs: dict[str, type], run_format: int) -> Config:
    """The Config of a run folder's config.yaml, upgraded from the format its run.json records
    (above) and built as its task's config class."""
    values = upgrade_config(values, run_format)
    cls = task_config(values.get("task"), configs, "task")
    if run_format < 2:  # every task's keys were written into every config.yaml
        values = {k: v for k, v in values.items() if k in fields_of(cls)}
    return build_config(values, cls)
