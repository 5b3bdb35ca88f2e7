"""torchrun with DistributedDataParallel (gloo on CPU), mixed precision, accumulation, compile."""
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # each test starts train.py / inference.py processes

# A model without BatchNorm or dropout, no augmentation, fp32 (bf16 would round the differences up):
# then the split of a global batch
# across processes or micro-batches changes nothing but the order of float sums.
EXACT = ("device=cpu", "base_model=mlp", "dropout=0", "augment=none", "amp=none", "epochs=2")


def torchrun(project, nproc, *args):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "train.py", *args]
    from tests.conftest import _env
    return subprocess.run(cmd, cwd=project.root, env=_env({"OMP_NUM_THREADS": "1"}), capture_output=True, text=True, timeout=600)


def weights(project, run_id):
    return load_file(project.experiments / run_id / "model.safetensors")


def max_diff(a, b):
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_two_processes_match_one(project):
    single = project.train(*EXACT, env={"OMP_NUM_THREADS": "1"})
    before = set(project.run_ids())
    r = torchrun(project, 2, *EXACT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (ddp,) = set(project.run_ids()) - before
    info = project.info(ddp)
    assert info["status"] == "finished" and info["world_size"] == 2
    assert max_diff(weights(project, single), weights(project, ddp)) < 1e-5
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in weights(project, ddp))
    assert abs(info["metrics"]["val_acc"] - project.info(single)["metrics"]["val_acc"]) < 0.01
    # inference on the DDP run, and its continuation under torchrun
    r = project.run("inference.py", f"resume={ddp}", "inference_device=cpu")
    assert r.returncode == 0, r.stderr
    r = torchrun(project, 2, f"resume={ddp}", "epochs=3")
    assert r.returncode == 0, r.stderr[-3000:]
    (child,) = set(project.run_ids()) - before - {ddp}
    assert project.info(child)["parent"]["id"] == ddp and project.info(child)["epochs_done"] == 3


def test_batch_size_must_divide_across_processes(project):
    r = torchrun(project, 2, "device=cpu", "batch_size=63")
    assert r.returncode != 0
    assert "batch_size: 63 is not divisible by 2 processes" in r.stderr
    assert project.run_ids() == []


def test_accumulation_matches_one_big_step(project):
    big = project.train(*EXACT, "batch_size=64")
    small = project.train(*EXACT, "batch_size=64", "grad_accum_steps=4")
    assert max_diff(weights(project, big), weights(project, small)) < 1e-5


def test_bf16_on_cpu(project):
    run_id = project.train("device=cpu", "amp=bf16", "epochs=2")
    info = project.info(run_id)
    assert info["status"] == "finished" and info["metrics"]["val_acc"] > 0.2  # chance is 0.1
    r = project.run("inference.py", f"resume={run_id}", "inference_device=cpu")
    assert r.returncode == 0 and f"{info['metrics']['val_acc']:.4f}" in r.stdout


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile on CPU needs a C compiler (cc/gcc), which this machine lacks")
def test_compile_smoke(project):
    run_id = project.train("device=cpu", "base_model=mlp", "compile=true", "channels_last=true", "epochs=1")
    info = project.info(run_id)
    assert info["status"] == "finished"
    assert not any(k.startswith("_orig_mod.") for k in weights(project, run_id))


def test_gan_trains_and_continues_under_two_processes(project):
    """task=wgan_gp under DDP: each of the generator and the critic wrapped on its own; the penalty's
    double backward goes through the critic's DDP; the run continues under torchrun."""
    r = torchrun(project, 2, "device=cpu", "task=wgan_gp", "epochs=1", "lr=1e-3")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (run_id,) = project.run_ids()
    info = project.info(run_id)
    assert info["status"] == "finished" and info["world_size"] == 2 and info["task"] == "wgan_gp"
    assert not any(k.startswith(("module.", "_orig_mod.")) or ".module." in k for k in weights(project, run_id))
    r = torchrun(project, 2, f"resume={run_id}", "epochs=2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert project.info(project.run_ids()[-1])["epochs_done"] == 2


def test_alpha_gan_trains_and_continues_under_two_processes(project):
    """task=alpha_wgan_gp under DDP: its four networks each wrapped on its own, three phases, both
    penalties' double backward through DDP; the run continues under torchrun."""
    small = ("task=alpha_wgan_gp", "volume_size=8", "batch_size=44")
    r = torchrun(project, 2, "device=cpu", *small, "epochs=1")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (run_id,) = project.run_ids()
    assert project.info(run_id)["world_size"] == 2
    r = torchrun(project, 2, f"resume={run_id}", "epochs=2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert project.info(project.run_ids()[-1])["epochs_done"] == 2


def test_segment_trains_and_continues_under_two_processes(project):
    """task=segment under DDP: each process takes half of every batch of patches and half of the
    validation cases, whose Dice sums are pooled; the run continues under torchrun."""
    small = ("task=segment", "patch_size=16", "patches_per_epoch=8")
    r = torchrun(project, 2, "device=cpu", *small, "epochs=1")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (run_id,) = project.run_ids()
    info = project.info(run_id)
    assert info["world_size"] == 2 and 0 < info["metrics"]["val_dice"] <= 1
    r = torchrun(project, 2, f"resume={run_id}", "epochs=2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert project.info(project.run_ids()[-1])["epochs_done"] == 2


def test_batchnorm_statistics_pool_every_process(project):
    """small_cnn (BatchNorm) under two processes: the statistics recomputed before validation are the
    exact statistics over both processes' micro-batches (each normalised by its own batch, as in
    training), the same on each process: recomputed here from both ranks' batches, they equal the
    saved ones, and inference.py in one process measures exactly the val_acc the run recorded."""
    import torch

    from data.loading import EpochBatchSampler, build_data
    from store.upgrade import saved_config
    from tasks import configs, task_dict
    from train.norm_stats import batchnorms, recompute_batchnorm
    from train.phases import Batch

    r = torchrun(project, 2, "device=cpu", "epochs=1", "amp=none")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (run_id,) = project.run_ids()
    info = project.info(run_id)
    r = project.run("inference.py", f"resume={run_id}", "inference_device=cpu")
    assert r.returncode == 0 and f"{info['metrics']['val_acc']:.4f}" in r.stdout, r.stdout + r.stderr
    cfg = saved_config(info["config"], configs, info["format"])
    task, data = task_dict[cfg.task](), build_data(cfg)
    data.train.augment = task.augmentation(cfg, data.info)
    saved = weights(project, run_id)
    model = task.build_model(cfg, data.info)
    model.load_state_dict(saved)
    batches = []
    for rank in (0, 1):
        sampler = EpochBatchSampler(len(data.train), cfg.batch_size, cfg.seed, rank, 2)
        sampler.set_epoch(0, 0, sampler.steps_per_epoch())  # 1,437 samples < bn_stats_samples: the whole epoch
        batches += [Batch(data.train.__getitems__(keys)[0], None, len(keys), 0, 0) for keys in sampler]
    with torch.no_grad():
        recompute_batchnorm(model, batches, lambda m, b: m(b.x))
    assert len(batchnorms(model)) > 0
    for name, buffer in model.state_dict().items():
        if "running" in name:
            assert torch.allclose(buffer, saved[name], rtol=1e-4, atol=1e-5), name
