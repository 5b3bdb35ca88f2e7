"""What a new user hits (issue "What a new user hits"): each test drives the public commands as a
user types them, and failed on the code before the fix."""
import hashlib
import json
import os
import stat

import pytest

from tests.conftest import ROOT, make_image_folder

pytestmark = pytest.mark.slow  # train.py and inference.py processes


def sha(project, run_id: str) -> str:
    return hashlib.sha256((project.experiments / run_id / "model.safetensors").read_bytes()).hexdigest()


# ---------------------------------------------------------------- 1. continuing a killed run continues it
def test_a_killed_run_continues_to_its_planned_epochs_bit_identical(project):
    whole = project.train("epochs=4")
    r = project.run("train.py", "epochs=4", env={"TEMPLATE_FAULT": "step:30"})  # SIGKILL in epoch 2 (22 steps an epoch)
    assert r.returncode == -9
    killed = sorted(set(project.run_ids()) - {whole})[0]
    listing = project.run("train.py", "--list").stdout
    assert f"continue it with python train.py resume={killed}" in listing and "after 1 of 4 epochs" in listing, listing
    child = project.train(f"resume={killed}")  # config.yaml says epochs: 10; the run planned 4
    assert project.info(child)["epochs"] == 4 and project.info(child)["epochs_done"] == 4
    assert sha(project, child) == sha(project, whole)
    log = (project.experiments / child / "train.log").read_text()
    assert "continuing to the planned 4 (the config file says 10" in log and "ignored" not in log, log


def test_zero_steps_left_is_exit_2_naming_the_epochs_to_type(project):
    r = project.run("train.py", "epochs=3", env={"TEMPLATE_FAULT": "step:30"})
    assert r.returncode == -9
    (killed,) = project.run_ids()
    before = project.snapshot()
    r = project.run("train.py", f"resume={killed}", "epochs=1")
    assert r.returncode == 2 and "has done 1 epoch of its planned 3" in r.stderr and "epochs=6" in r.stderr, r.stderr
    assert project.snapshot() == before


def test_ignored_lists_only_what_the_user_set(trained):
    project, run_id = trained
    r = project.run("train.py", f"resume={run_id}", "epochs=3", "lr=0.5")
    assert r.returncode == 0, r.stderr
    ignored = [line for line in r.stdout.splitlines() if "ignored" in line]
    assert len(ignored) == 1 and "lr=0.5" in ignored[0], r.stdout
    assert "augment" not in ignored[0] and "monitor" not in ignored[0] and "None" not in ignored[0]


# ---------------------------------------------------------------- 3. --input with a bad file
def test_a_bad_file_is_named_and_the_good_ones_are_predicted(trained, tmp_path):
    project, run_id = trained
    folder = make_image_folder(tmp_path / "imgs", per_class=2, size=8)
    (folder / "cat" / "broken.png").write_bytes(b"not a png at all")
    r = project.run("inference.py", f"resume={run_id}", "--input", str(folder))
    assert r.returncode == 1, r.stderr
    assert "broken.png" in r.stderr and "RuntimeError" not in r.stderr + r.stdout and "decode_image" not in r.stderr
    out = project.experiments / run_id / "inference"
    assert len((out / "predictions.csv").read_text().splitlines()) == 1 + 4
    assert "broken.png" in (out / "unreadable.csv").read_text()


def test_input_that_does_not_exist_says_which_run_it_would_have_used(trained):
    project, run_id = trained
    r = project.run("inference.py", f"resume={run_id}", "--input", "no/such/folder")
    assert r.returncode == 2 and "does not exist" in r.stderr and run_id in r.stderr, r.stderr


# ---------------------------------------------------------------- 4. the same problem, the same exit status
def test_an_unreadable_run_config_is_exit_2_everywhere(project):
    a, b = project.train("epochs=1"), project.train("epochs=1", "seed=1")
    config = project.experiments / a / "config.yaml"
    os.chmod(config, stat.S_IWUSR | stat.S_IRUSR)
    config.write_text("epochs: [unclosed\n")
    for command in (["train.py", f"resume={a}", "epochs=2"], ["inference.py", f"resume={a}"], ["inference.py", "--compare", a, b]):
        r = project.run(*command)
        assert r.returncode == 2 and "config" in r.stderr and a in r.stderr, (command, r.stderr)


# ---------------------------------------------------------------- 8. words
def test_words():
    from utils.errors import a_an, count
    from utils.stats import p_text

    assert (count(1, "epoch"), count(3, "epoch")) == ("1 epoch", "3 epochs")
    assert (a_an("alpha_wgan_gp"), a_an("wgan_gp")) == ("an alpha_wgan_gp", "a wgan_gp")
    assert (p_text(0.0), p_text(0.0321), p_text(float("nan"))) == ("p < 0.001", "p = 0.0321", "p not computable")
    sources = "".join(p.read_text() for d in ("groups", "tasks", "infer") for p in (ROOT / d).rglob("*.py"))
    assert "t-test test" not in sources and "{test} test" not in sources and "['test']} test" not in sources


def test_one_epoch_is_said_as_one_epoch_and_per_class_accuracy_has_a_header(project):
    r = project.run("train.py", "epochs=1")
    assert r.returncode == 0 and ", 1 epoch" in r.stdout and "1 epochs" not in r.stdout, r.stdout
    r = project.run("inference.py")
    assert r.returncode == 0 and "accuracy" in r.stdout.split("recorded at training")[1].splitlines()[1], r.stdout


# ---------------------------------------------------------------- 9. each backend keeps its own files
def test_onnxruntime_keeps_the_eager_backends_files(trained):
    pytest.importorskip("onnxruntime")
    project, run_id = trained
    assert project.run("inference.py", f"resume={run_id}").returncode == 0
    assert project.run("inference.py", "--export", "onnx", f"resume={run_id}").returncode == 0
    r = project.run("inference.py", f"resume={run_id}", "backend=onnxruntime")
    assert r.returncode == 0, r.stderr
    out = project.experiments / run_id / "inference"
    assert json.loads((out / "val_metrics.json").read_text())["backend"] == "torch"
    assert json.loads((out / "onnxruntime" / "val_metrics.json").read_text())["backend"] == "onnxruntime"


# ---------------------------------------------------------------- 10. install
def test_readme_gives_the_cpu_only_install_line():
    readme = (ROOT / "README.md").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in readme and "without an NVIDIA GPU" in readme



# ---------------------------------------------------------------- 6. --list that tells runs apart
@pytest.mark.groups
def test_two_groups_that_differ_in_epochs_list_differently(project):
    for epochs in ("1", "2"):
        assert project.run("train.py", "seeds=0,1", f"epochs={epochs}").returncode == 0
    rows = [line for line in project.run("train.py", "--list").stdout.splitlines() if "members" in line]
    assert len(rows) == 2 and "epochs=1" in rows[0] and "epochs=2" in rows[1], rows


def test_list_names_each_runs_metric_fits_the_terminal_and_explains_the_marker(project):
    project.train("epochs=1")
    project.train("task=wgan_gp", "epochs=1", "name=a_rather_long_name_for_a_gan_run_that_would_widen_the_table")
    r = project.run("train.py", "--list", env={"COLUMNS": "120"})
    lines = r.stdout.splitlines()
    assert lines[0].split()[5] == "metric" and "val_acc=" in r.stdout and "val_wdist=" in r.stdout, r.stdout
    assert max(map(len, lines)) <= 120 and "a_rather_long_name" not in r.stdout, r.stdout
    assert any(line.startswith("*") for line in lines[1:3]) and "* the run checkpoints/ shows" in r.stdout


# ---------------------------------------------------------------- 5. progress when output is not a terminal
def test_progress_lines_when_stdout_is_a_file(project):
    r = project.run("train.py", "epochs=1", env={"TEMPLATE_PROGRESS_SECONDS": "0"})  # stdout: a file, as under nohup
    lines = [line for line in r.stdout.splitlines() if line.startswith("epoch 1/1: step ")]
    assert r.returncode == 0 and len(lines) >= 10, r.stdout
    assert "steps/s" in lines[0] and "left in the epoch" in lines[0]
    run_id = project.run_ids()[-1]
    assert "steps/s" not in (project.experiments / run_id / "train.log").read_text()


# ---------------------------------------------------------------- 2. groups survive their members' deletion
def group_ids(project) -> list[str]:
    return sorted(p.name for p in (project.experiments / "groups").iterdir() if p.is_dir())


@pytest.mark.groups
def test_a_group_that_loses_a_member_says_so_refuses_its_ab_and_retrains_it(project):
    assert project.run("train.py", "seeds=0,1", "epochs=1").returncode == 0
    assert project.run("train.py", "seeds=0,1", "epochs=2").returncode == 0
    g, other = group_ids(project)
    member = next(r for r in project.run_ids() if (project.info(r).get("group") or {}) == {"id": g, "seed": 1, "fold": None})
    r = project.run("train.py", "--delete", member)
    assert r.returncode == 0 and f"of group {g}, which is now incomplete" in r.stdout, r.stdout
    row = next(line for line in project.run("train.py", "--list").stdout.splitlines() if line.strip().startswith(g))
    assert "1/2 members" in row and "(stale)" in row and "incomplete" in row, row
    r = project.run("inference.py", "--compare", g, other)
    assert r.returncode == 2 and "missing its member seed 1" in r.stderr, r.stderr
    assert project.run("train.py", "seeds=0,1", "epochs=1").returncode == 0  # the same command retrains the member
    assert group_ids(project) == [g, other]
    row = next(line for line in project.run("train.py", "--list").stdout.splitlines() if line.strip().startswith(g))
    assert "2/2 members" in row and "stale" not in row and "finished" in row, row


@pytest.mark.groups
def test_delete_and_restore_a_whole_group(project):
    assert project.run("train.py", "seeds=0,1", "epochs=1").returncode == 0
    (g,) = group_ids(project)
    runs = project.run_ids()
    before = {k: v for k, v in project.snapshot().items() if "index.html" not in k and "checkpoints" not in k}
    r = project.run("train.py", "--delete", g)
    assert r.returncode == 0 and project.run_ids() == [] and group_ids(project) == [], r.stdout + r.stderr
    assert g not in project.run("train.py", "--list").stdout
    r = project.run("train.py", "--restore", g)
    assert r.returncode == 0 and project.run_ids() == runs and group_ids(project) == [g], r.stdout + r.stderr
    after = {k: v for k, v in project.snapshot().items() if "index.html" not in k and "checkpoints" not in k}
    assert after == before


@pytest.mark.sweeps
def test_delete_and_restore_a_whole_sweep(project):
    pytest.importorskip("optuna")
    (project.root / "sweep.yaml").write_text("trials: 2\nfixed: {epochs: 1}\nspace: {lr: {log_uniform: [1.0e-3, 1.0e-2]}}\n")
    assert project.run("train.py", "--sweep", "sweep.yaml").returncode == 0
    (sweep,) = [p.name for p in (project.experiments / "sweeps").iterdir()]
    runs = project.run_ids()
    assert len(runs) == 2
    assert project.run("train.py", "--delete", sweep).returncode == 0 and project.run_ids() == []
    assert project.run("train.py", "--restore", sweep).returncode == 0 and project.run_ids() == runs
    assert project.run("inference.py", "--sweep", sweep).returncode == 0


def test_inference_in_a_log_says_it_is_still_working(trained):
    project, run_id = trained
    r = project.run("inference.py", f"resume={run_id}", env={"TEMPLATE_PROGRESS_SECONDS": "0.05"})
    assert r.returncode == 0 and "inference.py: still working" in r.stdout, r.stdout
