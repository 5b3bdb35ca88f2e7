"""train.py and inference.py end to end, as subprocesses in a temporary copy of the project."""
import json
import os
import re

import pytest
import torch

from store.runs import sha256_file
from tasks import configs
from tests.conftest import make_image_folder
from utils.config import defaults_of, every_key

pytestmark = pytest.mark.slow  # each test starts train.py / inference.py processes


def test_defaults_reach_97_percent(project):
    """The README's promise: the shipped defaults train small_cnn on digits to >= 97% on CPU."""
    run_id = project.train("device=cpu")
    info = project.info(run_id)
    assert info["status"] == "finished" and info["epochs_done"] == 10
    assert info["metrics"]["val_acc"] >= 0.97, info["metrics"]


def test_train_twice_then_infer_with_either(project):
    first = project.train("epochs=2")
    folder = project.experiments / first
    names = {"config.yaml", "run.json", "state.pt", "model.safetensors", "metrics.csv", "train.log", "curves.png"}
    assert names <= {p.name for p in folder.iterdir()} and not (folder / "lock").exists()
    info = project.info(first)
    assert info["status"] == "finished" and info["parent"] is None
    assert info["weights"]["sha256"] == sha256_file(folder / "model.safetensors")
    assert info["weights"]["size"] == (folder / "model.safetensors").stat().st_size
    for key in ("class_names", "val_hash", "threads", "device", "versions", "model_source_sha256", "start_utc", "end_utc"):
        assert info[key], key
    saved = (folder / "config.yaml").read_text()
    assert [line.split(":")[0] for line in saved.splitlines() if not line.startswith("#")] == list(defaults_of(configs["classify"]))
    assert "epochs: 2" in saved
    assert len((folder / "metrics.csv").read_text().splitlines()) == 3
    assert (folder / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("model.safetensors", "config.yaml", "run.json"):  # the view: links to the run's files
        assert os.path.samefile(folder / name, project.checkpoints / name)
    before = {n: (folder / n).read_bytes() for n in names}

    second = project.train("epochs=1", "seed=1")
    assert second != first
    assert {n: (folder / n).read_bytes() for n in names} == before, "the first run is untouched"
    assert json.loads((project.checkpoints / "run.json").read_text())["id"] == second
    assert os.path.samefile(project.experiments / second / "model.safetensors", project.checkpoints / "model.safetensors")

    r = project.run("inference.py", f"resume={first}", "inference_device=cpu")
    assert r.returncode == 0, r.stderr
    metrics = json.loads((folder / "inference" / "val_metrics.json").read_text())
    assert metrics["val_acc"] == info["metrics"]["val_acc"], "inference reproduces the recorded accuracy exactly"
    assert metrics["run"] == first and set(metrics["per_class_acc"]) == set(info["class_names"])
    predictions = (folder / "inference" / "val_predictions.csv").read_text().splitlines()
    assert predictions[0] == "sample,target,predicted,confidence,correct" and len(predictions) == 1 + info["val_size"]
    assert {n: (folder / n).read_bytes() for n in names} == before, "inference writes only under inference/"

    r = project.run("inference.py", "inference_device=cpu")  # resume: null -> the latest finished run
    assert r.returncode == 0 and f"run {second}" in r.stdout
    r = project.run("inference.py", "resume=latest", "inference_device=cpu")
    assert r.returncode == 0 and f"run {second}" in r.stdout

    # The HH:MM:SS form of an id works too.
    colon = re.sub(r"_(\d\d)-(\d\d)-(\d\d)", r"_\1:\2:\3", first)
    r = project.run("inference.py", f"resume={colon}", "inference_device=cpu")
    assert r.returncode == 0 and f"run {first}" in r.stdout

    listing = project.run("train.py", "--list").stdout
    assert first in listing and second in listing and re.search(rf"^\*\s+{second}", listing, re.M)


def test_predict_on_image_files(project, tmp_path):
    root = make_image_folder(tmp_path / "imgs", per_class=4, size=16)
    run_id = project.train("epochs=1", "dataset=image_folder", f"data_dir={root}", "image_size=16", "batch_size=4")
    assert project.info(run_id)["class_names"] == ["cat", "dog"]
    r = project.run("inference.py", "--input", str(root / "dog"), "inference_device=cpu")
    assert r.returncode == 0, r.stderr
    rows = (project.experiments / run_id / "inference" / "predictions.csv").read_text().splitlines()
    assert rows[0] == "path,predicted,confidence" and len(rows) == 5
    assert all(row.split(",")[1] in ("cat", "dog") and 0 < float(row.split(",")[2]) <= 1 for row in rows[1:])
    r = project.run("inference.py", "--input", str(root / "cat" / "0.png"), "inference_device=cpu")
    assert r.returncode == 0 and "0.png" in r.stdout


def test_help_lists_every_key(project):
    for script in ("train.py", "inference.py"):
        r = project.run(script, "--help")
        assert r.returncode == 0
        assert all(re.search(rf"^  {k} ", r.stdout, re.M) for k in every_key(configs))


BAD_INPUTS = [
    (["epoch=3"], "did you mean 'epochs'"),
    (["epochs=many"], "epochs: expected an integer"),
    (["lr=-0.1"], "lr: must be greater than 0"),
    (["base_model=resnet"], "base_model: 'resnet' is not in model_dict"),
    (["dataset=image_folder", "data_dir=/nonexistent/folder"], "data_dir: '/nonexistent/folder' is not a folder"),
    (["resume=../../etc/passwd"], "resume: '../../etc/passwd' is not a run id"),
    (["resume=2020-01-01_00-00-00"], "resume: no run '2020-01-01_00-00-00'"),
    (["device=cuda"], "device: cuda requested but this machine has 0 CUDA device(s)"),
    (["amp=fp16", "device=cpu"], "amp: fp16 needs a CUDA device"),
    (["batch_size=30", "grad_accum_steps=4"], "batch_size: 30 is not a multiple of grad_accum_steps=4"),
    (["batch_size=5000"], "batch_size: 5000 is larger than the 1438 training samples"),
    (["--bogus"], "unrecognized arguments"),
    (["augment=flipflop"], "augment: 'flipflop' is not one of"),
    (["mixup_alpha=-0.5"], "mixup_alpha: must be at least 0, got -0.5"),
    (["monitor=val_f1"], "monitor: 'val_f1' is not a validation metric of task classify; use auto or one of val_acc | val_loss"),
    (["dataset=mnist"], "data_dir: dataset mnist needs data_dir"),
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line_and_changes_nothing(trained, args, message):
    project, _ = trained
    before = project.snapshot()
    r = project.run("train.py", *args)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert project.snapshot() == before


def bad_data_folders(root):
    """(args, message) for data that cannot be read: missing, truncated, pickle-only."""
    from tests.data.test_named_datasets import make_idx_set

    empty, truncated, pickled = root / "empty", root / "truncated", root / "pickled" / "cifar-10-batches-py"
    empty.mkdir(parents=True)
    make_idx_set(truncated, gz=True)
    cut = truncated / "t10k-images-idx3-ubyte.gz"
    cut.write_bytes(cut.read_bytes()[:40])
    pickled.mkdir(parents=True)
    (pickled / "data_batch_1").write_bytes(b"not read")
    return [(["dataset=fashion_mnist", f"data_dir={empty}"], "missing"),
            (["dataset=mnist", f"data_dir={truncated}"], "t10k-images-idx3-ubyte.gz"),
            (["dataset=cifar10", f"data_dir={pickled.parent}"], "binary version")]


def test_bad_data_files_exit_2_with_one_line_and_change_nothing(trained, tmp_path):
    project, _ = trained
    before = project.snapshot()
    for args, message in bad_data_folders(tmp_path):
        r = project.run("train.py", *args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr
    assert project.snapshot() == before


def test_inference_bad_input(trained):
    project, _ = trained
    before = project.snapshot()
    for args, message in ((["resume=bad/../id"], "is not a run id"), (["inference_device=cuda:3"], "inference_device: cuda:3"),
                          (["--input", "/nonexistent.png"], "--input: '/nonexistent.png' does not exist"),
                          (["--compare"], "expected at least one argument")):
        r = project.run("inference.py", *args)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert project.snapshot() == before


def test_debug_shows_the_traceback(trained):
    project, _ = trained
    r = project.run("train.py", "epochs=0", env={"TEMPLATE_DEBUG": "1"})
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_tampered_weights_are_refused(project):
    run_id = project.train("epochs=1")
    weights = project.experiments / run_id / "model.safetensors"
    os.chmod(weights, 0o644)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    os.unlink(weights)  # not writing into the file: checkpoints/ shares it
    weights.write_bytes(bytes(data))
    r = project.run("inference.py", f"resume={run_id}", "inference_device=cpu")
    assert r.returncode == 1 and "does not match run.json" in r.stderr and "Traceback" not in r.stderr
    os.unlink(weights)
    weights.write_bytes(bytes(data[:1000]))  # cut short: --list shows it damaged, inference says what differs
    assert "damaged" in project.run("train.py", "--list").stdout
    r = project.run("inference.py", f"resume={run_id}", "inference_device=cpu")
    assert r.returncode == 1 and "is 1000 bytes, run.json records" in r.stderr and "restore it" in r.stderr, r.stderr


def test_nan_loss_fails_the_run(project):
    r = project.run("train.py", "epochs=2", "lr=1e30", "optimizer=sgd")
    assert r.returncode == 1 and "loss became nan" in r.stderr, r.stderr
    (run_id,) = project.run_ids()
    info = project.info(run_id)
    assert info["status"] == "failed" and "weights" not in info
    assert not (project.experiments / run_id / "model.safetensors").exists()
    assert "failed" in (project.experiments / run_id / "train.log").read_text()
    r = project.run("inference.py", "inference_device=cpu")
    assert r.returncode == 2 and "no run that finished" in r.stderr


def test_best_weights_early_stopping_and_continuing(project):
    """A model that cannot learn (lr 1e-12) stops after `patience` epochs without improvement; its
    best epoch is the first; inference with weights=best reproduces that epoch's accuracy."""
    args = ("base_model=mlp", "lr=1e-12", "scheduler=none", "warmup_epochs=0", "early_stop_patience=2")
    run_id = project.train("epochs=6", *args)
    info = project.info(run_id)
    assert info["status"] == "finished" and info["epochs_done"] == 3 and info["best"]["epoch"] == 1
    assert "val_acc did not improve for 2 epochs" in info["stopped_early"]["reason"]
    best = project.experiments / run_id / "best.safetensors"
    assert info["best"]["weights"]["sha256"] == sha256_file(best)
    r = project.run("inference.py", "weights=best", "inference_device=cpu")
    assert r.returncode == 0 and f"val_acc {info['best']['metrics']['val_acc']:.4f}" in r.stdout, r.stdout + r.stderr
    child = project.train(f"resume={run_id}", "epochs=8")
    assert project.info(child)["epochs_done"] == 4 and project.info(child)["best"] == info["best"]
