"""Groups of runs: `seeds: [0, 1, 2]` and/or `folds: K` make train.py train one ordinary run per seed
and fold (each with its own folder, lineage and guarantees; its run.json names the group, the seed
and the fold). The group itself is a folder, experiments/groups/<group id>/:

    group.json   the members (seed, fold, run id, status), the fold assignment's sha256, the status,
                 and the aggregate of every metric (mean, standard deviation, 95% interval)
    folds.csv    with folds: every pooled sample's fold (index, id, fold)
    oof_predictions.csv / val_predictions.csv   each member's prediction of every sample it held out (out-of-fold
                 with folds; the shared validation split with seeds alone): its class and whether it was correct,
                 or a score per sample (a case's Dice), which a group A/B pairs
    curves.png   each member's curves and their mean
    lock         held by the train.py that trains the group

Which runs belong to a group is read from their run.json files, never only from group.json: a member
killed at any moment is still found, and continued, by running the same command again. No torch here.
"""
import json
import shutil
from pathlib import Path
from typing import Any, Optional

from filelock import FileLock, Timeout

from store.runs import GROUPS, allocate_run_dir, is_locked, list_runs, read_metrics, utc_now, write_json
from store.upgrade import RUN_FORMAT
from utils.config import Config, changed_keys, defaults_of, experiment_spec
from utils.errors import UsageError

GROUP_FILE = "group.json"
FOLDS_FILE = "folds.csv"
PREDICTION_FILES = ("oof_predictions.csv", "val_predictions.csv")  # with folds; with seeds alone


def groups_dir() -> Path:
    from store import runs as runstore  # EXPERIMENTS is read at call time: tests point it elsewhere

    return runstore.EXPERIMENTS / GROUPS


def members_of(cfg: Config) -> list[tuple[int, Optional[int]]]:
    """(seed, fold) of every member, in training order: each seed's folds in turn."""
    folds = list(range(cfg.folds)) if cfg.folds else [None]
    return [(seed, fold) for seed in (cfg.seeds or [cfg.seed]) for fold in folds]


def group_changed(cfg: Config) -> dict:
    """What sets the group apart in --list: its changed keys, and epochs (every member's), which a run
    shows in its own column but a group's row shows as members done."""
    default = defaults_of(type(cfg))["epochs"]
    return changed_keys(cfg) | ({"epochs": cfg.epochs} if cfg.epochs != default else {})


# ---------------------------------------------------------------- reading groups
def read_group(folder: Path) -> Optional[dict]:
    """group.json with its status made live ('running' whose lock is free -> 'killed'); None if unreadable."""
    try:
        group = json.loads((folder / GROUP_FILE).read_text())
    except (OSError, ValueError):
        return None
    if group.get("status") == "running" and not is_locked(folder):
        group["status"] = "killed"
    return group


def list_groups() -> list[dict]:
    """Every group, oldest first."""
    root = groups_dir()
    found = [read_group(d) for d in sorted(root.iterdir())] if root.is_dir() else []
    return sorted((g for g in found if g), key=lambda g: (g.get("start_utc", ""), g["id"]))


def find_group(spec: Optional[str]) -> Optional[dict]:
    """The group whose id is `spec`, else None (then `spec` may be a run)."""
    from store.runs import RUN_ID_RE, normalize_run_id
    from utils.errors import UsageError

    try:  # an id as typed, or the same time written with colons
        spec = normalize_run_id(str(spec)) if spec else None
    except UsageError:
        return None
    if not spec or not RUN_ID_RE.match(spec) or not (groups_dir() / spec).is_dir():
        return None
    return read_group(groups_dir() / spec)


def unfinished_group(spec: dict) -> Optional[dict]:
    """The newest group of this experiment that has not finished, or finished and then lost a member
    (deleted): the one the same command continues."""
    runs = list_runs()  # read once for every group's members
    same = [g for g in list_groups() if g.get("spec") == spec and (g.get("status") != "finished" or missing_members(g, runs))]
    return same[-1] if same else None


def missing_members(group: dict, runs: Optional[list[dict]] = None) -> list[tuple]:
    """(seed, fold) of each planned member without a finished run in experiments/ (never trained, or deleted)."""
    tips = member_tips(group["id"], runs)
    return [tuple(m) for m in group.get("plan") or [] if (tips.get(tuple(m)) or {}).get("status") != "finished"]


def member_name(member: tuple) -> str:
    seed, fold = member
    return f"seed {seed}" + (f" fold {fold}" if fold is not None else "")


def member_tips(group_id: str, runs: Optional[list[dict]] = None) -> dict[tuple, dict]:
    """(seed, fold) -> the newest run of that member (a continuation after its killed parent)."""
    tips = {}
    for r in runs if runs is not None else list_runs():  # oldest first: the newest of a member wins
        g = r.get("group") or {}
        if g.get("id") == group_id:
            tips[(g.get("seed"), g.get("fold"))] = r
    return tips


def finished_members(group: dict) -> list[dict]:
    """The finished members' runs in plan order; a notice when some are not finished (exit 2 when none is)."""
    import sys

    tips = member_tips(group["id"])
    runs = [tips.get(tuple(m)) for m in group["plan"]]
    done = [r for r in runs if r is not None and r.get("status") == "finished"]
    if not done:
        raise UsageError(f"resume: group {group['id']} has no finished member yet; run its train.py command again")
    if len(done) < len(runs):
        print(f"note: group {group['id']} is {group.get('status')}: {len(done)} of {len(runs)} members finished; using those",
              file=sys.stderr)
    return done


# ---------------------------------------------------------------- the aggregate
def final_rows(run_ids: list[str]) -> list[dict]:
    """The last row of each run's metrics.csv: its final metrics."""
    from store import runs as runstore

    return [(read_metrics(runstore.EXPERIMENTS / rid) or [{}])[-1] for rid in run_ids]


def aggregate(rows: list[dict]) -> dict:
    """Every metric the members' final rows share (not the epoch, the time, learning rates or gradient norms)."""
    keys = [k for k in rows[0] if k not in ("epoch", "seconds") and not k.startswith(("lr", "grad_norm"))] if rows else []
    keys = [k for k in keys if all(k in r for r in rows)]
    from utils.stats import interval95

    return {k: interval95([r[k] for r in rows]) for k in keys}


def members_record(group: dict, tips: dict[tuple, dict]) -> list[dict]:
    """group.json's members: each (seed, fold) with its newest run and that run's status and metrics."""
    out = []
    for seed, fold in [tuple(m) for m in group["plan"]]:
        tip = tips.get((seed, fold))
        out.append({"seed": seed, "fold": fold, "run": tip["id"] if tip else None,
                    "status": tip.get("status") if tip else "missing", "metrics": (tip or {}).get("metrics")})
    return out


# ---------------------------------------------------------------- writing one group
class GroupFolder:
    """The folder of the group this process trains; holds its lock and is the only writer of group.json."""

    def __init__(self, folder: Path, info: dict):
        self.folder, self.info, self.id = folder, info, info["id"]
        self.lock = FileLock(folder / "lock", timeout=0)
        try:
            self.lock.acquire()
        except Timeout:
            from utils.errors import UsageError
            raise UsageError(f"group {self.id} is being trained by another process; wait for it, or stop it first") from None

    @classmethod
    def create(cls, cfg: Config, task: str, monitor: str, mode: str) -> "GroupFolder":
        group_id, folder, start_utc = allocate_run_dir(under=GROUPS)
        info = {"format": RUN_FORMAT, "id": group_id, "status": "running", "task": task, "name": cfg.name, "tags": cfg.tags,
                "changed": group_changed(cfg), "seeds": cfg.seeds or [cfg.seed], "folds": cfg.folds, "split_seed": cfg.split_seed,
                "monitor": monitor,
                "mode": mode, "plan": [list(m) for m in members_of(cfg)], "spec": experiment_spec(cfg),
                "fold_sha256": None, "members": [], "aggregate": {}, "start_utc": start_utc}
        group = cls(folder, info)
        group.write()
        return group

    @classmethod
    def reopen(cls, group: dict) -> "GroupFolder":
        return cls(groups_dir() / group["id"], {**group, "status": "running"})

    def write(self, **fields: Any) -> None:
        self.info.update(fields, updated_utc=utc_now())
        write_json(self.folder / GROUP_FILE, self.info)

    def refresh(self) -> dict:
        """Re-read the members from their run.json files; the aggregate over the finished ones."""
        tips = member_tips(self.id)  # one pass over the run folders
        members = members_record(self.info, tips)
        done = [m["run"] for m in members if m["status"] == "finished"]
        model = next((t.get("model") for t in tips.values()), self.info.get("model"))
        self.write(members=members, aggregate=aggregate(final_rows(done)), members_done=len(done), model=model)
        return self.info

    def close(self, status: str) -> None:
        """Record the final status and let go of the lock; "discard": remove the folder (a group refused
        before its first member started)."""
        try:
            if status == "discard":
                shutil.rmtree(self.folder)
            else:
                self.write(status=status, **({"end_utc": utc_now()} if status == "finished" else {}))
        finally:
            if self.lock.is_locked:
                self.lock.release()
                (self.folder / "lock").unlink(missing_ok=True)


# ---------------------------------------------------------------- rows of --list and index.html
def list_rows(runs: list[dict], filters: dict) -> list[dict]:
    """--list's rows: with group=<id>, that group's members; else every run outside a group and
    every group as one row, by start time."""
    group_id = filters.get("group")
    if group_id is not None:
        if find_group(group_id) is None:
            ids = [g["id"] for g in list_groups()][-5:]
            raise UsageError(f"--list: no group '{group_id}' in experiments/groups/"
                             f"{'; recent groups: ' + ', '.join(ids) if ids else '; there are no groups yet'}")
        return [r for r in runs if (r.get("group") or {}).get("id") == group_id]
    rows = [r for r in runs if not r.get("group")] + [group_row(g, runs) for g in list_groups()]
    return sorted(rows, key=lambda r: (r.get("start_utc", ""), r["id"]))


def group_row(g: dict, runs: Optional[list[dict]] = None) -> dict:
    """A group as a row of the table: its spec as the config, the members' mean as its metrics. With
    the runs at hand, members done counts the finished members still in experiments/; an aggregate
    over members since deleted is marked stale."""
    agg = g.get("aggregate") or {}
    done = g.get("members_done", 0)
    if runs is not None:
        done = len(g.get("plan") or []) - len(missing_members(g, runs))
    incomplete = g.get("status") == "finished" and done < len(g.get("plan") or [])
    return {"id": g["id"], "kind": "group", "status": "incomplete" if incomplete else g.get("status"), "name": g.get("name"),
            "tags": g.get("tags") or [],
            "notes": [], "model": g.get("model", "?"), "config": {**(g.get("spec") or {}), "monitor": g.get("monitor")},
            "changed": g.get("changed") or {},
            "metrics": {k: v["mean"] for k, v in agg.items()}, "aggregate": agg, "modes": {g.get("monitor"): g.get("mode")},
            "members": {"done": done, "total": len(g.get("plan") or [])}, "folder": GROUPS, "unit": "members",
            "stale": done < g.get("members_done", 0),
            "start_utc": g.get("start_utc", ""), "end_utc": g.get("end_utc"), "updated_utc": g.get("updated_utc")}


def page_rows(runs: list[dict]) -> list[dict]:
    """index.html's group rows (their members fold under them)."""
    return [group_row(g, runs) for g in list_groups()]
