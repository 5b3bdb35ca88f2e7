"""Small data sets: what validation reports is what the model learned.

BatchNorm's statistics are recomputed before every validation (train/norm_stats.py) and
`batch_size: auto` gives a small training split enough steps an epoch (train/build.py). The
training tests use the default batch_size, as a new user would."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from train.build import auto_batch_size
from train.norm_stats import batchnorms, recompute_batchnorm
from train.phases import Batch

SIDE = 20


# ---------------------------------------------------------------- the pieces, in process
@pytest.mark.parametrize("train_size, batch", [(1437, 64), (60000, 64), (1280, 64), (1279, 32), (400, 16), (200, 8),
                                               (120, 4), (75, 4), (30, 4), (3, 3)])
def test_auto_batch_gives_small_sets_enough_steps(train_size, batch):
    assert auto_batch_size(train_size) == batch


def test_batch_size_auto_reads_and_writes_as_auto():
    from utils.config import Config, build_config, to_yaml

    cfg = build_config({"batch_size": "auto"})
    assert cfg.batch_size is None and "batch_size: auto" in to_yaml(cfg) and Config().batch_size is None
    assert build_config({"batch_size": 32}).batch_size == 32
    with pytest.raises(Exception, match="batch_size: expected auto or an integer"):
        build_config({"batch_size": "big"})


class _Net(nn.Module):
    """conv -> BN -> dropout -> conv -> BN: the second BN's input depends on the first's normalisation."""

    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.5)
        self.b, self.bn_b = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn_b(self.b(self.drop(self.bn_a(self.a(x)))))


def _batches(xs):
    return [Batch(x, None, len(x), 0, i) for i, x in enumerate(xs)]


def test_recomputed_statistics_are_exact_over_every_batch():
    torch.manual_seed(0)
    net = _Net().train()
    xs = [torch.randn(5, 2, 6, 6) * 3 + 1 for _ in range(4)]
    before = {n: b.clone() for n, b in net.named_buffers()}
    assert recompute_batchnorm(net, _batches(xs), lambda m, b: m(b.x)) == 20
    # the first layer's input is the conv's output over all 20 samples: its exact mean and unbiased variance
    with torch.no_grad():
        a = torch.cat([net.a(x) for x in xs]).transpose(0, 1).reshape(3, -1).double()
        # the second layer's input: each batch normalised by its own statistics (train mode), dropout off
        b = torch.cat([net.b(nn.functional.batch_norm(net.a(x), None, None, net.bn_a.weight, net.bn_a.bias, training=True))
                       for x in xs]).transpose(0, 1).reshape(4, -1).double()
    for bn, inputs in ((net.bn_a, a), (net.bn_b, b)):
        assert torch.allclose(bn.running_mean.double(), inputs.mean(1), atol=1e-5)
        assert torch.allclose(bn.running_var.double(), inputs.var(1), atol=1e-4)
        assert int(bn.num_batches_tracked) == 0  # counted batches are not statistics: kept
    assert net.training and net.drop.training and net.bn_a.training  # every module's mode put back
    assert all(torch.equal(b, before[n]) for n, b in net.named_buffers() if "running" not in n)


def test_recomputing_is_pure_and_ignores_what_the_buffers_held():
    torch.manual_seed(0)
    net = _Net()
    xs = [torch.randn(4, 2, 5, 5) for _ in range(3)]
    recompute_batchnorm(net, _batches(xs), lambda m, b: m(b.x))
    first = {n: b.clone() for n, b in net.named_buffers()}
    net.bn_a.running_mean.fill_(100.0)  # whatever training left there
    net.eval()
    recompute_batchnorm(net, _batches(xs), lambda m, b: m(b.x))
    assert all(torch.equal(b, first[n]) for n, b in net.named_buffers()) and not net.training
    assert recompute_batchnorm(nn.Linear(3, 2), _batches(xs), lambda m, b: None) == 0  # no BatchNorm: nothing to do


# ---------------------------------------------------------------- synthetic data sets
def _write(nib, path, data: np.ndarray, rng, flipped: bool) -> None:
    """A volume under a random affine (spacing 0.8-1.5 mm, any origin); flipped: stored with x running to the left."""
    affine = np.diag([*rng.uniform(0.8, 1.5, 3), 1.0])
    affine[:3, 3] = rng.uniform(-40, 40, 3)
    if flipped:
        affine[0, 0] *= -1
        data = data[::-1].copy()
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(path))


def _shape(kind: str, rng) -> np.ndarray:
    """A ball, a bar along z or a plate across z, bright on noise, at a random offset."""
    x, y, z = np.meshgrid(*(np.arange(SIDE),) * 3, indexing="ij")
    cx, cy, cz = SIDE // 2 + rng.integers(-3, 4, 3)
    inside = {"ball": (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= 20,
              "bar": (abs(x - cx) <= 1) & (abs(y - cy) <= 1) & (abs(z - cz) <= 6),
              "plate": (abs(x - cx) <= 5) & (abs(y - cy) <= 5) & (abs(z - cz) <= 1)}[kind]
    return 100 * inside + rng.normal(20, 8, (SIDE,) * 3)


def _blob(side: str, rng) -> np.ndarray:
    """A blob (radius 3) in the upper or the lower half (z), anywhere across x and y."""
    x, y, z = np.meshgrid(*(np.arange(SIDE),) * 3, indexing="ij")
    cx, cy = rng.integers(5, SIDE - 5, 2)
    cz = rng.integers(4, 8) if side == "lower" else rng.integers(SIDE - 8, SIDE - 4)
    return 100 * ((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= 9) + rng.normal(20, 8, (SIDE,) * 3)


def make_set(root, classes: dict, per_class: int = 40, val_per_class: int = 15, seed: int = 0):
    """root/train/<class>/ and root/val/<class>/ of .nii.gz files, every other one stored flipped."""
    nib = pytest.importorskip("nibabel")
    rng = np.random.default_rng(seed)
    for name, draw in classes.items():
        for i in range(per_class):
            folder = root / ("val" if i < val_per_class else "train") / name
            folder.mkdir(parents=True, exist_ok=True)
            _write(nib, folder / f"{i}.nii.gz", draw(rng), rng, flipped=bool(i % 2))
    return root


def shapes(root):
    return make_set(root, {k: (lambda rng, k=k: _shape(k, rng)) for k in ("ball", "bar", "plate")})


def blobs(root):
    return make_set(root, {k: (lambda rng, k=k: _blob(k, rng)) for k in ("lower", "upper")})


def metrics(project, run_id) -> list[dict]:
    lines = (project.experiments / run_id / "metrics.csv").read_text().splitlines()
    keys = lines[0].split(",")
    return [dict(zip(keys, map(float, line.split(",")))) for line in lines[1:]]


def eval_and_train_mode_accuracy(project, run_id) -> tuple[float, float]:
    """The saved weights on the run's training split (no augmentation): accuracy in eval mode (the
    recorded statistics) and with every BatchNorm normalising by the batch (train mode), the whole
    split as one batch: the statistics of the split itself (a batch of 4 would be noisier than
    either, and the split is stored class by class: a batch of one class normalises the class away)."""
    from safetensors.torch import load_file

    from data.loading import build_data
    from store.upgrade import saved_config
    from tasks import configs, task_dict

    info = project.info(run_id)
    cfg = saved_config(json.loads(json.dumps(info["config"])), configs, info["format"])
    data = build_data(cfg)
    task = task_dict[cfg.task]()
    model = task.build_model(cfg, data.info)
    model.load_state_dict(load_file(project.experiments / run_id / "model.safetensors"))
    x, y = data.train.__getitems__([(-1, p) for p in range(len(data.train))])
    out = []
    with torch.no_grad():
        for batch_stats in (False, True):
            model.eval()
            for bn in batchnorms(model) if batch_stats else []:
                bn.train()
            out.append(float((model(x).argmax(1) == y).float().mean()))
    return out[0], out[1]


# ---------------------------------------------------------------- through the command, at the defaults
@pytest.mark.slow
def test_a_small_volume_set_trains_at_the_defaults(project, tmp_path):
    """120 volumes of three shapes (75 to train), random affines, half stored flipped: the issue's command."""
    root = shapes(tmp_path / "shapes")
    run_id = project.train("dataset=volume_folder", f"data_dir={root}", "base_model=small_cnn3d", "volume_size=16", "epochs=8")
    info = project.info(run_id)
    assert info["config"]["batch_size"] == 4 and "batch_size: 4" in (project.experiments / run_id / "config.yaml").read_text()
    assert info["metrics"]["val_acc"] >= 0.95, metrics(project, run_id)
    eval_mode, train_mode = eval_and_train_mode_accuracy(project, run_id)
    assert abs(eval_mode - train_mode) <= 0.02, (eval_mode, train_mode)
    r = project.run("inference.py", f"resume={run_id}", "inference_device=cpu")  # the saved weights measure the same
    assert r.returncode == 0 and f"{info['metrics']['val_acc']:.4f}" in r.stdout, r.stdout + r.stderr


@pytest.mark.slow
def test_left_or_right_blobs_never_dip_once_learned(project, tmp_path):
    """Two classes that differ only in which half holds a blob: once val_acc reaches 0.95 it stays there."""
    root = blobs(tmp_path / "blobs")
    run_id = project.train("dataset=volume_folder", f"data_dir={root}", "base_model=small_cnn3d", "volume_size=16", "epochs=8")
    accs = [row["val_acc"] for row in metrics(project, run_id)]
    first = next((i for i, a in enumerate(accs) if a >= 0.95), None)
    assert first is not None and min(accs[first:]) >= 0.95, accs


@pytest.mark.slow
def test_a_small_image_folder_shows_no_gap(project, tmp_path):
    """About 100 images (80 to train) at the defaults: batch_size auto, and eval mode measures what train mode does."""
    from PIL import Image

    rng, root = np.random.default_rng(0), tmp_path / "images"
    for c, name in enumerate(("dark", "mid", "bright")):  # 34 noisy 16-px images a class, told apart by brightness
        (root / name).mkdir(parents=True)
        for i in range(34):
            pixels = np.clip(rng.normal(40 + 85 * c, 25, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    run_id = project.train("dataset=image_folder", f"data_dir={root}")
    info = project.info(run_id)
    assert info["config"]["batch_size"] == 4 and info["metrics"]["val_acc"] >= 0.95, metrics(project, run_id)
    eval_mode, train_mode = eval_and_train_mode_accuracy(project, run_id)
    assert abs(eval_mode - train_mode) <= 0.02, (eval_mode, train_mode)
