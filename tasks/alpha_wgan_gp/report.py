"""What inference.py does with an alpha-WGAN-GP run: seeded samples as NIfTI files in the data's
geometry, pictures of their mid-slices and of reconstructions beside their inputs, and the measures
(measure.py) with the references that say what they mean."""
from dataclasses import dataclass
from typing import Optional

import torch

from infer.runs import LoadedRun, checked_data, inference_dir, load_run
from store.runs import write_json
from tasks.alpha_wgan_gp.measure import bandwidth_of, mmd2, pairwise_msssim, pooled, ssim3d
from tasks.base import Task
from train.device import resolve_device
from train.phases import stream
from utils.config import Config
from utils.errors import UsageError

SAMPLES = 64  # volumes written as NIfTI, from the codes of stream(0, 0, "samples"): the same for every run of a code size


def volumes_of(split, batch: int = 16) -> torch.Tensor:
    """Every volume of a data split, normalised as in training (the split does it): (N, 1, S, S, S) in [-1, 1], CPU."""
    return torch.cat([split.__getitems__([(-1, i) for i in range(start, min(start + batch, len(split)))])[0]
                      for start in range(0, len(split), batch)]).float()


@torch.no_grad()
def through(net: torch.nn.Module, x: torch.Tensor, device: torch.device, batch: int = 16) -> torch.Tensor:
    return torch.cat([net(x[i:i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)])


@dataclass
class Measured:
    """A run measured (measure.py): the figures, and the per-item values behind them. A 3D wgan_gp run
    (the paper's ablation) has no encoder: its reconstruction fields are None."""
    figures: dict
    samples: torch.Tensor           # (M, 1, S, S, S) generated from the fixed codes, in [-1, 1]
    real: torch.Tensor              # (N, 1, S, S, S) held-out volumes
    recon: Optional[torch.Tensor]   # (N, 1, S, S, S) their reconstructions through E then G
    l1: Optional[torch.Tensor]      # (N,) each held-out volume's reconstruction L1
    ssim: Optional[torch.Tensor]    # (N,) and SSIM
    pairs: torch.Tensor             # (P,) MS-SSIM of seeded pairs of samples
    features: tuple                 # pooled features (samples, held-out) and the kernel's bandwidth, for MMD^2


def measure(loaded: LoadedRun, device: torch.device) -> Measured:
    """Reconstruction L1 and SSIM, with the L1 of predicting the mean training volume beside them;
    MMD^2 between samples and held-out volumes; pairwise MS-SSIM of samples beside that of real pairs."""
    from store.listing import duration_seconds

    data = checked_data(loaded)
    real, train = volumes_of(data.val), volumes_of(data.train)
    nets, run = loaded.model, loaded.run
    encodes = hasattr(nets, "encoder")  # a wgan_gp run has a generator and a critic only
    size = loaded.cfg.code_dim if encodes else loaded.cfg.latent_dim
    codes = torch.randn(max(SAMPLES, len(real)), size, generator=stream(0, 0, "samples"))
    samples = through(nets.generator, codes, device)
    recon = through(lambda x: nets.generator(nets.encoder(x)), real, device) if encodes else None
    l1, ssim = ((recon - real).abs().flatten(1).mean(1), ssim3d(recon, real)) if encodes else (None, None)
    pairs = pairwise_msssim(samples)
    fake_f, real_f = pooled(samples[:len(real)]), pooled(real)
    bandwidth = bandwidth_of(real_f)
    mean = lambda v: None if v is None else float(v.mean())  # noqa: E731
    figures = {"run": run["id"], "task": run["task"], "weights": loaded.weights, "iterations": run.get("steps_done"),
               "train_seconds": duration_seconds(run), "held_out": len(real), "samples": len(samples),
               "recon_l1": mean(l1), "mean_volume_l1": float((training_mean(train, loaded.cfg) - real).abs().mean()),
               "recon_ssim": mean(ssim), "mmd2": mmd2(fake_f, real_f, bandwidth),
               "mmd_kernel": "Gaussian on volumes average-pooled to 8^3, bandwidth the held-out volumes' median distance",
               "pair_msssim_samples": float(pairs.mean()), "pair_msssim_real": float(pairwise_msssim(real).mean()),
               "mmd2_untrained": mmd2(pooled(through(untrained_generator(loaded), codes[:len(real)], device)), real_f, bandwidth)}
    m = Measured(figures, samples, real, recon, l1, ssim, pairs, (fake_f, real_f, bandwidth))
    figures["ci95"] = intervals(m)
    return m


def training_mean(train: torch.Tensor, cfg: Config) -> torch.Tensor:
    """The mean training volume as the run saw them, (1, C, X, Y, Z): averaged over the flips its
    augmentation draws (each axis of flip_axes with probability 1/2), the reference of the L1 target."""
    from data.augment import VOLUME_POLICIES

    mean = train.mean(0, keepdim=True)
    for axis in cfg.flip_axes if cfg.augment in VOLUME_POLICIES else ():
        mean = (mean + mean.flip(2 + axis)) / 2
    return mean


def untrained_generator(loaded: LoadedRun) -> torch.nn.Module:
    """The run's generator as its config builds it before any step (seeded by its `seed`), in eval
    mode: the reference of the MMD^2 target (at most half the untrained generator's)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(loaded.cfg.seed)
        return loaded.task.build_model(loaded.cfg, loaded.info).generator.eval()


def interval(values: torch.Tensor, rounds: int = 1000, seed: int = 0) -> list:
    """A seeded bootstrap 95% interval of the mean of `values`."""
    gen = torch.Generator().manual_seed(seed)
    means = values.double()[torch.randint(len(values), (rounds, len(values)), generator=gen)].mean(1)
    return [float(means.quantile(0.025)), float(means.quantile(0.975))]


def mmd_interval(features: tuple, rounds: int = 200, seed: int = 0) -> list:
    """A seeded bootstrap 95% interval of MMD^2, resampling the samples and the held-out volumes."""
    fake, real, bandwidth = features
    gen = torch.Generator().manual_seed(seed)
    values = torch.tensor([mmd2(fake[torch.randint(len(fake), (len(fake),), generator=gen)],
                                real[torch.randint(len(real), (len(real),), generator=gen)], bandwidth) for _ in range(rounds)])
    return [float(values.quantile(0.025)), float(values.quantile(0.975))]


def intervals(m: Measured) -> dict:
    """Seeded bootstrap 95% intervals of each measure a run has (no reconstruction for a wgan_gp run)."""
    out = {"mmd2": mmd_interval(m.features), "pair_msssim_samples": interval(m.pairs)}
    return out | ({"recon_l1": interval(m.l1), "recon_ssim": interval(m.ssim)} if m.l1 is not None else {})


def evaluate_run(task: Task, cfg: Config, run: dict, input_path: Optional[str]) -> None:
    """samples/*.nii.gz (64, in the data's geometry), samples.png, reconstructions.png and
    alpha_metrics.json under the run's inference/."""
    from tasks.wgan_gp.measure import save_grid
    from tasks.wgan_gp.report import write_volumes

    if input_path:
        raise UsageError(f"--input: an alpha_wgan_gp run generates volumes and takes none; python inference.py "
                         f"resume={run['id']} writes samples, reconstructions and its measures")
    device = resolve_device(cfg.inference_device, "inference_device")
    loaded = load_run(run, device, task, cfg.weights)
    m = measure(loaded, device)
    figures, samples, real, recon = m.figures, m.samples, m.real, m.recon
    out = inference_dir(loaded)
    unit = lambda v: (v.clamp(-1, 1) + 1) / 2  # noqa: E731 - [-1, 1] -> [0, 1], as pictures and files show it
    write_volumes(unit(samples[:SAMPLES]), run, out / "samples")
    save_grid(unit(samples[:16]), out / "samples.png", columns=4, title=f"run {run['id']}: samples (mid-slices)")
    pairs = torch.stack([unit(real[:8]), unit(recon[:8])], 1).flatten(0, 1)  # input, reconstruction, input, ...
    save_grid(pairs, out / "reconstructions.png", columns=4, title="held-out volume | its reconstruction (E then G)")
    write_json(out / "alpha_metrics.json", figures)
    f = figures
    print(f"run {run['id']} ({cfg.weights} weights) on {device}, {f['held_out']} held-out volumes: recon L1 {f['recon_l1']:.4f} "
          f"(mean training volume: {f['mean_volume_l1']:.4f}), recon SSIM {f['recon_ssim']:.4f}, MMD^2 {f['mmd2']:.4f} "
          f"(untrained generator: {f['mmd2_untrained']:.4f}), "
          f"pairwise MS-SSIM of samples {f['pair_msssim_samples']:.4f} (of real volumes: {f['pair_msssim_real']:.4f})")
    print(f"wrote {out}/samples/ ({SAMPLES} .nii.gz), samples.png, reconstructions.png and alpha_metrics.json")


def compare(task: Task, cfg: Config, run_a: dict, run_b: dict, backends: tuple, input_path: Optional[str]) -> int:
    """Two runs measured on the same held-out volumes (B's validation split) and the same codes: each
    measure with a seeded bootstrap 95% interval, the reconstruction differences paired by volume,
    both sample grids side by side, the config diff. Either run may be a 3D wgan_gp run on the same
    data (the paper's ablation): it is measured on what it generates, having nothing to reconstruct."""
    from infer.report import config_diff, model_source_changed, write_report
    from tasks.wgan_gp import WganGp

    if input_path or set(backends) != {"torch"}:
        raise UsageError("--compare: alpha_wgan_gp runs are compared on their held-out volumes and fixed codes, by torch; "
                         "drop --input and @onnx")
    if (run_a["val_hash"], run_a["data"]["image_size"]) != (run_b["val_hash"], run_b["data"]["image_size"]):
        raise UsageError(f"--compare: runs {run_a['id']} and {run_b['id']} hold out other volumes (dataset, data_dir, "
                         "volume_size or split_seed differ); compare runs of the same data")
    device = resolve_device(cfg.inference_device, "inference_device")
    tasks = {task.name: task, "wgan_gp": WganGp()}  # task_of let in no other
    a, b = (load_run(run, device, tasks[run["task"]], cfg.weights) for run in (run_a, run_b))
    ms = {"A": measure(a, device), "B": measure(b, device)}
    both = ms["A"].l1 is not None and ms["B"].l1 is not None  # else one is a wgan_gp run: nothing to pair
    paired = {"recon_l1": ms["B"].l1 - ms["A"].l1, "recon_ssim": ms["B"].ssim - ms["A"].ssim} if both else {}
    report = {"a": run_a["id"], "b": run_b["id"], "task": task.name, "A": ms["A"].figures, "B": ms["B"].figures,
              "b_minus_a": {k: {"mean": float(v.mean()), "ci95": interval(v)} for k, v in paired.items()},
              "config_diff": config_diff(a.cfg, b.cfg), "model_source_changed": model_source_changed(run_a, run_b)}
    write_report(inference_dir(b) / f"compare_{run_a['id']}_vs_{run_b['id']}", markdown(report), report,
                 lambda path: plot_pair(ms, path))
    return 0


ROWS = (("recon_l1", "reconstruction L1 of held-out volumes", "lower"), ("recon_ssim", "their SSIM", "higher"),
        ("mmd2", "MMD^2, samples vs held-out", "lower"), ("pair_msssim_samples", "pairwise MS-SSIM of samples", "near real"))


def markdown(r: dict) -> str:
    from infer.report import config_lines, model_source_line

    a, b = r["A"], r["B"]

    def cell(f: dict, k: str) -> str:  # the figure and its interval; "-" where the run has none (no encoder)
        if f[k] is None:
            return "-"
        return f"{f[k]:.4f} [{f['ci95'][k][0]:.4f}, {f['ci95'][k][1]:.4f}]" if k in f.get("ci95", {}) else f"{f[k]:.4f}"

    lines = [f"# A/B: {r['a']} (A, {a['task']}) vs {r['b']} (B, {b['task']})", "",
             f"{b['held_out']} held-out volumes (the validation split of {r['b']}) and {b['samples']} samples from the same "
             "codes; 95% intervals by a seeded bootstrap.", "",
             "| measure | better | A | B |", "| --- | --- | --- | --- |",
             f"| training: iterations, seconds | - | {a['iterations']}, {a['train_seconds']} | {b['iterations']}, {b['train_seconds']} |"]
    lines += [f"| {label} | {better} | {cell(a, k)} | {cell(b, k)} |" for k, label, better in ROWS]
    lines += [f"| pairwise MS-SSIM of real volumes | - | {cell(a, 'pair_msssim_real')} | {cell(b, 'pair_msssim_real')} |",
              f"| L1 of the mean training volume | - | {cell(a, 'mean_volume_l1')} | {cell(b, 'mean_volume_l1')} |", ""]
    for k, d in r["b_minus_a"].items():
        lines.append(f"- {k}, B - A paired by volume: {d['mean']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]: "
                     f"{verdict(k, d['ci95'])}.")
    lines.append(f"- mmd2: {overlap(a['ci95']['mmd2'], b['ci95']['mmd2'])}.")
    lines.append(f"- pair_msssim_samples: {diversity(a)}; {diversity(b)}.")
    lines += ["", *config_lines(r["config_diff"]), "", model_source_line(r["model_source_changed"])]
    return "\n".join(lines) + "\n"


def diversity(f: dict) -> str:
    """Where a run's pairwise MS-SSIM interval lies against the real pairs' (above: less diverse than the
    data, collapse; below: more, as noise is)."""
    low, high = f["ci95"]["pair_msssim_samples"]
    real = f["pair_msssim_real"]
    where = "holds" if low <= real <= high else "is above" if low > real else "is below"
    return f"{f['run']}'s interval {where} the real pairs' {real:.4f} (distance {abs(f['pair_msssim_samples'] - real):.4f})"


def overlap(a: list, b: list) -> str:
    """What two runs' unpaired intervals say."""
    if a[1] < b[0]:
        return "A is lower (the intervals do not overlap)"
    if b[1] < a[0]:
        return "B is lower (the intervals do not overlap)"
    return "no difference shown (the intervals overlap)"


def verdict(key: str, ci: list) -> str:
    """What a paired interval of B - A says: lower L1 and higher SSIM are better."""
    if ci[0] <= 0 <= ci[1]:
        return "no difference shown (the interval holds 0)"
    return "B is better" if (ci[1] < 0) == (key == "recon_l1") else "A is better"


def plot_pair(ms: dict, path) -> None:
    """Both runs' samples from the same codes, as mid-slices, side by side."""
    from tasks.wgan_gp.measure import picture_grid
    from utils.plots import new_figure, save_figure

    fig = new_figure(12, 3, layout="tight")
    for ax, key in zip(fig.subplots(1, 2), ("A", "B")):
        ax.imshow(picture_grid((ms[key].samples[:8].clamp(-1, 1) + 1) / 2)[..., 0], cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_title(f"{key}: {ms[key].figures['run']}  MMD^2 {ms[key].figures['mmd2']:.3f}")
        ax.axis("off")
    save_figure(fig, path)
