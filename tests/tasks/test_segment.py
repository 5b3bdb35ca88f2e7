"""Task segment on synthetic cases in nnU-Net's raw layout (tests/tasks/cases.py): reading in world
space, training to Dice 0.9 with the defaults, label maps in the input's own geometry, and the bad
inputs that are exit 2 with nothing written. The guarantees every task has (saved config, same
sha256, SIGKILL and resume, NaN, refusals) run in tests/tasks/test_tasks.py."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import copy_project
from tests.tasks.cases import LABELS, grid_affine, make_case_folder, sample_case, save

nib = pytest.importorskip("nibabel")
ROOT = Path(__file__).resolve().parents[2]


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_a_flipped_anisotropic_case_gives_the_same_world_mask(tmp_path):
    """The same ball (radius 12 mm) and box (16 mm) sampled on a 1 mm RAS grid and on a flipped, permuted
    1 x 1 x 2 mm grid: read and resampled to 1 mm, the two label maps agree (Dice >= 0.95 per class;
    what differs is the coarse grid's sampling of the edges, not the orientation)."""
    from data.cases import load_cases

    rng = np.random.default_rng(1)
    centre, box = np.array([14.0, 20.0, 21.0]), np.array([25.0, 11.0, 12.0])
    for name, (spacing, flips, order) in {"a": ((1.0, 1.0, 1.0), (False,) * 3, (0, 1, 2)),
                                          "b": ((1.0, 1.0, 2.0), (True, False, True), (2, 0, 1))}.items():
        affine, shape = grid_affine(spacing, flips, order)
        image, label = sample_case(rng, affine, shape, centre, box, sizes=(12.0, 8.0))
        (tmp_path / "imagesTr").mkdir(exist_ok=True)
        (tmp_path / "labelsTr").mkdir(exist_ok=True)
        save(image, affine, tmp_path / "imagesTr" / f"{name}_0000.nii.gz")
        save(label, affine, tmp_path / "labelsTr" / f"{name}.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": LABELS, "file_ending": ".nii.gz"}))
    source, _, geometry = load_cases(tmp_path, [1.0, 1.0, 1.0], "auto")
    a, b = source.labels
    assert a.shape == b.shape == (36, 36, 36)
    assert np.allclose(source.affines[0], source.affines[1], atol=1e-4)  # both on the same world grid
    for c in (1, 2):
        assert dice(a == c, b == c) >= 0.95, (c, dice(a == c, b == c))
    assert geometry["channels"] == [{"name": "MRI", "rule": "zscore"}]


def test_auto_spacing_is_the_median_and_ct_is_clipped(tmp_path):
    from data.cases import load_cases

    root = make_case_folder(tmp_path / "d", cases=3)
    spec = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps(spec | {"channel_names": {"0": "CT"}}))
    source, _, geometry = load_cases(root, None, "auto")
    assert geometry["spacing_mm"] == [1.5, 1.5, 1.5]  # z: 1.5, 3.0, 1.5
    (rule,) = geometry["channels"]
    assert rule["rule"] == "ct" and rule["clip"][0] < rule["clip"][1]
    x = torch.cat([im.flatten() for im in source.images])
    assert x.max() <= (rule["clip"][1] - rule["mean"]) / rule["std"] + 1e-4


def test_patches_are_a_pure_function_of_seed_epoch_and_index(tmp_path):
    from data.cases import load_cases
    from tasks.segment.patches import PatchSet

    source, _, _ = load_cases(make_case_folder(tmp_path / "d", cases=3), None, "auto")
    a = PatchSet(source, [0, 1, 2], (16, 16, 16), 0, 8, 0.33, True, 3)
    b = PatchSet(source, [0, 1, 2], (16, 16, 16), 0, 8, 0.33, True, 3)
    x1, y1 = a.__getitems__([(3, 5), (3, 6)])
    x2, y2 = b.__getitems__([(3, 6)])
    assert torch.equal(x1[1], x2[0]) and torch.equal(y1[1], y2[0])
    assert x1.shape == (2, 1, 16, 16, 16) and y1.dtype == torch.int64
    always = PatchSet(source, [0, 1, 2], (8, 8, 8), 0, 64, 1.0, False, 3)
    assert all((always.sample(0, i)[1] > 0).any() for i in range(32))  # oversample 1: every patch holds foreground


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The issue's exact command on synthetic cases, at the defaults (fewer epochs)."""
    root = tmp_path_factory.mktemp("seg")
    project = copy_project(root / "proj")
    data = make_case_folder(root / "data")
    run_id = project.train("task=segment", "dataset=volume_folder", f"data_dir={data}", "epochs=4")
    return project, data, run_id


@pytest.mark.slow
def test_training_reaches_dice_09_and_inference_reports_hd95(trained):
    project, _, run_id = trained
    info = project.info(run_id)
    assert info["metrics"]["val_dice"] >= 0.9, info["metrics"]
    header = (project.experiments / run_id / "metrics.csv").read_text().splitlines()[0]
    assert "val_dice_ball" in header and "val_dice_box" in header
    saved = (project.experiments / run_id / "config.yaml").read_text()
    assert re.search(r"^spacing: \[1\.5, 1\.5, 2\.25\]", saved, re.M) and re.search(r"^patch_size: \[24, 24, 16\]", saved, re.M)
    r = project.run("inference.py", f"resume={run_id}", "inference_device=cpu", "mirror=false")
    assert r.returncode == 0, r.stderr
    report = json.loads((project.experiments / run_id / "inference" / "cases.json").read_text())
    assert report["dice_mean"] >= 0.9 and report["per_class"]["ball"]["hd95_mean_mm"] < 3.0, report["per_class"]
    assert (project.experiments / run_id / "inference" / "worst_cases.png").stat().st_size > 10_000


@pytest.mark.slow
def test_input_label_maps_have_the_inputs_shape_and_affine(trained, tmp_path):
    project, _, run_id = trained
    rng = np.random.default_rng(7)
    folder = tmp_path / "imagesTs"
    folder.mkdir()
    truths = {}
    for name, (spacing, flips, order) in {"iso": ((1.5, 1.5, 1.5), (False,) * 3, (0, 1, 2)),
                                          "odd": ((1.2, 1.5, 3.0), (True, True, False), (1, 2, 0))}.items():
        affine, shape = grid_affine(spacing, flips, order)
        image, label = sample_case(rng, affine, shape)
        save(image, affine, folder / f"{name}_0000.nii.gz")
        truths[name] = (affine, label)
    r = project.run("inference.py", f"resume={run_id}", "inference_device=cpu", "--input", str(folder), "save_probabilities=true")
    assert r.returncode == 0, r.stderr
    for name, (_, label) in truths.items():
        out = nib.load(str(project.experiments / run_id / "inference" / "labels" / f"{name}.nii.gz"))
        assert out.shape == label.shape and np.array_equal(out.affine, nib.load(str(folder / f"{name}_0000.nii.gz")).affine)
        pred = np.asarray(out.dataobj)
        for c in (1, 2):
            assert dice(pred == c, label == c) >= 0.85, (name, c, dice(pred == c, label == c))
        probs = nib.load(str(project.experiments / run_id / "inference" / "labels" / f"{name}_prob.nii.gz"))
        assert probs.shape == (*label.shape, 3)


def _bad(data, what: str):
    """Make one thing wrong in a copy of the data set; returns the file the message must name."""
    if what == "shape":
        img = nib.load(str(data / "imagesTr" / "case00_0000.nii.gz"))
        bad = data / "labelsTr" / "case00.nii.gz"
        save(np.zeros((10, 10, 10), np.uint8), img.affine, bad)
    elif what == "affine":
        bad = data / "labelsTr" / "case01.nii.gz"
        lab = nib.load(str(bad))
        save(np.asarray(lab.dataobj), lab.affine @ np.diag([2.0, 1, 1, 1]), bad)
    elif what == "values":
        bad = data / "labelsTr" / "case02.nii.gz"
        lab = nib.load(str(bad))
        save(np.asarray(lab.dataobj) * 3, lab.affine, bad)
    elif what == "channel":
        spec = json.loads((data / "dataset.json").read_text())
        (data / "dataset.json").write_text(json.dumps(spec | {"channel_names": {"0": "MRI", "1": "T2"}}))
        bad = data / "imagesTr" / "case00_0001.nii.gz"
    else:  # a case without its label
        bad = data / "labelsTr" / "case03.nii.gz"
        bad.unlink()
    return bad


@pytest.mark.parametrize("what", ["shape", "affine", "values", "channel", "label"])
def test_bad_data_is_exit_2_naming_the_file_with_nothing_written(project, tmp_path, what):
    data = make_case_folder(tmp_path / "data", cases=4)
    bad = _bad(data, what)
    before = project.snapshot()
    r = project.run("train.py", "task=segment", "dataset=volume_folder", f"data_dir={data}", "epochs=1")
    assert r.returncode == 2 and re.fullmatch(r"error: [^\n]+\n", r.stderr), r.stderr
    assert str(bad) in r.stderr, r.stderr
    assert project.snapshot() == before


def test_a_patch_larger_than_the_cases_is_exit_2(project, tmp_path):
    data = make_case_folder(tmp_path / "data", cases=3)
    r = project.run("train.py", "task=segment", "dataset=volume_folder", f"data_dir={data}", "patch_size=32")
    assert r.returncode == 2 and "patch_size: [32, 32, 32] is larger than" in r.stderr, r.stderr
    assert not project.run_ids()


def test_other_tasks_refuse_cases_and_segment_refuses_class_folders(project, tmp_path):
    data = make_case_folder(tmp_path / "data", cases=3)
    r = project.run("train.py", "task=classify", "dataset=volume_folder", f"data_dir={data}")
    assert r.returncode == 2 and "label per voxel" in r.stderr, r.stderr
    shutil.rmtree(data / "labelsTr")
    (data / "dataset.json").unlink()
    r = project.run("train.py", "task=segment", "dataset=volume_folder", f"data_dir={data}")
    assert r.returncode == 2 and "task segment does not train on" in r.stderr, r.stderr
    assert not project.run_ids()


def test_the_network_follows_the_patch_and_spacing():
    from model.unet3d import UNet3d, plan_strides

    assert plan_strides((64, 64, 16), (1.0, 1.0, 4.0))[1] == (2, 2, 1)  # the coarse axis waits
    net = UNet3d(2, 4, (32, 32, 16), (1.0, 1.0, 2.0), width=8)
    outs = net(torch.zeros(1, 2, 32, 32, 16))
    assert [tuple(o.shape[2:]) for o in outs][0] == (32, 32, 16) and len(outs) == len(net.strides) - 1
    net.eval()
    assert net(torch.zeros(1, 2, 32, 32, 16)).shape == (1, 4, 32, 32, 16)


def test_sliding_window_covers_every_voxel_and_matches_one_window():
    from tasks.segment.window import sliding_window, windows

    net = torch.nn.Conv3d(1, 2, 1)
    x = torch.randn(1, 20, 17, 9)
    out = sliding_window(net, x, (8, 8, 8), 2, 0.5)
    assert out.shape == (2, 20, 17, 9)
    assert torch.allclose(out, net(x[None])[0], atol=1e-5)  # a pointwise network: weighting changes nothing
    assert windows((20, 17, 9), (8, 8, 8), 0.5)[-1] == (12, 9, 1)


@pytest.mark.slow
def test_compare_pairs_the_cases(trained):
    """The run against its continuation (one more epoch): the same validation cases paired, each
    delta B - A, Wilcoxon's p, a bootstrap interval around the mean delta, and a verdict."""
    project, _, run_id = trained
    child = project.train(f"resume={run_id}", "epochs=5")
    r = project.run("inference.py", "--compare", run_id, child, "inference_device=cpu", "mirror=false")
    assert r.returncode == 0, r.stderr
    report = json.loads((project.experiments / child / "inference" / f"compare_{run_id}_vs_{child}.json").read_text())
    assert report["cases"] == project.info(child)["val_size"] == len(report["per_case"])
    assert all(abs(c["delta"] - (c["B"] - c["A"])) < 1e-12 for c in report["per_case"])
    lo, hi = report["dice_diff_B_minus_A"]["ci95"]
    assert lo <= report["dice_diff_B_minus_A"]["value"] <= hi and 0 <= report["wilcoxon_p"] <= 1
    assert report["verdict"] and "Wilcoxon" in r.stdout


@pytest.mark.slow
def test_export_and_predict_onnx_write_the_same_label_map(trained, tmp_path):
    """--export onnx passes its parity gate; serve/predict_onnx.py (no torch) writes label maps that
    differ from inference.py --input's in at most 0.1% of the voxels (counted here)."""
    pytest.importorskip("onnxruntime")
    project, _, run_id = trained
    folder = tmp_path / "imagesTs"
    folder.mkdir()
    affine, shape = grid_affine((1.2, 1.5, 3.0), (True, False, False), (1, 0, 2))
    save(sample_case(np.random.default_rng(3), affine, shape)[0], affine, folder / "c1_0000.nii.gz")
    r = project.run("inference.py", f"resume={run_id}", "inference_device=cpu", "--export", "onnx", "mirror=false")
    assert r.returncode == 0, r.stderr
    export = project.experiments / run_id / "export"
    assert json.loads((export / "parity.json").read_text())["onnx"]["passed"]
    r = project.run("inference.py", f"resume={run_id}", "inference_device=cpu", "--input", str(folder), "mirror=false")
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "serve" / "predict_onnx.py"), str(export), str(folder), "--out",
                        str(tmp_path / "onnx")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    ours = nib.load(str(project.experiments / run_id / "inference" / "labels" / "c1.nii.gz"))
    theirs = nib.load(str(tmp_path / "onnx" / "c1.nii.gz"))
    assert theirs.shape == ours.shape and np.array_equal(theirs.affine, ours.affine)
    differing = int((np.asarray(ours.dataobj) != np.asarray(theirs.dataobj)).sum())
    assert differing <= 0.001 * np.prod(shape), differing


@pytest.mark.slow
@pytest.mark.groups
def test_folds_train_a_group_whose_members_are_ensembled(project, tmp_path):
    """folds=2 on cases: each member holds out whole cases; resume=<group> --input writes the members'
    mean label map in the input's geometry; two such groups compared pair the cases' Dice."""
    data = make_case_folder(tmp_path / "data", cases=4)
    r = project.run("train.py", "task=segment", "dataset=volume_folder", f"data_dir={data}", "folds=2", "epochs=1",
                    "patches_per_epoch=8")
    assert r.returncode == 0, r.stderr[-3000:]
    members = project.run_ids()
    assert len(members) == 2
    assert [project.info(m)["val_size"] for m in members] == [2, 2]  # whole cases, two a fold
    (group,) = [p.name for p in (project.experiments / "groups").iterdir() if p.is_dir()]
    r = project.run("inference.py", f"resume={group}", "inference_device=cpu", "--input", str(data / "imagesTr" / "case00_0000.nii.gz"),
                    "mirror=false")
    assert r.returncode == 0, r.stderr
    assert "ensemble of 2 members" in r.stdout
    out = nib.load(str(project.experiments / "groups" / group / "inference" / "labels" / "case00.nii.gz"))
    assert out.shape == nib.load(str(data / "imagesTr" / "case00_0000.nii.gz")).shape
    scores = (project.experiments / "groups" / group / "oof_predictions.csv").read_text().splitlines()
    assert scores[0] == "index,id,fold,seed,score" and len(scores) == 5  # every case once, out of fold
    r = project.run("train.py", "task=segment", "dataset=volume_folder", f"data_dir={data}", "folds=2", "epochs=1",
                    "patches_per_epoch=8", "lr=1e-3")
    assert r.returncode == 0, r.stderr[-3000:]
    other = [p.name for p in (project.experiments / "groups").iterdir() if p.is_dir() and p.name != group][0]
    r = project.run("inference.py", "--compare", group, other)
    assert r.returncode == 0, r.stderr
    report = json.loads((project.experiments / "groups" / other / f"compare_{group}_vs_{other}.json").read_text())
    per_case = report["per_sample"]
    assert per_case["pairs"] == 4 and 0 <= per_case["wilcoxon_p"] <= 1
    assert per_case["bootstrap_ci95"][0] <= per_case["mean_difference"] <= per_case["bootstrap_ci95"][1]
    assert "paired by held-out sample (4 pairs" in r.stdout


@pytest.mark.slow
def test_a_served_segmentation_run_answers_as_inference_input(trained, tmp_path):
    """inference.py --serve: the file route returns inference.py --input's label map (same bytes of
    data, shape and affine); /infer takes a preprocessed case of any size and returns its labels."""
    pytest.importorskip("uvicorn")
    from tests.serve.server import Server, request

    project, _, run_id = trained
    rng = np.random.default_rng(11)
    affine, shape = grid_affine((1.2, 1.5, 3.0), (True, False, False), (2, 0, 1))
    image, _ = sample_case(rng, affine, shape)
    folder = tmp_path / "imagesTs"
    folder.mkdir()
    save(image, affine, folder / "odd_0000.nii.gz")
    r = project.run("inference.py", f"resume={run_id}", "inference_device=cpu", "--input", str(folder))
    assert r.returncode == 0, r.stderr
    expected = nib.load(str(project.experiments / run_id / "inference" / "labels" / "odd.nii.gz"))
    server = Server(project, f"resume={run_id}")
    try:
        status, headers, body = request(server.url("/v2/models/model/predict?filename=odd.nii.gz"),
                                        (folder / "odd_0000.nii.gz").read_bytes(), method="POST")
        assert status == 200 and headers["x-run-id"] == run_id, body[:300]
        (tmp_path / "served.nii.gz").write_bytes(body)
        served = nib.load(str(tmp_path / "served.nii.gz"))
        assert served.shape == expected.shape and np.array_equal(served.affine, expected.affine)
        assert np.array_equal(np.asarray(served.dataobj), np.asarray(expected.dataobj))
        x = rng.normal(size=(1, 1, 20, 28, 12)).astype(np.float32)
        body = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]})
        status, _, answer = request(server.url("/v2/models/model/infer"), body.encode())
        out = json.loads(answer)["outputs"][0]
        assert status == 200 and out["name"] == "labels" and out["shape"] == [1, 20, 28, 12] and set(out["data"]) <= {0, 1, 2}
    finally:
        code, err = server.stop()
    assert code == 143, err
