"""Data: the split, and batches as pure functions of (seed, epoch, index)."""
import dataclasses

import pytest
import torch

from data.augment import Augment, translate
from data.loading import EpochBatchSampler, EvalBatchSampler, build_data, make_loader
from tests.conftest import make_image_folder
from utils.config import Config
from utils.errors import UsageError


@pytest.fixture(scope="module")
def digits():
    return build_data(Config())


def batches(data, seed=0, epoch=0, start=0, num_workers=0, rank=0, world=1, accum=1, batch=64, **augment):
    data.train.augment = Augment(seed, **({"policy": "translate"} | augment), num_classes=len(data.info.class_names))
    sampler = EpochBatchSampler(len(data.train), batch, seed, rank, world, accum)
    sampler.set_epoch(epoch, start)
    return list(make_loader(data.train, sampler, num_workers, False))


def test_digits_are_the_real_scikit_learn_digits(digits):
    from sklearn.datasets import load_digits
    d = load_digits()
    assert len(digits.train) + len(digits.val) == 1797 == len(d.target)
    assert digits.info.class_names == [str(i) for i in range(10)] and digits.info.in_channels == 1
    x, y = digits.train.source.load([0, 1])  # kept in [0, 1]; normalised per batch
    assert torch.equal(y, torch.as_tensor(d.target[:2]))
    assert torch.allclose(x.flatten(1), torch.as_tensor(d.data[:2] / 16, dtype=torch.float32))
    x, _ = digits.val.__getitems__([(-1, 0)])
    assert torch.allclose(x.flatten(1), torch.as_tensor((d.data[digits.val.positions[0]] / 16 - 0.5) / 0.5, dtype=torch.float32))


def test_split_is_fixed_by_split_seed_not_seed(digits):
    other_seed = build_data(Config(seed=7))
    assert other_seed.val_ids == digits.val_ids and other_seed.val_hash == digits.val_hash
    other_split = build_data(Config(split_seed=1))
    assert other_split.val_ids != digits.val_ids and other_split.val_hash != digits.val_hash
    assert not set(digits.val_ids) & set(digits.train_ids)
    assert len(digits.val) == round(1797 * 0.2)


def test_epoch_order_and_augmentation_are_pure(digits):
    a, b = batches(digits), batches(digits)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert len(a) == len(digits.train) // 64
    assert not torch.equal(a[0][1], batches(digits, epoch=1)[0][1]), "another epoch, another order"
    assert not torch.equal(a[0][0], batches(digits, seed=1)[0][0]), "another seed, another order"


def test_mid_epoch_skip_gives_the_rest_of_the_epoch(digits):
    full, rest = batches(digits, epoch=3), batches(digits, epoch=3, start=5)
    assert len(rest) == len(full) - 5
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(full[5:], rest))


def test_workers_do_not_change_the_batches(digits):
    a, b = batches(digits, epoch=2), batches(digits, epoch=2, num_workers=2)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


def test_ranks_and_accumulation_split_the_same_global_batch(digits):
    (x, y), *_ = batches(digits, epoch=1)
    parts = [batches(digits, epoch=1, rank=r, world=2, accum=2)[a] for a in range(2) for r in range(2)]
    assert torch.equal(torch.cat([p[1] for p in parts]), y)
    assert torch.equal(torch.cat([p[0] for p in parts]), x)


def test_augmentation_translates_and_fills_with_background():
    x = torch.arange(9.0).view(1, 1, 3, 3)
    out = translate(x, torch.tensor([1]), torch.tensor([0]), 1, torch.full((1, 1, 1), -1.0))
    assert out[0, 0].tolist() == [[-1, -1, -1], [0, 1, 2], [3, 4, 5]]


def test_validation_is_unpadded_across_ranks():
    shares = [list(EvalBatchSampler(7, 2, r, 2)) for r in range(2)]
    positions = sorted(p for share in shares for batch in share for _, p in batch)
    assert positions == list(range(7))


def test_image_folder_with_and_without_val_folder(tmp_path):
    root = make_image_folder(tmp_path / "flat", per_class=5)
    data = build_data(dataclasses.replace(Config(), dataset="image_folder", data_dir=str(root), image_size=16))
    assert data.info.class_names == ["cat", "dog"] and len(data.train) + len(data.val) == 10
    x, y = data.train.__getitems__([(0, 0), (0, 1)])
    assert x.shape == (2, 3, 16, 16)
    split = make_image_folder(tmp_path / "split", per_class=3, split=True)
    data = build_data(dataclasses.replace(Config(), dataset="image_folder", data_dir=str(split)))
    assert len(data.train) == 6 and len(data.val) == 6 and data.val_ids[0].startswith("val/")


def test_empty_image_folder_is_a_usage_error(tmp_path):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(UsageError, match="data_dir"):
        build_data(dataclasses.replace(Config(), dataset="image_folder", data_dir=str(tmp_path / "empty")))


def test_fake_data():
    data = build_data(dataclasses.replace(Config(), dataset="fake", fake_size=20, image_size=16))
    assert data.info.in_channels == 3 and len(data.train) + len(data.val) == 20
    assert data.train.__getitems__([(0, 0)])[0].shape == (1, 3, 16, 16)


EVERYTHING = {"policy": "crop_flip", "random_erasing": 0.5, "mixup": 0.4, "cutmix": 1.0}


def test_every_augmentation_is_pure_and_independent_of_workers_and_ranks(digits):
    a, b = batches(digits, epoch=2, **EVERYTHING), batches(digits, epoch=2, num_workers=2, **EVERYTHING)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    (x, y), *_ = a
    parts = [batches(digits, epoch=2, rank=r, world=2, accum=2, **EVERYTHING)[k] for k in range(2) for r in range(2)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
    rest = batches(digits, epoch=2, start=3, **EVERYTHING)
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a[3:], rest))
    assert not torch.equal(x, batches(digits, epoch=3, **EVERYTHING)[0][0])


def test_mixed_labels_are_distributions_over_the_classes(digits):
    (x, y), *_ = batches(digits, **EVERYTHING)
    assert y.shape == (64, 10) and torch.allclose(y.sum(1), torch.ones(64))
    assert (y.max(1).values < 1).any(), "some samples were mixed"
    assert (x == 0).flatten(1).any(1).any(), "random erasing set a box to 0"


def test_crop_flip_flips_and_translate_does_not():
    from data.augment import geometric

    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    idx, ep = torch.arange(64).numpy(), torch.zeros(64, dtype=torch.int64).numpy()
    flipped = geometric(x.clone(), Augment(0, "crop_flip"), ep, idx)
    shifted = geometric(x.clone(), Augment(0, "translate"), ep, idx)
    row = torch.tensor([3.0, 2.0, 1.0, 0.0])  # a flipped first row, unshifted
    assert any(torch.equal(img[0, 0], row) for img in flipped) and not any(torch.equal(img[0, 0], row) for img in shifted)


def test_trivialaugment_is_pure(digits):
    a = batches(digits, epoch=1, policy="trivialaugment")[:2]
    b = batches(digits, epoch=1, policy="trivialaugment")[:2]
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, b))
    assert not torch.equal(a[0][0], batches(digits, epoch=1, policy="none")[0][0])


@pytest.mark.parametrize("name, gz", [("mnist", False), ("fashion_mnist", True)])
def test_named_idx_sets_use_the_test_split_for_validation(tmp_path, name, gz):
    from tests.data.test_named_datasets import make_idx_set

    arrays = make_idx_set(tmp_path, gz=gz, n_train=6, n_test=4)
    data = build_data(Config(dataset=name, data_dir=str(tmp_path)))
    assert (len(data.train), len(data.val)) == (6, 4) and data.info.image_size == 28 and data.info.in_channels == 1
    assert data.val_split == "the official test split" and data.train.source.x.dtype == torch.uint8
    x, y = data.val.__getitems__([(-1, 1)])
    want = torch.as_tensor(arrays["t10k-images-idx3-ubyte"][1], dtype=torch.float32) / 255
    assert torch.allclose(x[0, 0], (want - 0.5) / 0.5) and int(y[0]) == arrays["t10k-labels-idx1-ubyte"][1]
    assert build_data(Config(dataset=name, data_dir=str(tmp_path), image_size=14)).info.image_size == 14


def test_cifar10_binary_through_build_data(tmp_path):
    from tests.data.test_named_datasets import make_cifar10

    make_cifar10(tmp_path / "cifar-10-batches-bin", meta=True, n=3)
    data = build_data(Config(dataset="cifar10", data_dir=str(tmp_path)))
    assert (len(data.train), len(data.val), data.info.in_channels, data.info.image_size) == (15, 3, 3, 32)
    assert data.info.class_names == [f"c{i}" for i in range(10)]


def test_image_folder_size_from_the_data_and_the_cache(tmp_path):
    root = make_image_folder(tmp_path / "f", size=12)
    cached, uncached = (build_data(Config(dataset="image_folder", data_dir=str(root), cache_mb=mb)) for mb in (64, 0))
    assert cached.info.image_size == 12 and type(cached.train.source).__name__ == "TensorSource"
    assert type(uncached.train.source).__name__ == "FileSource"
    keys = [(-1, p) for p in range(len(cached.val))]
    assert torch.equal(cached.val.__getitems__(keys)[0], uncached.val.__getitems__(keys)[0]), "the cache holds what decoding gives"
