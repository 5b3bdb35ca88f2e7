"""The 3D demo (dataset: mni152) against a baseline measured in the same script: logistic
regression (scikit-learn) on the patches' voxels averaged 3x3x3, then `python train.py
dataset=mni152` in a temporary copy of the project. Prints val_acc, epochs
and wall time of each.

    python bench/brain_demo.py [KEY=VALUE ...]     extra keys go to train.py
"""
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from data.brain import DEFAULT_SIDE, brain_patches  # noqa: E402


def logistic_baseline() -> tuple[float, float]:
    """val_acc and seconds of logistic regression on 3x-average-pooled voxels."""
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    parts = brain_patches(DEFAULT_SIDE)
    x_train, x_val = (torch.nn.functional.avg_pool3d(parts[k][0], 3).flatten(1).numpy() for k in ("train", "val"))
    model = LogisticRegression(max_iter=2000).fit(x_train, parts["train"][1].numpy())
    return float(model.score(x_val, parts["val"][1].numpy())), time.perf_counter() - t0


def template_run(extra: list[str]) -> tuple[dict, float]:
    """run.json and wall seconds of train.py on the demo, in a temporary copy of the project."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "proj"
        shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("experiments", "checkpoints", ".git", "__pycache__"))
        for name in ("experiments", "checkpoints"):
            (copy / name).mkdir()
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "train.py", "dataset=mni152", "progress=false", *extra],
                       cwd=copy, check=True)
        seconds = time.perf_counter() - t0
        (run,) = (copy / "experiments").glob("*/run.json")
        return json.loads(run.read_text()), seconds


def main() -> None:
    acc, seconds = logistic_baseline()
    print(f"logistic regression on 3x-pooled voxels: val_acc {acc:.4f} ({seconds:.1f} s)")
    run, seconds = template_run(sys.argv[1:])
    print(f"python train.py dataset=mni152 {' '.join(sys.argv[1:])}: val_acc "
          f"{run['metrics']['val_acc']:.4f} after {run['epochs_done']} epochs, {seconds:.0f} s wall, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
