"""Sweeps: an Optuna study whose every trial is an ordinary run (train.py --sweep FILE). This module
holds the study, its storage, the locks and the bookkeeping that make a sweep survive crashes;
train.py runs the trials. optuna is imported inside the functions: it is optional
(requirements-sweeps.txt), and the template's other commands never import it.

experiments/sweeps/<sweep id>/ holds sweep.json (the file, the fixed keys, the storage, the metric),
journal.log (the study, unless storage is PostgreSQL), and trials/<n>.lock: the lock a live worker
holds on trial n. A trial that is still "running" in the study but whose lock is free lost its
worker; the next worker on the same host adopts it and continues its run from state.pt.
"""
import contextlib
import importlib.util
import json
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from filelock import FileLock, Timeout

from store.runs import SWEEPS, allocate_run_dir, list_runs, utc_now, write_json
from sweeps.file import SweepFile
from utils.errors import UsageError

INSTALL = "pip install -r requirements-sweeps.txt"
SWEEP_FILE = "sweep.json"


def require_optuna(storage: Optional[str] = None) -> None:
    """Exit 2 naming the install command when optuna (or, for PostgreSQL, psycopg) is missing."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise UsageError(f"--sweep needs optuna, which is not installed; {INSTALL}") from None
    if storage and importlib.util.find_spec("psycopg") is None:
        raise UsageError(f"storage: PostgreSQL needs psycopg (version 3), which is not installed; {INSTALL}")


def sweeps_dir() -> Path:
    from store import runs as runstore

    return runstore.EXPERIMENTS / SWEEPS


def shown_url(url: str) -> str:
    """A storage URL without its password, for messages and sweep.json."""
    return re.sub(r"://([^:@/]+):[^@/]*@", r"://\1:***@", url)


@dataclass
class Sweep:
    """An open sweep: its id and folder, what its file says, and the Optuna study."""
    id: str
    folder: Path
    file: SweepFile
    metric: str
    direction: str
    study: Any  # optuna.Study
    info: dict

    def trial_lock(self, number: int) -> FileLock:
        (self.folder / "trials").mkdir(exist_ok=True)
        return FileLock(self.folder / "trials" / f"{number}.lock", timeout=0)


# ---------------------------------------------------------------- storage and study
def storage_of(file: SweepFile, folder: Path):
    """A journal file in the sweep's folder, or the PostgreSQL database the file names (reached now:
    an unreachable server is exit 2 naming it)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    if file.storage is None:
        path = str(folder / "journal.log")
        return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    url = file.storage.replace("postgresql://", "postgresql+psycopg://", 1)  # psycopg 3, not SQLAlchemy's default psycopg2
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    except Exception as e:  # SQLAlchemy's OperationalError and friends: the message names the cause
        cause = str(e).strip().splitlines()[0][:200]
        raise UsageError(f"storage: cannot reach {shown_url(file.storage)} ({cause}); start the server or fix the URL") from None


def check_storage(file: SweepFile) -> None:
    """Reach a PostgreSQL storage before anything is written."""
    if file.storage is not None:
        storage_of(file, Path("."))


def open_study(file: SweepFile, folder: Path, sweep_id: str, direction: str, spec: dict):
    """The study named after the sweep, created or joined; joining with another search space or other
    fixed keys is exit 2."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = storage_of(file, folder)
    try:  # loading writes nothing: a refused join leaves the study as it was
        study = optuna.load_study(study_name=sweep_id, storage=storage, pruner=pruner_of(file))
    except KeyError:
        study = optuna.create_study(study_name=sweep_id, storage=storage, direction=direction, pruner=pruner_of(file))
        study.set_user_attr("spec", identity(file, spec))
    if study.user_attrs.get("spec") != identity(file, spec):
        raise UsageError(f"--sweep-id {sweep_id}: that sweep exists with a different search space (or trials, metric, sampler, "
                         "pruner, fixed or KEY=VALUE keys); use the same file and keys, or start a new sweep without --sweep-id")
    return study


def identity(file: SweepFile, spec: dict) -> str:
    """What makes two sweeps the same: the file (without its storage) and every trial's fixed config."""
    return json.dumps({"file": file.canonical(), "config": spec}, sort_keys=True, default=str)


def pruner_of(file: SweepFile):
    import optuna

    if file.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)  # steps are epochs: from epoch 2
    if file.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def sampler_of(file: SweepFile, asked: int):
    """The sampler for the next trial, seeded by sampler_seed and the number of trials asked so far:
    what it suggests is a function of the study's history alone, so a sweep killed and continued
    suggests the same values as one never interrupted."""
    import optuna

    seed = file.sampler_seed + asked
    if file.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if file.sampler == "grid":  # one shuffle of the grid for the whole sweep: trial n takes its n-th point
        return grid_sampler_class()(grid_of(file), seed=file.sampler_seed)
    return optuna.samplers.TPESampler(seed=seed)


def grid_sampler_class():
    import optuna

    class SweepGrid(optuna.samplers.GridSampler):
        """Optuna's grid, without its study.stop() once the grid is used up (that is for study.optimize;
        the sweep counts its trials itself)."""
        def after_trial(self, study, trial, state, values) -> None:
            return None
    return SweepGrid


def grid_of(file: SweepFile) -> dict[str, list]:
    return {p.key: p.choices if p.kind == "choices" else list(range(p.low, p.high + 1, p.step)) for p in file.space.values()}


def distributions(file: SweepFile) -> dict:
    """The search space as Optuna distributions."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for p in file.space.values():
        if p.kind == "choices":
            out[p.key] = CategoricalDistribution(p.choices)
        elif p.kind == "int":
            out[p.key] = IntDistribution(p.low, p.high, step=p.step)
        else:
            out[p.key] = FloatDistribution(p.low, p.high, log=p.kind == "log_uniform")
    return out


# ---------------------------------------------------------------- the sweep folder
def read_sweep(folder: Path) -> Optional[dict]:
    try:
        return json.loads((folder / SWEEP_FILE).read_text())
    except (OSError, ValueError):
        return None


def list_sweeps() -> list[dict]:
    root = sweeps_dir()
    found = [read_sweep(d) for d in sorted(root.iterdir())] if root.is_dir() else []
    return [s for s in found if s]


def open_sweep(file: SweepFile, sweep_id: Optional[str], spec: dict, metric: str, direction: str) -> tuple[Sweep, bool]:
    """The sweep to work on: `sweep_id`'s; else the newest unfinished sweep of the same file and fixed
    keys (the same command continues it); else a new one. Returns it and whether it is new."""
    from store.runs import normalize_run_id

    check_storage(file)
    found = None
    if sweep_id is not None:
        sweep_id = normalize_run_id(sweep_id, "--sweep-id")
        found = read_sweep(sweeps_dir() / sweep_id)
        if found is None and file.storage is None:
            raise UsageError(f"--sweep-id: no sweep '{sweep_id}' in experiments/sweeps/ (a journal sweep is joined on its "
                             "machine; to share one between machines use storage: postgresql://...)")
    else:
        same = [s for s in list_sweeps() if s.get("spec") == spec and s.get("file") == file.canonical()
                and not s.get("finished")]
        found = same[-1] if same else None
        sweep_id = found["id"] if found else None
    if sweep_id is None:
        sweep_id, folder, _ = allocate_run_dir(under=SWEEPS)
    else:
        folder = sweeps_dir() / sweep_id
        folder.mkdir(parents=True, exist_ok=True)
    study = open_study(file, folder, sweep_id, direction, spec)
    info = found or {"id": sweep_id, "start_utc": utc_now(), "file": file.canonical(), "spec": spec, "metric": metric,
                     "direction": direction, "trials": file.trials, "storage": shown_url(file.storage) if file.storage else
                     "journal.log", "storage_url": file.storage, "finished": False}
    write_json(folder / SWEEP_FILE, info)
    return Sweep(sweep_id, folder, file, metric, direction, study, info), found is None


@contextlib.contextmanager
def sweep_lock(sweep: Sweep) -> Iterator[None]:
    """Serialises asking for trials and adopting lost ones: a file lock on this machine and, for
    PostgreSQL, an advisory lock in the database for every machine."""
    with FileLock(sweep.folder / "ask.lock"):
        if sweep.file.storage is None:
            yield
            return
        import psycopg

        url = sweep.file.storage.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url) as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"template-sweep-{sweep.id}",))
            yield


# ---------------------------------------------------------------- trials
@dataclass
class TrialTicket:
    """A trial this worker holds: Optuna's trial, its values, and the lock that says it is alive."""
    trial: Any  # optuna.Trial
    number: int
    params: dict
    lock: FileLock
    adopted: bool  # a trial whose worker was lost, continued here


def next_trial(sweep: Sweep) -> Optional[TrialTicket]:
    """A lost trial of this host to continue, else a new trial; None once the study has `trials` trials."""
    import optuna
    from optuna.trial import TrialState

    host = socket.gethostname()
    with sweep_lock(sweep):
        trials = sweep.study.get_trials(deepcopy=False)
        for t in trials:  # host None: its worker died between ask and naming its host (both happen under this lock)
            if t.state == TrialState.RUNNING and t.user_attrs.get("host") in (host, None):
                lock = sweep.trial_lock(t.number)
                try:
                    lock.acquire()
                except Timeout:
                    continue  # a live worker holds it
                if sweep.study._storage.get_trial(t._trial_id).state != TrialState.RUNNING:
                    lock.release()  # its worker told it and let go after our snapshot
                    continue
                return TrialTicket(optuna.trial.Trial(sweep.study, t._trial_id), t.number, dict(t.params), lock, True)
        if len(trials) >= sweep.file.trials:
            return None
        sweep.study.sampler = sampler_of(sweep.file, len(trials))
        trial = sweep.study.ask(distributions(sweep.file))
        trial.set_user_attr("host", host)
        trial.set_user_attr("pid", os.getpid())
        lock = sweep.trial_lock(trial.number)
        lock.acquire()
        return TrialTicket(trial, trial.number, dict(trial.params), lock, False)


def trial_runs(sweep_id: str, number: int) -> list[dict]:
    """The runs of trial `number` (a killed run and its continuations), oldest first."""
    return [r for r in list_runs() if (r.get("sweep") or {}).get("id") == sweep_id and r["sweep"].get("trial") == number]


def finish_trial(sweep: Sweep, ticket: TrialTicket, state: str, value: Optional[float], run_id: Optional[str]) -> None:
    """Tell the study how the trial ended (complete, pruned or fail) and let go of its lock."""
    from optuna.trial import TrialState

    try:
        if run_id:
            ticket.trial.set_user_attr("run", run_id)
        states = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "fail": TrialState.FAIL}
        sweep.study.tell(ticket.number, value if state == "complete" else None, state=states[state])
    finally:
        ticket.lock.release()


def mark_finished(sweep: Sweep) -> bool:
    """Whether every trial of the sweep has ended; recorded in sweep.json."""
    from optuna.trial import TrialState

    trials = sweep.study.get_trials(deepcopy=False)
    done = len(trials) >= sweep.file.trials and all(t.state != TrialState.RUNNING for t in trials)
    if done and not sweep.info.get("finished"):
        sweep.info.update(finished=True, end_utc=utc_now())
        write_json(sweep.folder / SWEEP_FILE, sweep.info)
    return done


def sweep_row(sweep: dict, runs: list[dict]) -> dict:
    """A sweep as a row of the index: its best finished trial's metric, trials finished of all."""
    metric, sign = sweep.get("metric"), 1 if sweep.get("direction") == "maximize" else -1
    trials = [r for r in runs if (r.get("sweep") or {}).get("id") == sweep["id"]]
    done = [r for r in trials if r.get("status") == "finished" and metric in (r.get("metrics") or {})]
    best = max((r["metrics"][metric] * sign for r in done if not r.get("pruned")), default=None)
    return {"id": sweep["id"], "kind": "sweep", "status": "finished" if sweep.get("finished") else "running", "name": None,
            "tags": [], "notes": [], "model": trials[0].get("model", "?") if trials else "?", "config": {"monitor": metric},
            "changed": sweep.get("spec_changed") or {}, "metrics": {} if best is None else {metric: best * sign},
            "aggregate": {} if best is None else {metric: {"mean": best * sign, "ci95": None}},
            "members": {"done": len({r["sweep"]["trial"] for r in done}), "total": sweep.get("trials", 0)}, "folder": SWEEPS,
            "unit": "trials",
            "start_utc": sweep.get("start_utc", ""), "end_utc": sweep.get("end_utc"), "updated_utc": sweep.get("end_utc")}


def page_rows(runs: list[dict]) -> list[dict]:
    """index.html's sweep rows (their trials fold under them)."""
    return [sweep_row(s, runs) for s in list_sweeps()]
