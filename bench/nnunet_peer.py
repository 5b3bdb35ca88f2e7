"""nnU-Net v2 (pip install -r requirements-bench.txt) on the segmentation demo's cases, on the CPU,
with a wall-clock budget: the peer that bench/segment.py's demo figure is set against.

    python bench/nnunet_peer.py --budget 900 [--work /tmp/nnunet]

1. The demo's eight blocks (data/brain.py: tissue_cases, 2 mm, z-scored T1, tissue labels) are
   written in nnU-Net's raw layout as Dataset501_MNITissue, with splits_final.json holding the
   template's split as fold 0 (the left hemisphere's four blocks train, the right's four validate).
2. nnUNetv2_plan_and_preprocess -d 501 -c 3d_fullres (its own fingerprint, plans and preprocessing;
   not counted in the budget, as the template's data loading is not either).
3. nnUNetv2_train 501 3d_fullres 0 -device cpu -tr nnUNetTrainer_10epochs, stopped at the budget
   (nnU-Net's epoch is 250 iterations; it keeps checkpoint_best.pth by its EMA pseudo-Dice), then
   nnUNetv2_train ... --val --val_best: its own sliding-window validation (with mirroring) of the
   four right-hemisphere blocks, summary.json's Dice per class.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

NAME, TRAINER = "Dataset501_MNITissue", "nnUNetTrainer_10epochs"


def write_raw(raw: Path) -> list:
    """The demo's cases in nnU-Net's raw layout; returns the case ids, training ones first."""
    import nibabel as nib

    from data.brain import tissue_cases

    source, geometry = tissue_cases()
    folder = raw / NAME
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(exist_ok=True)
    for image, label, case, affine in zip(source.images, source.labels, source.ids, source.affines):
        nib.save(nib.Nifti1Image(image[0].numpy().astype(np.float32), affine), str(folder / "imagesTr" / f"{case}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(label.numpy().astype(np.uint8), affine), str(folder / "labelsTr" / f"{case}.nii.gz"))
    labels = {("background" if v == 0 else k): v for k, v in geometry["labels"].items()}  # nnU-Net requires the name
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1"}, "labels": labels,
                                                     "numTraining": len(source.ids), "file_ending": ".nii.gz"}))
    split = geometry["split"]
    return [source.ids[i] for i in split["train"]], [source.ids[i] for i in split["val"]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, required=True, help="training seconds (the template demo's wall time)")
    p.add_argument("--work", type=Path, default=Path("/tmp/nnunet_peer"))
    args = p.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    env = dict(os.environ, nnUNet_raw=str(args.work / "raw"), nnUNet_preprocessed=str(args.work / "preprocessed"),
               nnUNet_results=str(args.work / "results"), nnUNet_n_proc_DA="2")
    train, val = write_raw(args.work / "raw")
    t0 = time.perf_counter()
    subprocess.run(["nnUNetv2_plan_and_preprocess", "-d", "501", "-c", "3d_fullres", "-np", "2"], env=env, check=True)
    print(f"nnU-Net planning and preprocessing: {time.perf_counter() - t0:.0f} s", flush=True)
    (args.work / "preprocessed" / NAME / "splits_final.json").write_text(json.dumps([{"train": train, "val": val}]))
    cmd = ["nnUNetv2_train", "501", "3d_fullres", "0", "-device", "cpu", "-tr", TRAINER]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        proc.wait(timeout=args.budget)
        stopped = "finished its 10 epochs"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        stopped = "stopped at the budget"
    print(f"nnU-Net training: {time.perf_counter() - t0:.0f} s, {stopped}", flush=True)
    fold = args.work / "results" / NAME / f"{TRAINER}__nnUNetPlans__3d_fullres" / "fold_0"
    log = sorted(fold.glob("training_log_*.txt"))
    if log:
        epochs = [line for line in log[-1].read_text().splitlines() if "Epoch time" in line]
        print(f"nnU-Net epochs completed: {len(epochs)}", flush=True)
    if not (fold / "checkpoint_best.pth").exists() and not (fold / "checkpoint_final.pth").exists():
        print("nnU-Net saved no checkpoint within the budget: it has no Dice to report", flush=True)
        return
    best = ["--val_best"] if (fold / "checkpoint_best.pth").exists() else []
    subprocess.run(cmd + ["--val", *best], env=env, check=True)
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    dice = {k: v["Dice"] for k, v in summary["mean"].items()}
    print(f"nnU-Net validation Dice per class {dice}; mean {summary['foreground_mean']['Dice']:.4f}", flush=True)


if __name__ == "__main__":
    main()
