"""Data: the data sets, the fixed split, and loaders whose output is a pure function of
(seed, epoch, index).

Why not torch's RandomSampler and per-worker RNGs: those streams depend on num_workers and on
where a run was cut. Here the order of epoch e is randperm(n) under a generator seeded by
hash(seed, e), and the augmentation of sample i in epoch e is drawn from hash(seed, e, i)
(data/augment.py), so a run continued mid-epoch, or with other num_workers or processes, sees
exactly the same batches.

Samples are kept as uint8 (or float in [0, 1] for the digits) and normalised per batch.
"""
import concurrent.futures
import csv
import dataclasses
import functools
import hashlib
import io
import os
import signal
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from data.augment import Augment, epoch_seed, erase, geometric, mix, partners
from data.cases import is_case_folder
from data.named import NAMES, load_named
from utils.config import Config
from utils.errors import UsageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


# ---------------------------------------------------------------- sources
@dataclass
class DataInfo:
    """What a model and the inference preprocessing need to know about the data."""
    class_names: list
    in_channels: int
    image_size: "int | tuple"  # an image's square side, or a volume's (X, Y, Z)
    mean: tuple
    std: tuple

    @property
    def volumetric(self) -> bool:
        """3D samples (N, C, X, Y, Z) rather than 2D (N, C, H, W)."""
        return isinstance(self.image_size, (tuple, list))


def data_fields(info: DataInfo) -> dict:
    """What run.json keeps of DataInfo besides class_names (which it keeps at the top)."""
    return {"in_channels": info.in_channels, "image_size": info.image_size, "mean": info.mean, "std": info.std}


def info_from_run(run: dict) -> DataInfo:
    """The DataInfo a run was trained with, from its run.json."""
    d = run["data"]
    size = tuple(d["image_size"]) if isinstance(d["image_size"], list) else d["image_size"]
    return DataInfo(run["class_names"], d["in_channels"], size, tuple(d["mean"]), tuple(d["std"]))


class TensorSource:
    """All samples in memory: x (N, C, H, W) uint8 or float in [0, 1], not normalised; y (N,) int64."""

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
        x = torch.stack([decode_image(self.samples[i][0], self.info) for i in idx])
        return x, torch.tensor([self.samples[i][1] for i in idx], dtype=torch.int64)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [0, 1]; float is already there."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def normalise(x: torch.Tensor, info: DataInfo) -> torch.Tensor:
    """(N, C, *spatial) or (C, *spatial) in [0, 1] -> normalised with the data's mean and std."""
    shape = (-1,) + (1,) * (3 if info.volumetric else 2)
    return (x - torch.tensor(info.mean).view(shape)) / torch.tensor(info.std).view(shape)


def decode_image(path, info: DataInfo) -> torch.Tensor:
    """One image file -> (C, S, S) uint8, in the data's channels, resized to its square side
    (bilinear, antialiased). PNG and JPEG are decoded by torchvision.io, faster than PIL on small
    images (bench/results.md); other formats, and torchvision releases without it, use PIL.
    Training and inference both come through here."""
    from torchvision.transforms.v2.functional import resize

    decode = _torchvision_decoder()
    if decode is not None and Path(path).suffix.lower() in (".png", ".jpg", ".jpeg"):
        x = decode(str(path), info.in_channels)
    else:
        from PIL import Image

        with Image.open(path) as im:
            a = np.asarray(im.convert("L" if info.in_channels == 1 else "RGB"), dtype=np.uint8)
        x = torch.from_numpy(a.copy())
        x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
    if x.shape[-2:] != (info.image_size, info.image_size):
        x = resize(x, [info.image_size, info.image_size], antialias=True)
    return x.contiguous()


@functools.cache
def _torchvision_decoder():
    """torchvision.io's decode_image as f(path, channels), or None where it is gone. torchvision
    0.29 deprecates it in favour of TorchCodec, which this template does not depend on; its
    warning (one per call) is silenced here, and only here."""
    try:
        from torchvision.io import ImageReadMode, decode_image
    except ImportError:
        return None
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision are deprecated",
                            category=DeprecationWarning)
    return lambda path, channels: decode_image(path, mode=ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB)


def load_image(path, info: DataInfo) -> torch.Tensor:
    """One image file -> (C, S, S) float, preprocessed exactly as in training."""
    return normalise(to_unit(decode_image(path, info)), info)


def _mean_std(channels: int) -> tuple:
    """Normalisation to [-1, 1]; a task may set others (prepare_data)."""
    return (0.5,) * channels, (0.5,) * channels


def _digits(cfg: Config) -> tuple[TensorSource, DataInfo]:
    """scikit-learn's 1,797 8x8 digits, read from its data file (importing sklearn is slow)."""
    import importlib.util

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
    info = DataInfo([str(i) for i in range(10)], 1, size, *_mean_std(1))
    x = torch.from_numpy(pixels).view(-1, 1, 8, 8) / 16.0  # ink is bright, in [0, 1]
    if size != 8:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return TensorSource(x, torch.from_numpy(target), list(range(len(target)))), info


def _fake(cfg: Config) -> tuple[TensorSource, DataInfo]:
    """torchvision's FakeData (random images, random labels), for smoke tests."""
    from torchvision.datasets import FakeData

    size = cfg.image_size or 32
    info = DataInfo([f"class_{i}" for i in range(10)], 3, size, *_mean_std(3))
    fake = FakeData(size=cfg.fake_size, image_size=(3, size, size), num_classes=10, random_offset=cfg.split_seed)
    xs, ys = [], []
    for i in range(len(fake)):
        img, label = fake[i]
        xs.append(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1))
        ys.append(int(label))
    return TensorSource(torch.stack(xs).contiguous(), torch.tensor(ys), list(range(len(ys)))), info


def folder_samples(root: Path) -> tuple[list, list]:
    from torchvision.datasets import ImageFolder

    try:
        folder = ImageFolder(str(root))
    except (FileNotFoundError, OSError) as e:
        raise UsageError(f"data_dir: {root}: {str(e).splitlines()[0]}; it needs one sub-folder of images per class") from None
    return folder.classes, folder.samples


def median_side(paths: list, most: int = 256) -> int:
    """The median of max(width, height) over up to `most` evenly spaced files (headers only)."""
    from PIL import Image

    step = max(1, len(paths) // most)
    sides = []
    for p in paths[::step][:most]:
        try:
            with Image.open(p) as im:
                sides.append(max(im.size))
        except OSError as e:
            raise UsageError(f"data_dir: cannot read image {p} ({e}); remove or fix the file") from None
    return max(4, int(np.median(sides)))


def cached(source: FileSource, limit_mb: int) -> "TensorSource | FileSource":
    """The files decoded once into memory as uint8 when they fit in `limit_mb` MiB; else `source`.
    Decoding runs in threads: PIL releases the GIL while it decodes."""
    info = source.info
    if not limit_mb or len(source) * info.in_channels * info.image_size**2 > limit_mb * 2**20:
        return source
    paths = [p for p, _ in source.samples]
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            x = torch.stack(list(pool.map(lambda p: decode_image(p, info), paths, chunksize=64)))
    except OSError as e:
        raise UsageError(f"data_dir: cannot read an image ({e}); remove or fix the file") from None
    return TensorSource(x, torch.tensor([c for _, c in source.samples], dtype=torch.int64), source.ids)


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
    val_split: str = "held out by split_seed"  # where the validation samples come from, for run.json
    geometry: Optional[dict] = None  # volumes: orientation, spacing and affine after resampling (data/volumes.py)
    fold_table: Optional[str] = None  # folds: every pooled sample's fold as CSV (index,id,fold), saved with a group
    voxel_labels: bool = False  # cases with a label per voxel (data/cases.py), not samples with one class each


def _hash_ids(dataset: str, ids: list) -> str:
    return hashlib.sha256((dataset + "\n" + "\n".join(map(str, ids))).encode()).hexdigest()


def split_indices(n: int, val_fraction: float, split_seed: int) -> tuple[list, list]:
    """(train, val) sample indices, fixed by split_seed alone, each sorted."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed)).tolist()
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def build_data(cfg: Config) -> Data:
    """The configured data set, split into train and validation sets (with folds: fold `fold` held out)."""
    data = _split_data(cfg)
    return fold_split(data, cfg) if cfg.folds else data


def _split_data(cfg: Config) -> Data:
    if cfg.dataset in NAMES:
        return _named(cfg)
    if cfg.dataset == "volume_folder":
        return _case_folder(cfg) if is_case_folder(cfg.data_dir) else _volume_folder(cfg)
    if cfg.dataset == "mni152":
        return _brain(cfg)
    if cfg.dataset == "mni152_tissue":
        from data.brain import tissue_cases

        return _cases_split(cfg, *tissue_cases())
    if cfg.dataset == "image_folder":
        root = Path(cfg.data_dir).expanduser()
        if (root / "train").is_dir() and (root / "val").is_dir():
            return _folder_with_val(cfg, root)
        classes, samples = folder_samples(root)
        info = DataInfo(classes, 3, cfg.image_size or median_side([p for p, _ in samples]), *_mean_std(3))
        source = cached(FileSource(samples, info, [str(Path(p).relative_to(root)) for p, _ in samples]), cfg.cache_mb)
    elif cfg.dataset == "fake":
        source, info = _fake(cfg)
    else:
        source, info = _digits(cfg)
    if len(source) < 2:
        raise UsageError(f"dataset {cfg.dataset}: {len(source)} sample(s); it needs at least 2 to split")
    train_idx, val_idx = split_indices(len(source), cfg.val_fraction, cfg.split_seed)
    train_ids = [source.ids[i] for i in train_idx]
    val_ids = [source.ids[i] for i in val_idx]
    return Data(SplitSet(source, train_idx, info), SplitSet(source, val_idx, info), info,
                _hash_ids(cfg.dataset, val_ids), train_ids, val_ids)


def labels_of(source) -> list[int]:
    """Every sample's class, without decoding a file."""
    return source.y.tolist() if hasattr(source, "y") else [int(c) for _, c in source.samples]


def fold_assignment(labels: list[int], folds: int, split_seed: int) -> list[int]:
    """Each sample's fold, stratified: each class in turn is shuffled (by split_seed) and dealt round
    the folds, starting where the previous class stopped, so that fold sizes differ by at most one."""
    g = torch.Generator().manual_seed(split_seed)
    out, turn = [0] * len(labels), 0
    for c in sorted(set(labels)):
        members = [i for i, label in enumerate(labels) if label == c]
        for j in torch.randperm(len(members), generator=g).tolist():
            out[members[j]] = turn % folds
            turn += 1
    return out


def fold_split(data: Data, cfg: Config) -> Data:
    """Fold `cfg.fold` (0 when null) of `cfg.folds` held out for validation, the others trained on. The pool is
    every sample where the split was drawn by split_seed, else the training split (a val/ folder or an
    official test split stays aside)."""
    source = data.train.source
    pooled = data.val_split == "held out by split_seed"
    positions = sorted(data.train.positions + data.val.positions) if pooled else list(data.train.positions)
    if len(positions) < cfg.folds:
        raise UsageError(f"folds: {cfg.folds} folds of {len(positions)} samples; choose at most {len(positions)}")
    labels = labels_of(source)
    assigned = fold_assignment([labels[p] for p in positions], cfg.folds, cfg.split_seed)
    fold = cfg.fold or 0
    train_pos = [p for p, f in zip(positions, assigned) if f != fold]
    val_pos = [p for p, f in zip(positions, assigned) if f == fold]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([("index", "id", "fold"), *((p, source.ids[p], f) for p, f in zip(positions, assigned))])
    table = buf.getvalue()
    val_ids = [source.ids[p] for p in val_pos]
    what = "every sample" if pooled else f"the training split ({data.val_split} aside)"
    return dataclasses.replace(data, train=SplitSet(source, train_pos, data.info), val=SplitSet(source, val_pos, data.info),
                               val_hash=_hash_ids(cfg.dataset, val_ids), train_ids=[source.ids[p] for p in train_pos],
                               val_ids=val_ids, val_split=f"fold {fold} of {cfg.folds} of {what} (stratified, split_seed "
                               f"{cfg.split_seed})", fold_table=table)


def _whole(source, info: DataInfo) -> "SplitSet":
    return SplitSet(source, list(range(len(source))), info)


def _folder_with_val(cfg: Config, root: Path) -> Data:
    """An image folder with train/ and val/ sub-folders of the same classes."""
    classes, train_samples = folder_samples(root / "train")
    val_classes, val_samples = folder_samples(root / "val")
    if val_classes != classes:
        raise UsageError(f"data_dir: {root}/val has classes {val_classes}, train/ has {classes}; make them equal")
    size = cfg.image_size or median_side([p for p, _ in train_samples])
    info = DataInfo(classes, 3, size, *_mean_std(3))
    rel = [str(Path(p).relative_to(root)) for p, _ in train_samples + val_samples]
    train_src = cached(FileSource(train_samples, info, rel[:len(train_samples)]), cfg.cache_mb)
    val_src = cached(FileSource(val_samples, info, rel[len(train_samples):]), cfg.cache_mb)
    return Data(_whole(train_src, info), _whole(val_src, info), info, _hash_ids(cfg.dataset, val_src.ids),
                train_src.ids, val_src.ids, "the val/ folder")


# ---------------------------------------------------------------- volumes
class VolumeSource:
    """Volume files read on demand (data/volumes.py): samples is a list of (path, label)."""

    def __init__(self, samples: list, info: DataInfo, ids: list, intensity: str):
        self.samples, self.info, self.ids, self.intensity = samples, info, ids, intensity

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, idx: list) -> tuple[torch.Tensor, torch.Tensor]:
        from data.volumes import load_volume

        x = torch.stack([load_volume(self.samples[i][0], self.info.image_size, self.intensity) for i in idx])
        return x, torch.tensor([self.samples[i][1] for i in idx], dtype=torch.int64)


def volume_samples(root: Path) -> tuple[list, list]:
    """(class names, [(path, class index)]) of a folder of class sub-folders of volume files, or
    ([], [(path, -1)]) of a flat folder of them (unlabelled)."""
    from data.volumes import VOLUME_EXTENSIONS, is_volume

    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:  # a flat folder: unlabelled volumes (label -1), for generative tasks
        flat = sorted(p for p in root.iterdir() if p.is_file() and is_volume(p))
        if not flat:
            raise UsageError(f"data_dir: {root} has no volume files ({', '.join(VOLUME_EXTENSIONS)}) and no class sub-folders")
        return [], [(str(p), -1) for p in flat]
    samples = []
    for c, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.is_file() and is_volume(p))
        if not files:
            raise UsageError(f"data_dir: class folder {root / name} holds no volume ({', '.join(VOLUME_EXTENSIONS)}); "
                             "add some or remove the folder")
        samples += [(str(p), c) for p in files]
    return classes, samples


def volume_info(cfg: Config, classes: list, samples: list) -> tuple[DataInfo, dict]:
    """One channel, the configured size or the files' median shape, normalised to [-1, 1]; and the
    geometry run.json keeps (data/volumes.py), from the headers of up to 64 files."""
    from data.volumes import canonical_header, geometry

    headers = [canonical_header(Path(p)) for p, _ in samples[:: max(1, len(samples) // 64)]]
    if cfg.volume_size:
        size = tuple(cfg.volume_size)
    else:
        size = tuple(int(v) for v in np.median([shape for shape, _ in headers], axis=0))
    return DataInfo(classes, 1, size, *_mean_std(1)), geometry(headers, size)


def cached_volumes(source: VolumeSource, limit_mb: int) -> "TensorSource | VolumeSource":
    """The volumes decoded once (read, reoriented, normalised and resampled: float32), by a thread
    per core: into memory when they fit in `limit_mb` MiB, else into a file of the local temporary
    folder, mapped into memory and unlinked at once (the disk space comes back when this process
    and its loader workers end, even after SIGKILL), from which every epoch streams at the disk's
    speed instead of decoding again. `source` itself (files decoded every epoch) with cache_mb 0,
    or when the temporary folder has no room."""
    shape = (len(source), 1, *source.info.image_size)
    nbytes = 4 * int(np.prod(shape))
    if not limit_mb:
        return source
    if nbytes <= limit_mb * 2**20:
        x = torch.empty(shape)
    else:
        x = mapped_scratch(shape, nbytes)
        if x is None:
            return source
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for i, volume in enumerate(pool.map(lambda i: source.load([i])[0], range(len(source)))):
            x[i] = volume[0]
    return TensorSource(x, torch.tensor([c for _, c in source.samples], dtype=torch.int64), source.ids)


def mapped_scratch(shape: tuple, nbytes: int) -> Optional[torch.Tensor]:
    """A float32 tensor of `shape` backed by an unlinked file in the temporary folder, or None when
    the folder has less than nbytes (plus a tenth) free."""
    import shutil
    import tempfile

    folder = tempfile.gettempdir()
    if shutil.disk_usage(folder).free < nbytes * 1.1:
        return None
    with tempfile.NamedTemporaryFile(prefix="template-volumes-", dir=folder) as f:  # deleted on close: only the mapping stays
        array = np.memmap(f.name, dtype=np.float32, mode="w+", shape=shape)
    return torch.from_numpy(array)


def _volume_folder(cfg: Config) -> Data:
    """Class sub-folders of volumes, with train/ and val/ if present, else split by val_fraction."""
    root = Path(cfg.data_dir).expanduser()
    parts = [root / "train", root / "val"] if (root / "train").is_dir() and (root / "val").is_dir() else [root]
    found = [volume_samples(part) for part in parts]
    if len(found) == 2 and found[0][0] != found[1][0]:
        raise UsageError(f"data_dir: {root}/val has classes {found[1][0]}, train/ has {found[0][0]}; make them equal")
    classes, samples = found[0][0], [s for _, part in found for s in part]
    info, grid = volume_info(cfg, classes, samples)
    ids = [str(Path(p).relative_to(root)) for p, _ in samples]
    source = cached_volumes(VolumeSource(samples, info, ids, cfg.intensity), cfg.cache_mb)
    if len(parts) == 2:
        n_train = len(found[0][1])
        train_idx, val_idx = list(range(n_train)), list(range(n_train, len(samples)))
        split = "the val/ folder"
    else:
        train_idx, val_idx = split_indices(len(samples), cfg.val_fraction, cfg.split_seed)
        split = "held out by split_seed"
    val_ids = [ids[i] for i in val_idx]
    return Data(SplitSet(source, train_idx, info), SplitSet(source, val_idx, info), info,
                _hash_ids(cfg.dataset, val_ids), [ids[i] for i in train_idx], val_ids, split, grid)


def _brain(cfg: Config) -> Data:
    """The MNI152 demo (data/brain.py): patches of the left hemisphere to train, of the right to validate."""
    from data.brain import DEFAULT_SIDE, REGIONS, brain_patches, patch_geometry

    side = cfg.volume_size[0] if cfg.volume_size else DEFAULT_SIDE
    if cfg.volume_size and len(set(cfg.volume_size)) > 1:
        raise UsageError(f"volume_size: dataset mni152 cuts cubes; give one side, got {cfg.volume_size}")
    parts = brain_patches(side)
    info = DataInfo(list(REGIONS), 1, (side, side, side), *_mean_std(1))
    train, val = (TensorSource(*parts[k]) for k in ("train", "val"))
    centre = tuple(int(v) for v in train.ids[0].split("/")[-1].split("_"))  # ids: hemisphere/region/x_y_z
    return Data(_whole(train, info), _whole(val, info), info, _hash_ids(cfg.dataset, val.ids), train.ids, val.ids,
                "the right hemisphere (training: the left)", patch_geometry(side, centre))


def _case_folder(cfg: Config) -> Data:
    """nnU-Net's raw layout (data/cases.py): whole cases held out by val_fraction and split_seed (or folds)."""
    from data.cases import RULES, load_cases

    rule = cfg.intensity if cfg.intensity in RULES else "auto"
    source, spec, geometry = load_cases(Path(cfg.data_dir).expanduser(), getattr(cfg, "spacing", None), rule)
    return _cases_split(cfg, source, geometry)


def _cases_split(cfg: Config, source, geometry: dict) -> Data:
    """Cases (data/cases.py's CaseSource) split into whole training and validation cases."""
    if len(source) < 2:
        raise UsageError(f"data_dir: {len(source)} case(s); at least 2 are needed to hold one out for validation")
    if "split" in geometry:  # the data set fixes its split (mni152_tissue: left hemisphere to train, right to validate)
        train_idx, val_idx, split = geometry["split"]["train"], geometry["split"]["val"], geometry["split"]["why"]
    else:
        train_idx, val_idx = split_indices(len(source), cfg.val_fraction, cfg.split_seed)
        split = "held out by split_seed"
    channels = len(geometry["channels"])
    info = DataInfo(list(geometry["labels"]), channels, tuple(geometry["median_shape"]), (0.0,) * channels, (1.0,) * channels)
    val_ids = [source.ids[i] for i in val_idx]
    return Data(SplitSet(source, train_idx, info), SplitSet(source, val_idx, info), info, _hash_ids(cfg.dataset, val_ids),
                [source.ids[i] for i in train_idx], val_ids, split, geometry, voxel_labels=True)


def _named(cfg: Config) -> Data:
    """MNIST, Fashion-MNIST, CIFAR: the official training split to train, the official test split to validate."""
    d = load_named(cfg.dataset, cfg.data_dir, cfg.download)
    size = cfg.image_size or d.train_x.shape[-1]
    train_x, test_x = (_resized(x, size) for x in (d.train_x, d.test_x))
    info = DataInfo(list(d.classes), train_x.shape[1], size, *_mean_std(train_x.shape[1]))
    train = TensorSource(train_x, d.train_y, [f"train/{i}" for i in range(len(d.train_y))])
    val = TensorSource(test_x, d.test_y, [f"test/{i}" for i in range(len(d.test_y))])
    return Data(_whole(train, info), _whole(val, info), info, _hash_ids(cfg.dataset, val.ids), train.ids, val.ids,
                "the official test split")


def _resized(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) resized to (N, C, size, size), antialiased, still uint8."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    out = torch.nn.functional.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


# ---------------------------------------------------------------- datasets and loaders
class SplitSet(Dataset):
    """One split of a source. Items are fetched a batch at a time: `__getitems__` takes a list
    of (epoch, position) keys and returns the collated, normalised (x, y) batch, augmented when
    `augment` is set (the training split). With mixup or cutmix, y is soft: (N, classes)."""

    def __init__(self, source, positions: list, info: DataInfo):
        self.source, self.positions, self.info = source, positions, info
        self.augment: Optional[Augment] = None

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, key):
        return self.__getitems__([key])

    def __getitems__(self, keys: list) -> tuple[torch.Tensor, torch.Tensor]:
        epochs = np.array([k[0] for k in keys])
        pos = np.array([k[1] for k in keys])
        x, y = self._load(epochs, pos)
        aug = self.augment
        if aug is not None and aug.mixes:
            other = partners(aug, epochs, pos, len(self.positions))
            x2, y2 = self._load(epochs, other)
            x, y = mix(x, y, x2, y2, aug, epochs, pos)
        x = normalise(x, self.info)
        if aug is not None and aug.random_erasing > 0:
            x = erase(x, aug, epochs, pos)
        return x, y

    def _load(self, epochs: np.ndarray, pos: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples at split positions `pos`, with the policy's transform, as float in [0, 1]."""
        x, y = self.source.load([self.positions[p] for p in pos])
        if self.augment is not None:
            x = geometric(x, self.augment, epochs, pos)
        return to_unit(x), y


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
        self.epoch, self.start_step, self.stop_step = 0, 0, None

    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size

    def set_epoch(self, epoch: int, start_step: int = 0, stop_step: Optional[int] = None) -> None:
        """Steps [start_step, stop_step) of `epoch` (stop_step None: to the epoch's end)."""
        self.epoch, self.start_step, self.stop_step = epoch, start_step, stop_step

    def _stop(self) -> int:
        return self.steps_per_epoch() if self.stop_step is None else min(self.stop_step, self.steps_per_epoch())

    def __len__(self) -> int:
        return max(0, self._stop() - self.start_step) * self.accum

    def __iter__(self) -> Iterator[list]:
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))).tolist()
        chunk = self.batch_size // self.accum
        for s in range(self.start_step, self._stop()):
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
