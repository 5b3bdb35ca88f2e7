"""Benchmarks of real data at full machine speed (run by hand; nothing here runs in the tests).

    python bench/recipe.py --only speed        template epoch vs torchvision-reference loop vs best hand-written loop
    python bench/recipe.py --only folder       the 16-24 px RGB digits folder, defaults only, 8 epochs
    python bench/recipe.py --only accuracy     Fashion-MNIST, defaults, 15 epochs (and with ema_decay)
    python bench/recipe.py --only precision    the same in fp32, to compare with bf16

Fashion-MNIST comes from Debian's package (apt-get install dataset-fashion-mnist), which puts the
four gz IDX files in /usr/share/datasets/fashion-mnist. Results are appended to bench/recipe.md.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

FASHION = "/usr/share/datasets/fashion-mnist"
BATCH = 64  # the template's default batch_size, on every side
LINES: list[str] = []


def say(line: str) -> None:
    print(line, flush=True)
    LINES.append(line)


# ---------------------------------------------------------------- speed
def template_epoch(n: int):
    """One epoch of the template's Trainer on its defaults for Fashion-MNIST (first n images), as a
    callable, and the number of images it trains on."""
    from data.augment import Augment
    from data.loading import EpochBatchSampler, EvalBatchSampler, build_data, make_loader
    from tasks.classify import Classify
    from tasks.classify.config import ClassifyConfig as Config
    from tasks.classify.training import build_classifier as build_model
    from train.build import build_optimizer, build_scheduler
    from train.checkpoint import TrainingParts, TrainState
    from train.run import resolve_auto
    from train.trainer import Trainer

    cfg = Config(dataset="fashion_mnist", data_dir=FASHION, epochs=15)  # the defaults: batch 64
    data = build_data(cfg)
    data.train.positions = data.train.positions[:n]
    model = build_model(cfg, data.info)
    task = Classify()
    cfg = resolve_auto(cfg, torch.device("cpu"), model, task)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    data.train.augment = Augment(cfg.seed, cfg.augment, num_classes=10)
    sampler = EpochBatchSampler(len(data.train), cfg.batch_size, cfg.seed)
    opt = build_optimizer(cfg, model)
    parts = TrainingParts(model, {"model": opt}, {"model": build_scheduler(cfg, opt, sampler.steps_per_epoch())},
                          torch.amp.GradScaler("cpu", enabled=False))
    trainer = Trainer(cfg=cfg, phases=task.phases(cfg), validate_epoch=lambda *a: task.validate_epoch(cfg, *a), mode="max",
                      parts=parts, net=model, train_loader=make_loader(data.train, sampler, 0, False),
                      val_loader=make_loader(data.val, EvalBatchSampler(len(data.val), BATCH), 0, False),
                      device=torch.device("cpu"), run=None, state=TrainState(), weights_meta={})
    def epoch() -> None:
        trainer.state.epoch, trainer.state.step = trainer.state.epoch + 1, 0
        trainer.train_epoch()
    say(f"- template: {cfg.amp}, channels_last {cfg.channels_last}, augment {cfg.augment}, batch {cfg.batch_size}")
    return epoch, sampler.steps_per_epoch() * cfg.batch_size


def png_folder(n: int, root: Path) -> Path:
    """The first n Fashion-MNIST training images as PNG files in class folders (as a user would have them)."""
    from PIL import Image

    from data.named import load_named

    d = load_named("fashion_mnist", FASHION)
    for i in range(n):
        folder = root / f"{int(d.train_y[i])}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(d.train_x[i, 0].numpy()).save(folder / f"{i:05d}.png")
    return root


def torchvision_reference_epoch(root: Path, reps: int, workers: int) -> float:
    """Images/s of the same model trained the way torchvision's classification reference trains it
    by default: ImageFolder with PIL decoding in DataLoader workers, fp32, the same augmentation."""
    from torchvision import datasets, transforms

    from model import model_dict

    tf = transforms.Compose([transforms.Grayscale(), transforms.RandomCrop(28, padding=3), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    ds = datasets.ImageFolder(str(root), transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers, drop_last=True,
                                         persistent_workers=True)
    model = model_dict["small_cnn"](1, 10, 28, 0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    say(f"- torchvision reference (fp32, PIL in {workers} workers): epochs of {len(ds)} images: "
        + ", ".join(f"{t:.2f} s" for t in times))
    return len(loader) * BATCH / statistics.median(times)


def hand_written_epoch(n: int):
    """One epoch of the best plain loop (uint8 in memory, batched crop+flip, bf16 autocast,
    channels_last), as a callable, and the number of images it trains on."""
    from data.named import load_named
    from model import model_dict
    from train.device import native_bf16

    d = load_named("fashion_mnist", FASHION)
    x_all, y_all = d.train_x[:n], d.train_y[:n]
    model = model_dict["small_cnn"](1, 10, 28, 0.1).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    dtype = torch.bfloat16 if native_bf16(torch.device("cpu")) else None
    g = torch.Generator().manual_seed(0)

    def epoch() -> None:
        model.train()
        order = torch.randperm(n, generator=g)
        for i in range(n // BATCH):
            idx = order[i * BATCH:(i + 1) * BATCH]
            x = F.pad(x_all[idx].float().div_(255), (3, 3, 3, 3))  # random crop (pad 3) + flip, per sample
            dy, dx = torch.randint(0, 7, (2, BATCH, 1), generator=g)
            rows, cols = dy + torch.arange(28), dx + torch.arange(28)  # (B, 28)
            x = x[torch.arange(BATCH).view(-1, 1, 1), 0, rows.view(-1, 28, 1), cols.view(-1, 1, 28)].unsqueeze(1)
            x = torch.where(torch.rand(BATCH, 1, 1, 1, generator=g) < 0.5, x.flip(-1), x)
            x = ((x - 0.5) / 0.5).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(model(x), y_all[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return epoch, n // BATCH * BATCH


def interleaved(fns: dict, reps: int) -> dict:
    """Median seconds per call of each function, the order of the sides flipped every repetition."""
    times = {name: [] for name in fns}
    for rep in range(reps):
        for name, fn in (list(fns.items()) if rep % 2 == 0 else list(fns.items())[::-1]):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        say(f"- {name}: " + ", ".join(f"{t:.2f} s" for t in ts))
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_speed(n: int, reps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = png_folder(n, Path(tmp) / "fmnist_png")
        reference = torchvision_reference_epoch(root, reps, workers=2)
    (hand, images), (template, _) = hand_written_epoch(n), template_epoch(n)
    t = interleaved({"hand-written loop": hand, "template": template}, 2 * reps)
    template, hand = images / t["template"], images / t["hand-written loop"]
    say("")
    say("| figure | template img/s | baseline img/s | ratio | target |")
    say("| --- | --- | --- | --- | --- |")
    say(f"| Fashion-MNIST epoch: template defaults / torchvision reference (fp32, PIL in workers) | {template:.0f} | "
        f"{reference:.0f} | {template / reference:.2f} | >= 2.0 |")
    say(f"| Fashion-MNIST epoch: template defaults / best hand-written loop (interleaved) | {template:.0f} | {hand:.0f} | "
        f"{template / hand:.3f} | >= 0.95 |")


# ---------------------------------------------------------------- end to end
def train(*args: str, cwd: Path) -> dict:
    """Run train.py in a scratch copy of the project; returns the finished run's run.json and wall time."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "train.py", "progress=false", *args], cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(r.stdout[-2000:] + r.stderr[-2000:])
    runs = sorted((json.loads(p.read_text()) for p in (cwd / "experiments").glob("*/run.json")), key=lambda i: i["start_utc"])
    return runs[-1] | {"wall_s": wall}


def scratch_project(tmp: Path) -> Path:
    import shutil

    dest = tmp / "proj"
    for name in ("config", "model", "train", "infer", "utils", "train.py", "inference.py"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest / name)
    for name in ("experiments", "checkpoints"):
        (dest / name).mkdir()
    return dest


def curve(run: dict, cwd: Path) -> str:
    rows = (cwd / "experiments" / run["id"] / "metrics.csv").read_text().splitlines()
    cols = rows[0].split(",")
    return " ".join(f"{float(r.split(',')[cols.index('val_acc')]):.4f}" for r in rows[1:])


def report_run(label: str, run: dict, cwd: Path) -> None:
    c = run["config"]
    say(f"| {label} | {run['metrics']['val_acc']:.4f} | {(run.get('best') or {}).get('metrics', {}).get('val_acc', 0):.4f} "
        f"| {run['epochs_done']} | {run['wall_s']:.0f} s | amp {c['amp']}, channels_last {c['channels_last']}, "
        f"augment {c['augment']}, ema {c['ema_decay']} |")
    say(f"  - val_acc per epoch: {curve(run, cwd)}")


def digits_folder(root: Path) -> Path:
    """The 1,797 digits as RGB PNGs of 16 to 24 px (random per image), ink in a random colour,
    split 80/20 into train/ and val/ class folders."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(0)
    for i, (img, label) in enumerate(zip(d.images, d.target)):
        part = "val" if rng.random() < 0.2 else "train"
        side = int(rng.integers(16, 25))
        ink = (img / 16.0)[..., None] * rng.integers(128, 256, 3)
        im = Image.fromarray(ink.astype(np.uint8)).resize((side, side), Image.BILINEAR)
        (root / part / str(label)).mkdir(parents=True, exist_ok=True)
        im.save(root / part / str(label) / f"{i:04d}.png")
    return root


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", default="speed,folder,accuracy", help="speed, folder, accuracy, precision")
    p.add_argument("--images", type=int, default=20_000, help="speed: images per timed epoch")
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    only = set(args.only.split(","))
    say(f"## {time.strftime('%Y-%m-%d %H:%M')} on {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads ({args.only})")
    if "speed" in only:
        bench_speed(args.images, args.reps)
    with tempfile.TemporaryDirectory() as tmp:
        cwd = scratch_project(Path(tmp))
        say("")
        say("| run | final val_acc | best val_acc | epochs | wall | settings |")
        say("| --- | --- | --- | --- | --- | --- |")
        if "folder" in only:
            root = digits_folder(Path(tmp) / "digits_rgb")
            report_run("16-24 px RGB digits folder, defaults, 8 epochs", train("dataset=image_folder", f"data_dir={root}",
                       "epochs=8", cwd=cwd), cwd)
        fashion = ("dataset=fashion_mnist", f"data_dir={FASHION}", "epochs=15")
        if "accuracy" in only:
            report_run("Fashion-MNIST, defaults, 15 epochs", train(*fashion, cwd=cwd), cwd)
            report_run("Fashion-MNIST, defaults + ema_decay=0.999", train(*fashion, "ema_decay=0.999", cwd=cwd), cwd)
        if "precision" in only:
            report_run("Fashion-MNIST, defaults in fp32 (amp=none)", train(*fashion, "amp=none", cwd=cwd), cwd)
    with open(ROOT / "bench" / "recipe.md", "a") as f:
        f.write("\n".join(LINES) + "\n\n")


if __name__ == "__main__":
    main()
