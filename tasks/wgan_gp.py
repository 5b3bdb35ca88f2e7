"""The WGAN-GP task: a generator and a critic (model_dict's dcgan_generator and dcgan_critic by
default), the Wasserstein loss with the gradient penalty (Gulrajani et al., 2017), n_critic critic
steps per generator step. Everything specific to it is here: its models, its two optimizers and
schedules, its step and running sums, its validation metrics, what inference produces (a sample
grid, the Frechet distance in a classifier run's feature space, the class histogram) and what an
A/B report compares.

A critic step takes one batch of real images, so the Trainer's steps, accumulation, saving and
resuming are the same as a classifier's. The latent codes and the penalty's interpolation weights
of step s are drawn from a generator seeded by (seed, s): they do not depend on where a run was
cut, on num_workers or on the number of processes.
"""
import dataclasses
import hashlib
import sys

import torch
from torch import nn

from model import model_dict
from train import to_device
from train.build import build_ema, build_optimizer, build_scheduler, ema_update
from train.checkpoint import TrainingParts, zero
from utils import dist
from utils.config import Config
from utils.dataloader import Data, DataInfo
from utils.errors import UsageError

BETAS = (0.0, 0.9)  # Adam's betas in the WGAN-GP paper; momentum destabilises the critic
HALF = (0.5,)       # images are normalised to [-1, 1], the generator's tanh range


def stream(seed: int, step: int, name: str) -> torch.Generator:
    """A CPU generator seeded by (seed, step, name): the randomness of one step, from nothing else."""
    digest = hashlib.sha256(f"{seed}:{step}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def latent(cfg: Config, count: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(count, cfg.latent_dim, generator=gen)  # (count, latent_dim)


def my_share(t: torch.Tensor, micro: int, index: int) -> torch.Tensor:
    """This process's rows of micro-batch `index` of a global batch drawn whole: (world x accum) slices."""
    start = (index * dist.world_size() + dist.rank()) * micro
    return t[start:start + micro]


class GanPair(nn.Module):
    """The generator and the critic as one module: one state_dict ("generator.*", "critic.*"), so
    model.safetensors, state.pt, EMA and init_from treat the pair as one model."""

    def __init__(self, generator: nn.Module, critic: nn.Module):
        super().__init__()
        self.generator, self.critic = generator, critic


class WganGp:
    name = "wgan_gp"
    metrics = ("critic_loss", "gen_loss", "gp", "train_wdist", "val_wdist", "val_fd")
    modes = {"val_wdist": "min", "val_fd": "min"}  # lower is better for both

    def default_monitor(self, cfg: Config) -> str:
        return "val_fd" if cfg.fid_features else "val_wdist"

    # ------------------------------------------------------------ building
    def model_names(self, cfg: Config) -> list[str]:
        return [cfg.generator, cfg.critic]

    def resolve(self, cfg: Config) -> dict:
        """No augmentation; fp32 unless asked (the penalty differentiates twice); fid_features pinned to a run id."""
        out = {"augment": "none" if cfg.augment == "auto" else cfg.augment}
        if cfg.amp == "auto":
            out["amp"] = "none"
        if cfg.fid_features is not None:
            out["fid_features"] = find_classifier(cfg.fid_features, cfg)["id"]
        return out

    def prepare_data(self, cfg: Config, data: Data) -> Data:
        """The same images, normalised to [-1, 1]."""
        info = dataclasses.replace(data.info, mean=HALF * data.info.in_channels, std=HALF * data.info.in_channels)
        data.info = data.train.info = data.val.info = info
        return data

    def build_model(self, cfg: Config, info: DataInfo) -> nn.Module:
        try:
            generator = model_dict[cfg.generator](latent_dim=cfg.latent_dim, out_channels=info.in_channels, image_size=info.image_size)
            critic = model_dict[cfg.critic](in_channels=info.in_channels, image_size=info.image_size)
        except (TypeError, ValueError) as e:
            raise UsageError(f"generator/critic: {cfg.generator}, {cfg.critic} cannot be built for task wgan_gp ({e}); "
                             "use dcgan_generator and dcgan_critic, or classes with their arguments") from None
        return GanPair(generator, critic)

    def weights_meta(self, cfg: Config, info: DataInfo) -> dict:
        return {"task": "wgan_gp", "generator": cfg.generator, "critic": cfg.critic, "latent_dim": cfg.latent_dim,
                "data": dataclasses.asdict(info)}

    def build_parts(self, cfg: Config, model: nn.Module, steps_per_epoch: int, device: torch.device) -> TrainingParts:
        """Two optimizers and two schedules: the critic's steps every batch, the generator's every n_critic."""
        opt_g = build_optimizer(cfg, model.generator, cfg.lr, BETAS)
        opt_c = build_optimizer(cfg, model.critic, cfg.critic_lr or cfg.lr, BETAS)
        schedulers = {"generator": build_scheduler(cfg, opt_g, steps_per_epoch / cfg.n_critic),
                      "critic": build_scheduler(cfg, opt_c, steps_per_epoch)}
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
        return TrainingParts(model, {"generator": opt_g, "critic": opt_c}, schedulers, scaler, build_ema(cfg, model))

    def wrap(self, model: nn.Module, wrapper) -> "GanPair":
        """What the loop calls: each model wrapped (DDP, torch.compile) on its own, since each has its own forward."""
        return GanPair(wrapper(model.generator), wrapper(model.critic))

    def new_sums(self) -> dict:
        return {"loss_sum": zero(), "wdist_sum": zero(), "gp_sum": zero(), "gen_loss_sum": zero(), "gen_count": zero()}

    # ------------------------------------------------------------ the training step
    def forward_backward(self, loop, x: torch.Tensor, y: torch.Tensor, accum: int, sync: bool) -> None:
        """One critic micro-batch: real images, generated ones and their interpolations in one forward
        pass; loss = D(fake) - D(real) + gp_weight * (|grad D(interpolation)| - 1)^2."""
        cfg, pair, s = loop.cfg, loop.net, loop.state
        real = to_device(x, loop.device, loop.channels_last)  # (B, C, H, W) in [-1, 1]
        b, index = len(real), (s.count // len(real)) % accum   # which micro-batch of the step this is
        gen = stream(cfg.seed, s.global_step, "critic")
        z = my_share(latent(cfg, b * accum * dist.world_size(), gen), b, index).to(loop.device)
        eps = my_share(torch.rand(b * accum * dist.world_size(), 1, 1, 1, generator=gen), b, index).to(loop.device)
        with torch.autocast(loop.device.type, dtype=loop.amp_dtype, enabled=loop.amp_dtype is not None):
            with torch.no_grad():
                fake = pair.generator(z)
            mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
            scores = pair.critic(torch.cat([real, fake, mixed])).float()  # (3B,)
        d_real, d_fake, d_mixed = scores.split(b)
        grad, = torch.autograd.grad(d_mixed.sum(), mixed, create_graph=True)
        gp = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
        loss = d_fake.mean() - d_real.mean() + cfg.gp_weight * gp
        loop.parts.scaler.scale(loss / accum if accum > 1 else loss).backward()
        s.sums["loss_sum"] += loss.detach() * b
        s.sums["wdist_sum"] += (d_real.mean() - d_fake.mean()).detach() * b
        s.sums["gp_sum"] += gp.detach() * b
        s.count += b

    def optimizer_step(self, loop) -> None:
        """The critic's step; every n_critic-th, then the generator's, on a fresh global batch of codes."""
        p, cfg, s = loop.parts, loop.cfg, loop.state
        p.scaler.step(p.optimizers["critic"])
        p.scaler.update()
        p.optimizers["critic"].zero_grad(set_to_none=True)
        p.schedulers["critic"].step()
        if (s.global_step + 1) % cfg.n_critic == 0:
            self.generator_step(loop)

    def generator_step(self, loop) -> None:
        """loss = -D(G(z)), over the same global batch size as a critic step, in the same micro-batches."""
        p, cfg, s, pair = loop.parts, loop.cfg, loop.state, loop.net
        accum, micro = cfg.grad_accum_steps, cfg.batch_size // (cfg.grad_accum_steps * dist.world_size())
        codes = latent(cfg, cfg.batch_size, stream(cfg.seed, s.global_step, "generator"))
        for index in range(accum):
            z = my_share(codes, micro, index).to(loop.device)
            with torch.autocast(loop.device.type, dtype=loop.amp_dtype, enabled=loop.amp_dtype is not None):
                loss = -pair.critic(pair.generator(z)).float().mean()
            p.scaler.scale(loss / accum if accum > 1 else loss).backward()
            s.sums["gen_loss_sum"] += loss.detach() * micro
            s.sums["gen_count"] += micro
        p.scaler.step(p.optimizers["generator"])
        p.scaler.update()
        for optimizer in p.optimizers.values():  # the critic's gradients from this pass are not used
            optimizer.zero_grad(set_to_none=True)
        p.schedulers["generator"].step()
        if p.ema is not None:  # a moving average of the generator's weights gives smoother samples (as in ProGAN)
            g = (s.global_step + 1) // cfg.n_critic  # generator steps done
            ema_update(p.ema, p.model, min(cfg.ema_decay, (1 + g) / (10 + g)))

    def train_row(self, loop, count: int) -> dict:
        sums = {k: float(dist.all_reduce_sum(v.clone())) for k, v in loop.state.sums.items()}
        n = max(1, count)
        return {"critic_loss": sums["loss_sum"] / n, "gen_loss": sums["gen_loss_sum"] / max(1.0, sums["gen_count"]),
                "gp": sums["gp_sum"] / n, "train_wdist": sums["wdist_sum"] / n}

    @torch.no_grad()
    def validate(self, loop) -> dict:
        """val_wdist: the critic's estimate of the Wasserstein distance between the validation images
        and as many generated ones (codes from sample_seed); val_fd when fid_features names a classifier.
        Of the weight average when ema_decay is on."""
        cfg, pair = loop.cfg, loop.parts.eval_model()
        pair.eval()
        real_sum, fake_sum, count = zero().to(loop.device), zero().to(loop.device), zero().to(loop.device)
        codes = latent(cfg, len(loop.val_loader.dataset), stream(cfg.sample_seed, 0, "samples"))
        for x, _ in loop.val_loader:
            real = to_device(x, loop.device, loop.channels_last)
            z = codes[int(count): int(count) + len(real)].to(loop.device)
            real_sum += pair.critic(real).float().sum()
            fake_sum += pair.critic(pair.generator(z)).float().sum()
            count += len(real)
        real_sum, fake_sum, count = (dist.all_reduce_sum(t) for t in (real_sum, fake_sum, count))
        pair.train(pair is loop.parts.model)  # the average stays in eval mode
        row = {"val_wdist": float(real_sum - fake_sum) / max(1, int(count))}
        if cfg.fid_features:
            from infer.gan import frechet_for_training
            codes = latent(cfg, cfg.fid_samples, stream(cfg.sample_seed, 0, "samples"))
            row["val_fd"] = frechet_for_training(cfg, pair.generator, codes, loop.device)
        return row

    def summary(self, row: dict) -> str:
        return "  ".join(f"{k} {row[k]:.4f}" for k in ("val_fd", "val_wdist") if k in row)

    # ------------------------------------------------------------ inference (inference.py calls these)
    def infer(self, cfg: Config, run: dict, input_path) -> None:
        torch_only(cfg.backend, run)
        infer(cfg, run, input_path)

    def compare(self, cfg: Config, run_a: dict, run_b: dict, backends: tuple, input_path) -> int:
        for backend in backends:
            torch_only(backend, run_a)
        return compare(cfg, run_a, run_b, input_path)

    def export(self, cfg: Config, run: dict, formats: list[str]) -> int:
        raise UsageError(f"--export: run {run['id']} is a wgan_gp run; export (with its parity check on labelled samples) "
                         "is for classifiers")


def torch_only(backend: str, run: dict) -> None:
    if backend != "torch":
        raise UsageError(f"backend: a wgan_gp run ({run['id']}) is served by torch only; set backend=torch (drop @onnx)")


def find_classifier(spec: str, cfg: Config) -> dict:
    """The finished classifier run fid_features names, trained on the same data (set, size, channels)."""
    from utils.runstore import find_run

    def usable(run: dict) -> bool:
        return (run.get("status") == "finished" and run.get("task", "classify") == "classify"
                and (run.get("config") or {}).get("dataset") == cfg.dataset
                and (run.get("config") or {}).get("data_dir") == cfg.data_dir)

    def refuse(run: dict):
        return None if usable(run) else (f"is not a finished classifier run on {cfg.dataset}; train one with "
                                         f"python train.py task=classify dataset={cfg.dataset}")
    try:
        return find_run(spec, "fid_features", usable, f"of a classifier on {cfg.dataset}", refuse)
    except UsageError as e:
        raise UsageError(f"{e}. The Frechet distance needs a classifier trained on the same data: "
                         f"python train.py task=classify dataset={cfg.dataset}, then fid_features=latest") from None


# ---------------------------------------------------------------- inference and A/B
def measure(cfg: Config, run: dict, device: torch.device, classifier) -> dict:
    """A GAN run's numbers: fid_samples images from sample_seed's codes, their Frechet distance to the
    validation images in the classifier's feature space, and the classifier's confident class shares."""
    from infer.gan import class_shares, features_and_probs, frechet, generate, real_images
    from infer.runs import load_run

    loaded = load_run(run, device, cfg.weights, WganGp().build_model)
    codes = latent(loaded.cfg, cfg.fid_samples, stream(cfg.sample_seed, 0, "samples"))
    images = generate(loaded.model.generator, codes, device)
    fake, probs = features_and_probs(classifier, images, device)
    real = features_and_probs(classifier, real_images(loaded.cfg), device)[0]
    if min(len(real), len(fake)) <= real.shape[1]:
        print(f"note: {min(len(real), len(fake))} samples for {real.shape[1]} features: the Frechet distance of run "
              f"{run['id']} is rough; more validation images or fid_samples make it steadier", file=sys.stderr)
    return {"run": run["id"], "weights": cfg.weights, "fid_features": classifier.run["id"], "samples": len(codes),
            "sample_seed": cfg.sample_seed, "frechet_distance": frechet(real, fake),
            **class_shares(probs, classifier.info.class_names), "_images": images, "_real": real, "_fake": fake,
            "_loaded": loaded}


def classifier_for(cfg: Config, run: dict, device: torch.device):
    """The classifier run that measures a GAN run: fid_features from the command line or config,
    else the one the run trained with, else the latest on the same data."""
    from infer.gan import load_classifier
    from utils.config import saved_config

    spec = cfg.fid_features or run["config"].get("fid_features") or "latest"
    return load_classifier(find_classifier(spec, saved_config(dict(run["config"])))["id"], device)


def public(m: dict) -> dict:
    return {k: v for k, v in m.items() if not k.startswith("_")}


def share_line(m: dict) -> str:
    return "  ".join(f"{k} {100 * v:.1f}%" for k, v in m["per_class"].items())


def infer(cfg: Config, run: dict, input_path) -> None:
    """samples.png (an 8x8 grid from sample_seed's codes) and gan_metrics.json under the run's inference/."""
    from infer.gan import save_grid
    from infer.runs import inference_dir
    from train.device import resolve_device
    from utils.runstore import write_json

    if input_path:
        raise UsageError(f"--input: a wgan_gp run generates images and takes none; python inference.py resume={run['id']} "
                         "writes samples.png and measures the run")
    device = resolve_device(cfg.inference_device, "inference_device")
    m = measure(cfg, run, device, classifier_for(cfg, run, device))
    out = inference_dir(m["_loaded"])
    save_grid(m["_images"][:64], out / "samples.png", title=f"run {run['id']}, sample_seed {cfg.sample_seed}")
    write_json(out / "gan_metrics.json", public(m))
    print(f"run {run['id']} ({cfg.weights} weights) on {device}: Frechet distance {m['frechet_distance']:.4f} "
          f"({m['samples']} samples, features of classifier run {m['fid_features']})")
    print(f"  {100 * m['confident']:.1f}% of the samples classified with confidence >= 0.9; per class: {share_line(m)}")
    print(f"wrote {out}/samples.png and gan_metrics.json")


def compare(cfg: Config, run_a: dict, run_b: dict, input_path) -> int:
    """Two GAN runs measured by the same classifier on the same codes: both Frechet distances with
    bootstrap intervals, both class histograms, both grids side by side, the config diff."""
    from infer.gan import frechet_interval
    from infer.runs import inference_dir
    from train.device import resolve_device
    from utils.config import KEYS
    from utils.runstore import write_json, write_text

    if input_path:
        raise UsageError("--input: two wgan_gp runs are compared on generated samples; drop --input")
    device = resolve_device(cfg.inference_device, "inference_device")
    classifier = classifier_for(cfg, run_b, device)
    ms = {"A": measure(cfg, run_a, device, classifier), "B": measure(cfg, run_b, device, classifier)}
    for m in ms.values():
        m["ci95"] = frechet_interval(m["_real"], m["_fake"])
    ca, cb = run_a["config"], run_b["config"]
    report = {"a": run_a["id"], "b": run_b["id"], "task": "wgan_gp", "A": public(ms["A"]), "B": public(ms["B"]),
              "config_diff": {k: {"A": ca.get(k), "B": cb.get(k)} for k in KEYS if k != "resume" and ca.get(k) != cb.get(k)}}
    md = gan_markdown(report)
    print(md)
    stem = inference_dir(ms["B"]["_loaded"]) / f"compare_{run_a['id']}_vs_{run_b['id']}"
    write_text(stem.with_suffix(".md"), md)
    write_json(stem.with_suffix(".json"), report)
    plot_pair(ms, stem.with_suffix(".png"))
    print(f"wrote {stem}.md, .json and .png")
    return 0


def gan_markdown(r: dict) -> str:
    a, b = r["A"], r["B"]
    lines = [f"# A/B: {r['a']} (A) vs {r['b']} (B), wgan_gp", "",
             f"{a['samples']} generated samples each, from the same latent codes (sample_seed {a['sample_seed']}), measured "
             f"in the features of classifier run {a['fid_features']} against the validation images.", "",
             "| | A | B |", "| --- | --- | --- |",
             f"| Frechet distance (lower is better) | {a['frechet_distance']:.4f} | {b['frechet_distance']:.4f} |",
             f"| 95% bootstrap interval | [{a['ci95'][0]:.4f}, {a['ci95'][1]:.4f}] | [{b['ci95'][0]:.4f}, {b['ci95'][1]:.4f}] |",
             f"| classified with confidence >= 0.9 | {100 * a['confident']:.1f}% | {100 * b['confident']:.1f}% |", "",
             "| class | A | B |", "| --- | --- | --- |"]
    lines += [f"| {c} | {100 * a['per_class'][c]:.1f}% | {100 * b['per_class'][c]:.1f}% |" for c in a["per_class"]]
    diff = r["config_diff"]
    lines += ["", "Config keys that differ:", ""] + [f"- `{k}`: A {v['A']!r}, B {v['B']!r}" for k, v in diff.items()] \
        if diff else ["", "The two configs are the same (apart from resume)."]
    return "\n".join(lines) + "\n"


def plot_pair(ms: dict, path) -> None:
    """Both sample grids side by side (the same codes), and both class histograms."""
    import numpy as np
    from torchvision.utils import make_grid

    from utils.plots import new_figure, save_figure

    fig = new_figure(15, 5, layout="tight")
    axes = fig.subplots(1, 3)
    for ax, key in zip(axes, ("A", "B")):
        grid = make_grid(ms[key]["_images"][:64], nrow=8, padding=1, pad_value=1.0).permute(1, 2, 0).numpy()
        ax.imshow(grid if grid.shape[2] == 3 else grid[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{key}: {ms[key]['run']}  FD {ms[key]['frechet_distance']:.3f}")
        ax.axis("off")
    names = list(ms["A"]["per_class"])
    x = np.arange(len(names))
    for offset, key in ((-0.2, "A"), (0.2, "B")):
        axes[2].bar(x + offset, [100 * ms[key]["per_class"][n] for n in names], width=0.4, label=key)
    axes[2].set(xticks=x, title="confident (>= 0.9) samples per class, %")
    axes[2].set_xticklabels(names, rotation=90 if len(names) > 10 else 0)
    axes[2].legend()
    save_figure(fig, path)
