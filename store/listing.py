"""--list: a table of runs that tells them apart (name, what differs from the defaults, the headline
metric), filtered and sorted, or as JSON for scripts. Reads run.json files only: no torch, so a
thousand runs list at once."""
import datetime
import json
import os
import shutil
import sys
from typing import Any, Optional

from store import runs as runstore
from store.aliases import read_aliases
from store.runs import find_state, list_runs, shown_run
from utils.config import LABEL_KEYS, Config, convert, defaults_of, every_key, fields_of, parse_override, suggest
from utils.errors import UsageError, count
from utils.features import hooks

# pruned: finished, stopped by a sweep; incomplete: a group that lost a member
STATUSES = ("running", "finished", "pruned", "failed", "interrupted", "killed", "damaged", "incomplete")
# Filters besides the config keys (which match the run's config.yaml values).
FIELDS = ("status", "name", "tag", "model", "parent", "group", "sweep")
COLUMNS = ("best", "id", "name", "status", "model", "epochs", "duration", "params")  # --sort also takes metrics, config keys


def list_command(words: list[str], sort: Optional[str], as_json: bool, configs: dict[str, type]) -> int:
    """python train.py --list [KEY=VALUE ...] [--sort KEY] [--json]: print the runs that match.
    `configs` are the tasks' config classes: the config keys runs can be filtered and sorted by."""
    filters = parse_filters(words, configs)
    runs = rows_of(filters)
    metrics = list(dict.fromkeys(k for r in runs for k in (r.get("metrics") or {})))  # every task's, as recorded
    keys = every_key(configs)
    if sort is not None and sort not in COLUMNS and sort not in keys and sort not in metrics:
        raise UsageError(f"--sort: '{sort}' is not a column{suggest(sort, [*metrics, *COLUMNS, *keys])}; "
                         f"use one of {', '.join([*metrics, *COLUMNS])} or a config key")
    runs = [r for r in runs if matches(r, filters)]
    if sort is not None:
        runs = sort_runs(runs, sort, keys)
    aliases = read_aliases(runstore.EXPERIMENTS)
    if as_json:
        pointed = {}
        for name, a in aliases.items():
            pointed.setdefault(a["run"], []).append(name)
        print(json.dumps([{**summary(r), "aliases": pointed.get(r["id"], [])} for r in runs], indent=1))
        return 0
    print(format_table(runs))
    for name, a in aliases.items():  # inference.py --promote moves them; resume=alias:NAME uses them
        print(f"alias {name} -> {a['run']} (since {a['since']}, {a['moves']} move{'s' * (a['moves'] != 1)})")
    return 0


def rows_of(filters: list[tuple[str, Any]]) -> list[dict]:
    """The rows to list: every run, then each feature's rows (a group's members folded into one row)."""
    rows = list_runs()
    for fold in hooks("list_rows"):
        rows = fold(rows, dict(filters))
    return rows


def parse_filters(words: list[str], configs: dict[str, type]) -> list[tuple[str, Any]]:
    """KEY=VALUE words -> (key, value); every key and value checked before anything is listed."""
    filters = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not value:
            raise UsageError(f"--list: '{word}' is not a filter KEY=VALUE, e.g. status=finished tag=baseline model=resnet18")
        if key == "status" and value not in STATUSES:
            raise UsageError(f"--list: status '{value}' is not one of {' | '.join(STATUSES)}{suggest(value, list(STATUSES))}")
        if key in FIELDS:
            filters.append((key, value))
        elif key in every_key(configs) and key not in LABEL_KEYS:
            filters.append((key, config_value(key, value, configs)))
        else:
            raise UsageError(f"--list: cannot filter by '{key}'{suggest(key, [*FIELDS, *every_key(configs)])}; "
                             f"use {', '.join(FIELDS)} or a config key")
    return filters


def config_value(key: str, text: str, configs: dict[str, type]) -> Any:
    cls = next(c for c in [Config, *configs.values()] if key in fields_of(c))
    try:
        return convert(cls, key, parse_override(f"{key}={text}", configs)[1])
    except ValueError as e:
        raise UsageError(f"--list: {key}={text}: {e}") from None


def matches(run: dict, filters: list[tuple[str, Any]]) -> bool:
    for key, value in filters:
        if key == "tag":
            ok = value in (run.get("tags") or [])
        elif key == "parent":
            ok = (run.get("parent") or {}).get("id") == value
        elif key == "group":
            ok = (run.get("group") or {}).get("id") == value
        elif key == "sweep":
            ok = (run.get("sweep") or {}).get("id") == value
        elif key == "status":
            ok = shown_status(run) == value or run.get("status") == value
        elif key in FIELDS:
            ok = str(run.get(key)) == value
        else:
            ok = (run.get("config") or {}).get(key) == value
        if not ok:
            return False
    return True


def headline(run: dict) -> str:
    """The metric the run was judged by: the one that picked its best epoch."""
    return (run.get("config") or {}).get("monitor") or ""


def lower_is_better(run: dict, metric: str) -> bool:
    """From the run's record of its validation metrics' modes, else: losses are better lower."""
    mode = (run.get("modes") or {}).get(metric)
    return mode == "min" if mode else metric.endswith("loss")


def sort_value(run: dict, key: str, config_keys: list[str]) -> Any:
    """The value --sort orders by; metrics so that the best run comes last, next to the prompt."""
    if key == "duration":
        return duration_seconds(run)
    if key == "epochs":
        return run.get("epochs_done")
    if key in COLUMNS[1:]:
        return run.get(key)
    if key in config_keys:
        return (run.get("config") or {}).get(key)
    metric = headline(run) if key == "best" else key
    value = ((run.get("best") or {}).get("metrics") if key == "best" else run.get("metrics") or {}) or {}
    value = value.get(metric)
    if value is None:
        return None
    return -value if lower_is_better(run, metric) else value


def sort_runs(runs: list[dict], key: str, config_keys: list[str]) -> list[dict]:
    """Runs without a value first, then by value; ties stay in start order (sorted is stable)."""
    def order(run: dict) -> tuple:
        value = sort_value(run, key, config_keys)
        return (value is not None, value if isinstance(value, (int, float)) else str(value) if value is not None else 0)
    try:
        return sorted(runs, key=order)
    except TypeError:  # a key holding numbers in some runs and text in others
        return sorted(runs, key=lambda r: (sort_value(r, key, config_keys) is not None, str(sort_value(r, key, config_keys))))


def changed(run: dict) -> dict:
    """What differs from the defaults: recorded at the start of newer runs (before `auto` values
    were resolved), worked out from the saved config's shared keys for older ones."""
    if isinstance(run.get("changed"), dict):
        return run["changed"]
    defaults = defaults_of(Config)
    return {k: v for k, v in (run.get("config") or {}).items() if k in defaults and v != defaults[k] and k != "resume"}


def format_changed(values: dict) -> str:
    return " ".join(f"{k}={_short(v)}" for k, v in values.items())


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return ",".join(map(str, v))
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def metric_text(run: dict, where: str, metric: str, common: str) -> str:
    """A run's final or best value of its headline metric ('-' when it has none)."""
    source = run.get("metrics") if where == "final" else (run.get("best") or {}).get("metrics")
    value = (source or {}).get(metric)
    if not isinstance(value, (int, float)):
        return "-"
    ci = ((run.get("aggregate") or {}).get(metric) or {}).get("ci95")
    text = f"{value:.4f}" + (f"±{(ci[1] - ci[0]) / 2:.4f}" if ci else "")  # a group: the members' mean and 95% interval
    text += " (stale)" if run.get("stale") else ""  # over members since deleted
    return text if metric == common else f"{metric}={text}"


def shown_status(r: dict) -> str:
    """The status a person reads: a finished run a sweep's pruner stopped is `pruned` (its weights are final)."""
    return "pruned" if r.get("status") == "finished" and r.get("pruned") else r.get("status", "?")


def epochs_text(r: dict) -> str:
    """Epochs done of planned; for a group, its members done of all."""
    if r.get("kind") == "group":
        return f"{r['members']['done']}/{r['members']['total']} members"
    return f"{r.get('epochs_done', 0)}/{r.get('epochs', '?')}"


def format_table(runs: list[dict]) -> str:
    """The table --list prints: every run, oldest first; '*' marks the one shown in checkpoints/.
    When the runs are judged by different metrics, the column is 'metric' and each cell names its own."""
    shown = (shown_run() or {}).get("id")
    monitors = [headline(r) for r in runs]
    common = monitors[0] if monitors and len(set(monitors)) == 1 else None
    header = ("", "id", "status", "name", "model", "epochs", common or "metric", "best", "parent", "duration", "tags", "changed")
    rows = [header]
    for r, metric in zip(runs, monitors):
        rows.append(("*" if r["id"] == shown else "", r["id"], shown_status(r), r.get("name") or "-", r.get("model", "?"),
                     epochs_text(r), metric_text(r, "final", metric, common),
                     metric_text(r, "best", metric, metric), (r.get("parent") or {}).get("id") or "-",
                     format_duration(duration_seconds(r)), ",".join(r.get("tags") or []) or "-", format_changed(changed(r))))
    lines = fit_width([[str(c) for c in row] for row in rows], ELASTIC)
    if len(rows) == 1:
        lines.append("(no runs match)" if list_runs() else "(no runs yet: python train.py starts one)")
    if shown in {r["id"] for r in runs}:
        lines.append("* the run checkpoints/ shows (the latest started)")
    return "\n".join(lines + to_continue(runs))


ELASTIC = (3, 4, 8, 10, 11)  # name, model, parent, tags, changed: the columns cut (ending in '~') to fit the terminal


def fit_width(rows: list[list[str]], elastic: tuple[int, ...]) -> list[str]:
    """Rows as aligned lines; in a terminal (or with COLUMNS set), the elastic columns are cut, widest
    first, until a line fits its width. Piped to a file, nothing is cut."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    if sys.stdout.isatty() or "COLUMNS" in os.environ:
        limit = shutil.get_terminal_size().columns
        while sum(widths) + 2 * (len(widths) - 1) > limit:
            i = max(elastic, key=lambda k: widths[k])
            if widths[i] <= 5:
                break
            widths[i] -= 1
    cut = [[c if len(c) <= w else c[:w - 1] + "~" for c, w in zip(row, widths)] for row in rows]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cut]


def to_continue(runs: list[dict]) -> list[str]:
    """A line for each killed or interrupted run that has saved state and no continuation yet:
    the command that continues it (a SIGKILLed run could not say so itself)."""
    stopped = [r for r in runs if r.get("kind") is None and r.get("status") in ("killed", "interrupted")]
    if not stopped:
        return []  # the usual case: no second pass over the run folders
    continued = {(r.get("parent") or {}).get("id") for r in list_runs()}
    lines = []
    for r in stopped:
        if r["id"] not in continued and find_state(runstore.EXPERIMENTS, r["id"]) is not None:
            lines.append(f"run {r['id']} ({r['status']} after {r.get('epochs_done', 0)} of {count(r.get('epochs', 0), 'epoch')}): "
                         f"continue it with python train.py resume={r['id']}")
    return lines


def summary(run: dict) -> dict:
    """One run for --list --json and the HTML index."""
    keep = ("id", "status", "name", "tags", "notes", "model", "epochs", "epochs_done", "steps_done", "metrics",
            "start_utc", "end_utc", "init_from", "params", "stopped_early")
    out = {k: run.get(k) for k in keep}
    out |= {"headline": headline(run), "best": (run.get("best") or {}).get("metrics"), "best_epoch": (run.get("best") or {}).get("epoch"),
            "changed": changed(run), "parent": (run.get("parent") or {}).get("id"),
            "dataset": (run.get("config") or {}).get("dataset"), "duration_s": duration_seconds(run),
            "group": run.get("group"), "sweep": run.get("sweep"), "pruned": bool(run.get("pruned"))}
    if run.get("kind") == "group":
        out |= {"kind": "group", "members": run["members"], "aggregate": run["aggregate"]}
    return out


def duration_seconds(r: dict) -> Optional[int]:
    try:
        start = datetime.datetime.fromisoformat(r["start_utc"])
        end = datetime.datetime.fromisoformat(r.get("end_utc") or r.get("updated_utc"))
    except (KeyError, TypeError, ValueError):
        return None
    return int((end - start).total_seconds())


def format_duration(seconds: Optional[int]) -> str:
    if seconds is None:
        return "-"
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
