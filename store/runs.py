"""The run store: `experiments/<run id>/` is the one source of truth for every run, and
`checkpoints/` a view of the latest one. Both mains use this module and nothing else to find,
read and write runs.

Every file is written to a temporary file in the same folder, flushed, fsynced and moved into
place with os.replace (then the folder is fsynced); an existing file is never opened for
writing, because hard links share it with `checkpoints/`.
"""
import datetime
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from filelock import FileLock, Timeout

from store.upgrade import upgrade_run
from utils.config import LABEL_RE, ROOT
from utils.errors import RunFailure, UsageError, fault_point
from utils.files import atomic_write, fsync_dir, link_or_copy, sha256_file, write_json, write_text  # noqa: F401 - the store's writes
from utils.streams import lost_streams

EXPERIMENTS = ROOT / "experiments"
CHECKPOINTS = ROOT / "checkpoints"
RUN_ID_RE = re.compile(r"^\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}(_\d+)?$")
COLON_ID_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})[_ T](\d{2}):(\d{2}):(\d{2})(_\d+)?$")
STORE_LOCK = ".store.lock"  # guards run id allocation and the checkpoints/ view
VIEW_FILES = ("config.yaml", "run.json", "model.safetensors")
BEST_FILE = "best.safetensors"  # the best epoch's weights, beside model.safetensors
STATE_FILE = "state.pt"  # everything needed to continue the run exactly (train/checkpoint.py writes it)
LABELS_FILE = "labels.json"  # tags and notes added after the run started (train.py --tag / --note)
GROUPS = "groups"  # experiments/groups/<id>: a group of runs (seeds, folds), groups/folder.py
SWEEPS = "sweeps"  # experiments/sweeps/<id>: a sweep, sweeps/study.py
TRASH = ".trash"  # experiments/.trash/<id>: runs moved away by train.py --delete


# ---------------------------------------------------------------- run ids
def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


def normalize_run_id(text: str, key: str = "resume") -> str:
    """A run id, 'latest', 'name:<name>' or 'alias:<alias>', from what a user typed; anything else (a path, '..') is exit 2."""
    text = str(text).strip()
    prefix, colon, label = text.partition(":")
    if text == "latest" or RUN_ID_RE.match(text) or (prefix in ("name", "alias") and colon and LABEL_RE.match(label)):
        return text
    m = COLON_ID_RE.match(text)
    if m:
        return f"{m[1]}_{m[2]}-{m[3]}-{m[4]}{m[5] or ''}"
    raise UsageError(f"{key}: '{text}' is not a run id (YYYY-MM-DD_HH-MM-SS, latest, name:<name> or alias:<alias>){recent_ids_hint()}")


def recent_ids_hint(n: int = 5) -> str:
    ids = [r["id"] for r in list_runs()][-n:]
    return f"; recent runs: {', '.join(ids)}" if ids else "; there are no runs yet in experiments/"


def allocate_run_dir(experiments: Optional[Path] = None, under: str = "") -> tuple[str, Path, str]:
    """Create experiments/[under/]<local start time>[_N]/ and return (id, folder, start time in UTC).
    mkdir is atomic, so two processes started in the same second get two folders. Runs, groups
    (under="groups") and sweeps (under="sweeps") share one space of ids, so that an id names one thing."""
    experiments = experiments or EXPERIMENTS
    base = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    try:
        (experiments / under).mkdir(parents=True, exist_ok=True)
        with FileLock(experiments / STORE_LOCK):
            for n in range(1, 10_000):
                run_id = base if n == 1 else f"{base}_{n}"
                if any((experiments / where / run_id).exists() for where in ("", GROUPS, SWEEPS)):
                    continue
                try:
                    (experiments / under / run_id).mkdir()
                except FileExistsError:
                    continue
                return run_id, experiments / under / run_id, utc_now()
    except OSError as e:
        raise RunFailure(f"cannot create a run folder in {experiments}: {e.strerror}; make it writable "
                         "(other runs are untouched)") from None
    raise RunFailure(f"could not allocate a run folder for {base}")


# ---------------------------------------------------------------- reading runs
def read_run(folder: Path) -> Optional[dict]:
    """run.json of a run folder, upgraded to today's format, with `status` made live: 'running' whose lock is free -> 'killed'.
    None when the folder has no readable run.json."""
    try:
        info = upgrade_run(json.loads((folder / "run.json").read_text()))
    except (OSError, ValueError):
        return None
    if info.get("status") == "running" and not is_locked(folder):
        info["status"] = "killed"
    elif info.get("status") == "finished":
        weights = folder / "model.safetensors"  # the size only: hashing is for loading, --list stays fast
        if not weights.exists() or weights.stat().st_size != (info.get("weights") or {}).get("size"):
            info["status"] = "damaged"
    added = read_labels(folder)
    info["tags"] = list(dict.fromkeys((info.get("tags") or []) + added["tags"]))
    info["notes"] = ([info["notes"]] if isinstance(info.get("notes"), str) else []) + [n["text"] for n in added["notes"]]
    return info


def read_labels(folder: Path) -> dict:
    """labels.json: {"tags": [...], "notes": [{"utc": ..., "text": ...}]}, added after the run started."""
    try:
        labels = json.loads((folder / LABELS_FILE).read_text())
    except (OSError, ValueError):
        labels = {}
    return {"tags": labels.get("tags", []), "notes": labels.get("notes", [])}


def is_locked(folder: Path) -> bool:
    """Whether a live process holds the run's lock file."""
    if not (folder / "lock").exists():
        return False
    lock = FileLock(folder / "lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    lock.release()
    return False


def list_runs(experiments: Optional[Path] = None) -> list[dict]:
    """Every run with a run.json, oldest first by UTC start time."""
    experiments = experiments or EXPERIMENTS
    if not experiments.is_dir():
        return []
    runs = []
    for d in experiments.iterdir():
        if d.is_dir() and RUN_ID_RE.match(d.name):
            info = read_run(d)
            if info is not None:
                runs.append(info)
    return sorted(runs, key=lambda r: (r.get("start_utc", ""), r["id"]))


def find_run(spec: str, key: str, want: Callable[[dict], bool], what: str,
             refuse: Optional[Callable[[dict], Optional[str]]] = None) -> dict:
    """The run `spec` names ('latest': the newest run for which want() holds). It is refused
    (exit 2) when refuse(run) gives a reason."""
    spec = normalize_run_id(spec, key)
    runs = list_runs()
    if spec == "latest":
        chosen = [r for r in runs if want(r)]
        if not chosen:
            raise UsageError(f"{key}: latest: no run {what} in experiments/; train one first with python train.py")
        run = chosen[-1]
    elif spec.startswith("name:"):
        run = newest_named(runs, spec[5:], want, key)
    elif spec.startswith("alias:"):  # the run an alias points at (store/aliases.py; moved by inference.py --promote)
        from store.aliases import alias_run
        run_id = alias_run(spec[6:], key, EXPERIMENTS)
        run = next((r for r in runs if r["id"] == run_id), None)
        if run is None:
            raise UsageError(f"{key}: alias '{spec[6:]}' points at run {run_id}, which is not in experiments/ (deleted?); "
                             "promote another run to it with python inference.py --promote RUN --alias " + spec[6:] + " --force --note WHY")
    else:
        run = next((r for r in runs if r["id"] == spec), None)
        if run is None:
            raise UsageError(f"{key}: no run '{spec}' in experiments/{recent_ids_hint()}")
    reason = refuse(run) if refuse is not None else None
    if reason:
        raise UsageError(f"{key}: run {run['id']} {reason}")
    return run


def newest_named(runs: list[dict], name: str, want: Callable[[dict], bool], key: str) -> dict:
    """The newest run called `name` for which want() holds, else the newest called `name`."""
    named = [r for r in runs if r.get("name") == name]
    if not named:
        names = sorted({r["name"] for r in runs if r.get("name")})
        hint = f"names in use: {', '.join(names[-10:])}" if names else "no run has a name yet (set name: in the config)"
        raise UsageError(f"{key}: no run named '{name}' in experiments/; {hint}")
    return ([r for r in named if want(r)] or named)[-1]


def find_state(experiments: Path, run_id: str) -> Optional[Path]:
    """The state a run would continue from: its state.pt, or, for a continuation killed before
    its first save, the state its parent left (and so on up the lineage); None: from step 0, or a
    finished run whose state.pt was deleted (train.py --prune-states)."""
    for _ in range(10_000):  # a lineage is finite; the bound guards against a hand-edited loop
        path = experiments / run_id / STATE_FILE
        if path.exists():
            return path
        info = read_run(experiments / run_id) or {}
        if not info.get("parent") or info.get("status") in ("finished", "damaged"):
            return None
        run_id = info["parent"]["id"]
    return None


def children_of(run_id: str) -> list[str]:
    return [r["id"] for r in list_runs() if (r.get("parent") or {}).get("id") == run_id]


# ---------------------------------------------------------------- the checkpoints/ view
def shown_run() -> Optional[dict]:
    try:
        return json.loads((CHECKPOINTS / "run.json").read_text())
    except (OSError, ValueError):
        return None


def update_view(folder: Path, start_utc: str, files: tuple) -> bool:
    """Show the run in `folder` in checkpoints/ by linking `files` there (run.json last, so
    the view names the run only once the other files are in place). A run that started
    earlier than the one shown never replaces it. Returns whether the view was updated."""
    CHECKPOINTS.mkdir(exist_ok=True)
    with FileLock(EXPERIMENTS / STORE_LOCK):
        for stale in CHECKPOINTS.glob(".*.tmp"):  # left by a process killed mid-update
            stale.unlink(missing_ok=True)
        shown = shown_run()
        if shown and shown.get("id") != folder.name and shown.get("start_utc", "") > start_utc:
            return False
        if shown is None or shown.get("id") != folder.name:
            (CHECKPOINTS / "run.json").unlink(missing_ok=True)  # the view is now visibly incomplete
        for name in VIEW_FILES:
            if name not in files and name != "run.json":
                (CHECKPOINTS / name).unlink(missing_ok=True)
        for name in files:
            if name != "run.json":
                link_or_copy(folder / name, CHECKPOINTS / name)
                fault_point("view")
        link_or_copy(folder / "run.json", CHECKPOINTS / "run.json")
        fsync_dir(CHECKPOINTS)
    return True


# ---------------------------------------------------------------- writing one run
class RunFolder:
    """The folder of the run this process trains. Holds the run's lock for its lifetime,
    keeps run.json current, and is the only writer of the folder."""

    def __init__(self, run_id: str, folder: Path, info: dict):
        self.id, self.folder, self.info = run_id, folder, info
        self.lock = FileLock(folder / "lock", timeout=0)
        self.lock.acquire()
        self.log_file = open(folder / "train.log", "x", buffering=1)  # new file, line-buffered

    @classmethod
    def create(cls, config_yaml: str, info: dict) -> "RunFolder":
        """Allocate the run id, then write run.json (status running; it holds the config too, so a
        run killed before config.yaml exists can still be continued) and config.yaml, and show
        them in checkpoints/, before the first step."""
        run_id, folder, start_utc = allocate_run_dir()
        info = {"id": run_id, "status": "running", **info, "start_utc": start_utc, "updated_utc": start_utc}
        run = cls(run_id, folder, info)
        run.write_info()
        write_text(folder / "config.yaml", f"# run {run_id}\n" + config_yaml, readonly=True)
        update_view(folder, start_utc, ("config.yaml", "run.json"))
        return run

    def log(self, message: str) -> None:
        """Print a line and keep it in train.log. Printing never fails the run (utils/streams.py):
        a stream that could not be written is recorded once as a warning."""
        print(message, flush=True)
        if not self.log_file.closed:
            self.log_file.write(message + "\n")
        for reason in lost_streams():
            self.warn(reason)

    def warn(self, message: str) -> None:
        """A side output (what is printed, a picture, TensorBoard, the index page) failed: said once
        on stderr, in train.log and in run.json's `warnings`; the run goes on."""
        warnings = self.info.get("warnings") or []
        if message in warnings:
            return
        print(f"warning: {message}", file=sys.stderr, flush=True)
        if not self.log_file.closed:
            self.log_file.write(f"warning: {message}\n")
        self.write_info(warnings=[*warnings, message], readonly=self.info.get("status") == "finished")

    def write_info(self, readonly: bool = False, **fields) -> None:
        self.info.update(fields, updated_utc=utc_now())
        write_json(self.folder / "run.json", self.info, readonly)

    def write_metrics(self, rows: list[dict], readonly: bool = False) -> None:
        """metrics.csv, whole, from rows (the lineage's rows first); one column per key of the rows,
        in the order first seen, empty where a row lacks it."""
        cols = list(dict.fromkeys(k for r in rows for k in r))
        lines = [",".join(cols)] + [",".join(_fmt(r[c]) if c in r else "" for c in cols) for r in rows]
        write_text(self.folder / "metrics.csv", "\n".join(lines) + "\n", readonly)

    def finish(self, weights: Path, **fields) -> None:
        """The run is finished once its weights and its final run.json are durable; then the
        files are made read-only and checkpoints/ shows it (unless a later run took it)."""
        os.chmod(weights, 0o444)
        self.write_info(readonly=True, status="finished", end_utc=utc_now(),
                        weights={"sha256": sha256_file(weights), "size": weights.stat().st_size}, **fields)
        fault_point("finished")
        self.close()
        for name in ("metrics.csv", "state.pt", "train.log", "curves.png", BEST_FILE):
            if (self.folder / name).exists():
                os.chmod(self.folder / name, 0o444)
        update_view(self.folder, self.info["start_utc"], VIEW_FILES)

    def close(self, status: Optional[str] = None, **fields) -> None:
        """Record a final status (failed, interrupted) unless finish() did, and let go of the lock."""
        if status is not None:
            try:
                self.write_info(status=status, end_utc=utc_now(), **fields)
            except OSError:  # e.g. the disk is full: run.json keeps saying running -> shown as killed
                pass
            if not self.log_file.closed:
                self.log_file.write(f"run {self.id}: {status}" + (f": {fields['error']}" if "error" in fields else "") + "\n")
        if not self.log_file.closed:
            self.log_file.close()
        if self.lock.is_locked:
            self.lock.release()
            (self.folder / "lock").unlink(missing_ok=True)


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def read_metrics(folder: Path) -> list[dict]:
    """metrics.csv rows as dicts of numbers ([] when there is none)."""
    try:
        lines = (folder / "metrics.csv").read_text().splitlines()
    except OSError:
        return []
    cols = lines[0].split(",") if lines else []
    return [{c: (int(v) if c == "epoch" else float(v)) for c, v in zip(cols, line.split(",")) if v} for line in lines[1:]]
