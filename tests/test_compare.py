"""A/B comparison, the run listing and pictures."""
import importlib.util
import json
import re

import numpy as np
import pytest
from PIL import Image

from tasks.classify.compare import bootstrap_diff, mcnemar
from tests.conftest import copy_project, make_image_folder

pytestmark = pytest.mark.slow  # each test starts train.py / inference.py processes


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    project = copy_project(tmp_path_factory.mktemp("ab") / "proj")
    return project, project.train("epochs=1"), project.train("epochs=2", "seed=1")


def report_of(project, a, b):
    stem = project.experiments / b / "inference" / f"compare_{a}_vs_{b}"
    return json.loads(stem.with_suffix(".json").read_text()), stem


def test_compare_two_real_runs(two_runs):
    project, a, b = two_runs
    r = project.run("inference.py", "--compare", a, b, "inference_device=cpu")
    assert r.returncode == 0, r.stderr
    report, stem = report_of(project, a, b)
    assert report["samples"] == project.info(b)["val_size"]
    assert report["accuracy"]["B"] == project.info(b)["metrics"]["val_acc"], "B on its own validation split"
    d = report["disagreements"]
    assert d["count"] == d["A_right"] + d["B_right"] + d["neither"]
    assert report["mcnemar"]["only_a_right"] + report["mcnemar"]["only_b_right"] <= d["count"]
    lo, hi = report["accuracy_diff_B_minus_A"]["ci95"]
    assert lo <= report["accuracy_diff_B_minus_A"]["value"] <= hi
    assert set(report["config_diff"]) == {"epochs", "seed"} and report["model_source_changed"] is False
    assert len(report["per_class"]) == 10 and report["params"]["A"] == report["params"]["B"] > 0
    md = stem.with_suffix(".md").read_text()
    assert "McNemar" in md and "| accuracy |" in md and md.splitlines()[0] == f"# A/B: {a} (A) vs {b} (B)"
    assert "| accuracy |" in r.stdout
    with Image.open(stem.with_suffix(".png")) as im:
        im.verify()
    # B defaults to the run resume selects (null: the latest finished run, here b).
    r = project.run("inference.py", "--compare", a, "inference_device=cpu")
    assert r.returncode == 0 and f"vs {b} (B)" in r.stdout


def test_a_run_against_itself_is_refused(two_runs):
    """Written out, or because A is also the run resume selects (B's default): exit 2, nothing written,
    and the message names the command to write instead."""
    project, a, b = two_runs
    before = project.snapshot()
    for args in ((a, a), (b,)):
        r = project.run("inference.py", "--compare", *args, "inference_device=cpu")
        assert r.returncode == 2 and "with itself" in r.stderr and "--compare " in r.stderr, r.stderr
    assert f"--compare {a} {b}" in r.stderr, "the other finished run is suggested"
    assert project.snapshot() == before


def test_index_links_a_new_report(two_runs):
    project, a, b = two_runs
    r = project.run("inference.py", "--compare", a, b, "inference_device=cpu")
    assert r.returncode == 0, r.stderr
    assert f"compare_{a}_vs_{b}.md" in (project.experiments / "index.html").read_text()


def test_bad_ids_and_overlapping_samples_exit_2(two_runs):
    project, a, b = two_runs
    r = project.run("inference.py", "--compare", "2020-01-01_00-00-00", b)
    assert r.returncode == 2 and "no run '2020-01-01_00-00-00'" in r.stderr
    r = project.run("inference.py", "--compare", "../x", b)
    assert r.returncode == 2 and "is not a run id" in r.stderr
    other_split = project.train("epochs=1", "split_seed=1")
    before = project.snapshot()
    r = project.run("inference.py", "--compare", other_split, b, "inference_device=cpu")
    assert r.returncode == 2 and "are in run" in r.stderr and "training data" in r.stderr, r.stderr
    assert project.snapshot() == before


def test_compare_on_a_labelled_folder(project, tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=4, size=16, split=True)
    a = project.train("epochs=1", "dataset=image_folder", f"data_dir={data}", "image_size=16", "batch_size=4")
    b = project.train("epochs=1", "dataset=image_folder", f"data_dir={data}", "image_size=12", "batch_size=4", "seed=3")
    r = project.run("inference.py", "--compare", a, b, "--input", str(data / "val"), "inference_device=cpu")
    assert r.returncode == 0, r.stderr
    report, _ = report_of(project, a, b)
    assert report["samples"] == 8 and report["config_diff"]["image_size"] == {"A": 16, "B": 12}
    r = project.run("inference.py", "--compare", a, b, "--input", str(data / "train"), "inference_device=cpu")
    assert r.returncode == 2 and "training data" in r.stderr


def test_mcnemar_and_bootstrap():
    a = np.array([True] * 10 + [False] * 10)
    b = np.array([True] * 10 + [True] * 8 + [False] * 2)
    test = mcnemar(a, b)
    assert test["only_a_right"] == 0 and test["only_b_right"] == 8
    assert test["p_value"] == pytest.approx(2 * 0.5 ** 8)
    lo, hi = bootstrap_diff(a, b)
    assert 0 < lo < 0.4 < hi and bootstrap_diff(a, b) == (lo, hi), "seeded"


def test_list_shows_parent_child_and_killed(project):
    r = project.run("train.py", "epochs=2", env={"TEMPLATE_FAULT": "step:30"})
    assert r.returncode == -9
    (killed,) = project.run_ids()
    child = project.train(f"resume={killed}", "epochs=2")
    listing = project.run("inference.py", "--list").stdout
    assert re.search(rf"^\s+{killed}\s+killed\s+-\s+small_cnn\s+1/2", listing, re.M), listing  # name: -
    assert re.search(rf"^\*\s+{child}\s+finished\s+-\s+small_cnn\s+2/2\s+0\.\d+\s+0\.\d+\s+{killed}", listing, re.M), listing
    assert listing.index(killed) < listing.index(child), "newest last"
    log = (project.experiments / child / "train.log").read_text()
    assert f"continuing run {killed} from epoch 2" in log
    with Image.open(project.experiments / child / "curves.png") as im:
        im.verify()


def test_tensorboard(project):
    r = project.run("train.py", "epochs=1", "tensorboard=true")
    if importlib.util.find_spec("tensorboard") is None:
        assert r.returncode == 2 and "pip install tensorboard" in r.stderr
        assert project.run_ids() == []
    else:
        assert r.returncode == 0, r.stderr
        (run_id,) = project.run_ids()
        assert list((project.experiments / run_id / "tb").glob("events.out.tfevents.*"))
