"""Volumes: NIfTI files read, reoriented, resampled and normalised; a 3D classifier trains on
them with exact resume; inference predicts on a .nii.gz; bad files are exit 2. The tests make
their own small synthetic volumes (a ball or a bar, with noise), written with non-identity
affines, some with the first axis flipped."""
import signal
from pathlib import Path

import numpy as np
import pytest

from utils.errors import UsageError

nib = pytest.importorskip("nibabel")

SERVE = Path(__file__).resolve().parents[2] / "serve" / "predict_onnx.py"
SHAPE = (18, 16, 14)
FLIPPED = np.diag([-2.0, 1.5, 1.5, 1.0])  # x runs to the left: canonical (RAS) flips axis 0
FLIPPED[:3, 3] = (30.0, -10.0, 5.0)


def shape_volume(kind: str, rng) -> np.ndarray:
    """A ball (radius 4) or a bar (3 x 3 x 10 along the third axis), bright on noise, at a random offset."""
    x, y, z = np.meshgrid(*(np.arange(s) for s in SHAPE), indexing="ij")
    cx, cy, cz = (np.array(SHAPE) // 2) + rng.integers(-2, 3, 3)
    if kind == "ball":
        inside = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= 16
    else:
        inside = (abs(x - cx) <= 1) & (abs(y - cy) <= 1) & (abs(z - cz) <= 5)
    return (100 * inside + rng.normal(20, 8, SHAPE)).astype(np.float32)


def make_volumes(root, per_class: int = 16, seed: int = 0):
    """root/ball/*.nii.gz and root/bar/*.nii.gz, every other file with the flipped affine, one .npy."""
    rng = np.random.default_rng(seed)
    for kind in ("ball", "bar"):
        (root / kind).mkdir(parents=True)
        for i in range(per_class):
            data = shape_volume(kind, rng)
            if i == 0:
                np.save(root / kind / f"{i}.npy", data)
                continue
            affine = FLIPPED if i % 2 else np.diag([1.0, 1.0, 1.0, 1.0])
            nib.save(nib.Nifti1Image(data[::-1].copy() if i % 2 else data, affine), str(root / kind / f"{i}.nii.gz"))
    return root


def test_reading_reorients_to_nibabels_canonical(tmp_path):
    from data.volumes import canonical_header, load_volume, read_array

    data = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(data, FLIPPED), str(path))
    canonical = nib.as_closest_canonical(nib.load(str(path)))
    assert nib.aff2axcodes(canonical.affine) == ("R", "A", "S")
    assert np.array_equal(read_array(path), np.asarray(canonical.dataobj)) and np.array_equal(read_array(path), data[::-1])
    x = load_volume(path, (8, 8, 8), "minmax")
    assert x.shape == (1, 8, 8, 8) and float(x.min()) >= 0 and float(x.max()) <= 1
    # the header alone gives nibabel's canonical shape and affine, also for axes stored in another order (LPI, PSR)
    swapped = np.zeros((4, 4))
    swapped[0, 2], swapped[1, 0], swapped[2, 1], swapped[3, 3] = -1.0, -2.0, 3.0, 1.0
    for affine in (FLIPPED, swapped):
        nib.save(nib.Nifti1Image(data, affine), str(path))
        canonical = nib.as_closest_canonical(nib.load(str(path)))
        shape, grid = canonical_header(path)
        assert shape == canonical.shape and np.allclose(grid, canonical.affine)


def test_intensity_rules():
    from data.volumes import normalised

    data = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    data[0, 0, 0] = 1e6  # one bright voxel
    assert normalised(data, "minmax").max() == 1 and normalised(data, "minmax")[5].max() < 0.01
    assert abs(float(np.median(normalised(data, "percentile"))) - 0.5) < 0.01
    z = normalised(data, "zscore")
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.std()) - 1) < 1e-4


def test_volume_flip_only_flips():
    """augment: volume_flip (the generative tasks' choice): each volume as it was, or mirrored on axis 0; both occur."""
    import torch

    from data.augment import Augment, geometric

    x = torch.rand(16, 1, 6, 5, 4)
    out = geometric(x, Augment(0, "volume_flip", flip_axes=(0,)), np.ones(16, dtype=np.int64), np.arange(16))
    kept = [bool(torch.equal(o, v)) for o, v in zip(out, x)]
    assert all(k or torch.equal(o, v.flip(1)) for k, o, v in zip(kept, out, x)) and 0 < sum(kept) < 16


def test_volume_augmentation_is_a_function_of_seed_epoch_index():
    import torch

    from data.augment import Augment, geometric

    x = torch.rand(4, 1, 8, 8, 8)
    aug = Augment(3, "volume", flip_axes=(0, 1))
    a = geometric(x, aug, np.array([1, 1, 1, 1]), np.arange(4))
    assert torch.equal(a, geometric(x, aug, np.array([1, 1, 1, 1]), np.arange(4)))
    assert torch.equal(a[2:], geometric(x[2:], aug, np.array([1, 1]), np.arange(2, 4)))  # per sample, not per batch
    assert not torch.equal(a, geometric(x, aug, np.array([2, 2, 2, 2]), np.arange(4)))


@pytest.mark.parametrize("damage, message", [
    ("truncated", "not a readable volume"), ("4d", "a 4D array"), ("nan", "NaN or infinite"), ("empty_class", "holds no volume")])
def test_bad_volumes_are_exit_2_naming_the_file(tmp_path, damage, message):
    from data.loading import build_data
    from tasks import configs
    from utils.config import load_config

    root = make_volumes(tmp_path / "data", per_class=3)
    bad = root / "ball" / "1.nii.gz"
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:200])
    elif damage == "4d":
        nib.save(nib.Nifti1Image(np.zeros((*SHAPE, 2), np.float32), np.eye(4)), str(bad))
    elif damage == "nan":
        data = np.zeros(SHAPE, np.float32)
        data[1, 2, 3] = np.nan
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(bad))
    else:
        (root / "empty").mkdir()
    cfg = load_config(None, ["dataset=volume_folder", f"data_dir={root}", "volume_size=8", "base_model=small_cnn3d"], configs)
    with pytest.raises(UsageError, match=message) as e:
        build_data(cfg)
    assert "\n" not in str(e.value) and (damage == "empty_class" or str(bad) in str(e.value))


@pytest.mark.slow
def test_train_resume_and_predict_on_volumes(project, tmp_path):
    """small_cnn3d on the synthetic set reaches >= 0.95; SIGKILL mid-epoch then resume (3D augmentation
    on) gives the same weights with num_workers 0 and 2; --input predicts on a .nii.gz file and folder;
    a 2D model on volumes is exit 2 with nothing written."""
    root = make_volumes(tmp_path / "data")
    args = ("dataset=volume_folder", f"data_dir={root}", "volume_size=16", "val_fraction=0.25", "epochs=6")  # batch_size: auto (4)
    before = project.snapshot()
    r = project.run("train.py", *args[:2], "base_model=mlp", "volume_size=16")
    assert r.returncode == 2 and "mlp is a 2D model" in r.stderr and project.snapshot() == before, r.stderr
    run_id = project.train(*args)
    info = project.info(run_id)
    assert info["metrics"]["val_acc"] >= 0.95, info["metrics"]
    assert info["config"]["augment"] == "volume" and info["config"]["base_model"] == "small_cnn3d"
    assert info["data"]["image_size"] == [16, 16, 16] and info["data"]["geometry"]["orientation"] == "RAS+"
    for workers in (0, 2):
        r = project.run("train.py", *args, "checkpoint_every_steps=4", env={"TEMPLATE_FAULT": "step:10"})
        assert r.returncode == -signal.SIGKILL
        killed = project.run_ids()[-1]
        child = project.train(f"resume={killed}", "epochs=6", f"num_workers={workers}")
        assert project.info(child)["weights"]["sha256"] == info["weights"]["sha256"]
    r = project.run("inference.py", "--compare", run_id, child, "inference_device=cpu")  # A/B of two volume classifiers
    assert r.returncode == 0 and "| accuracy |" in r.stdout and "They disagree on 0 samples" in r.stdout, r.stderr
    held_out = make_volumes(tmp_path / "held_out", per_class=4, seed=1)
    r = project.run("inference.py", "--compare", run_id, child, "inference_device=cpu", "--input", str(held_out))
    assert r.returncode == 0 and "| accuracy |" in r.stdout and str(held_out) in r.stdout, r.stdout + r.stderr
    r = project.run("inference.py", f"resume={run_id}", "inference_device=cpu")
    assert r.returncode == 0
    mistakes = project.experiments / run_id / "inference" / "mistakes.png"  # drawn only when there are mistakes
    if info["metrics"]["val_acc"] < 1:
        assert mistakes.read_bytes()[:4] == b"\x89PNG"
    else:
        assert not mistakes.exists() and "no mistakes on the split: no mistakes.png" in r.stdout, r.stdout
    r = project.run("inference.py", f"resume={run_id}", "inference_device=cpu", "--input", str(root / "bar" / "3.nii.gz"))
    assert r.returncode == 0 and "3.nii.gz,bar," in (project.experiments / run_id / "inference" / "predictions.csv").read_text()
    r = project.run("inference.py", f"resume={run_id}", "inference_device=cpu", "--input", str(root))
    rows = (project.experiments / run_id / "inference" / "predictions.csv").read_text().splitlines()[1:]
    assert r.returncode == 0 and len(rows) == 32
    assert sum(row.split(",")[1] == row.split("/")[-2] for row in rows) >= 30
    # exported with its parity gate, then served without torch: the same classes as inference.py --input
    r = project.run("inference.py", f"resume={run_id}", "--export", "onnx")
    assert r.returncode == 0 and "argmax agreement 100.00%" in r.stdout, r.stdout + r.stderr
    served = project.run(str(SERVE), str(project.experiments / run_id / "export"), str(root))
    assert served.returncode == 0, served.stderr
    assert sorted(line.split(",")[:2] for line in served.stdout.splitlines()[1:]) == sorted(row.split(",")[:2] for row in rows)


def test_the_mni152_demo_splits_by_hemisphere():
    """Patches of the left hemisphere train, of the right validate: no voxel shared; classes balanced."""
    pytest.importorskip("nilearn")
    from data.brain import PER_CLASS, REGIONS, brain_patches, patch_geometry, read_template

    side = 16
    parts = brain_patches(side)
    midline = read_template()["t1"].shape[0] // 2
    for split, (x, y, ids) in parts.items():
        assert x.shape == (PER_CLASS[split] * len(REGIONS), 1, side, side, side) and x.dtype.is_floating_point
        assert y.bincount().tolist() == [PER_CLASS[split]] * len(REGIONS) and len(set(ids)) == len(ids)
    lefts = [int(i.split("/")[-1].split("_")[0]) for i in parts["train"][2]]
    rights = [int(i.split("/")[-1].split("_")[0]) for i in parts["val"][2]]
    assert max(lefts) + side // 2 <= midline <= min(rights) - side // 2
    assert brain_patches(side)["val"][0].equal(parts["val"][0])  # deterministic
    assert patch_geometry(side, (midline, 50, 40))["spacing_mm"] == [2.0, 2.0, 2.0]


@pytest.mark.parametrize("size", [0, "[8,8]", 2000])
def test_a_volume_size_the_models_cannot_take_is_exit_2(size):
    from tasks import configs
    from utils.config import load_config

    with pytest.raises(UsageError, match="volume_size"):
        load_config(None, ["dataset=volume_folder", "data_dir=/nowhere", f"volume_size={size}"], configs)


@pytest.mark.parametrize("name", ["small_cnn3d", "resnet18_3d"])
def test_both_3d_models_export_with_parity(tmp_path, name):
    """ONNX and pt2 of each 3D model (random weights, eval mode) agree with eager torch within the gate."""
    pytest.importorskip("onnxruntime")
    import torch

    from model import model_dict
    from tasks.classify.export import export_model, load_exported, measure_parity

    torch.manual_seed(0)
    model = model_dict[name](in_channels=1, num_classes=3, image_size=(12, 10, 8), dropout=0.0, pretrained=False).eval()
    x = torch.randn(5, 1, 12, 10, 8)
    for fmt in ("onnx", "pt2"):
        export_model(model, fmt, x[:2], tmp_path / f"m.{fmt}")
        parity = measure_parity(model, load_exported(fmt, tmp_path / f"m.{fmt}"), x)
        assert parity["passed"] and parity["argmax_agreement"] == 1.0, (fmt, parity)


def test_geometry_maps_resampled_voxels_to_the_world_and_writes_back(tmp_path):
    """A bright slab at known millimetres, in a file whose first axis runs to the left: after reading
    (RAS+), resampling to half the size and writing back with the kept affine, the slab is where it was."""
    from data.volumes import canonical_header, geometry, read_array, resampled, resampled_affine, save_nifti

    data = np.zeros(SHAPE, np.float32)
    data[4:6] = 1.0  # file voxels 4 and 5 on axis 0: x = 30 - 2 * 4.5 = 21 mm
    path = tmp_path / "slab.nii.gz"
    nib.save(nib.Nifti1Image(data, FLIPPED), str(path))
    size = (9, 8, 7)
    shape, affine = canonical_header(path)
    volume = resampled(read_array(path), size)[0].numpy()
    peak = int(volume.sum((1, 2)).argmax())
    grid = resampled_affine(affine, shape, size)
    assert abs((grid @ [peak, 0, 0, 1])[0] - 21.0) < 1e-6
    g = geometry([(shape, affine)], size)
    assert g["orientation"] == "RAS+" and g["spacing_mm"] == [4.0, 3.0, 3.0]
    save_nifti(volume, g["affine"], tmp_path / "out.nii.gz")
    back = nib.load(str(tmp_path / "out.nii.gz"))
    assert np.allclose(back.affine, grid) and np.allclose(back.header.get_zooms(), (4.0, 3.0, 3.0))
    assert abs((back.affine @ [int(np.asarray(back.dataobj).sum((1, 2)).argmax()), 0, 0, 1])[0] - 21.0) < 1e-6


def test_a_flat_folder_is_unlabelled_and_a_classifier_refuses_it(tmp_path):
    from data.loading import build_data
    from tasks import configs
    from tasks.classify import Classify
    from utils.config import load_config

    root = make_volumes(tmp_path / "data", per_class=3)
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, path in enumerate(sorted(root.rglob("*.nii.gz"))):
        path.rename(flat / f"{i}.nii.gz")
    cfg = load_config(None, ["dataset=volume_folder", f"data_dir={flat}", "volume_size=8"], configs)
    data = build_data(cfg)
    assert data.info.class_names == [] and len(data.train) + len(data.val) == 4
    with pytest.raises(UsageError, match="without class sub-folders"):
        Classify().prepare_data(cfg, data)


@pytest.mark.slow
def test_wgan_gp_on_volumes_trains_resumes_exactly_and_writes_nifti_samples(project, tmp_path):
    """task=wgan_gp on a flat folder of volumes: the 3D DCGAN pair (the defaults follow the data), exact
    resume after SIGKILL mid-epoch, and inference.py's samples as mid-slices and as NIfTI in the data's geometry."""
    root = make_volumes(tmp_path / "data", per_class=10)
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, path in enumerate(sorted(root.rglob("*.nii.gz"))):
        path.rename(flat / f"{i}.nii.gz")
    args = ("task=wgan_gp", "dataset=volume_folder", f"data_dir={flat}", "volume_size=12", "batch_size=4", "epochs=2")
    run_id = project.train(*args)
    info = project.info(run_id)
    assert info["model"] == "dcgan3d_generator+dcgan3d_critic" and info["data"]["image_size"] == [12, 12, 12]
    r = project.run("train.py", *args, "checkpoint_every_steps=2", env={"TEMPLATE_FAULT": "step:5"})
    assert r.returncode == -signal.SIGKILL
    child = project.train(f"resume={project.run_ids()[-1]}", "epochs=2")
    assert project.info(child)["weights"]["sha256"] == info["weights"]["sha256"]
    r = project.run("inference.py", f"resume={run_id}", "inference_device=cpu")
    assert r.returncode == 0, r.stderr
    out = project.experiments / run_id / "inference"
    assert (out / "samples.png").read_bytes()[:4] == b"\x89PNG"
    sample = nib.load(str(out / "samples" / "0.nii.gz"))
    assert sample.shape == (12, 12, 12) and np.allclose(sample.affine, info["data"]["geometry"]["affine"])
