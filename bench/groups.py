"""Groups on the digits, as a user runs them (run by hand; nothing here runs in the tests):

    python bench/groups.py [--seeds 0,1,2] [--folds 5]

A: `seeds=0,1,2 folds=5 epochs=5`; B: the same with the default epochs (10), a real improvement;
C: A again with only `name` changed, a no-op. Each is one `python train.py` command in a fresh copy
of the project. Then `inference.py --compare A B` and `--compare A C`. Prints the two reports' figures
and appends them to bench/groups.md.
"""
import argparse
import datetime
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODE = ("config", "model", "train", "infer", "tasks", "utils", "train.py", "inference.py")


def copy_project(dest: Path) -> Path:
    for name in CODE:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    for name in ("experiments", "checkpoints"):
        (dest / name).mkdir()
    return dest


def run(project: Path, *args: str) -> tuple[str, float]:
    """Run a main; returns its stdout and wall time (a failure stops the benchmark)."""
    start = time.perf_counter()
    r = subprocess.run([sys.executable, *args], cwd=project, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"{' '.join(args)} failed ({r.returncode}): {r.stderr[-2000:]}")
    return r.stdout, time.perf_counter() - start


def train_group(project: Path, *keys: str) -> tuple[str, float]:
    out, seconds = run(project, "train.py", *keys)
    first = out.splitlines()[0]
    return first.split()[1].rstrip(":"), seconds


def compare(project: Path, a: str, b: str) -> dict:
    run(project, "inference.py", "--compare", a, b, "inference_device=cpu")
    return json.loads((project / "experiments" / "groups" / b / f"compare_{a}_vs_{b}.json").read_text())


def line(name: str, r: dict) -> str:
    lo, hi = r["bootstrap_ci95"]
    m = r["mcnemar"]
    return (f"| {name} | {len(r['pairs'])} | {r['mean_difference']:+.4f} | [{lo:+.4f}, {hi:+.4f}] | {r['test']} p = {r['p']:.3g} | "
            f"{m['only_a_right']} / {m['only_b_right']}, p = {m['p_value']:.3g} | {r['verdict'].split(':')[0].split(' (')[0]} |")


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--folds", default="5")
    args = parser.parse_args()
    keys = (f"seeds={args.seeds}", f"folds={args.folds}")
    with tempfile.TemporaryDirectory() as tmp:
        project = copy_project(Path(tmp) / "proj")
        a, ta = train_group(project, *keys, "epochs=5")
        b, tb = train_group(project, *keys)
        c, tc = train_group(project, *keys, "epochs=5", "name=noop")
        ab, ac = compare(project, a, b), compare(project, a, c)
        groups = {g: json.loads((project / "experiments" / "groups" / g / "group.json").read_text()) for g in (a, b)}
    agg = {g: groups[g]["aggregate"]["val_acc"] for g in (a, b)}
    lines = [f"## {datetime.date.today()}: {args.seeds} seeds x {args.folds} folds on the digits "
             f"({platform.machine()}, {cpu_name()})", "",
             f"A (epochs=5): val_acc {agg[a]['mean']:.4f} [{agg[a]['ci95'][0]:.4f}, {agg[a]['ci95'][1]:.4f}], {ta:.0f} s; "
             f"B (default epochs=10): {agg[b]['mean']:.4f} [{agg[b]['ci95'][0]:.4f}, {agg[b]['ci95'][1]:.4f}], {tb:.0f} s; "
             f"C (A with name=noop): {tc:.0f} s.", "",
             "| A/B | pairs | mean B - A | paired bootstrap 95% | paired test | McNemar only A / only B right | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- |", line("A vs B (more epochs)", ab), line("A vs C (name only)", ac), ""]
    print("\n".join(lines))
    print(ab["verdict"], ac["verdict"], sep="\n")
    with open(ROOT / "bench" / "groups.md", "a") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
