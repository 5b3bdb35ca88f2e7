"""Looking after the store after runs end: tags and notes added later, deleting runs to
experiments/.trash/ and restoring them, and deleting the state.pt files nothing needs any more.

Every change is checked first and refused whole (exit 2, nothing moved) when one part of it is
unsafe. Nothing outside experiments/ and checkpoints/ is touched."""
import os
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from filelock import FileLock

from store import runs as runstore
from store.aliases import read_aliases
from store.runs import (
    GROUPS,
    LABELS_FILE,
    RUN_ID_RE,
    STATE_FILE,
    STORE_LOCK,
    SWEEPS,
    TRASH,
    VIEW_FILES,
    find_run,
    find_state,
    list_runs,
    newest_named,
    normalize_run_id,
    read_labels,
    read_run,
    shown_run,
    update_view,
    utc_now,
    write_json,
)
from utils.errors import UsageError

UNFINISHED = ("running", "killed", "interrupted", "failed")  # statuses of runs that may still be continued
COLLECTIONS = {GROUPS: "group", SWEEPS: "sweep"}  # experiments/<folder>/<id>: a group or a sweep; its runs name it in run.json


# ---------------------------------------------------------------- labels added later
def add_labels(spec: str, tags: list[str] = (), note: Optional[str] = None, option: str = "--tag") -> str:
    """Add tags or a note to a run's labels.json; run.json, the config and the weights keep their bytes."""
    from utils.config import LABEL_RE

    bad = [t for t in tags if not LABEL_RE.match(t)]
    if bad:
        raise UsageError(f"{option}: '{bad[0]}' is not a tag; use up to 64 letters, digits and . _ + -")
    if note is not None and not note.strip():
        raise UsageError(f"{option}: the note is empty; write the text after the run id")
    run = find_run(spec, option, lambda r: True, "")
    folder = runstore.EXPERIMENTS / run["id"]
    with FileLock(runstore.EXPERIMENTS / STORE_LOCK):
        labels = read_labels(folder)
        labels["tags"] = list(dict.fromkeys(labels["tags"] + list(tags)))
        if note is not None:
            labels["notes"].append({"utc": utc_now(), "text": note.strip()})
        write_json(folder / LABELS_FILE, labels)
    what = f"note added to run {run['id']}" if note is not None else f"run {run['id']} tagged {', '.join(tags)}"
    print(what)
    return run["id"]


# ---------------------------------------------------------------- which state files are needed
def needed_by(runs: list[dict]) -> dict[str, list[str]]:
    """run id -> the unfinished runs that would continue from that run's state.pt (their own
    continuations killed before their first save lead back to it)."""
    needs: dict[str, list[str]] = {}
    for r in runs:
        if r.get("status") in UNFINISHED:
            path = find_state(runstore.EXPERIMENTS, r["id"])
            if path is not None and path.parent.name != r["id"]:
                needs.setdefault(path.parent.name, []).append(r["id"])
    return needs


# ---------------------------------------------------------------- delete and restore
def delete_runs(specs: list[str], dry_run: bool = False) -> list[str]:
    """Move runs to experiments/.trash/; a group or sweep id moves its folder and every run of it.
    Refused whole for a running run, or one whose state.pt an unfinished run outside the set still needs."""
    runs = list_runs()
    collections, specs = split_collections(specs, runstore.EXPERIMENTS)
    chosen = _resolve(specs, runs, "--delete", lambda spec: find_run(spec, "--delete", lambda r: True, ""), bool(collections))
    chosen += [r for r in runs if any((r.get(COLLECTIONS[f]) or {}).get("id") == i for f, i in collections) and r not in chosen]
    ids = [r["id"] for r in chosen]
    needs = needed_by(runs)
    problems = [f"run {r['id']} is running; stop it first" for r in chosen if r.get("status") == "running"]
    aliased = {a["run"]: name for name, a in read_aliases(runstore.EXPERIMENTS).items()}
    problems += [f"alias {aliased[i]} points at run {i} (a service may use it); promote another run to it first"
                 for i in ids if i in aliased]
    for r in chosen:
        users = [u for u in needs.get(r["id"], []) if u not in ids]
        if users:
            problems.append(f"run {r['id']} holds the state that {', '.join(users)} would continue from; "
                            f"delete those too, or continue them first")
    if problems:
        raise UsageError("--delete: " + "; ".join(problems) + " (nothing was deleted)")
    experiments = runstore.EXPERIMENTS
    _move_collections(collections, experiments, experiments / TRASH, dry_run)
    _move(ids, experiments, experiments / TRASH, dry_run, "would move" if dry_run else "moved", "to experiments/.trash/")
    if not dry_run:
        print(f"restore with: python train.py --restore {' '.join([i for _, i in collections] or ids)}")
        for r in chosen:  # a member of a group kept (run.json's group): the group is now incomplete
            g = r.get("group")
            if g and ("groups", g["id"]) not in collections:
                print(f"note: run {r['id']} was the member seed {g['seed']}{'' if g.get('fold') is None else ' fold ' + str(g['fold'])} "
                      f"of group {g['id']}, which is now incomplete; its aggregate is stale until the group's command runs again "
                      "(it retrains the member) or the run is restored")
    return ids


def split_collections(specs: list[str], base: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """The specs that name a group or a sweep under base (experiments/ or its .trash/), as (folder, id),
    and the rest (runs). An id that names both a run and a group is refused."""
    collections, rest = [], []
    for spec in specs:
        found = [(f, spec) for f in COLLECTIONS if RUN_ID_RE.match(spec) and (base / f / spec).is_dir()]
        if found and (base / spec).is_dir():
            raise UsageError(f"{spec} names both a run and a {COLLECTIONS[found[0][0]]}; nothing was changed")
        collections += found[:1]
        rest += [] if found else [spec]
    return collections, rest


def _move_collections(collections: list[tuple[str, str]], src: Path, dst: Path, dry_run: bool) -> None:
    for folder, cid in collections:
        print(f"{'would move' if dry_run else 'moved'} {COLLECTIONS[folder]} {cid} ({folder}/{cid}) and its runs")
        if not dry_run:
            (dst / folder).mkdir(parents=True, exist_ok=True)
            with FileLock(runstore.EXPERIMENTS / STORE_LOCK):
                os.rename(src / folder / cid, dst / folder / cid)


def restore_runs(specs: list[str], dry_run: bool = False) -> list[str]:
    """Move runs back from experiments/.trash/ (a group or sweep id: its folder and its runs); refused
    when a run of that id exists again."""
    trash = runstore.EXPERIMENTS / TRASH
    runs = trashed_runs()
    collections, specs = split_collections(specs, trash)
    chosen = _resolve(specs, runs, "--restore", lambda spec: _in_trash(spec, runs), bool(collections))
    chosen += [r for r in runs if any((r.get(COLLECTIONS[f]) or {}).get("id") == i for f, i in collections) and r not in chosen]
    ids = [r["id"] for r in chosen]
    clash = [i for i in ids if (runstore.EXPERIMENTS / i).exists()]
    clash += [f"{f}/{i}" for f, i in collections if (runstore.EXPERIMENTS / f / i).exists()]
    if clash:
        raise UsageError(f"--restore: experiments/{clash[0]} exists already; move it away first (nothing was restored)")
    _move_collections(collections, trash, runstore.EXPERIMENTS, dry_run)
    _move(ids, trash, runstore.EXPERIMENTS, dry_run, "would restore" if dry_run else "restored", "to experiments/")
    return ids


def trashed_runs() -> list[dict]:
    trash = runstore.EXPERIMENTS / TRASH
    found = [read_run(d) for d in sorted(trash.iterdir()) if RUN_ID_RE.match(d.name)] if trash.is_dir() else []
    return sorted((r for r in found if r), key=lambda r: (r.get("start_utc", ""), r["id"]))


def _in_trash(spec: str, runs: list[dict]) -> dict:
    spec = normalize_run_id(spec, "--restore")
    if spec.startswith("name:"):
        return newest_named(runs, spec[5:], lambda r: True, "--restore")
    run = next((r for r in runs if r["id"] == spec), None)
    if run is None:
        ids = ", ".join(r["id"] for r in runs[-5:]) or "none"
        raise UsageError(f"--restore: no run '{spec}' in experiments/.trash/; deleted runs: {ids}")
    return run


def _resolve(specs: list[str], runs: list[dict], option: str, find: Callable[[str], dict], more: bool = False) -> list[dict]:
    if not specs and not more:
        raise UsageError(f"{option} needs at least one run id")
    chosen = {}
    for spec in specs:
        run = find(spec)
        chosen[run["id"]] = run
    return list(chosen.values())


def _move(ids: list[str], src: Path, dst: Path, dry_run: bool, verb: str, where: str) -> None:
    """Rename run folders from src to dst (atomic, same file system), then show the newest run in checkpoints/."""
    if not ids:
        return
    print(f"{verb} {len(ids)} run{'s' * (len(ids) > 1)} {where}: {', '.join(ids)}")
    if dry_run:
        return
    dst.mkdir(exist_ok=True)
    with FileLock(runstore.EXPERIMENTS / STORE_LOCK):
        for run_id in ids:
            os.rename(src / run_id, dst / run_id)
    refresh_view()


def refresh_view() -> None:
    """checkpoints/ never shows a deleted run: when its run is gone it shows the newest run left
    (or nothing); a restored run newer than the one shown takes its place."""
    runs = list_runs()
    shown = (shown_run() or {}).get("id")
    if shown is not None and not (runstore.EXPERIMENTS / shown).is_dir():
        with FileLock(runstore.EXPERIMENTS / STORE_LOCK):
            for name in VIEW_FILES:
                (runstore.CHECKPOINTS / name).unlink(missing_ok=True)
    if runs:
        newest = runs[-1]
        files = ("config.yaml", "run.json", "model.safetensors") if newest.get("status") == "finished" else ("config.yaml", "run.json")
        folder = runstore.EXPERIMENTS / newest["id"]
        update_view(folder, newest["start_utc"], tuple(f for f in files if (folder / f).exists()))


# ---------------------------------------------------------------- state files nothing needs
def prune_states(dry_run: bool = False) -> int:
    """Delete the state.pt of finished runs that no unfinished run would continue from; returns the
    bytes freed. Such a run keeps its weights and can still start new runs (init_from)."""
    runs = list_runs()
    needs = needed_by(runs)
    paths = [runstore.EXPERIMENTS / r["id"] / STATE_FILE for r in runs if r.get("status") == "finished" and r["id"] not in needs]
    paths = [p for p in paths if p.exists()]
    freed = sum(p.stat().st_size for p in paths)
    verb = "would delete" if dry_run else "deleted"
    print(f"{verb} the state.pt of {len(paths)} finished run{'s' * (len(paths) != 1)}, "
          f"{'freeing' if dry_run else 'freed'} {freed} bytes ({freed / 2**20:.1f} MiB)")
    for p in paths:
        print(f"  {p.parent.name}")
        if not dry_run:
            p.unlink()
    kept = [f"{run_id} (needed by {', '.join(users)})" for run_id, users in needs.items()]
    if kept:
        print(f"kept: {'; '.join(kept)}")
    return freed
