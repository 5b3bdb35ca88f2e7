"""The 3D alpha-WGAN-GP's networks and losses, with each fix of the reference code tested:
the code critic learns from the encoder's codes, the penalty's norm is per sample, one step of
each optimizer per iteration, and the critics' normalisation is a setting."""
import json

import numpy as np
import pytest
import torch

from model.alpha_gan import AlphaCritic, AlphaEncoder, AlphaGenerator, CodeCritic
from tasks.alpha_wgan_gp.config import AlphaWganGpConfig
from tasks.alpha_wgan_gp.training import AlphaGan, code_critic_loss, critic_loss, penalty
from train.phases import Batch
from utils.errors import UsageError

SIZE, CODE = 8, 16


def networks(norm: str = "none", size: int = SIZE) -> AlphaGan:
    torch.manual_seed(0)
    return AlphaGan(AlphaEncoder(1, size, CODE, 4), AlphaGenerator(CODE, 1, size, 4), AlphaCritic(1, size, 4, norm),
                    CodeCritic(CODE, 32, norm))


def batch(seed: int, size: int = SIZE) -> Batch:
    x = torch.rand(4, 1, size, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return Batch(x, None, 4, 0, 0)


@pytest.mark.parametrize("size, width", [(8, 4), (32, 16), (64, 64)])
def test_the_networks_are_sized_from_the_volume(size, width):
    """At 64^3 and width 64 the critic's stages are the paper's 64-128-256-512."""
    critic = AlphaCritic(1, size, width)
    convs = [m.out_channels for m in critic.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs[:-1] == [width * 2 ** i for i in range(len(convs) - 1)] and convs[-1] == 1
    if size == 64:
        assert convs[:-1] == [64, 128, 256, 512]
        return  # the paper's size: too heavy to run here
    z = torch.randn(2, CODE)
    volume = AlphaGenerator(CODE, 1, size, width)(z)
    assert volume.shape == (2, 1, size, size, size) and volume.abs().max() <= 1
    assert AlphaEncoder(1, size, CODE, width)(volume).shape == (2, CODE) and critic(volume).shape == (2,)


@pytest.mark.parametrize("size", [12, [8, 8, 16], 4])
def test_a_volume_size_the_networks_cannot_take_is_a_usage_error(size):
    from data.loading import DataInfo
    from tasks.alpha_wgan_gp.training import build_networks

    info = DataInfo([], 1, tuple(size) if isinstance(size, list) else (size,) * 3, (0.5,), (0.5,))
    with pytest.raises(UsageError, match="volume_size"):
        build_networks(AlphaWganGpConfig(), info)


def test_the_code_critic_learns_from_the_encoders_codes():
    """CD's weights get a non-zero gradient from the term CD(E(x)): with the same prior codes and
    other volumes x, CD's gradient changes (the reference's frozen-CD term gave none); E gets none."""
    cfg = AlphaWganGpConfig(gp_weight=0.0, code_dim=CODE)
    grads = []
    for seed in (1, 2):
        nets = networks()
        loss, _ = code_critic_loss(cfg, nets, batch(seed))
        loss.backward()
        assert all(p.grad is None for p in nets.encoder.parameters())
        grads.append(torch.cat([p.grad.flatten() for p in nets.code_critic.parameters()]))
    assert grads[0].abs().sum() > 0 and not torch.allclose(grads[0], grads[1])


def test_the_penalty_takes_the_norm_over_each_whole_sample():
    """A linear critic f(x) = <w, x> has gradient w for every sample: the penalty is (|w| - 1)^2,
    whatever the interpolation; a norm per voxel would give mean((|w_v| - 1)^2) instead."""
    w = torch.randn(1, 1, 4, 4, 4, generator=torch.Generator().manual_seed(0))

    class Linear(torch.nn.Module):
        def forward(self, x):
            return (x * w).flatten(1).sum(1)

    real, fake, eps = torch.randn(3, 1, 4, 4, 4), torch.randn(3, 1, 4, 4, 4), torch.rand(3, 1, 1, 1, 1)
    expected = (w.norm() - 1) ** 2
    assert torch.allclose(penalty(Linear(), real, fake, eps), expected)
    assert not torch.allclose(((w.abs() - 1) ** 2).mean(), expected)


@pytest.mark.parametrize("norm", ["none", "layer", "batch"])
def test_the_critics_normalisation_is_a_setting(norm):
    nets = networks(norm, 16)  # 16^3: two stages, the second normalised
    kinds = {type(m).__name__ for m in nets.critic.modules()} | {type(m).__name__ for m in nets.code_critic.modules()}
    assert ({"none": set(), "layer": {"GroupNorm", "LayerNorm"}, "batch": {"BatchNorm3d", "BatchNorm1d"}}[norm]
            <= kinds) and (norm == "batch" or not kinds & {"BatchNorm3d", "BatchNorm1d"})
    loss, metrics = critic_loss(AlphaWganGpConfig(code_dim=CODE), nets, batch(1, 16))
    loss.backward()
    assert torch.isfinite(loss) and set(metrics) == {"d_loss", "d_gp", "train_wdist"}
    assert all(p.grad is None for p in nets.generator.parameters())  # the fakes are made without a graph


@pytest.mark.slow
def test_each_optimizer_steps_once_per_iteration(project):
    """state.pt after one epoch: every parameter of D, CD, E and G has taken exactly one Adam step per
    iteration (the reference stepped G twice), and run.json names the four networks; inference.py
    writes 64 NIfTI samples in the data's geometry, the pictures and the measures; --compare of two
    runs gives each measure with its interval."""
    nib = pytest.importorskip("nibabel")
    run_id = project.train("task=alpha_wgan_gp", "volume_size=8", "batch_size=43", "epochs=1")
    info = project.info(run_id)
    assert info["model"] == "alpha_encoder+alpha_generator+alpha_critic+code_critic" and info["steps_done"] == 22
    state = torch.load(project.experiments / run_id / "state.pt", weights_only=True)
    for name in ("critic", "code_critic", "autoencoder"):
        steps = {int(s["step"]) for s in state["optimizers"][name]["state"].values()}
        assert steps == {22}, (name, steps)
    r = project.run("train.py", "task=alpha_wgan_gp", "dataset=digits")
    assert r.returncode == 2 and "dataset" in r.stderr
    r = project.run("inference.py", f"resume={run_id}", "inference_device=cpu")
    assert r.returncode == 0 and "recon L1" in r.stdout, r.stderr
    out = project.experiments / run_id / "inference"
    figures = json.loads((out / "alpha_metrics.json").read_text())
    assert {"recon_l1", "mean_volume_l1", "recon_ssim", "mmd2", "mmd2_untrained", "pair_msssim_samples",
            "pair_msssim_real"} <= set(figures)
    assert set(figures["ci95"]) == {"recon_l1", "recon_ssim", "mmd2", "pair_msssim_samples"}
    assert all(low <= figures[k] <= high for k, (low, high) in figures["ci95"].items() if k != "mmd2")
    samples = sorted((out / "samples").glob("*.nii.gz"))
    assert len(samples) == 64 and all((out / f).read_bytes()[:4] == b"\x89PNG" for f in ("samples.png", "reconstructions.png"))
    sample = nib.load(str(samples[0]))
    assert sample.shape == (8, 8, 8) and np.allclose(sample.affine, info["data"]["geometry"]["affine"])
    other = project.train("task=alpha_wgan_gp", "volume_size=8", "batch_size=43", "epochs=1", "lr=1e-4")
    r = project.run("inference.py", "--compare", run_id, other, "inference_device=cpu")
    assert r.returncode == 0 and "recon_l1, B - A paired by volume" in r.stdout and "| MMD^2" in r.stdout, r.stderr
    assert (project.experiments / other / "inference" / f"compare_{run_id}_vs_{other}.json").exists()
    # the paper's ablation: a 3D wgan_gp run on the same volumes, measured on what it generates
    gan = project.train("task=wgan_gp", "dataset=mni152", "volume_size=8", "batch_size=43", "epochs=1")
    r = project.run("inference.py", "--compare", gan, run_id, "inference_device=cpu")
    assert r.returncode == 0 and f"{gan} (A, wgan_gp) vs {run_id} (B, alpha_wgan_gp)" in r.stdout, r.stderr
    report = json.loads((project.experiments / run_id / "inference" / f"compare_{gan}_vs_{run_id}.json").read_text())
    assert report["A"]["recon_l1"] is None and report["B"]["recon_l1"] > 0 and report["b_minus_a"] == {}
    assert report["A"]["mmd2"] != report["B"]["mmd2"] and set(report["A"]["ci95"]) == {"mmd2", "pair_msssim_samples"}
    wider = project.train("task=wgan_gp", "dataset=mni152", "volume_size=16", "batch_size=43", "epochs=1")
    r = project.run("inference.py", "--compare", wider, run_id, "inference_device=cpu")
    assert r.returncode == 2 and "hold out other volumes" in r.stderr


def test_ssim_in_3d_is_pytorch_msssims():
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    from tasks.alpha_wgan_gp.measure import ssim3d

    a = torch.rand(3, 1, 24, 20, 22, generator=torch.Generator().manual_seed(0)) * 2 - 1
    b = (a + 0.3 * torch.randn(a.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    assert torch.allclose(ssim3d(a, b), pytorch_msssim.ssim(a, b, data_range=2, size_average=False), atol=1e-5)
    assert torch.allclose(ssim3d(a, a), torch.ones(3))


def test_ms_ssim_in_3d_is_pytorch_msssims():
    """Three scales at a side pytorch-msssim accepts (more than 16 window widths: window 3, side 40),
    with the weights renormalised as ms_ssim3d does; then the scales it picks for 32^3 and 64^3."""
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    from tasks.alpha_wgan_gp.measure import MS_WEIGHTS, ms_ssim3d, scales_of

    a = torch.rand(2, 1, 40, 40, 40, generator=torch.Generator().manual_seed(0)) * 2 - 1
    b = (a + 0.5 * torch.randn(a.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    weights = [w / sum(MS_WEIGHTS[:3]) for w in MS_WEIGHTS[:3]]
    theirs = pytorch_msssim.ms_ssim(a.double(), b.double(), data_range=2, win_size=3, weights=weights, size_average=False)
    assert torch.allclose(ms_ssim3d(a, b, size=3, levels=3), theirs.float(), atol=1e-5)
    assert torch.allclose(ms_ssim3d(a, a), torch.ones(2)) and (scales_of(32), scales_of(64), scales_of(8)) == (3, 4, 1)


def test_the_mmd_is_unbiased_and_pairwise_msssim_sees_collapse():
    """MMD^2 of two samples of one distribution averages ~0 (the unbiased estimator goes below 0 as
    often as above); of a shifted one it is clearly positive. A collapsed generator (one volume
    repeated) has pairwise SSIM 1; independent noise volumes near 0."""
    from tasks.alpha_wgan_gp.measure import bandwidth_of, mmd2, pairwise_msssim

    gen = torch.Generator().manual_seed(0)
    real = torch.randn(200, 16, generator=gen, dtype=torch.float64)
    bandwidth = bandwidth_of(real)
    same = [mmd2(torch.randn(60, 16, generator=gen, dtype=torch.float64), real, bandwidth) for _ in range(20)]
    shifted = mmd2(torch.randn(60, 16, generator=gen, dtype=torch.float64) + 0.5, real, bandwidth)
    assert abs(sum(same) / len(same)) < 0.005 and min(same) < 0 and shifted > 10 * max(abs(v) for v in same)
    one = torch.rand(1, 1, 12, 12, 12, generator=gen).repeat(6, 1, 1, 1, 1)
    assert float(pairwise_msssim(one).mean()) == pytest.approx(1.0)
    assert float(pairwise_msssim(torch.rand(6, 1, 12, 12, 12, generator=gen) * 2 - 1).mean()) < 0.1


def test_runs_of_two_tasks_compare_only_where_a_task_names_the_other():
    """alpha_wgan_gp takes a wgan_gp run (the paper's ablation), in either order; other pairs are refused."""
    from tasks import task_of
    from utils.errors import UsageError

    alpha, gan, clf = ({"id": name, "task": name} for name in ("alpha_wgan_gp", "wgan_gp", "classify"))
    assert task_of(gan, alpha).name == task_of(alpha, gan).name == "alpha_wgan_gp" and task_of(gan, gan).name == "wgan_gp"
    with pytest.raises(UsageError, match="compare runs of the same task"):
        task_of(clf, alpha)
    with pytest.raises(UsageError, match="a task this version does not have"):
        task_of(alpha, {"id": "x", "task": "nope"})
