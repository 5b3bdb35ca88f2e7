"""task=wgan_gp: what is its own (latent codes, what a run records, samples.png, Frechet distance,
class shares, the A/B report of two GAN runs). The guarantees every task shares (exact resume,
same sha256 twice, signals, NaN) are tests/test_tasks.py's."""
import json

import numpy as np
import pytest
import torch

from tasks.wgan_gp.config import WganGpConfig
from tasks.wgan_gp.measure import class_shares, frechet
from tasks.wgan_gp.training import latent, rows_of_micro_batch, stream
from utils.config import build_config

GAN = ("task=wgan_gp", "epochs=2", "lr=1e-3")


def test_latent_codes_are_a_function_of_seed_and_step():
    cfg = build_config({"task": "wgan_gp", "latent_dim": 8}, WganGpConfig)
    a = latent(cfg, 6, stream(0, 5, "critic"))
    assert torch.equal(a, latent(cfg, 6, stream(0, 5, "critic")))
    assert not torch.equal(a, latent(cfg, 6, stream(0, 6, "critic"))) and not torch.equal(a, latent(cfg, 6, stream(1, 5, "critic")))
    assert torch.equal(rows_of_micro_batch(torch.arange(12), 3, 1), torch.arange(3, 6))  # one process: micro-batch 1 of 3 rows


def test_frechet_distance_and_class_shares():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet(a, a) < 1e-6
    b = rng.normal(size=(4000, 3)) + np.array([2.0, 0, 0])  # the means differ by 2: distance ~4
    assert abs(frechet(a, b) - 4.0) < 0.3
    probs = np.array([[0.95, 0.05], [0.5, 0.5], [0.05, 0.95], [0.99, 0.01]])
    assert class_shares(probs, ["x", "y"]) == {"confident": 0.75, "per_class": {"x": 0.5, "y": 0.25}}


@pytest.fixture(scope="module")
def gan_store(tmp_path_factory):
    """A digits classifier, and a 2-epoch GAN measured by it at each epoch (val_fd)."""
    from tests.conftest import copy_project

    project = copy_project(tmp_path_factory.mktemp("gan") / "proj")
    classifier = project.train("epochs=3", "name=digits")
    gan = project.train(*GAN, "fid_features=name:digits")
    return project, classifier, gan


@pytest.mark.slow
def test_what_a_gan_run_records(gan_store):
    project, classifier, gan = gan_store
    info = project.info(gan)
    assert info["task"] == "wgan_gp" and info["config"]["fid_features"] == classifier  # name:digits, pinned to the id
    assert info["config"]["monitor"] == "val_fd" and info["best"]["mode"] == "min"
    header = (project.experiments / gan / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"critic_loss", "gen_loss", "gp", "train_wdist", "val_wdist", "val_fd"} <= set(header)
    assert set(info["metrics"]) == {"critic_loss", "gen_loss", "gp", "train_wdist", "val_wdist", "val_fd"}
    listing = project.run("train.py", "--list", "task=wgan_gp").stdout
    assert gan in listing and classifier not in listing


@pytest.mark.slow
def test_inference_and_ab_report_of_gan_runs(gan_store):
    project, classifier, gan = gan_store
    r = project.run("inference.py", f"resume={gan}", "inference_device=cpu", "fid_samples=300")
    assert r.returncode == 0, r.stderr
    out = project.experiments / gan / "inference"
    metrics = json.loads((out / "gan_metrics.json").read_text())
    assert metrics["fid_features"] == classifier and metrics["samples"] == 300 and metrics["frechet_distance"] > 0
    assert set(metrics["per_class"]) == {str(i) for i in range(10)} and (out / "samples.png").stat().st_size > 0
    first = (out / "samples.png").read_bytes()
    assert project.run("inference.py", f"resume={gan}", "inference_device=cpu", "fid_samples=300").returncode == 0
    assert json.loads((out / "gan_metrics.json").read_text())["frechet_distance"] == metrics["frechet_distance"]  # deterministic
    assert (out / "samples.png").read_bytes() == first

    r = project.run("inference.py", f"resume={gan}", "--input", str(project.root))
    assert r.returncode == 2 and "generates images and takes none" in r.stderr
    r = project.run("inference.py", f"resume={gan}", "fid_features=2026-01-01_00-00-00")
    assert r.returncode == 2 and "python train.py task=classify dataset=digits" in r.stderr, r.stderr
    r = project.run("inference.py", "--compare", gan, classifier)
    assert r.returncode == 2 and "compare runs of the same task" in r.stderr

    other = project.train("task=wgan_gp", "epochs=1", "seed=1", "lr=1e-3")
    r = project.run("inference.py", "--compare", gan, other, "inference_device=cpu", "fid_samples=300")
    assert r.returncode == 0, r.stderr
    report = json.loads((project.experiments / other / "inference" / f"compare_{gan}_vs_{other}.json").read_text())
    for side in ("A", "B"):
        lo, hi = report[side]["ci95"]
        assert lo <= report[side]["frechet_distance"] <= hi or lo < hi
    assert report["config_diff"]["seed"] == {"A": 0, "B": 1}
    assert (project.experiments / other / "inference" / f"compare_{gan}_vs_{other}.png").exists()


def test_monitor_must_be_a_metric_of_the_task():
    from tasks.classify import Classify
    from tasks.wgan_gp import WganGp
    from train.run import resolve_auto
    from utils.errors import UsageError

    model = torch.nn.Linear(2, 2)
    with pytest.raises(UsageError, match="monitor: 'val_acc' is not a validation metric of task wgan_gp"):
        resolve_auto(build_config({"task": "wgan_gp", "monitor": "val_acc"}, WganGpConfig), torch.device("cpu"), model, WganGp())
    with pytest.raises(UsageError, match="monitor: 'val_fd' is not a validation metric of task classify"):
        resolve_auto(build_config({"monitor": "val_fd"}, Classify.config), torch.device("cpu"), model, Classify())
    assert resolve_auto(build_config({"task": "wgan_gp"}, WganGpConfig), torch.device("cpu"), model, WganGp()).monitor == "val_wdist"
