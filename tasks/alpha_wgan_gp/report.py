"""What inference.py does with an alpha-WGAN-GP run: seeded samples as NIfTI files in the data's
geometry, pictures of their mid-slices and of reconstructions beside their inputs, and the measures
(measure.py) with the references that say what they mean."""
from typing import Optional

import torch

from infer.runs import LoadedRun, checked_data, inference_dir, load_run
from tasks.alpha_wgan_gp.measure import bandwidth_of, mmd2, pairwise_ssim, pooled, ssim3d
from tasks.base import Task
from train.device import resolve_device
from train.phases import stream
from utils.config import Config
from utils.errors import UsageError
from utils.runstore import write_json

SAMPLES = 64  # volumes written as NIfTI, from the codes of stream(0, 0, "samples"): the same for every run of a code size


def volumes_of(split, batch: int = 16) -> torch.Tensor:
    """Every volume of a data split, normalised as in training (the split does it): (N, 1, S, S, S) in [-1, 1], CPU."""
    return torch.cat([split.__getitems__([(-1, i) for i in range(start, min(start + batch, len(split)))])[0]
                      for start in range(0, len(split), batch)]).float()


@torch.no_grad()
def through(net: torch.nn.Module, x: torch.Tensor, device: torch.device, batch: int = 16) -> torch.Tensor:
    return torch.cat([net(x[i:i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)])


def measure(loaded: LoadedRun, device: torch.device) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(figures, samples, held-out volumes, their reconstructions). The figures: reconstruction L1 and
    SSIM, with the L1 of predicting the mean training volume beside it; MMD^2 between samples and
    held-out volumes; pairwise SSIM of samples beside that of real pairs."""
    data = checked_data(loaded)
    real, train = volumes_of(data.val), volumes_of(data.train)
    nets = loaded.model
    codes = torch.randn(max(SAMPLES, len(real)), loaded.cfg.code_dim, generator=stream(0, 0, "samples"))
    samples = through(nets.generator, codes, device)
    recon = through(lambda x: nets.generator(nets.encoder(x)), real, device)
    features = pooled(real)
    figures = {"run": loaded.run["id"], "weights": loaded.weights, "held_out": len(real), "samples": len(samples),
               "recon_l1": float((recon - real).abs().mean()),
               "mean_volume_l1": float((train.mean(0, keepdim=True) - real).abs().mean()),
               "recon_ssim": float(ssim3d(recon, real).mean()),
               "mmd2": mmd2(pooled(samples[:len(real)]), features, bandwidth_of(features)),
               "mmd_kernel": "Gaussian on volumes average-pooled to 8^3, bandwidth the held-out volumes' median distance",
               "pair_ssim_samples": pairwise_ssim(samples), "pair_ssim_real": pairwise_ssim(real)}
    return figures, samples, real, recon


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
    figures, samples, real, recon = measure(loaded, device)
    out = inference_dir(loaded)
    unit = lambda v: (v.clamp(-1, 1) + 1) / 2  # noqa: E731 - [-1, 1] -> [0, 1], as pictures and files show it
    write_volumes(unit(samples[:SAMPLES]), run, out / "samples")
    save_grid(unit(samples[:16]), out / "samples.png", title=f"run {run['id']}: samples (mid-slices)")
    pairs = torch.stack([unit(real[:8]), unit(recon[:8])], 1).flatten(0, 1)  # input, reconstruction, input, ...
    save_grid(pairs, out / "reconstructions.png", columns=4, title="held-out volume | its reconstruction (E then G)")
    write_json(out / "alpha_metrics.json", figures)
    f = figures
    print(f"run {run['id']} ({cfg.weights} weights) on {device}, {f['held_out']} held-out volumes: recon L1 {f['recon_l1']:.4f} "
          f"(mean training volume: {f['mean_volume_l1']:.4f}), recon SSIM {f['recon_ssim']:.4f}, MMD^2 {f['mmd2']:.4f}, "
          f"pairwise SSIM of samples {f['pair_ssim_samples']:.4f} (of real volumes: {f['pair_ssim_real']:.4f})")
    print(f"wrote {out}/samples/ ({SAMPLES} .nii.gz), samples.png, reconstructions.png and alpha_metrics.json")
