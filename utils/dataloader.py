"""Data: the three data sets, the fixed split, and loaders whose output is a pure function of
(seed, epoch, index).

Why not torch's RandomSampler and per-worker RNGs: those streams depend on num_workers and on
where a run was cut. Here the order of epoch e is randperm(n) under a generator seeded by
hash(seed, e), and the augmentation of sample i in epoch e is drawn from hash(seed, e, i), so a
run continued mid-epoch, or with other num_workers or processes, sees exactly the same batches.
"""
import hashlib
import importlib.util
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from utils.config import Config
from utils.errors import UsageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# ---------------------------------------------------------------- counter-based randomness
_M = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A 64-bit integer hash (splitmix64's finaliser); uint64 arrays wrap on overflow."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_ints(*parts) -> np.ndarray:
    """hash(parts...) elementwise; each part an int or an int array."""
    h = np.zeros(1, dtype=np.uint64)
    for p in parts:
        h = _splitmix64(h ^ (np.asarray(p, dtype=np.int64).astype(np.uint64) & _M))
    return h


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch `epoch`'s order, a positive int64."""
    return int(hash_ints(seed, epoch, 0x5EED)[0] >> np.uint64(1))


def sample_randint(seed: int, epoch: int, index: np.ndarray, stream: int, high: int) -> np.ndarray:
    """One integer in [0, high) per sample, a pure function of (seed, epoch, index, stream)."""
    return (hash_ints(seed, epoch, index, stream) % np.uint64(high)).astype(np.int64)


# ---------------------------------------------------------------- sources
@dataclass
class DataInfo:
    """What a model and the inference preprocessing need to know about the data."""
    class_names: list
    in_channels: int
    image_size: int
    mean: tuple
    std: tuple


def data_fields(info: DataInfo) -> dict:
    """What run.json keeps of DataInfo besides class_names (which it keeps at the top)."""
    return {"in_channels": info.in_channels, "image_size": info.image_size, "mean": info.mean, "std": info.std}


def info_from_run(run: dict) -> DataInfo:
    """The DataInfo a run was trained with, from its run.json."""
    d = run["data"]
    return DataInfo(run["class_names"], d["in_channels"], d["image_size"], tuple(d["mean"]), tuple(d["std"]))


class TensorSource:
    """All samples in memory: x (N, C, H, W) float, already normalised; y (N,) int64."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, ids: list):
        self.x, self.y, self.ids = x, y, ids

    def __len__(self) -> int:
        return len(self.y)

    def load(self, idx: list) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(idx)
        return self.x[t], self.y[t]


class FileSource:
    """Image files decoded on demand: samples is a list of (path, label)."""

    def __init__(self, samples: list, info: DataInfo, ids: list):
        self.samples, self.info, self.ids = samples, info, ids

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, idx: list) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack([load_image(self.samples[i][0], self.info) for i in idx])
        return x, torch.tensor([self.samples[i][1] for i in idx], dtype=torch.int64)


def normalise(x: torch.Tensor, info: DataInfo) -> torch.Tensor:
    """(N, C, H, W) or (C, H, W) in [0, 1] -> normalised with the data's mean and std."""
    shape = (-1, 1, 1)
    return (x - torch.tensor(info.mean).view(shape)) / torch.tensor(info.std).view(shape)


def load_image(path, info: DataInfo) -> torch.Tensor:
    """One image file -> (C, S, S) float, preprocessed exactly as in training."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L" if info.in_channels == 1 else "RGB")
        im = im.resize((info.image_size, info.image_size), Image.BILINEAR)
        a = np.asarray(im, dtype=np.float32) / 255.0
    t = torch.from_numpy(a.copy())
    t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
    return normalise(t, info)


def _mean_std(cfg: Config, channels: int) -> tuple:
    if cfg.pretrained and channels == 3:
        return IMAGENET_MEAN_STD
    return (0.5,) * channels, (0.5,) * channels


def _digits(cfg: Config) -> tuple[TensorSource, DataInfo]:
    """scikit-learn's 1,797 8x8 digits, read from its data file (importing sklearn is slow)."""
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is not None and path.exists():
        raw = np.loadtxt(path, delimiter=",", dtype=np.float32)
        pixels, target = raw[:, :-1], raw[:, -1].astype(np.int64)
    else:
        from sklearn.datasets import load_digits
        d = load_digits()
        pixels, target = d.data.astype(np.float32), d.target.astype(np.int64)
    size = cfg.image_size or 8
    info = DataInfo([str(i) for i in range(10)], 1, size, *_mean_std(cfg, 1))
    x = torch.from_numpy(pixels).view(-1, 1, 8, 8) / 16.0  # ink is bright, in [0, 1]
    if size != 8:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return TensorSource(normalise(x, info), torch.from_numpy(target), list(range(len(target)))), info


def _fake(cfg: Config) -> tuple[TensorSource, DataInfo]:
    """torchvision's FakeData (random images, random labels), for smoke tests."""
    from torchvision.datasets import FakeData

    size = cfg.image_size or 32
    info = DataInfo([f"class_{i}" for i in range(10)], 3, size, *_mean_std(cfg, 3))
    fake = FakeData(size=cfg.fake_size, image_size=(3, size, size), num_classes=10, random_offset=cfg.split_seed)
    xs, ys = [], []
    for i in range(len(fake)):
        img, label = fake[i]
        xs.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1))
        ys.append(int(label))
    return TensorSource(normalise(torch.stack(xs), info), torch.tensor(ys), list(range(len(ys)))), info


def folder_samples(root: Path) -> tuple[list, list]:
    from torchvision.datasets import ImageFolder

    try:
        folder = ImageFolder(str(root))
    except (FileNotFoundError, OSError) as e:
        raise UsageError(f"data_dir: {root}: {str(e).splitlines()[0]}; it needs one sub-folder of images per class") from None
    return folder.classes, folder.samples


# ---------------------------------------------------------------- the split
@dataclass
class Data:
    """The two splits and what is known about them."""
    train: "SplitSet"
    val: "SplitSet"
    info: DataInfo
    val_hash: str
    train_ids: list
    val_ids: list


def _hash_ids(dataset: str, ids: list) -> str:
    return hashlib.sha256((dataset + "\n" + "\n".join(map(str, ids))).encode()).hexdigest()


def split_indices(n: int, val_fraction: float, split_seed: int) -> tuple[list, list]:
    """(train, val) sample indices, fixed by split_seed alone, each sorted."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed)).tolist()
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def build_data(cfg: Config) -> Data:
    """The configured data set, split into train and validation sets."""
    if cfg.dataset == "image_folder":
        root = Path(cfg.data_dir).expanduser()
        size = cfg.image_size or 64
        info = DataInfo([], 3, size, *_mean_std(cfg, 3))
        if (root / "train").is_dir() and (root / "val").is_dir():
            classes, train_samples = folder_samples(root / "train")
            val_classes, val_samples = folder_samples(root / "val")
            if val_classes != classes:
                raise UsageError(f"data_dir: {root}/val has classes {val_classes}, train/ has {classes}; make them equal")
            info.class_names = classes
            rel = [str(Path(p).relative_to(root)) for p, _ in train_samples + val_samples]
            train_src = FileSource(train_samples, info, rel[:len(train_samples)])
            val_src = FileSource(val_samples, info, rel[len(train_samples):])
            train, val = SplitSet(train_src, list(range(len(train_src)))), SplitSet(val_src, list(range(len(val_src))))
            return Data(train, val, info, _hash_ids(cfg.dataset, val_src.ids), train_src.ids, val_src.ids)
        classes, samples = folder_samples(root)
        info.class_names = classes
        source = FileSource(samples, info, [str(Path(p).relative_to(root)) for p, _ in samples])
    elif cfg.dataset == "fake":
        source, info = _fake(cfg)
    else:
        source, info = _digits(cfg)
    if len(source) < 2:
        raise UsageError(f"dataset {cfg.dataset}: {len(source)} sample(s); it needs at least 2 to split")
    train_idx, val_idx = split_indices(len(source), cfg.val_fraction, cfg.split_seed)
    train_ids = [source.ids[i] for i in train_idx]
    val_ids = [source.ids[i] for i in val_idx]
    return Data(SplitSet(source, train_idx), SplitSet(source, val_idx), info,
                _hash_ids(cfg.dataset, val_ids), train_ids, val_ids)


# ---------------------------------------------------------------- datasets and loaders
def translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int, fill: torch.Tensor) -> torch.Tensor:
    """Shift each image of x (N, C, H, W) by (dy[n], dx[n]) pixels, |d| <= pad, filling the
    uncovered border with `fill` (C, 1, 1)."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x - fill, (pad, pad, pad, pad)) + fill
    rows = (pad - dy).view(n, 1) + torch.arange(h)              # (N, H)
    cols = (pad - dx).view(n, 1) + torch.arange(w)              # (N, W)
    out = padded[torch.arange(n).view(n, 1, 1), :, rows.view(n, h, 1), cols.view(n, 1, w)]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


class SplitSet(Dataset):
    """One split of a source. Items are fetched a batch at a time: `__getitems__` takes a list
    of (epoch, position) keys and returns the collated (x, y) batch, augmented when asked."""

    def __init__(self, source, positions: list):
        self.source, self.positions = source, positions
        self.augment_seed: Optional[int] = None  # set by enable_augment for the training split
        self.fill = torch.zeros(1, 1, 1)

    def enable_augment(self, seed: int, info: DataInfo) -> None:
        """Random translations drawn from hash(seed, epoch, position); the border is black."""
        self.augment_seed = seed
        self.fill = normalise(torch.zeros(info.in_channels, 1, 1), info)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, key):
        return self.__getitems__([key])

    def __getitems__(self, keys: list) -> tuple[torch.Tensor, torch.Tensor]:
        epochs = np.array([k[0] for k in keys])
        pos = np.array([k[1] for k in keys])
        x, y = self.source.load([self.positions[p] for p in pos])
        if self.augment_seed is not None:
            pad = max(1, x.shape[-1] // 8)
            dy = sample_randint(self.augment_seed, epochs, pos, 1, 2 * pad + 1) - pad
            dx = sample_randint(self.augment_seed, epochs, pos, 2, 2 * pad + 1) - pad
            x = translate(x, torch.from_numpy(dy), torch.from_numpy(dx), pad, self.fill)
        return x, y


class EpochBatchSampler(Sampler):
    """Micro-batches of (epoch, position) keys for one process.

    Global step s of epoch e covers order[s*B:(s+1)*B] of the epoch's permutation (B: the
    global batch); it is cut into `accum` micro-batches, each cut into `world` equal slices,
    and this rank takes its slice of each. The last incomplete global batch is dropped, so
    every step has the same size on any number of processes.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, accum: int = 1):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world, self.accum = rank, world, accum
        self.micro = batch_size // (world * accum)
        self.epoch, self.start_step = 0, 0

    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return (self.steps_per_epoch() - self.start_step) * self.accum

    def __iter__(self) -> Iterator[list]:
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))).tolist()
        chunk = self.batch_size // self.accum
        for s in range(self.start_step, self.steps_per_epoch()):
            for a in range(self.accum):
                lo = s * self.batch_size + a * chunk + self.rank * self.micro
                yield [(self.epoch, p) for p in order[lo:lo + self.micro]]


class EvalBatchSampler(Sampler):
    """This rank's share of the split (positions rank, rank + world, ...), in order, unpadded."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1):
        self.positions = list(range(rank, n, world))
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.positions) // self.batch_size)

    def __iter__(self) -> Iterator[list]:
        for i in range(0, len(self.positions), self.batch_size):
            yield [(-1, p) for p in self.positions[i:i + self.batch_size]]


def _collated(batch):
    return batch  # SplitSet.__getitems__ returns the batch already collated


def _worker_init(_: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the main process
    torch.set_num_threads(1)


def make_loader(dataset: SplitSet, batch_sampler: Sampler, num_workers: int, pin_memory: bool) -> DataLoader:
    """A DataLoader over pre-collated batches. Its own generator keeps it from drawing from the
    global torch RNG (which would shift dropout after a mid-epoch resume)."""
    return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=_collated, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0,
                      worker_init_fn=_worker_init if num_workers else None, generator=torch.Generator())


def list_images(path: Path) -> list[Path]:
    """The image files at `path`: the file itself, or every image under the folder, sorted."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UsageError(f"--input: '{path}' does not exist; give an image file or a folder of images")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise UsageError(f"--input: no image files ({', '.join(IMAGE_EXTENSIONS)}) under '{path}'")
    return files
