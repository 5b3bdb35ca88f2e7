"""The 3D alpha-WGAN-GP: the template against hand-written loops, each measured in one run.

    python bench/alpha_gan.py --only step      the Trainer's iteration / a hand-written one (~3 min)
    python bench/alpha_gan.py --only recipe    the defaults against BASELINES.md's plain loop (~2 x 15 min)

1. step: `task=alpha_wgan_gp` on dataset mni152 at 16^3 (width 16, batch 16, fp32): the Trainer's
   epoch against a hand-written loop over the same batches driving the same four networks and
   three optimizers with the same losses; the ratio of medians over interleaved epochs.
2. recipe: `python train.py task=alpha_wgan_gp` (the defaults, nothing else typed) in a temporary
   copy of the project, then the plain loop that ../shared/BASELINES.md describes (the paper's
   networks at a quarter width: critic and encoder 32-64-128, generator 128-64-32, code critic 256,
   code 128; batch 8, Adam 2e-4 (0.5, 0.9), left-right flips, the fixed losses) for the same wall
   time on the same 32^3 training patches. Both are measured by tasks/alpha_wgan_gp/report.py's
   measures on the same held-out patches and codes.
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

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench import interleaved, project_copy, record, trainer_epoch  # noqa: E402
from data.loading import EpochBatchSampler, EvalBatchSampler, build_data, info_from_run, make_loader  # noqa: E402
from model.alpha_gan import AlphaCritic, AlphaEncoder, AlphaGenerator, CodeCritic  # noqa: E402
from tasks.alpha_wgan_gp import AlphaWganGp  # noqa: E402
from tasks.alpha_wgan_gp.config import AlphaWganGpConfig  # noqa: E402
from tasks.alpha_wgan_gp.training import AlphaGan  # noqa: E402
from train.checkpoint import TrainState  # noqa: E402
from train.device import set_determinism  # noqa: E402
from train.run import resolve_auto  # noqa: E402
from train.trainer import Trainer  # noqa: E402


# ---------------------------------------------------------------- the hand-written iteration
def gp(critic, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    eps = torch.rand(len(real), *[1] * (real.ndim - 1))
    mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def plain_iteration(nets: AlphaGan, opts: dict, x: torch.Tensor, code_dim: int, l1_weight: float = 10.0,
                    gp_weight: float = 10.0) -> None:
    """One iteration as a user writes it by hand: D, then CD, then E and G (the fixed losses)."""
    e, g, d, cd = nets.encoder, nets.generator, nets.critic, nets.code_critic
    b = len(x)
    with torch.no_grad():
        recon, fake = g(e(x)), g(torch.randn(b, code_dim))
    d_real, d_recon, d_fake = d(torch.cat([x, recon, fake])).split(b)
    loss = d_recon.mean() + d_fake.mean() - 2 * d_real.mean() + gp_weight * (gp(d, x, recon) + gp(d, x, fake))
    loss.backward()
    opts["critic"].step()
    for o in opts.values():
        o.zero_grad(set_to_none=True)
    with torch.no_grad():
        codes = e(x)
    prior = torch.randn(b, code_dim)
    s_codes, s_prior = cd(torch.cat([codes, prior])).split(b)
    loss = s_codes.mean() - s_prior.mean() + gp_weight * gp(cd, prior, codes)
    loss.backward()
    opts["code_critic"].step()
    for o in opts.values():
        o.zero_grad(set_to_none=True)
    codes = e(x)
    recon, fake = g(codes), g(torch.randn(b, code_dim))
    d_recon, d_fake = d(torch.cat([recon, fake])).split(b)
    loss = l1_weight * F.l1_loss(recon, x) - cd(codes).mean() - d_recon.mean() - d_fake.mean()
    loss.backward()
    opts["autoencoder"].step()
    for o in opts.values():
        o.zero_grad(set_to_none=True)


def bench_step(reps: int) -> None:
    task = AlphaWganGp()
    cfg = AlphaWganGpConfig(volume_size=[16] * 3, batch_size=16, epochs=10)
    set_determinism(cfg.seed, cfg.deterministic, cfg.compile, torch.device("cpu"))
    data = task.prepare_data(cfg, build_data(cfg))
    model = task.build_model(cfg, data.info)
    cfg = resolve_auto(cfg, torch.device("cpu"), model, task)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last_3d)
    sampler = EpochBatchSampler(len(data.train), cfg.batch_size, cfg.seed)
    loader = make_loader(data.train, sampler, 0, False)
    val_loader = make_loader(data.val, EvalBatchSampler(len(data.val), cfg.batch_size), 0, False)
    parts = task.build_parts(cfg, model, sampler.steps_per_epoch(), torch.device("cpu"))
    trainer = Trainer(cfg=cfg, phases=task.phases(cfg), validate_epoch=lambda *a: task.validate_epoch(cfg, *a), mode="min",
                      parts=parts, net=model, train_loader=loader, val_loader=val_loader, device=torch.device("cpu"),
                      run=None, state=TrainState(), weights_meta={})

    def plain_epoch() -> None:
        sampler.set_epoch(1)
        model.train()
        for x, _ in loader:
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            plain_iteration(model, parts.optimizers, x, cfg.code_dim, cfg.l1_weight, cfg.gp_weight)

    t = interleaved({"template": lambda: trainer_epoch(trainer), "plain": plain_epoch}, reps)
    steps = sampler.steps_per_epoch()
    record("alpha-WGAN-GP iterations/s, template / hand-written (16^3, width 16, fp32)", steps / t["template"],
           steps / t["plain"], t["plain"] / t["template"], ">= 0.95", "it/s")


# ---------------------------------------------------------------- the recipe against the plain loop
def template_run(tmp: Path) -> tuple[str, float, Path]:
    """python train.py task=alpha_wgan_gp in a copy of the project: (run id, wall seconds, the copy)."""
    copy = project_copy(tmp)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "train.py", "task=alpha_wgan_gp", "progress=false"], cwd=copy, check=True)
    seconds = time.perf_counter() - t0
    (run_id,) = [p.name for p in (copy / "experiments").iterdir() if p.is_dir()]
    return run_id, seconds, copy


def plain_run(seconds: float) -> tuple[AlphaGan, int]:
    """BASELINES.md's plain loop on the template's 32^3 training patches (mni152), for `seconds`: the
    networks and the iterations they took."""
    torch.manual_seed(0)
    cfg = AlphaWganGpConfig()
    data = AlphaWganGp().prepare_data(cfg, build_data(cfg))
    x_all = torch.cat([data.train.__getitems__([(-1, i)])[0] for i in range(len(data.train))])  # (N, 1, 32^3) in [-1, 1]
    code = 128
    nets = AlphaGan(AlphaEncoder(1, 32, code, 32), AlphaGenerator(code, 1, 32, 32), AlphaCritic(1, 32, 32, "none"),
                    CodeCritic(code, 256, "none"))
    groups = {"critic": nets.critic, "code_critic": nets.code_critic,
              "autoencoder": torch.nn.ModuleList([nets.encoder, nets.generator])}
    opts = {k: torch.optim.Adam(m.parameters(), lr=2e-4, betas=(0.5, 0.9)) for k, m in groups.items()}
    nets.train()
    t0, iterations = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        for idx in torch.randperm(len(x_all)).split(8):
            if len(idx) < 8 or time.perf_counter() - t0 >= seconds:
                continue
            x = x_all[idx]
            flip = torch.rand(len(x)) < 0.5
            x = torch.where(flip[:, None, None, None, None], x.flip(2), x)  # left-right (axis 0 in RAS)
            plain_iteration(nets, opts, x, code)
            iterations += 1
    print(f"plain loop: {iterations} iterations in {time.perf_counter() - t0:.0f} s", flush=True)
    return nets.eval(), iterations


def bench_recipe() -> None:
    from infer.runs import LoadedRun
    from tasks.alpha_wgan_gp.report import measure

    with tempfile.TemporaryDirectory() as tmp:
        run_id, seconds, copy = template_run(Path(tmp))
        subprocess.run([sys.executable, "inference.py", "inference_device=cpu"], cwd=copy, check=True)
        run = json.loads((copy / "experiments" / run_id / "run.json").read_text())
        ours = json.loads((copy / "experiments" / run_id / "inference" / "alpha_metrics.json").read_text())
        plain, iterations = plain_run(seconds)
        plain_record = run | {"steps_done": iterations, "start_utc": None}  # its held-out patches are the run's
        loaded = LoadedRun(run=plain_record, task=AlphaWganGp(), cfg=AlphaWganGpConfig(code_dim=128, width=32, augment="volume_flip"),
                           info=info_from_run(run), model=plain,
                           folder=Path(tmp), weights="plain loop")  # the same held-out patches (run's val_hash) and codes
        theirs = measure(loaded, torch.device("cpu")).figures
    print(f"template: {run['steps_done']} iterations in {seconds:.0f} s")
    for key, better in (("recon_l1", "lower"), ("mmd2", "lower"), ("pair_msssim_samples", "lower, near real")):
        record(f"alpha recipe, {key} ({better}), template / plain loop, {seconds:.0f} s each", ours[key], theirs[key],
               ours[key] / theirs[key], "beat the plain loop", "")
        print(f"  95% intervals: template {ours['ci95'][key]}, plain loop {theirs['ci95'][key]}")
    print(json.dumps({"template": ours, "plain": theirs}, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="step")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    if "step" in args.only:
        bench_step(args.reps)
    if "recipe" in args.only:
        bench_recipe()


if __name__ == "__main__":
    main()
