"""Volumes: the template's volume loader against MONAI's usual pipeline, and the template's 3D
training step against a hand-written loop. Each figure is measured in one run; prints a table and
writes bench/volumes.md.

    pip install monai             # the baseline only; the template does not use it
    python bench/volumes.py [--files 48] [--reps 9] [--only loader,step]

1. Loader, on one folder of NIfTI files made from the MNI152 T1 template in nilearn's wheel (1 mm,
   197x233x189, int16 .nii.gz; every other file with its first axis stored flipped, so both sides
   reorient), resampled to 64^3 with min-max intensities:
   - template: dataset volume_folder (data/loading.py) through its own loader, num_workers 2
     (0, its default, for data in memory);
     from disk (cache_mb: 1: the volumes are decoded once into a temporary file, and each epoch
     streams from it) and cached (decoded once into memory);
   - MONAI: LoadImage, Orientation("RAS"), Resize(64^3, trilinear), ScaleIntensity in a
     monai.data.Dataset and a DataLoader (num_workers 2, batch 8, shuffled); cached: the same
     transforms in a CacheDataset.
   Volumes per second over one epoch, the median of interleaved repetitions; the cached figures
   exclude the one-off decoding, which is reported on its own.
3. Layout: channels_last_3d against the default layout for small_cnn3d (bf16), which decides
   what channels_last: auto does for 3D models.
2. Step: the Trainer's epoch against the plain loop of bench/bench.py (the same model, optimizer,
   scheduler and batches), small_cnn3d on dataset mni152, bf16 and fp32.
"""
import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # bench/ itself is sys.path[0]: `import bench` is bench/bench.py

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench import ROWS, interleaved, make_trainer, plain_epoch, record, setup, trainer_epoch  # noqa: E402
from data.loading import EpochBatchSampler, build_data, make_loader  # noqa: E402
from tasks.classify.config import ClassifyConfig as Config  # noqa: E402

SIZE = 64
BATCH = 8


def make_folder(root: Path, files: int) -> Path:
    """`files` scans in two class folders: the T1 template with a per-file gain and noise, int16."""
    import nibabel as nib

    from data.brain import FILES, template_folder

    image = nib.load(str(template_folder() / FILES["t1"]))
    base = np.asarray(image.dataobj, dtype=np.float32)
    rng = np.random.default_rng(0)
    for i in range(files):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        data = base * rng.uniform(0.8, 1.2) + rng.normal(0, 2, base.shape).astype(np.float32)
        affine = image.affine.copy()
        if i % 4 >= 2:  # stored with the first axis running to the left: canonical order flips it back
            data, affine = data[::-1], affine @ np.array([[-1, 0, 0, base.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
        nib.save(nib.Nifti1Image(data.astype(np.int16), affine), str(folder / f"{i}.nii.gz"))
    return root


def template_epoch_fn(root: Path, cache_mb: int):
    """(one epoch over every volume, seconds spent building the data)."""
    cfg = Config(dataset="volume_folder", data_dir=str(root), volume_size=[SIZE] * 3, intensity="minmax",
                 cache_mb=cache_mb, val_fraction=0.0, augment="none", batch_size=BATCH)
    t0 = time.perf_counter()
    data = build_data(cfg)
    built = time.perf_counter() - t0
    sampler = EpochBatchSampler(len(data.train), BATCH, 0)
    loader = make_loader(data.train, sampler, 0 if cache_mb > 1 else 2, False)  # in memory: the template's num_workers 0
    epoch = [0]

    def run() -> None:
        epoch[0] += 1
        sampler.set_epoch(epoch[0])
        for x, _ in loader:
            assert x.shape[1:] == (1, SIZE, SIZE, SIZE)
    return run, built, len(data.train) // BATCH * BATCH


def monai_epoch_fn(root: Path, cached: bool):
    from monai import transforms
    from monai.data import CacheDataset, DataLoader, Dataset

    files = sorted(str(p) for p in root.rglob("*.nii.gz"))
    chain = transforms.Compose([transforms.LoadImage(image_only=True, ensure_channel_first=True), transforms.Orientation("RAS"),
                                transforms.Resize((SIZE,) * 3, mode="trilinear"), transforms.ScaleIntensity()])
    t0 = time.perf_counter()
    dataset = CacheDataset(files, chain, cache_rate=1.0, num_workers=2, progress=False) if cached else Dataset(files, chain)
    built = time.perf_counter() - t0
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=2, drop_last=True, persistent_workers=True)

    def run() -> None:
        for x in loader:
            assert x.shape[1:] == (1, SIZE, SIZE, SIZE)
    return run, built, len(files) // BATCH * BATCH


def bench_loader(files: int, reps: int) -> None:
    """Template against MONAI: from disk (the volumes above cache_mb: decoded once to a temporary
    file; MONAI's Dataset decodes every epoch), in memory (CacheDataset), and the template's files
    decoded every epoch (cache_mb: 0) for information."""
    with tempfile.TemporaryDirectory() as tmp:
        root = make_folder(Path(tmp) / "scans", files)
        for where, cache_mb, cached, target in (("from disk", 1, False, ">= 2"), ("cached", 4096, True, ">= 2"),
                                                ("decoding every epoch (cache_mb 0)", 0, False, "(informative)")):
            ours, ours_built, n = template_epoch_fn(root, cache_mb)
            theirs, theirs_built, m = monai_epoch_fn(root, cached)
            t = interleaved({"template": ours, "monai": theirs}, reps)
            record(f"volumes/s, template / MONAI, {where} ({files} files, 64^3)", n / t["template"], m / t["monai"],
                   (n / t["template"]) / (m / t["monai"]), target, "vol/s")
            if cache_mb:  # the one-off cost: the template decodes once; MONAI's Dataset decodes every epoch
                baseline = theirs_built if cached else t["monai"]
                record(f"  seconds to decode every file once ({where}), template / MONAI "
                       f"{'CacheDataset' if cached else 'Dataset, one epoch'}", ours_built, baseline, ours_built / baseline,
                       "(informative)")


def bench_step(reps: int) -> None:
    for amp in ("bf16", "none"):
        cfg = Config(dataset="mni152", base_model="small_cnn3d", amp=amp, epochs=10)
        data, model, sampler, loader, val_loader = setup(cfg)
        trainer = make_trainer(cfg, model, loader, val_loader)
        parts = trainer.parts
        t = interleaved({"template": lambda: trainer_epoch(trainer),
                         "plain": lambda: plain_epoch(cfg, model, parts.optimizers["model"], parts.schedulers["model"], loader)},
                        reps)
        record(f"3D step: epoch images/s, template / hand-written loop ({'fp32' if amp == 'none' else amp})",
               len(data.train) / t["template"], len(data.train) / t["plain"], t["plain"] / t["template"], ">= 0.95", "vol/s")


def bench_layout(reps: int) -> None:
    """channels_last_3d against the default layout, small_cnn3d on mni152, bf16 and fp32: what
    channels_last: auto decides for 3D models."""
    for amp in ("bf16", "none"):
        epochs = {}
        for layout in (True, False):
            cfg = Config(dataset="mni152", base_model="small_cnn3d", amp=amp, channels_last=layout, epochs=10)
            data, model, sampler, loader, val_loader = setup(cfg)
            epochs[layout] = (lambda t: lambda: trainer_epoch(t))(make_trainer(cfg, model, loader, val_loader))
        t = interleaved({"channels_last_3d": epochs[True], "default": epochs[False]}, reps)
        record(f"3D step: epoch seconds, channels_last_3d / default layout ({'fp32' if amp == 'none' else amp})",
               t["channels_last_3d"], t["default"], t["channels_last_3d"] / t["default"], "(decides channels_last: auto)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=48)
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--only", default="loader,step,layout")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if "loader" in args.only:
        bench_loader(args.files, args.reps)
    if "step" in args.only:
        bench_step(args.reps)
    if "layout" in args.only:
        bench_layout(args.reps)
    lines = [f"# bench/volumes.py ({platform.processor() or platform.machine()}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads)", "", "| figure | template | baseline | ratio | target |",
             "| --- | --- | --- | --- | --- |", *(f"| {' | '.join(row)} |" for row in ROWS)]
    (ROOT / "bench" / "volumes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
