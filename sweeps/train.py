"""python train.py --sweep FILE: an Optuna study whose every trial is an ordinary run; --workers N
run N trials at once, in worker processes started the same way. The same command again continues
an unfinished sweep and its lost trials."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Optional

import yaml

from store.runs import EXPERIMENTS, find_state
from sweeps.file import read_sweep_file, trial_config
from sweeps.study import finish_trial, mark_finished, next_trial, open_sweep, require_optuna, trial_runs
from tasks import configs, task_dict
from train.run import plan_run, train_run
from utils import dist
from utils.config import Config, experiment_spec, is_group, load_config, suggest
from utils.errors import Interrupted, RunFailure, UsageError


def sweep_command(args) -> int:
    """--sweep FILE: an Optuna study (sweeps/study.py) whose every trial is an ordinary run; --workers N
    run N trials at once. The same command again continues an unfinished sweep and its lost trials."""

    require_optuna()
    if dist.launched():
        raise UsageError("--sweep: a sweep runs its trials as single-process runs; start it without torchrun (--workers N for "
                         "several at once)")
    base = load_config(args.config, args.overrides, configs)
    file = read_sweep_file(args.sweep, type(base))
    require_optuna(file.storage)
    base = load_config(args.config, [f"{k}={yaml_text(v)}" for k, v in file.fixed.items()] + args.overrides, configs)
    task = task_dict[base.task]()
    metric = file.metric or (task.default_monitor(base) if base.monitor == "auto" else base.monitor)
    if metric not in task.modes:
        raise UsageError(f"{args.sweep}: metric '{metric}' is not reported by task {task.name}{suggest(metric, list(task.modes))}; "
                         f"use one of {' | '.join(task.modes)}")
    if is_group(base):
        raise UsageError("seeds, folds: a sweep's trials are single runs; drop seeds and folds (compare the best trials as groups after)")
    if base.resume is not None:
        raise UsageError("resume: a sweep starts its own trials; drop resume (run the same --sweep command again to continue it)")
    if base.init_from is not None:
        plan_run(base, task_dict)  # init_from must name a finished run: refused here, before the sweep exists
    direction = file.direction or ("maximize" if task.modes[metric] == "max" else "minimize")
    sweep, new = open_sweep(file, args.sweep_id, experiment_spec(base), metric, direction)
    child = os.environ.get("TEMPLATE_SWEEP_WORKER") == "1"
    if not child:
        print(f"sweep {sweep.id}: {'new' if new else 'continuing'}, {file.trials} trials, {file.sampler} sampler, pruner "
              f"{file.pruner}, {metric} ({direction}), storage {sweep.info['storage']}, {args.workers} worker(s); "
              f"experiments/sweeps/{sweep.id}/", flush=True)
    code = spawn_workers(args, sweep.id) if args.workers > 1 else sweep_worker(sweep, base)
    if not child:
        print(sweep_line(sweep))
    trials = sweep.study.get_trials(deepcopy=False)
    if trials and all(t.state.name == "FAIL" for t in trials):
        raise RunFailure(f"sweep {sweep.id}: every trial failed; trial {trials[0].number}: {trials[0].user_attrs.get('error')}")
    return code


def yaml_text(value) -> str:
    """A value of the sweep file's `fixed` as KEY=VALUE text."""
    return value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")


def spawn_workers(args, sweep_id: str) -> int:
    """N worker processes on this machine, the cores split between them; each takes the next trial as
    soon as its last one ends. Returns 0, or 1 when a worker failed."""
    import signal
    import subprocess
    import sys

    threads = max(1, (os.cpu_count() or 1) // args.workers)
    env = {**os.environ, "TEMPLATE_SWEEP_WORKER": "1", "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "train.py", "--sweep", args.sweep, "--sweep-id", sweep_id, *(["--config", args.config] if args.config
                                                                                          else []), *args.overrides]
    procs = [subprocess.Popen(command, env=env) for _ in range(args.workers)]
    received = []

    def forward(signum: int, _frame) -> None:  # SIGTERM to the workers (Ctrl-C reaches them from the terminal)
        received.append(signum)
        if signum == signal.SIGTERM:
            for p in procs:
                p.send_signal(signum)
    handlers = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    codes = [p.wait() for p in procs]
    for s, h in handlers.items():
        signal.signal(s, h)
    if received:
        raise Interrupted(143 if signal.SIGTERM in received else 130)
    bad = [c for c in codes if c]
    if bad:
        print(f"sweep {sweep_id}: {len(bad)} of {len(codes)} workers failed (exit {bad[0]}); run the same command again to "
              "continue their trials")
    return 1 if bad else 0


def sweep_worker(sweep, base: Config) -> int:
    """Take trials until the study has its `trials`: a lost trial of this machine first, else a new one."""
    while (ticket := next_trial(sweep)) is not None:
        state, value, run_id = run_trial(sweep, base, ticket)
        finish_trial(sweep, ticket, state, value, run_id)
    mark_finished(sweep)
    return 0


def run_trial(sweep, base: Config, ticket) -> tuple[str, Optional[float], Optional[str]]:
    """Train trial `ticket` as a run (continuing its killed run from state.pt): (state, value, run id).
    A trial whose values make an invalid config, or whose loss becomes NaN, fails; the sweep goes on."""
    runs = trial_runs(sweep.id, ticket.number)
    tip = runs[-1] if runs else None
    if tip is None or tip.get("status") != "finished":
        resume = tip["id"] if tip is not None and find_state(EXPERIMENTS, tip["id"]) is not None else None
        try:
            plan = plan_run(dataclasses.replace(trial_config(base, ticket.params), resume=resume), task_dict)
            plan.sweep = {"id": sweep.id, "trial": ticket.number, "params": ticket.params}
            plan.judge = pruning_judge(sweep, ticket, plan.cfg.epochs)
            train_run(plan)
        except (UsageError, RunFailure) as e:
            print(f"sweep {sweep.id}: trial {ticket.number} failed: {e}", flush=True)
            ticket.trial.set_user_attr("error", str(e)[:500])
            runs = trial_runs(sweep.id, ticket.number)
            return "fail", None, runs[-1]["id"] if runs else None
        tip = trial_runs(sweep.id, ticket.number)[-1]
    value = (tip.get("metrics") or {}).get(sweep.metric)
    return ("pruned" if tip.get("pruned") else "complete"), value, tip["id"]


def pruning_judge(sweep, ticket, epochs: int) -> Callable[[dict], Optional[str]]:
    """Reports each epoch's metric to the study; a reason to stop when the sweep's pruner says so
    (never after the last epoch: a trial that trained to the end is complete)."""
    def judge(row: dict) -> Optional[str]:
        if sweep.metric not in row:
            return None
        ticket.trial.report(row[sweep.metric], row["epoch"])
        if row["epoch"] < epochs and ticket.trial.should_prune():
            return f"the sweep's {sweep.file.pruner} pruner ({sweep.metric} {row[sweep.metric]:.4f} at epoch {row['epoch']})"
        return None
    return judge


def sweep_line(sweep) -> str:
    """The last line: how many trials ended how, and the best."""
    from collections import Counter

    trials = sweep.study.get_trials(deepcopy=False)
    counts = Counter(t.state.name.lower() for t in trials)
    done = ", ".join(f"{n} {state}" for state, n in counts.items())
    best = [t for t in trials if t.state.name == "COMPLETE"]
    if not best:
        return f"sweep {sweep.id}: {len(trials)} of {sweep.file.trials} trials ({done}); no trial completed yet"
    top = sweep.study.best_trial
    return (f"sweep {sweep.id}: {len(trials)} of {sweep.file.trials} trials ({done}); best trial {top.number}, run "
            f"{top.user_attrs.get('run')}, {sweep.metric} {top.value:.4f}; report: python inference.py --sweep {sweep.id}")

