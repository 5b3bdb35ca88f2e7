"""Small data sets: which normalisation the 3D classifiers should use, what batch `batch_size: auto`
should pick, and what recomputing BatchNorm statistics before validation costs. Each figure is
measured in one run of this script (every row is one `python train.py` at the defaults but for
what the row names); prints tables and writes bench/norm3d.md.

    python bench/norm3d.py [--only norm,batch,cost] [--fashion /usr/share/datasets/fashion-mnist]

1. norm: small_cnn3d with BatchNorm (statistics recomputed before validation, the default; and with
   the running averages alone, bn_stats_samples=0), InstanceNorm (affine, as nnU-Net) and GroupNorm
   (8 groups), on two synthetic sets of 120 volumes (tests/test_small_data.py: three shapes; a blob
   in the upper or the lower half), 8 epochs, and on dataset mni152, 10 epochs (resnet: resnet18_3d,
   about 30 s an epoch here, on the shapes with BatchNorm and InstanceNorm). The other norms
   replace torch.nn.BatchNorm3d in the training process only.
2. batch: the same two synthetic sets at batch 4, 8, 16, 32 and 64, where they have as many
   training volumes (shapes 75, blobs 50).
3. cost: the seconds of the statistics pass against the epoch's, timed inside the Trainer, on the
   digits, mni152 and (when its files are there) Fashion-MNIST defaults.
"""
import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NORMS = {
    "batch": "",
    "batch, running averages": "",
    # classes, not functions: torchvision's r3d_18 tests isinstance(m, nn.BatchNorm3d)
    "instance": "class Norm(nn.InstanceNorm3d):\n    def __init__(self, c, *a, **k):\n        super().__init__(c, affine=True)\n"
                "nn.BatchNorm3d = Norm",
    "group (8)": "class Norm(nn.GroupNorm):\n    def __init__(self, c, *a, **k):\n        super().__init__(min(8, c), c)\n"
                 "nn.BatchNorm3d = Norm",
}
# Runs train.py in this process after `patch`; with TIMED, the statistics pass is timed and its
# seconds printed as one JSON line per epoch.
PREAMBLE = """
import json, runpy, sys, time
import torch.nn as nn
{patch}
from train.trainer import Trainer
inner = Trainer.recompute_norm_stats
def timed(self):
    t0 = time.perf_counter(); n = inner(self)
    print("NORM_STATS " + json.dumps({{"seconds": time.perf_counter() - t0, "samples": n}}), flush=True)
    return n
Trainer.recompute_norm_stats = timed
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


def train(workdir: Path, args: list, patch: str = "") -> dict:
    """One train.py run in a copy of the project; its metrics rows, batch size and pass timings."""
    code = PREAMBLE.format(patch=patch)
    r = subprocess.run([sys.executable, "-c", code, *args, "progress=false"], cwd=workdir, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"train.py {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    run_id = sorted(p.name for p in (workdir / "experiments").iterdir() if p.is_dir() and p.name[0].isdigit())[-1]
    lines = (workdir / "experiments" / run_id / "metrics.csv").read_text().splitlines()
    rows = [dict(zip(lines[0].split(","), map(float, line.split(",")))) for line in lines[1:]]
    passes = [json.loads(line.split(" ", 1)[1]) for line in r.stdout.splitlines() if line.startswith("NORM_STATS ")]
    config = json.loads((workdir / "experiments" / run_id / "run.json").read_text())["config"]
    return {"rows": rows, "passes": passes, "batch_size": config["batch_size"]}


def project_copy(tmp: Path) -> Path:
    from tests.conftest import copy_project

    return copy_project(tmp / "proj").root


def synthetic_sets(tmp: Path) -> dict:
    from tests.test_small_data import blobs, shapes

    return {"shapes": shapes(tmp / "shapes"), "blobs": blobs(tmp / "blobs")}


def accuracy_cells(rows: list) -> str:
    accs = [r["val_acc"] for r in rows]
    first = next((i for i, a in enumerate(accs) if a >= 0.95), None)
    after = f"{min(accs[first:]):.3f}" if first is not None else "never 0.95"
    return f"{accs[0]:.3f} | {accs[len(accs) // 2 - 1]:.3f} | {accs[-1]:.3f} | {after} | " \
           f"{sum(r['seconds'] for r in rows) / len(rows):.2f}"


def bench_norm(work: Path, sets: dict, resnet: bool = False) -> list[str]:
    out = ["| model | data | norm | val_acc first / middle / last epoch | lowest after first >= 0.95 | s an epoch |",
           "| --- | --- | --- | --- | --- | --- |"]
    runs = [("small_cnn3d", name, ["dataset=volume_folder", f"data_dir={root}", "volume_size=16", "epochs=8"], list(NORMS))
            for name, root in sets.items()]
    runs += [("small_cnn3d", "mni152", ["dataset=mni152", "epochs=10"], list(NORMS))]
    if resnet:  # resnet18_3d takes ~30 s an epoch of the 75 volumes on 2 CPU cores: the shapes only, BatchNorm against InstanceNorm
        runs = [("resnet18_3d", "shapes", ["dataset=volume_folder", f"data_dir={sets['shapes']}", "volume_size=16", "epochs=8",
                                           "base_model=resnet18_3d"], ["batch", "instance"])]
    for model, data, args, norms in runs:
        for norm in norms:
            patch = NORMS[norm]
            extra = ["bn_stats_samples=0"] if norm == "batch, running averages" else []
            result = train(work, args + extra, patch)
            out.append(f"| {model} | {data} | {norm} | {accuracy_cells(result['rows'])} |")
            print(out[-1], flush=True)
    return out


def bench_batch(work: Path, sets: dict) -> list[str]:
    out = ["| data | batch | steps an epoch | val_acc first / middle / last epoch | lowest after first >= 0.95 | s an epoch |",
           "| --- | --- | --- | --- | --- | --- |"]
    for name, root in sets.items():
        train_size = sum(1 for _ in (root / "train").rglob("*.nii.gz"))
        for batch in (4, 8, 16, 32, 64):
            if batch > train_size:
                continue
            result = train(work, ["dataset=volume_folder", f"data_dir={root}", "volume_size=16", "epochs=8",
                                  "base_model=small_cnn3d", f"batch_size={batch}"])
            out.append(f"| {name} | {batch} | {train_size // batch} | {accuracy_cells(result['rows'])} |")
            print(out[-1], flush=True)
    return out


def bench_cost(work: Path, fashion: str) -> list[str]:
    out = ["| defaults | batch | samples a pass | pass s | epoch s (pass included) | share |", "| --- | --- | --- | --- | --- | --- |"]
    runs = [("digits", ["epochs=10"]), ("mni152", ["dataset=mni152", "epochs=3"])]
    if Path(fashion).is_dir():
        runs.append(("fashion_mnist", ["dataset=fashion_mnist", f"data_dir={fashion}", "epochs=2"]))
    for name, args in runs:
        result = train(work, args)
        passes, rows = result["passes"], result["rows"]
        pass_s = sum(p["seconds"] for p in passes) / len(passes)
        epoch_s = sum(r["seconds"] for r in rows) / len(rows)
        out.append(f"| {name} | {result['batch_size']} | {passes[0]['samples']} | {pass_s:.3f} | {epoch_s:.2f} | "
                   f"{pass_s / epoch_s:.1%} |")
        print(out[-1], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="norm,resnet,batch,cost")
    parser.add_argument("--fashion", default="/usr/share/datasets/fashion-mnist")
    args = parser.parse_args()
    import torch

    lines = ["# Small data sets: normalisation, batch and statistics cost (bench/norm3d.py)", "",
             f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
             "one run each.", ""]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sets, work = synthetic_sets(tmp), project_copy(tmp)
        for part, fn in (("norm", lambda: bench_norm(work, sets)), ("batch", lambda: bench_batch(work, sets)),
                         ("cost", lambda: bench_cost(work, args.fashion)), ("resnet", lambda: bench_norm(work, sets, resnet=True))):
            if part in args.only.split(","):
                lines += [f"## {part}", "", *fn(), ""]
    (ROOT / "bench" / "norm3d.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
