"""Named data sets: tiny IDX and CIFAR binary files written here are read back exactly; bad,
missing and pickle-only files give one-line usage errors; nothing downloads."""
import gzip
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from data.named import CIFAR10_CLASSES, CIFAR100_CLASSES, FASHION_CLASSES, IDX_STEMS, NAMES, load_named
from utils.errors import UsageError

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------- writers of the published formats
def write_idx(path: Path, a: np.ndarray, gz: bool = False) -> Path:
    """An IDX file of unsigned bytes: magic 0x000008<ndim>, big-endian uint32 sizes, the bytes."""
    data = bytes((0, 0, 8, a.ndim)) + np.array(a.shape, dtype=">u4").tobytes() + a.astype(np.uint8).tobytes()
    if gz:
        path, data = path.with_name(path.name + ".gz"), gzip.compress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_idx_set(folder: Path, gz: bool = False, n_train: int = 5, n_test: int = 3, seed: int = 0) -> dict:
    """The four MNIST files with random content; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test)}
    for stem, a in arrays.items():
        write_idx(folder / stem, a, gz)
    return arrays


def write_cifar(path: Path, x: np.ndarray, labels: list[np.ndarray]) -> None:
    """Records of the label byte(s) then the 3072 pixels, channel-major."""
    records = np.concatenate([*(lab[:, None] for lab in labels), x.reshape(len(x), -1)], axis=1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(records.tobytes())


def make_cifar10(folder: Path, meta: bool, n: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Five train batches of n records and a test batch of n; returns train x, y, test x, y."""
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 256, (6 * n, 3, 32, 32)), rng.integers(0, 10, 6 * n)
    for i in range(5):
        write_cifar(folder / f"data_batch_{i + 1}.bin", x[i * n:(i + 1) * n], [y[i * n:(i + 1) * n]])
    write_cifar(folder / "test_batch.bin", x[5 * n:], [y[5 * n:]])
    if meta:
        (folder / "batches.meta.txt").write_text("".join(f"c{i}\n" for i in range(10)) + "\n")
    return x[:5 * n], y[:5 * n], x[5 * n:], y[5 * n:]


def make_cifar100(folder: Path, meta: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """train.bin of 4 records and test.bin of 3, coarse label then fine label; returns train x, fine y, test x, fine y."""
    rng = np.random.default_rng(seed)
    x, fine, coarse = rng.integers(0, 256, (7, 3, 32, 32)), rng.integers(0, 100, 7), rng.integers(0, 20, 7)
    write_cifar(folder / "train.bin", x[:4], [coarse[:4], fine[:4]])
    write_cifar(folder / "test.bin", x[4:], [coarse[4:], fine[4:]])
    if meta:
        (folder / "fine_label_names.txt").write_text("".join(f"f{i}\n" for i in range(100)))
    return x[:4], fine[:4], x[4:], fine[4:]


def assert_split(x: torch.Tensor, y: torch.Tensor, want_x: np.ndarray, want_y: np.ndarray) -> None:
    assert x.dtype == torch.uint8 and y.dtype == torch.int64 and x.is_contiguous()
    assert torch.equal(x, torch.from_numpy(want_x.astype(np.uint8))) and torch.equal(y, torch.from_numpy(want_y.astype(np.int64)))


def usage_error(*args, **kwargs) -> str:
    """The message of the UsageError load_named raises, checked to be one line."""
    with pytest.raises(UsageError) as e:
        load_named(*args, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.fixture
def fake_torchvision(monkeypatch):
    """torchvision stand-ins in sys.modules: they record the download calls and fetch nothing. MNIST
    writes the files where torchvision would; FashionMNIST and the CIFAR archive fail as if offline."""
    calls = []

    def mnist(**kw):
        calls.append(("MNIST", kw))
        make_idx_set(Path(kw["root"]) / "MNIST" / "raw", gz=True)

    def fashion_mnist(**kw):
        calls.append(("FashionMNIST", kw))
        raise OSError("no network\nat all")

    def download_and_extract_archive(url, **kw):
        calls.append((url, kw))
        raise RuntimeError("offline")

    tv, datasets, utils = (types.ModuleType(n) for n in ("torchvision", "torchvision.datasets", "torchvision.datasets.utils"))
    tv.datasets, datasets.utils = datasets, utils
    datasets.MNIST, datasets.FashionMNIST, utils.download_and_extract_archive = mnist, fashion_mnist, download_and_extract_archive
    for mod in (tv, datasets, utils):
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return calls


# ---------------------------------------------------------------- round trips
def test_names():
    assert NAMES == ("mnist", "fashion_mnist", "cifar10", "cifar100")


def test_idx_plain_in_data_dir(tmp_path):
    a = make_idx_set(tmp_path)
    d = load_named("mnist", tmp_path)
    assert d.train_x.shape == (5, 1, 28, 28) and d.test_x.shape == (3, 1, 28, 28)
    assert_split(d.train_x[:, 0], d.train_y, a["train-images-idx3-ubyte"], a["train-labels-idx1-ubyte"])
    assert_split(d.test_x[:, 0], d.test_y, a["t10k-images-idx3-ubyte"], a["t10k-labels-idx1-ubyte"])
    assert d.classes == [str(i) for i in range(10)]
    assert d.files == [str(tmp_path / s) for s in IDX_STEMS]


def test_idx_gz_in_raw(tmp_path):
    a = make_idx_set(tmp_path / "raw", gz=True)
    d = load_named("fashion_mnist", str(tmp_path))
    assert_split(d.train_x[:, 0], d.train_y, a["train-images-idx3-ubyte"], a["train-labels-idx1-ubyte"])
    assert_split(d.test_x[:, 0], d.test_y, a["t10k-images-idx3-ubyte"], a["t10k-labels-idx1-ubyte"])
    assert d.classes == list(FASHION_CLASSES) and d.classes[0] == "T-shirt/top"
    assert d.files == [str(tmp_path / "raw" / f"{s}.gz") for s in IDX_STEMS]


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_idx_torchvision_layout(tmp_path, name, folder):
    a = make_idx_set(tmp_path / folder / "raw")
    d = load_named(name, tmp_path)
    assert_split(d.test_x[:, 0], d.test_y, a["t10k-images-idx3-ubyte"], a["t10k-labels-idx1-ubyte"])
    assert all(f.startswith(str(tmp_path / folder / "raw")) for f in d.files)


def test_idx_search_order_data_dir_first_and_plain_before_gz(tmp_path):
    make_idx_set(tmp_path / "raw", seed=1)
    a = make_idx_set(tmp_path, gz=True, seed=2)
    make_idx_set(tmp_path, gz=False, seed=2)
    d = load_named("mnist", tmp_path)
    assert d.files == [str(tmp_path / s) for s in IDX_STEMS]
    assert torch.equal(d.train_y, torch.from_numpy(a["train-labels-idx1-ubyte"]))


@pytest.mark.parametrize("meta", [True, False])
def test_cifar10_binary(tmp_path, meta):
    folder = tmp_path / "cifar-10-batches-bin" if meta else tmp_path
    train_x, train_y, test_x, test_y = make_cifar10(folder, meta)
    d = load_named("cifar10", tmp_path)
    assert d.train_x.shape == (10, 3, 32, 32) and d.test_x.shape == (2, 3, 32, 32)
    assert_split(d.train_x, d.train_y, train_x, train_y)
    assert_split(d.test_x, d.test_y, test_x, test_y)
    assert d.classes == ([f"c{i}" for i in range(10)] if meta else list(CIFAR10_CLASSES))
    assert len(d.files) == 6 + meta and d.files[0] == str(folder / "data_batch_1.bin")


def test_cifar10_pixel_layout_is_channel_major(tmp_path):
    make_cifar10(tmp_path, meta=False)
    record = np.zeros(1 + 3072, np.uint8)
    record[0], record[1 + 1024 + 32 + 2] = 7, 200  # label 7; green channel, row 1, column 2
    (tmp_path / "test_batch.bin").write_bytes(record.tobytes())
    d = load_named("cifar10", tmp_path)
    assert d.test_y.tolist() == [7] and d.test_x[0, 1, 1, 2] == 200 and int(d.test_x.sum()) == 200


@pytest.mark.parametrize("meta", [True, False])
def test_cifar100_binary_fine_labels(tmp_path, meta):
    folder = tmp_path / "cifar-100-binary" if meta else tmp_path
    train_x, train_y, test_x, test_y = make_cifar100(folder, meta)
    d = load_named("cifar100", tmp_path)
    assert_split(d.train_x, d.train_y, train_x, train_y)
    assert_split(d.test_x, d.test_y, test_x, test_y)
    assert d.classes == ([f"f{i}" for i in range(100)] if meta else list(CIFAR100_CLASSES))
    assert len(d.files) == 2 + meta


def test_cifar100_standard_names():
    assert len(set(CIFAR100_CLASSES)) == 100 and list(CIFAR100_CLASSES) == sorted(CIFAR100_CLASSES)
    assert CIFAR100_CLASSES[:2] == ("apple", "aquarium_fish") and CIFAR100_CLASSES[-1] == "worm"


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason=f"Debian package dataset-fashion-mnist not installed ({DEBIAN_FASHION})")
def test_debian_fashion_mnist():
    d = load_named("fashion_mnist", DEBIAN_FASHION)
    assert d.train_x.shape == (60000, 1, 28, 28) and d.test_x.shape == (10000, 1, 28, 28)
    assert d.train_y.shape == (60000,) and d.test_y.shape == (10000,) and d.train_x.dtype == torch.uint8
    assert len(d.classes) == 10 and d.classes[0] == "T-shirt/top"
    assert d.train_y.bincount().tolist() == [6000] * 10 and d.test_y.bincount().tolist() == [1000] * 10


# ---------------------------------------------------------------- errors
def test_data_dir_none():
    assert "data_dir" in usage_error("mnist", None) and "needs" in usage_error("cifar10", None)


def test_unknown_name(tmp_path):
    assert "mnist, fashion_mnist, cifar10, cifar100" in usage_error("svhn", tmp_path)


def test_idx_missing_file_names_it_and_the_folder(tmp_path):
    make_idx_set(tmp_path / "raw")
    (tmp_path / "raw" / "t10k-labels-idx1-ubyte").unlink()
    msg = usage_error("mnist", tmp_path)
    assert "t10k-labels-idx1-ubyte" in msg and str(tmp_path / "raw") in msg and "train-images" not in msg
    assert "download: true" in msg


def test_idx_nothing_there(tmp_path):
    msg = usage_error("fashion_mnist", tmp_path / "nope")
    assert all(s in msg for s in IDX_STEMS) and str(tmp_path / "nope") in msg and "does not exist" in msg


def test_idx_truncated(tmp_path):
    make_idx_set(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    msg = usage_error("mnist", tmp_path)
    assert "truncated" in msg and str(path) in msg


def test_idx_truncated_gz(tmp_path):
    make_idx_set(tmp_path, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    assert str(path) in usage_error("mnist", tmp_path)


def test_idx_wrong_magic_and_dims(tmp_path):
    make_idx_set(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros((5, 2)))
    assert "magic number 0x00000802" in usage_error("mnist", tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5))
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((5, 32, 32)))
    assert "expected 28x28" in usage_error("mnist", tmp_path)


def test_idx_counts_differ(tmp_path):
    make_idx_set(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2))
    msg = usage_error("mnist", tmp_path)
    assert "3 images" in msg and "2 labels" in msg


def test_cifar_missing_file(tmp_path):
    make_cifar10(tmp_path / "cifar-10-batches-bin", meta=True)
    (tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin").unlink()
    msg = usage_error("cifar10", tmp_path)
    assert "data_batch_3.bin" in msg and str(tmp_path / "cifar-10-batches-bin") in msg and "cifar-10-binary.tar.gz" in msg


def test_cifar_truncated(tmp_path):
    make_cifar100(tmp_path, meta=False)
    path = tmp_path / "test.bin"
    path.write_bytes(path.read_bytes()[:-1])
    msg = usage_error("cifar100", tmp_path)
    assert "truncated" in msg and str(path) in msg


class _Trap:
    """Unpickling this makes a folder: proof that something was unpickled."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


@pytest.mark.parametrize("name,layout", [("cifar10", "cifar-10-batches-py/data_batch_1"), ("cifar10", "data_batch_1"),
                                         ("cifar100", "cifar-100-python/train")])
def test_cifar_pickle_version_is_refused_unread(tmp_path, name, layout):
    trap = tmp_path / "unpickled"
    (tmp_path / layout).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / layout).write_bytes(pickle.dumps(_Trap(trap)))
    msg = usage_error(name, tmp_path)
    archive = "cifar-10-binary.tar.gz" if name == "cifar10" else "cifar-100-binary.tar.gz"
    assert "pickle" in msg and "binary version" in msg and archive in msg and "safety" in msg
    assert not trap.exists()


def test_cifar_folder_named_train_is_not_taken_for_the_pickle_version(tmp_path):
    (tmp_path / "train").mkdir()
    msg = usage_error("cifar100", tmp_path)
    assert "missing train.bin, test.bin" in msg and "pickle" not in msg


# ---------------------------------------------------------------- download (torchvision faked: nothing downloads)
def test_download_not_used_when_files_are_there(tmp_path, fake_torchvision):
    make_idx_set(tmp_path)
    make_cifar10(tmp_path, meta=False)
    load_named("mnist", tmp_path, download=True)
    load_named("cifar10", tmp_path, download=True)
    assert fake_torchvision == []


def test_download_idx_reads_torchvision_layout(tmp_path, fake_torchvision):
    d = load_named("mnist", tmp_path, download=True)
    assert fake_torchvision == [("MNIST", {"root": str(tmp_path), "download": True})]
    assert d.train_x.shape == (5, 1, 28, 28) and d.files[0] == str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz")


def test_download_failure_is_a_usage_error(tmp_path, fake_torchvision):
    msg = usage_error("fashion_mnist", tmp_path, download=True)
    assert "download failed" in msg and "no network at all" in msg
    assert "t10k-labels-idx1-ubyte" in msg and str(tmp_path / "FashionMNIST" / "raw") in msg
    msg = usage_error("cifar100", tmp_path, download=True)
    assert "download failed" in msg and "train.bin" in msg and str(tmp_path / "cifar-100-binary") in msg
    url, kw = fake_torchvision[-1]
    assert url == "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"
    assert kw == {"download_root": str(tmp_path), "md5": "03b5dce01913d631647c71ecec9e9cb8"}
