"""The standard data sets (MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100), read from their published
file formats into memory as uint8 tensors.

Why a reader of our own: the IDX and CIFAR binary formats are a header plus raw bytes, so one
np.frombuffer per file loads them whole, and nothing here ever unpickles: the python version of
CIFAR is pickle, which can run code when loaded, so only the binary version is read.
torchvision is imported only to download missing files.
"""
import gzip
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from utils.errors import UsageError

NAMES = ("mnist", "fashion_mnist", "cifar10", "cifar100")

IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
TORCHVISION_CLASS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)


@dataclass(frozen=True)
class CifarSpec:
    """Where one CIFAR binary version lives and how its records are laid out."""
    folder: str               # the folder its archive extracts to
    pickle_folder: str        # the python version's folder, refused
    pickle_file: str          # a python-version file that would sit beside the binary ones
    train: tuple[str, ...]
    test: str
    meta: str                 # class names, one per line; optional
    label_bytes: int          # bytes before the pixels in each record
    label_col: int            # which of them is the label
    classes: tuple[str, ...]  # the standard names, used when `meta` is missing
    archive: str
    md5: str


CIFAR = {
    "cifar10": CifarSpec("cifar-10-batches-bin", "cifar-10-batches-py", "data_batch_1",
                         tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin", "batches.meta.txt",
                         1, 0, CIFAR10_CLASSES, "cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530"),
    "cifar100": CifarSpec("cifar-100-binary", "cifar-100-python", "train",
                          ("train.bin",), "test.bin", "fine_label_names.txt",
                          2, 1, CIFAR100_CLASSES, "cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8"),
}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
CIFAR_PIXELS = 3 * 32 * 32


@dataclass
class NamedData:
    """One data set in memory: x (N, C, H, W) uint8 contiguous, y (N,) int64; test_* is the official test split."""
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    files: list[str]  # the paths read, for run.json


def load_named(name: str, data_dir: str | Path | None, download: bool = False) -> NamedData:
    """Read data set `name` from `data_dir`; with `download`, fetch the files first if they are missing."""
    if name not in NAMES:
        raise UsageError(f"dataset: unknown named data set '{name}'; choose one of {', '.join(NAMES)}")
    if data_dir is None:
        raise UsageError(f"data_dir: dataset {name} needs data_dir, the folder that holds its files "
                         "(or, with download: true, will hold them)")
    root = Path(data_dir).expanduser()
    if name in TORCHVISION_CLASS:
        return _load_idx_set(name, root, download)
    return _load_cifar(name, root, download)


# ---------------------------------------------------------------- finding files
def _search(folders: list[Path], wanted: Callable[[Path], list[Path | None]]) -> tuple[Path, list[Path | None]]:
    """The first folder holding every wanted file; else the one holding most of them (the first on ties),
    which is where the missing ones most likely belong."""
    hits = [(f, wanted(f)) for f in folders]
    for folder, paths in hits:
        if all(paths):
            return folder, paths
    return max(hits, key=lambda h: sum(p is not None for p in h[1]))


def _missing(name: str, folder: Path, missing: list[str], folders: list[Path], fix: str) -> UsageError:
    """The one-line error for files not found: which, where they go, where else we looked, the fix."""
    others = ", ".join(str(f) for f in folders if f != folder)
    absent = "" if folder.is_dir() else ", a folder that does not exist"
    return UsageError(f"{name}: missing {', '.join(missing)} in {folder}{absent} (also looked in {others}); {fix}")


def _bad(name: str, path: Path, why: str) -> UsageError:
    """The one-line error for a file that is there but not what its format says."""
    return UsageError(f"{name}: bad file {path}: {why}; replace it with an intact copy of the published file")


def _download_failed(name: str, e: Exception, folder: Path, files: list[str]) -> UsageError:
    """The one-line error for a failed download (no network, a bad checksum, ...)."""
    why = " ".join(f"{type(e).__name__}: {e}".split())
    return UsageError(f"{name}: download failed ({why}); missing {', '.join(files)} in {folder}; "
                      "put them there by hand, or retry where the network is reachable")


def _read_bytes(name: str, path: Path) -> bytes:
    """The whole file, inflated if its name ends in .gz."""
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as e:
        raise _bad(name, path, f"not a readable gzip file ({' '.join(str(e).split())})") from None


# ---------------------------------------------------------------- MNIST / Fashion-MNIST (IDX)
def _idx_folders(name: str, root: Path) -> list[Path]:
    """Search order: data_dir itself (Debian's layout), data_dir/raw, torchvision's data_dir/<Class>/raw."""
    return [root, root / "raw", root / TORCHVISION_CLASS[name] / "raw"]


def _idx_files(folder: Path) -> list[Path | None]:
    """Each of the four IDX files in `folder`: plain if present (no inflating), else gzipped, else None."""
    found = []
    for stem in IDX_STEMS:
        found.append(next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None))
    return found


def _fetch_idx(name: str, root: Path) -> None:
    """Download with torchvision, which writes root/<Class>/raw/ (imported here: it is slow to import)."""
    import torchvision.datasets

    getattr(torchvision.datasets, TORCHVISION_CLASS[name])(root=str(root), download=True)


def _find_idx(name: str, root: Path, download: bool) -> list[Path]:
    """The four IDX files, in IDX_STEMS order, downloading them first if asked and needed."""
    folders = _idx_folders(name, root)
    folder, paths = _search(folders, _idx_files)
    if not all(paths) and download:
        try:
            _fetch_idx(name, root)
        except Exception as e:  # noqa: BLE001 - any failure to fetch is the user's to fix
            raise _download_failed(name, e, folders[2], [f"{s}[.gz]" for s in IDX_STEMS]) from None
        folder, paths = _search(folders, _idx_files)
    if not all(paths):
        missing = [f"{s}[.gz]" for s, p in zip(IDX_STEMS, paths) if p is None]
        raise _missing(name, folder, missing, folders, "put them there, or set download: true to fetch them with torchvision")
    return paths


def _read_idx(name: str, path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes: magic 0x0000 08 <ndim>, ndim big-endian uint32 sizes, then the data."""
    raw = _read_bytes(name, path)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _bad(name, path, f"truncated ({len(raw)} bytes, shorter than the {header}-byte IDX header)")
    if raw[:4] != bytes((0, 0, 0x08, ndim)):
        raise _bad(name, path, f"magic number 0x{raw[:4].hex()}, expected 0x000008{ndim:02x} (an IDX file of unsigned bytes, {ndim}-d)")
    dims = [int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)]
    size = math.prod(dims)
    if len(raw) != header + size:
        what = "truncated" if len(raw) < header + size else "too long"
        raise _bad(name, path, f"{what} ({len(raw)} bytes, its header {dims} says {header + size})")
    return np.frombuffer(raw, dtype=np.uint8, count=size, offset=header).reshape(dims)


def _read_idx_pair(name: str, images: Path, labels: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One split: x (N, 1, 28, 28) uint8, y (N,) int64, with the counts and the label range checked."""
    x, y = _read_idx(name, images, 3), _read_idx(name, labels, 1)
    if x.shape[1:] != (28, 28):
        raise _bad(name, images, f"images are {x.shape[1]}x{x.shape[2]}, expected 28x28")
    if len(x) != len(y):
        raise UsageError(f"{name}: {images} holds {len(x)} images but {labels} holds {len(y)} labels; "
                         "replace them with intact copies of the published files")
    if len(y) and int(y.max()) > 9:
        raise _bad(name, labels, f"label {int(y.max())} is out of range 0..9")
    # copies: np.frombuffer's arrays are read-only views of the file's bytes
    return torch.from_numpy(x[:, None].copy()), torch.from_numpy(y.astype(np.int64))


def _load_idx_set(name: str, root: Path, download: bool) -> NamedData:
    """MNIST or Fashion-MNIST from its four IDX files."""
    paths = _find_idx(name, root, download)
    train_x, train_y = _read_idx_pair(name, paths[0], paths[1])
    test_x, test_y = _read_idx_pair(name, paths[2], paths[3])
    classes = [str(i) for i in range(10)] if name == "mnist" else list(FASHION_CLASSES)
    return NamedData(train_x, train_y, test_x, test_y, classes, [str(p) for p in paths])


# ---------------------------------------------------------------- CIFAR-10 / CIFAR-100 (binary version)
def _cifar_files(spec: CifarSpec) -> Callable[[Path], list[Path | None]]:
    """The finder of the required binary files (train..., test) in a folder."""
    def find(folder: Path) -> list[Path | None]:
        return [folder / f if (folder / f).is_file() else None for f in (*spec.train, spec.test)]
    return find


def _pickle_only(root: Path, spec: CifarSpec) -> Path | None:
    """Where the python (pickle) version is, if it is: its own folder, or its files in data_dir itself."""
    if (root / spec.pickle_folder).is_dir():
        return root / spec.pickle_folder
    return root / spec.pickle_file if (root / spec.pickle_file).is_file() else None


def _fetch_cifar(spec: CifarSpec, root: Path) -> None:
    """Download and extract the binary archive into root (torchvision imported here: it is slow to import)."""
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive(CIFAR_URL + spec.archive, download_root=str(root), md5=spec.md5)


def _find_cifar(name: str, root: Path, download: bool) -> tuple[Path, list[Path]]:
    """The folder of the binary files and the files (train..., test), downloading them first if asked and needed."""
    spec = CIFAR[name]
    folders = [root, root / spec.folder]
    folder, paths = _search(folders, _cifar_files(spec))
    if not all(paths) and download:
        try:
            _fetch_cifar(spec, root)
        except Exception as e:  # noqa: BLE001 - any failure to fetch is the user's to fix
            raise _download_failed(name, e, folders[1], [*spec.train, spec.test]) from None
        folder, paths = _search(folders, _cifar_files(spec))
    pickled = None if any(paths) else _pickle_only(root, spec)
    if pickled is not None:
        raise UsageError(f"{name}: {pickled} is the python (pickle) version, which is not read for safety (unpickling can run code); "
                         f"get the binary version {spec.archive} ({CIFAR_URL}{spec.archive}) and extract it into {root}, "
                         "or set download: true to fetch it with torchvision")
    if not all(paths):
        missing = [f for f, p in zip((*spec.train, spec.test), paths) if p is None]
        raise _missing(name, folder, missing, folders,
                       f"put them there (they come in {spec.archive} from {CIFAR_URL}{spec.archive}), "
                       "or set download: true to fetch them with torchvision")
    return folder, paths


def _read_cifar(name: str, path: Path, spec: CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    """One binary file: records of label byte(s) then 3072 pixels (1024 R, 1024 G, 1024 B, each 32x32 row-major)."""
    raw = path.read_bytes()
    record = spec.label_bytes + CIFAR_PIXELS
    if len(raw) == 0 or len(raw) % record:
        raise _bad(name, path, f"truncated ({len(raw)} bytes, not a whole number of {record}-byte records)")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    y = records[:, spec.label_col]
    if int(y.max()) >= len(spec.classes):
        raise _bad(name, path, f"label {int(y.max())} is out of range 0..{len(spec.classes) - 1}")
    return records[:, spec.label_bytes:].reshape(-1, 3, 32, 32), y


def _read_cifar_split(name: str, paths: list[Path], spec: CifarSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The files of one split, concatenated: x (N, 3, 32, 32) uint8, y (N,) int64."""
    parts = [_read_cifar(name, p, spec) for p in paths]
    # np.concatenate copies into a new contiguous array: the parts are read-only views of the files' bytes
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts]).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def _cifar_classes(name: str, folder: Path, spec: CifarSpec) -> tuple[list[str], list[Path]]:
    """The class names from the meta file if there (and the file, to record), else the standard ones."""
    meta = folder / spec.meta
    if not meta.is_file():
        return list(spec.classes), []
    classes = [line.strip() for line in meta.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(classes) != len(spec.classes):
        raise _bad(name, meta, f"{len(classes)} class names, expected {len(spec.classes)}")
    return classes, [meta]


def _load_cifar(name: str, root: Path, download: bool) -> NamedData:
    """CIFAR-10 or CIFAR-100 (fine labels) from the binary version's files."""
    spec = CIFAR[name]
    folder, paths = _find_cifar(name, root, download)
    train_x, train_y = _read_cifar_split(name, paths[:-1], spec)
    test_x, test_y = _read_cifar_split(name, paths[-1:], spec)
    classes, meta = _cifar_classes(name, folder, spec)
    return NamedData(train_x, train_y, test_x, test_y, classes, [str(p) for p in (*paths, *meta)])
