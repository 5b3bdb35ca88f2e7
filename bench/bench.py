"""Benchmarks: each figure is a ratio of medians over interleaved repetitions, measured in one
run. Prints a table and writes bench/results.md.

    python bench/bench.py                      all of them (~12 min on 2 CPU cores)
    python bench/bench.py --only loop,data     some: loop, progress, data, inference, state, store, process
"""
import argparse
import copy
import io
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from data.augment import AUTO_POLICY, Augment  # noqa: E402
from data.loading import EpochBatchSampler, EvalBatchSampler, build_data, make_loader  # noqa: E402
from tasks.classify import Classify  # noqa: E402
from tasks.classify.config import ClassifyConfig as Config  # noqa: E402
from tasks.classify.training import build_classifier as build_model  # noqa: E402
from tasks.classify.training import evaluate  # noqa: E402
from train import checkpoint  # noqa: E402
from train.build import build_optimizer, build_scheduler  # noqa: E402
from train.checkpoint import TrainingParts, TrainState  # noqa: E402
from train.device import AMP_DTYPES, set_determinism  # noqa: E402
from train.run import resolve_auto  # noqa: E402
from train.trainer import Trainer  # noqa: E402

ROWS: list[tuple] = []  # (figure, template, baseline, ratio, target)


def interleaved(fns: dict, reps: int, clock=time.perf_counter, before=None) -> dict:
    """Run each callable `reps` times, interleaved, after one warm-up each; median seconds per call.
    The order flips every repetition (A B, B A, ...), so a slow drift of the machine (another
    tenant, a clock change) falls on both sides alike instead of on whichever runs second.
    `before`, if given, runs untimed before every call."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for rep in range(reps):
        for name, fn in (list(fns.items()) if rep % 2 == 0 else list(fns.items())[::-1]):
            if before is not None:
                before()
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def record(figure: str, template: float, baseline: float, ratio: float, target: str, unit: str = "s") -> None:
    ROWS.append((figure, f"{template:.4g} {unit}", f"{baseline:.4g} {unit}", f"{ratio:.3f}", target))
    print(f"{figure:<58} {template:10.4g} {baseline:10.4g}  ratio {ratio:.3f}  (target {target})", flush=True)


def setup(cfg: Config):
    set_determinism(cfg.seed, cfg.deterministic, cfg.compile, torch.device("cpu"))
    data = build_data(cfg)
    if cfg.augment != "none":
        data.train.augment = Augment(cfg.seed, AUTO_POLICY[cfg.dataset] if cfg.augment == "auto" else cfg.augment)
    model = build_model(cfg, data.info)
    if resolve_auto(cfg, torch.device("cpu"), model, Classify()).channels_last:
        volumetric = any(isinstance(m, torch.nn.Conv3d) for m in model.modules())
        model.to(memory_format=torch.channels_last_3d if volumetric else torch.channels_last)  # as train.py does
    sampler = EpochBatchSampler(len(data.train), cfg.batch_size, cfg.seed)
    loader = make_loader(data.train, sampler, cfg.num_workers, False)
    val_loader = make_loader(data.val, EvalBatchSampler(len(data.val), cfg.batch_size), 0, False)
    return data, model, sampler, loader, val_loader


def make_trainer(cfg: Config, model, loader, val_loader) -> Trainer:
    task = Classify()
    cfg = resolve_auto(cfg, torch.device("cpu"), model, task)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, loader.batch_sampler.steps_per_epoch())
    parts = TrainingParts(model, {"model": optimizer}, {"model": scheduler}, torch.amp.GradScaler("cpu", enabled=False))
    return Trainer(cfg=cfg, phases=task.phases(cfg), validate_epoch=lambda *a: task.validate_epoch(cfg, *a), mode="max",
                   parts=parts, net=model, train_loader=loader, val_loader=val_loader, device=torch.device("cpu"), run=None,
                   state=TrainState(), weights_meta={})


def project_copy(tmp: Path) -> Path:
    """A copy of the project without its runs, for a timed `python train.py` in it."""
    copy = tmp / "proj"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("experiments", "checkpoints", ".git", "__pycache__"))
    for name in ("experiments", "checkpoints"):
        (copy / name).mkdir()
    return copy


def trainer_epoch(trainer: Trainer) -> None:
    trainer.state.epoch, trainer.state.step = 1, 0
    trainer.train_epoch()


def plain_epoch(cfg, model, optimizer, scheduler, loader) -> None:
    """The loop a user writes by hand (torchvision reference style), with the hardware features
    the template's defaults use here (bf16 autocast, channels_last)."""
    cfg = resolve_auto(cfg, torch.device("cpu"), model, Classify())
    loader.batch_sampler.set_epoch(1)
    model.train()
    dtype = AMP_DTYPES[cfg.amp]
    for x, y in loader:
        if cfg.channels_last:
            x = x.to(memory_format=torch.channels_last_3d if x.ndim == 5 else torch.channels_last)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()


def bench_loop(reps: int) -> None:
    """1. The Trainer's epoch against a hand-written loop over the same batches, in this process.
    Both sides drive the very same model, optimizer and scheduler objects, so the only
    difference is the loop's own code. One epoch (~0.3 s) per call and many repetitions: finer
    interleaving cancels more of this shared VM's drift than longer calls do."""
    cfg = Config(epochs=10)
    data, model, sampler, loader, val_loader = setup(cfg)
    trainer = make_trainer(cfg, model, loader, val_loader)
    fns = {"template": lambda: trainer_epoch(trainer),
           "plain": lambda: plain_epoch(cfg, model, trainer.parts.optimizers["model"], trainer.parts.schedulers["model"], loader)}
    t = interleaved(fns, reps)
    step = t["plain"] / sampler.steps_per_epoch()  # one small_cnn step of the plain loop
    record("loop: Trainer epoch / hand-written loop (digits)", t["template"], t["plain"], t["template"] / t["plain"], "<= 1.03")
    t = interleaved(fns, reps, time.process_time)
    record("loop: the same in CPU time (unaffected by other tenants)", t["template"], t["plain"], t["template"] / t["plain"],
           "(informative)")
    # The loop's own cost, measured where it is not drowned in noise: with a one-layer model a
    # step is almost all loop, so the difference per step is what the Trainer adds to any step.
    tiny = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    tiny_trainer = make_trainer(cfg, tiny, loader, val_loader)
    tiny_parts = tiny_trainer.parts
    t = interleaved({"template": lambda: trainer_epoch(tiny_trainer),
                     "plain": lambda: plain_epoch(cfg, tiny, tiny_parts.optimizers["model"], tiny_parts.schedulers["model"], loader)}, reps)
    extra = (t["template"] - t["plain"]) / sampler.steps_per_epoch()
    record("loop: Trainer's own cost per step (one-layer model) / a small_cnn step", extra * 1e6, step * 1e6,
           1 + extra / step, "(informative: 1 + cost/step)", "us")


def bench_progress(reps: int) -> None:
    """6. The defaults (progress bar drawn as on a terminal, loss shown every 10 steps, the
    epoch line) against progress off."""
    cfg = Config(epochs=10)
    _, model, _, loader, val_loader = setup(cfg)
    on = make_trainer(cfg, model, loader, val_loader)
    off = make_trainer(Config(epochs=10, progress=False), copy.deepcopy(model), loader, val_loader)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    def with_bar() -> None:
        real = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = Terminal(), Terminal()  # tqdm draws on stderr
        try:
            trainer_epoch(on)
        finally:
            sys.stdout, sys.stderr = real

    t = interleaved({"on": with_bar, "off": lambda: trainer_epoch(off)}, reps)
    record("progress: defaults (bar drawn) / progress off", t["on"], t["off"], t["on"] / t["off"], "<= 1.02")


def bench_data(reps: int) -> None:
    """3. Training throughput fed by the template's loaders against in-memory tensors."""
    cfg = Config(augment="none")
    data, model, sampler, loader, _ = setup(cfg)
    x_all, y_all = data.train.source.load(data.train.positions)
    opt = build_optimizer(cfg, model)
    n_steps = sampler.steps_per_epoch()

    def step(x, y) -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def memory() -> None:
        perm = torch.randperm(len(y_all))
        for i in range(n_steps):
            idx = perm[i * 64:(i + 1) * 64]
            step(x_all[idx], y_all[idx])

    def from_loader(ld) -> None:
        ld.batch_sampler.set_epoch(0)
        for x, y in ld:
            step(x, y)

    loaders = {"workers=0": loader,
               "workers=2 persistent": make_loader(data.train, EpochBatchSampler(len(data.train), 64, 0), 2, False)}
    aug = build_data(Config())
    aug.train.augment = Augment(0, "translate")
    loaders["workers=0 augment"] = make_loader(aug.train, EpochBatchSampler(len(aug.train), 64, 0), 0, False)
    t = interleaved({"memory": memory, **{k: (lambda ld=ld: from_loader(ld)) for k, ld in loaders.items()}}, reps)
    for name in loaders:
        target = ">= 0.95" if name == "workers=0" else "(informative)"
        record(f"data: throughput, template loader ({name}) / in-memory", 1 / t[name], 1 / t["memory"], t["memory"] / t[name],
               target, "epochs/s")


def bench_inference(reps: int) -> None:
    """5. evaluate() against a bare inference_mode loop over the same batches."""
    cfg = Config()
    data, model, _, _, _ = setup(cfg)
    data = build_data(Config(val_fraction=0.9))  # a larger split: 1,617 samples
    loader = make_loader(data.val, EvalBatchSampler(len(data.val), 256), 0, False)
    model.eval()

    def bare() -> None:
        """Loss and accuracy, as a user would write it."""
        loss, correct = torch.zeros(()), torch.zeros((), dtype=torch.int64)
        with torch.inference_mode():
            for x, y in loader:
                logits = model(x)
                loss += F.cross_entropy(logits, y, reduction="sum")
                correct += (logits.argmax(1) == y).sum()

    t = interleaved({"template": lambda: evaluate(model, loader, torch.device("cpu")), "bare": bare}, reps)
    record("inference: evaluate() throughput / bare inference_mode loop", len(data.val) / t["template"], len(data.val) / t["bare"],
           t["bare"] / t["template"], ">= 0.95", "img/s")


def bench_state(reps: int) -> None:
    """4b. Saving and loading the full state (checkpoint.state_dict) the template's way against
    bare torch.save / torch.load of the same dict. The template's save is checkpoint.write_state
    (temporary file, no CRC32, fsync, os.replace, fsync of the folder); its load is
    checkpoint.read_state, torch.load(map_location="cpu", weights_only=True)."""
    tmp = Path(tempfile.mkdtemp(dir=ROOT / "bench"))
    try:
        for name in ("resnet18", "small_cnn"):
            cfg = Config(base_model=name, augment="none")
            _, model, _, loader, val_loader = setup(cfg)
            trainer = make_trainer(cfg, model, loader, val_loader)
            x, y = next(iter(loader))
            F.cross_entropy(model(x), y).backward()
            trainer.parts.optimizers["model"].step()  # AdamW's moments exist: the state is ~3x the weights
            state = checkpoint.state_dict(trainer.state, trainer.parts)

            def bare() -> None:
                torch.save(state, tmp / "bare.pt")
                torch.load(tmp / "bare.pt", weights_only=True)

            def bare_fsync() -> None:
                torch.save(state, tmp / "bare.pt")
                with open(tmp / "bare.pt", "rb") as f:
                    os.fsync(f.fileno())
                torch.load(tmp / "bare.pt", weights_only=True)

            def template() -> None:
                checkpoint.write_state(tmp, state)
                checkpoint.read_state(tmp / "state.pt")

            # Each call starts with no dirty pages: otherwise the template's fsync (a journal commit)
            # would also write back what the bare side left in the page cache.
            t = interleaved({"template": template, "bare": bare, "bare+fsync": bare_fsync}, reps, before=os.sync)
            mb = (tmp / "state.pt").stat().st_size / 2**20
            target = "<= 1.10" if name == "resnet18" else "(informative)"
            record(f"state: save+load, {name} + AdamW ({mb:.3g} MB) / bare torch.save+load", t["template"], t["bare"],
                   t["template"] / t["bare"], target)
            record(f"state: the same / bare torch.save+fsync+load ({name})", t["template"], t["bare+fsync"],
                   t["template"] / t["bare+fsync"], "(informative)")
    finally:
        shutil.rmtree(tmp)


def bench_store(reps: int) -> None:
    """4. Putting a finished run with 1 GB of weights in place, against copying the file;
    --list over 100 runs."""
    import store.runs as rs

    tmp = Path(tempfile.mkdtemp(dir=ROOT / "bench"))
    try:
        rs.EXPERIMENTS, rs.CHECKPOINTS = tmp / "experiments", tmp / "checkpoints"
        rs.EXPERIMENTS.mkdir()
        folder = rs.EXPERIMENTS / "2026-01-01_00-00-00"
        folder.mkdir()
        weights = folder / "model.safetensors"
        with open(weights, "wb") as f:
            for _ in range(256):
                f.write(os.urandom(4 << 20))  # 1 GiB
            f.flush()
            os.fsync(f.fileno())
        rs.write_text(folder / "config.yaml", "# run 2026-01-01_00-00-00\n")
        info = {"id": folder.name, "start_utc": rs.utc_now(), "status": "finished", "weights": {"size": weights.stat().st_size}}
        rs.write_json(folder / "run.json", info)

        def put_in_place() -> None:
            for name in rs.VIEW_FILES:
                (rs.CHECKPOINTS / name).unlink(missing_ok=True)
            rs.write_json(folder / "run.json", info)
            rs.update_view(folder, info["start_utc"], rs.VIEW_FILES)

        def copy_file() -> None:
            shutil.copyfile(weights, tmp / "copy.safetensors")
            with open(tmp / "copy.safetensors", "rb") as f:
                os.fsync(f.fileno())
            os.unlink(tmp / "copy.safetensors")

        t = interleaved({"place": put_in_place, "copy": copy_file}, reps)
        record("store: finish a run with 1 GB weights (links, run.json) / copy", t["place"], t["copy"], t["place"] / t["copy"], "<= 0.05")
        t0 = time.perf_counter()
        rs.sha256_file(weights)
        sha = time.perf_counter() - t0
        print(f"{'store: sha256 of 1 GB (paid once at the end of a run, and on load)':<58} {sha:10.4g} s", flush=True)
        ROWS.append(("store: sha256 of the 1 GB weights (separate)", f"{sha:.4g} s", "-", "-", "(reported)"))
        weights.unlink()

        for i in range(100):
            f = rs.EXPERIMENTS / f"2026-02-01_00-00-{i:02d}"
            f.mkdir()
            rs.write_json(f / "run.json", {"id": f.name, "status": "finished", "start_utc": rs.utc_now(),
                                           "model": "small_cnn", "weights": {"size": 3}, "epochs": 1, "epochs_done": 1})
            (f / "model.safetensors").write_bytes(b"abc")
        project = tmp / "proj"
        shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns("experiments", "checkpoints", "bench", ".git", "tests"))
        shutil.copytree(rs.EXPERIMENTS, project / "experiments")
        (project / "checkpoints").mkdir()

        def listing() -> None:
            subprocess.run([sys.executable, "train.py", "--list"], cwd=project, check=True, capture_output=True)
        t = interleaved({"list": listing}, reps)
        record("store: `python train.py --list` over 100 runs (whole process)", t["list"], 1.0, t["list"], "< 1 s")
    finally:
        shutil.rmtree(tmp)


def bench_process(reps: int) -> None:
    """2. `python train.py` on the defaults against the plain script, 1 and 5 epochs."""
    tmp = Path(tempfile.mkdtemp())
    try:
        project = tmp / "proj"
        shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns("experiments", "checkpoints", ".git", "tests"))
        (project / "experiments").mkdir()
        (project / "checkpoints").mkdir()
        for epochs in (1, 5):
            def template() -> None:
                subprocess.run([sys.executable, "train.py", f"epochs={epochs}", "device=cpu"], cwd=project, check=True,
                               capture_output=True)

            def plain() -> None:
                subprocess.run([sys.executable, "bench/plain_train.py", "--epochs", str(epochs), "--out", str(tmp / "plain")],
                               cwd=project, check=True, capture_output=True)
            t = interleaved({"template": template, "plain": plain}, reps)
            record(f"process: python train.py epochs={epochs} / plain script", t["template"], t["plain"],
                   t["template"] / t["plain"], "<= 1.10")
    finally:
        shutil.rmtree(tmp)


BENCHES = {"loop": bench_loop, "progress": bench_progress, "data": bench_data, "inference": bench_inference,
           "state": bench_state, "store": bench_store, "process": bench_process}


# Repetitions per section: short calls (~0.1-0.3 s) need many to give a stable median on a
# shared VM; a whole process (~6-9 s) needs fewer.
REPS = {"loop": 27, "progress": 27, "data": 27, "inference": 36, "state": 21, "store": 9, "process": 9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(BENCHES), help="comma-separated: " + ", ".join(BENCHES))
    parser.add_argument("--reps", type=int, default=None, help="interleaved repetitions of every section (at least 5); "
                        "default per section: " + ", ".join(f"{k} {v}" for k, v in REPS.items()))
    args = parser.parse_args()
    names = args.only.split(",")
    if set(names) - set(BENCHES):
        parser.error(f"--only: unknown section(s) {', '.join(sorted(set(names) - set(BENCHES)))}; choose from {', '.join(BENCHES)}")
    for name in names:
        BENCHES[name](max(5, args.reps or REPS[name]))
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
               f"{torch.get_num_threads()} threads, python {platform.python_version()}")
    reps = f"{max(5, args.reps)}" if args.reps else ", ".join(f"{k} {REPS[k]}" for k in names)
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {machine}; ratios of medians over interleaved repetitions "
             f"({reps}), one run.", "",
             "| figure | template | baseline | ratio | target |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {' | '.join(row)} |" for row in ROWS]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if set(names) == set(BENCHES):  # the table replaces the old one; the notes after it (## sections) stay
        path = ROOT / "bench" / "results.md"
        old = path.read_text() if path.exists() else ""
        path.write_text(text + (old[old.index("\n## "):] if "\n## " in old else ""))


if __name__ == "__main__":
    main()
