"""Sweeps on the digits, as a user runs them (run by hand; nothing here runs in the tests):

    python bench/sweeps.py [--only overhead,workers,pruning]

overhead  a 6-trial sweep (one worker) against the same 6 trials as separate `python train.py` commands:
          wall time per trial, ratio (target <= 1.05)
workers   12 trials with --workers 1 against --workers 2 on this machine's cores: trials per hour
pruning   8 trials of a log-uniform lr over 1e-6..1e-1 (half hopeless), pruner median against none:
          CPU time of all the trials, and how many were pruned

Every command runs in a fresh copy of the project; figures are appended to bench/sweeps.md.
"""
import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from groups import copy_project, cpu_name  # noqa: E402

SPACE = "space:\n  lr: {log_uniform: [1.0e-3, 1.0e-2]}\n  dropout: {uniform: [0.0, 0.5]}\n"
LINES: list[str] = []


def say(line: str) -> None:
    print(line, flush=True)
    LINES.append(line)


def timed(project: Path, *args: str) -> tuple[str, float, float]:
    """Run a main: its stdout, wall seconds and CPU seconds (its processes and their children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    r = subprocess.run([sys.executable, *args], cwd=project, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode:
        sys.exit(f"{' '.join(args)} failed ({r.returncode}): {r.stderr[-2000:]}")
    return r.stdout, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def sweep(tmp: Path, name: str, text: str, *args: str) -> tuple[Path, str, float, float]:
    """A sweep in a fresh project: (project, sweep id, wall s, CPU s)."""
    project = copy_project(tmp / name)
    (project / "sweep.yaml").write_text(text)
    out, wall, cpu = timed(project, "train.py", "--sweep", "sweep.yaml", *args)
    return project, out.splitlines()[0].split()[1].rstrip(":"), wall, cpu


def trials_of(project: Path, sweep_id: str) -> list[dict]:
    runs = [json.loads(p.read_text()) for p in (project / "experiments").glob("*/run.json")]
    return sorted((r for r in runs if (r.get("sweep") or {}).get("id") == sweep_id), key=lambda r: r["sweep"]["trial"])


def overhead(tmp: Path) -> None:
    project, sid, wall, _ = sweep(tmp, "overhead", "trials: 6\nsampler: random\nfixed: {epochs: 3}\n" + SPACE)
    runs = trials_of(project, sid)
    alone = copy_project(tmp / "alone")
    separate = sum(timed(alone, "train.py", "epochs=3", *(f"{k}={v!r}" for k, v in r["sweep"]["params"].items()))[1]
                   for r in runs)
    same = all(r["weights"]["sha256"] == json.loads(p.read_text())["weights"]["sha256"]
               for r, p in zip(runs, sorted((alone / "experiments").glob("*/run.json"))))
    say(f"| overhead: 6 trials as one sweep / as 6 train.py commands (epochs=3) | {wall / 6:.2f} s/trial | "
        f"{separate / 6:.2f} s/trial | {wall / separate:.3f} | <= 1.05 |")
    say(f"| the same weights in both (sha256 of every trial) | {same} | | | |")


def workers(tmp: Path) -> None:
    rates = {}
    for n in (1, 2):
        _, _, wall, _ = sweep(tmp, f"workers{n}", "trials: 12\nsampler: random\nfixed: {epochs: 2}\n" + SPACE, "--workers", str(n))
        rates[n] = 12 / wall * 3600
        say(f"| workers: --workers {n}, 12 trials (epochs=2) | {rates[n]:.0f} trials/h | | | (reported) |")
    say(f"| workers: --workers 2 / --workers 1, trials per hour | {rates[2]:.0f} | {rates[1]:.0f} | {rates[2] / rates[1]:.3f} | "
        "(picks the default) |")


def pruning(tmp: Path) -> None:
    text = ("trials: 8\nsampler: random\nsampler_seed: 0\npruner: {}\nfixed: {{epochs: 5}}\n"
            "space:\n  lr: {{log_uniform: [1.0e-6, 1.0e-1]}}\n")
    cpu, pruned = {}, {}
    for p in ("none", "median"):
        project, sid, _, cpu[p] = sweep(tmp, f"pruning-{p}", text.format(p))
        pruned[p] = sum(1 for r in trials_of(project, sid) if r.get("pruned"))
    say(f"| pruning: CPU time of 8 trials, median pruner / none (lr 1e-6..1e-1, epochs=5; {pruned['median']} pruned) | "
        f"{cpu['median']:.1f} s | {cpu['none']:.1f} s | {cpu['median'] / cpu['none']:.3f} | (reported) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="overhead,workers,pruning")
    only = parser.parse_args().only.split(",")
    say(f"## {datetime.date.today()}: {platform.machine()}, {cpu_name()}, {os.cpu_count()} cores")
    say("")
    say("| figure | sweep | baseline | ratio | target |")
    say("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in (("overhead", overhead), ("workers", workers), ("pruning", pruning)):
            if name in only:
                fn(Path(tmp))
    with open(ROOT / "bench" / "sweeps.md", "a") as f:
        f.write("\n".join(LINES) + "\n\n")


if __name__ == "__main__":
    main()
