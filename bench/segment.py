"""Task segment against its peers, each ratio measured side by side in one run.

    python bench/segment.py                  everything below (~20 min on 2 cores)
    python bench/segment.py --only window    one part: window | loader | step | demo

1. window: tasks/segment/window.py's sliding window against MONAI's sliding_window_inference, the
   same UNet3d (eval, width 16), patch 32^3, overlap 0.5, sw batch 4 and Gaussian weights (MONAI
   is handed window.py's map as roi_weight_map, so that the outputs can be compared voxel for voxel)
   on a 96 x 112 x 80 volume, whose sides both place windows alike: voxels/s and the largest difference.
2. loader: PatchSet (foreground points found once per case) against MONAI's RandCropByPosNegLabeld
   (pos 1, neg 2: a third of patches on foreground, as here) on the same in-memory demo cases,
   48 x 56 x 40 patches without augmentation: patches/s.
3. step: the Trainer's epoch against a hand-written loop over the same batches, the same network,
   loss (Dice + CE with deep supervision), AdamW and autocast: steps/s.
4. demo: the baselines of the offline demo (dataset mni152_tissue): the best two intensity
   thresholds found on the training blocks, and a 3-component Gaussian mixture on intensity,
   scored on the validation blocks as the task scores them (per-case Dice per class, then the mean);
   and `python train.py task=segment` (the defaults) in a copy of the project, timed.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # bench/ itself is sys.path[0]: `import bench` is bench/bench.py

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench import interleaved, project_copy, record, trainer_epoch  # noqa: E402
from data.loading import EpochBatchSampler, EvalBatchSampler, build_data, make_loader  # noqa: E402
from model.unet3d import UNet3d  # noqa: E402
from tasks.segment import Segment  # noqa: E402
from tasks.segment.config import SegmentConfig  # noqa: E402
from tasks.segment.training import dice_ce  # noqa: E402
from tasks.segment.window import gaussian, sliding_window  # noqa: E402
from train.checkpoint import TrainState  # noqa: E402
from train.device import AMP_DTYPES, set_determinism  # noqa: E402
from train.phases import Batch  # noqa: E402
from train.run import resolve_auto  # noqa: E402
from train.trainer import Trainer  # noqa: E402


def bench_window(reps: int) -> None:
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    patch = (32, 32, 32)
    net = UNet3d(1, 3, patch, (1.0, 1.0, 1.0), width=16).eval()
    x = torch.randn(1, 96, 112, 80)
    weight = torch.from_numpy(gaussian(patch))
    with torch.inference_mode():
        ours = sliding_window(net, x, patch, 3, 0.5, batch=4)
        theirs = sliding_window_inference(x[None], patch, 4, net, overlap=0.5, mode="gaussian", roi_weight_map=weight)[0]
    diff = float((ours - theirs).abs().max())
    t = interleaved({"template": lambda: sliding_window(net, x, patch, 3, 0.5, batch=4),
                     "monai": lambda: sliding_window_inference(x[None], patch, 4, net, overlap=0.5, mode="gaussian",
                                                               roi_weight_map=weight)}, reps)
    voxels = x[0].numel()
    record(f"sliding window voxels/s, template / MONAI (max |diff| {diff:.1e})", voxels / t["template"],
           voxels / t["monai"], t["monai"] / t["template"], ">= 1.0 and equal", "vox/s")


def bench_loader(reps: int) -> None:
    from monai.transforms import RandCropByPosNegLabeld

    from tasks.segment.patches import PatchSet

    cfg = SegmentConfig()
    data = build_data(cfg)
    source, positions, patch, n = data.train.source, data.train.positions, (48, 56, 40), 64
    monai_crop = RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=patch, pos=1, neg=2,
                                        num_samples=1, allow_smaller=True)
    monai_crop.set_random_state(0)
    cases = [{"image": source.images[p], "label": source.labels[p][None]} for p in positions]

    def ours() -> None:
        patches = PatchSet(source, positions, patch, 0, n, 0.33, False, 3)  # built each time: its foreground search counts
        patches.__getitems__([(0, i) for i in range(n)])

    def theirs() -> None:
        for i in range(n):
            monai_crop(cases[i % len(cases)])
    t = interleaved({"template": ours, "monai": theirs}, reps)
    record("patches/s, PatchSet / MONAI RandCropByPosNegLabeld", n / t["template"], n / t["monai"],
           t["monai"] / t["template"], ">= 2", "patch/s")


def bench_step(reps: int) -> None:
    task = Segment()
    cfg = SegmentConfig(patches_per_epoch=16)
    set_determinism(cfg.seed, cfg.deterministic, cfg.compile, torch.device("cpu"))
    data = task.prepare_data(cfg, build_data(cfg))
    model = task.build_model(cfg, data.info)
    cfg = resolve_auto(cfg, torch.device("cpu"), model, task)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last_3d)
    sampler = EpochBatchSampler(len(data.train), cfg.batch_size, cfg.seed)
    loader = make_loader(data.train, sampler, 0, False)
    parts = task.build_parts(cfg, model, sampler.steps_per_epoch(), torch.device("cpu"))
    trainer = Trainer(cfg=cfg, phases=task.phases(cfg), validate_epoch=lambda *a: {}, mode="max", parts=parts, net=model,
                      train_loader=loader, val_loader=make_loader(data.val, EvalBatchSampler(len(data.val), 1), 0, False),
                      device=torch.device("cpu"), run=None, state=TrainState(), weights_meta={})
    optimizer, dtype = parts.optimizers["model"], AMP_DTYPES[cfg.amp]

    def plain_epoch() -> None:
        sampler.set_epoch(1)
        model.train()
        for x, y in loader:
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                loss, _ = dice_ce(model, Batch(x, y, len(x), 0, 0))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    t = interleaved({"template": lambda: trainer_epoch(trainer), "plain": plain_epoch}, reps)
    steps = sampler.steps_per_epoch()
    record(f"segment steps/s, template / hand-written ({'x'.join(map(str, cfg.patch_size))}, amp {cfg.amp})",
           steps / t["template"], steps / t["plain"], t["plain"] / t["template"], ">= 0.95", "step/s")


# ---------------------------------------------------------------- the demo and its baselines
def per_case_dice(preds: list, labels: list) -> np.ndarray:
    """(cases, 2): Dice of grey and white matter per case."""
    return np.array([[2 * ((p == c) & (t == c)).sum() / max(1, (p == c).sum() + (t == c).sum()) for c in (1, 2)]
                     for p, t in zip(preds, labels)])


def baselines() -> dict:
    """The best two thresholds on the training blocks' intensities, and a Gaussian mixture, on the validation blocks."""
    from sklearn.mixture import GaussianMixture

    data = build_data(SegmentConfig())
    src = data.train.source
    train = [(src.images[p][0].numpy(), src.labels[p].numpy()) for p in data.train.positions]
    val = [(src.images[p][0].numpy(), src.labels[p].numpy()) for p in data.val.positions]
    xt = np.concatenate([x.ravel() for x, _ in train])
    candidates = np.quantile(xt, np.linspace(0.01, 0.99, 99))
    best = max(((a, b) for i, a in enumerate(candidates) for b in candidates[i + 1:]),
               key=lambda ab: per_case_dice([np.digitize(x, ab) for x, _ in train], [t for _, t in train]).mean())
    thresholds = per_case_dice([np.digitize(x, best) for x, _ in val], [t for _, t in val]).mean(0)
    gmm = GaussianMixture(3, random_state=0).fit(xt[::4, None])
    rank = np.argsort(np.argsort(gmm.means_[:, 0]))  # components by mean intensity: dark, grey, white
    mixture = per_case_dice([rank[gmm.predict(x.reshape(-1, 1))].reshape(x.shape) for x, _ in val], [t for _, t in val]).mean(0)
    return {"thresholds": {"cut": [float(v) for v in best], "grey_matter": thresholds[0], "white_matter": thresholds[1],
                           "mean": float(thresholds.mean())},
            "gaussian_mixture": {"grey_matter": mixture[0], "white_matter": mixture[1], "mean": float(mixture.mean())}}


def template_demo(tmp: Path) -> tuple[dict, float, Path]:
    """python train.py task=segment in a copy of the project: (run.json, wall seconds, the copy)."""
    copy = project_copy(tmp)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "train.py", "task=segment", "progress=false"], cwd=copy, check=True)
    seconds = time.perf_counter() - t0
    (run,) = [json.loads((p / "run.json").read_text()) for p in (copy / "experiments").iterdir() if p.is_dir()]
    return run, seconds, copy


def bench_demo() -> None:
    base = baselines()
    for name, b in base.items():
        print(f"baseline {name}: grey {b['grey_matter']:.4f}  white {b['white_matter']:.4f}  mean {b['mean']:.4f}")
    with tempfile.TemporaryDirectory() as tmp:
        run, seconds, _ = template_demo(Path(tmp))
    m = run["metrics"]
    print(f"template (python train.py task=segment): grey {m['val_dice_grey_matter']:.4f}  white "
          f"{m['val_dice_white_matter']:.4f}  mean {m['val_dice']:.4f}  ({run['epochs']} epochs, {seconds:.0f} s)")
    best = max(b["mean"] for b in base.values())
    record("demo mean Dice, template / best baseline", m["val_dice"], best, m["val_dice"] / best, "> 1", "Dice")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("window", "loader", "step", "demo"))
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    parts = {"window": lambda: bench_window(args.reps), "loader": lambda: bench_loader(args.reps),
             "step": lambda: bench_step(args.reps), "demo": bench_demo}
    for name, fn in parts.items():
        if args.only in (None, name):
            fn()


if __name__ == "__main__":
    main()
