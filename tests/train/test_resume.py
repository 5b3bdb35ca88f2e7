"""Exact resume: interrupted anywhere and continued equals never interrupted, bit for bit.

The defaults keep a cosine schedule, dropout and random augmentation active throughout.
"""
import pickle
import signal
import time

import pytest
import torch

from tests.conftest import copy_project

pytestmark = pytest.mark.slow  # each test starts train.py / inference.py processes

EPOCHS = "epochs=4"


def sha(project, run_id):
    return project.info(run_id)["weights"]["sha256"]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """One uninterrupted 4-epoch run; its weights' sha256 is what every continuation must give."""
    project = copy_project(tmp_path_factory.mktemp("base") / "proj")
    run_id = project.train(EPOCHS)
    return project, sha(project, run_id)


def continue_run(project, run_id, *args):
    child = project.train(f"resume={run_id}", *args)
    info = project.info(child)
    assert info["parent"]["id"] == run_id and info["status"] == "finished"
    return child


def test_same_config_same_weights_other_seed_other_weights(baseline):
    project, expected = baseline
    assert sha(project, project.train(EPOCHS)) == expected
    assert sha(project, project.train(EPOCHS, "seed=1")) != expected


@pytest.mark.parametrize("workers", [0])  # num_workers=2: tests/test_tasks.py kills mid-epoch with both
def test_sigkill_after_epoch_2_then_resume(project, baseline, workers):
    """Killed in epoch 3 (22 steps an epoch): continues from the end-of-epoch-2 state."""
    r = project.run("train.py", EPOCHS, f"num_workers={workers}", env={"TEMPLATE_FAULT": "step:47"})
    assert r.returncode == -signal.SIGKILL
    (killed,) = project.run_ids()
    assert project.info(killed)["state"] == {"epoch": 2, "step": 0}
    assert "killed" in project.run("train.py", "--list").stdout
    child = continue_run(project, killed, EPOCHS, f"num_workers={workers}")
    assert sha(project, child) == baseline[1]
    rows = (project.experiments / child / "metrics.csv").read_text().splitlines()
    parent_rows = (project.experiments / killed / "metrics.csv").read_text().splitlines()
    assert rows[:3] == parent_rows and [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]


def test_sigkill_mid_epoch_with_step_checkpoints(project, baseline):
    r = project.run("train.py", EPOCHS, "checkpoint_every_steps=5", env={"TEMPLATE_FAULT": "step:33"})
    assert r.returncode == -signal.SIGKILL
    (killed,) = project.run_ids()
    assert project.info(killed)["state"] == {"epoch": 1, "step": 8}, "saved at global step 30, mid-epoch 2"
    child = continue_run(project, killed, EPOCHS, "checkpoint_every_steps=5")
    assert project.info(child)["parent"] == {"id": killed, "epoch": 1, "step": 8}
    assert sha(project, child) == baseline[1]


def test_killed_before_first_save_continues_from_step_0(project, baseline):
    r = project.run("train.py", EPOCHS, env={"TEMPLATE_FAULT": "started"})
    assert r.returncode == -signal.SIGKILL
    (killed,) = project.run_ids()
    assert not (project.experiments / killed / "state.pt").exists()
    assert sha(project, continue_run(project, killed, EPOCHS)) == baseline[1]


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130)])  # SIGTERM (143): tests/test_tasks.py, for every task
def test_signal_saves_and_continues_exactly(project, baseline, signum, code):
    proc = project.popen("train.py", EPOCHS)
    deadline = time.time() + 120
    while not list(project.experiments.glob("*/metrics.csv")) and time.time() < deadline:
        time.sleep(0.05)  # interrupt somewhere after epoch 1, wherever that falls
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    (run_id,) = project.run_ids()
    info = project.info(run_id)
    assert info["status"] == "interrupted"
    assert f"python train.py resume={run_id}" in out
    assert sha(project, continue_run(project, run_id, EPOCHS)) == baseline[1]


def test_finished_run_needs_more_epochs(project):
    parent = project.train("epochs=1")
    r = project.run("train.py", f"resume={parent}", "epochs=1")
    assert r.returncode == 2 and "set epochs above 1" in r.stderr
    child = continue_run(project, parent, "epochs=2", "lr=0.5", "num_workers=1")
    log = (project.experiments / child / "train.log").read_text()
    assert "ignored, the experiment comes from the parent: lr=0.5" in log and "applied: epochs=2" in log
    assert "lr: 0.003" in (project.experiments / child / "config.yaml").read_text()
    assert project.info(child)["epochs_done"] == 2
    r = project.run("train.py", "resume=latest", "epochs=3")
    assert r.returncode == 0 and f"continuing run {child}" in r.stdout


def test_init_from_starts_a_new_run_from_old_weights(project):
    old = project.train("epochs=2")
    new = project.train(f"init_from={old}", "epochs=1", "lr=0.0005")
    info = project.info(new)
    assert info["parent"] is None and info["init_from"] == old
    first_loss = float((project.experiments / new / "metrics.csv").read_text().splitlines()[1].split(",")[1])
    fresh_loss = float((project.experiments / old / "metrics.csv").read_text().splitlines()[1].split(",")[1])
    assert first_loss < fresh_loss / 2, "started from trained weights"
    assert "lr: 0.0005" in (project.experiments / new / "config.yaml").read_text()


def test_state_pt_holds_everything_and_loads_safely(baseline):
    project, _ = baseline
    run_id = project.run_ids()[0]
    state = torch.load(project.experiments / run_id / "state.pt", weights_only=True)
    for key in ("format", "model", "optimizers", "schedulers", "scaler", "epoch", "step", "global_step", "sums", "history", "rng"):
        assert key in state, key
    assert set(state["rng"][0]) == {"python", "numpy", "torch", "cuda"}
    assert state["epoch"] == 4 and state["step"] == 0 and len(state["history"]) == 4


def test_malicious_state_pt_does_not_run(project, tmp_path):
    r = project.run("train.py", "epochs=2", env={"TEMPLATE_FAULT": "step:25"})
    (run_id,) = project.run_ids()
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return os.system, (f"touch {marker}",)
    state = project.experiments / run_id / "state.pt"
    state.unlink()
    state.write_bytes(pickle.dumps(Evil()))
    r = project.run("train.py", f"resume={run_id}", "epochs=2")
    assert r.returncode == 1 and "cannot be loaded safely" in r.stderr, r.stderr
    assert not marker.exists()
    assert project.run_ids() == [run_id], "nothing was created"


RECIPE = ("epochs=3", "augment=crop_flip", "random_erasing=0.5", "mixup_alpha=0.4", "cutmix_alpha=1.0",
          "label_smoothing=0.1", "warmup_epochs=1", "grad_clip=1.0", "ema_decay=0.9")


def test_kill_mid_epoch_with_the_whole_recipe_continues_bit_identical(project):
    """Augmentation, mixing, warmup, clipping and the EMA are all part of what state.pt restores."""
    full = project.train(*RECIPE)
    r = project.run("train.py", *RECIPE, "checkpoint_every_steps=5", env={"TEMPLATE_FAULT": "step:30"})
    assert r.returncode == -signal.SIGKILL
    killed = project.run_ids()[-1]
    assert project.info(killed)["state"] == {"epoch": 1, "step": 3}, "saved at global step 25, mid-epoch 2"
    child = continue_run(project, killed, *RECIPE)
    assert sha(project, child) == sha(project, full)
    assert project.info(child)["best"] == project.info(full)["best"]
    header = (project.experiments / child / "metrics.csv").read_text().splitlines()[0]
    assert "grad_norm" in header.split(",")
