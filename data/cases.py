"""Cases: images with a label per voxel, in nnU-Net v2's raw layout, read as the template trains on them.

    DIR/dataset.json                  {"channel_names": {"0": "T1"}, "labels": {"background": 0, "tumour": 1},
                                       "file_ending": ".nii.gz"}
    DIR/imagesTr/<case>_0000.nii.gz   one file per channel (_0000, _0001, ...)
    DIR/labelsTr/<case>.nii.gz        integer labels, the values dataset.json lists

Each file is read with nibabel and reoriented to the closest canonical orientation (RAS+), so that
every case's axes mean the same; a label must have its image's shape and affine. Intensities are
normalised per channel on the file's own grid by a named rule (nnU-Net's): `zscore` per case (MRI
and anything not CT) or `ct` (clipped to the 0.5th and 99.5th percentiles of the foreground voxels
of every case, then z-scored with their mean and std). Then each case is resampled to the target
`spacing` (auto: the median of every case's spacing, as nnU-Net's fingerprint): images trilinear,
labels nearest neighbour. Cases are decoded once and kept in memory. Every problem with a file is a
UsageError naming it; nothing is written before the data are read.
"""
import concurrent.futures
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from data.volumes import nibabel, read_nifti
from utils.errors import UsageError

RULES = ("zscore", "ct")


@dataclass
class DatasetSpec:
    """What dataset.json says."""
    channels: list[str]        # channel names, in file order (_0000, _0001, ...)
    labels: dict[str, int]     # label name -> value, sorted by value; 0 is the background
    ending: str                # ".nii.gz"


@dataclass
class CaseFiles:
    id: str
    images: list[Path]         # one per channel
    label: Path


@dataclass
class Grid:
    """A file's grid in RAS+ order: its shape, its voxel-to-world affine (mm), and the reorientation from the file."""
    shape: tuple
    affine: np.ndarray
    ornt: np.ndarray           # nibabel's io_orientation of the file's affine

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)


class CaseSource:
    """Every case in memory: images (C, X, Y, Z) float32 normalised, labels (X, Y, Z) uint8, on the target grid."""

    def __init__(self, images: list, labels: list, ids: list, affines: list):
        self.images, self.labels, self.ids, self.affines = images, labels, ids, affines
        self.y = torch.zeros(len(ids), dtype=torch.int64)  # one stratum for folds: a case has no single class

    def __len__(self) -> int:
        return len(self.ids)


def read_spec(root: Path) -> DatasetSpec:
    """dataset.json, checked."""
    path = root / "dataset.json"
    try:
        raw = json.loads(path.read_text())
        channels = [raw["channel_names"][k] for k in sorted(raw["channel_names"], key=int)]
        labels = {str(k): int(v) for k, v in sorted(raw["labels"].items(), key=lambda kv: int(kv[1]))}
        ending = str(raw.get("file_ending", ".nii.gz"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UsageError(f"{path}: not a usable dataset.json ({type(e).__name__}: {e}); it needs channel_names, labels "
                         "and file_ending as nnU-Net v2 writes them") from None
    values = list(labels.values())
    if not channels or values != list(range(len(values))) or len(values) < 2:
        raise UsageError(f"{path}: labels must be 0 (background), 1, 2, ... without gaps and channel_names non-empty; "
                         f"got labels {labels}")
    return DatasetSpec(channels, labels, ending)


def list_cases(root: Path, spec: DatasetSpec) -> list[CaseFiles]:
    """The cases of imagesTr, each with all its channel files and its label."""
    folder = root / "imagesTr"
    if not folder.is_dir():
        raise UsageError(f"data_dir: {folder} does not exist; nnU-Net's raw layout has imagesTr/<case>_0000{spec.ending}")
    ids = sorted({p.name[:-len(spec.ending) - 5] for p in folder.iterdir()
                  if p.name.endswith(spec.ending) and p.name[-len(spec.ending) - 5] == "_"})
    if not ids:
        raise UsageError(f"data_dir: {folder} holds no <case>_0000{spec.ending} files")
    cases = []
    for case in ids:
        files = [folder / f"{case}_{c:04d}{spec.ending}" for c in range(len(spec.channels))]
        for f in files:
            if not f.exists():
                raise UsageError(f"{f}: missing; dataset.json lists {len(spec.channels)} channel(s), so case {case} needs it")
        label = root / "labelsTr" / f"{case}{spec.ending}"
        if not label.exists():
            raise UsageError(f"{label}: missing; every case of imagesTr needs its label in labelsTr (or remove the case)")
        cases.append(CaseFiles(case, files, label))
    return cases


def read_canonical(path: Path) -> tuple[np.ndarray, Grid]:
    """A NIfTI file as an (X, Y, Z) array in RAS+ order, and its grid."""
    data, canonical, ornt = read_nifti(path)
    return data, Grid(tuple(int(s) for s in data.shape), np.asarray(canonical.affine, dtype=np.float64), ornt)


def read_image(files: list[Path]) -> tuple[np.ndarray, Grid]:
    """A case's channels as (C, X, Y, Z) float32, which must share one grid."""
    arrays, grid = [], None
    for f in files:
        data, g = read_canonical(f)
        if grid is not None and (g.shape != grid.shape or not np.allclose(g.affine, grid.affine, atol=1e-3)):
            raise UsageError(f"{f}: its shape or affine differs from channel 0's ({g.shape} vs {grid.shape}); "
                             "resample the channels onto one grid")
        if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
            raise UsageError(f"{f}: {int((~np.isfinite(data)).sum())} voxels are NaN or infinite; fix or remove the file")
        arrays.append(data.astype(np.float32))
        grid = grid or g
    return np.stack(arrays), grid


def read_label(path: Path, grid: Grid, n_labels: int) -> np.ndarray:
    """A label file as (X, Y, Z) uint8 on the image's grid, its values checked against dataset.json."""
    data, g = read_canonical(path)
    if g.shape != grid.shape or not np.allclose(g.affine, grid.affine, atol=1e-3):
        raise UsageError(f"{path}: shape {g.shape} or affine differs from its image's ({grid.shape}); a label must lie on "
                         "its image's grid")
    values = np.unique(data)
    bad = [v for v in values.tolist() if v != int(v) or not 0 <= v < n_labels]
    if bad:
        raise UsageError(f"{path}: label values {bad[:5]} are not in dataset.json's labels (0..{n_labels - 1}); "
                         "fix the file or list them")
    return data.astype(np.uint8)


def channel_rules(spec: DatasetSpec, rule: str) -> list[str]:
    """Each channel's intensity rule: auto is nnU-Net's (ct for a channel named CT, zscore otherwise)."""
    if rule == "auto":
        return ["ct" if name.strip().lower() == "ct" else "zscore" for name in spec.channels]
    return [rule] * len(spec.channels)


def ct_statistics(images: list[np.ndarray], labels: list[np.ndarray], channel: int) -> dict:
    """The ct rule's numbers for one channel: the foreground voxels' 0.5th and 99.5th percentiles, mean and std."""
    fg = np.concatenate([im[channel][lab > 0] for im, lab in zip(images, labels)])
    fg = fg if fg.size else np.concatenate([im[channel].ravel() for im in images])
    lo, hi = np.percentile(fg, (0.5, 99.5))
    clipped = np.clip(fg, lo, hi)
    return {"rule": "ct", "clip": [float(lo), float(hi)], "mean": float(clipped.mean()), "std": float(max(clipped.std(), 1e-8))}


def normalise_channels(image: np.ndarray, rules: list[dict]) -> np.ndarray:
    """(C, X, Y, Z) normalised channel by channel by each channel's recorded rule."""
    out = np.empty_like(image, dtype=np.float32)
    for c, r in enumerate(rules):
        x = image[c]
        if r["rule"] == "ct":
            out[c] = (np.clip(x, *r["clip"]) - r["mean"]) / r["std"]
        else:
            out[c] = (x - x.mean()) / max(float(x.std()), 1e-8)
    return out


def target_shape(grid: Grid, spacing: tuple) -> tuple:
    """The shape of a grid resampled to `spacing` (mm), each side at least 1."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(grid.shape, grid.spacing, spacing))


def resample_image(image: np.ndarray, shape: tuple) -> torch.Tensor:
    """(C, X, Y, Z) -> (C, *shape) float32, trilinear (align_corners=False: the grids share their outer edges)."""
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    if tuple(x.shape[2:]) != tuple(shape):
        x = torch.nn.functional.interpolate(x, size=tuple(shape), mode="trilinear", align_corners=False)
    return x[0].contiguous()


def resample_label(label: np.ndarray, shape: tuple) -> torch.Tensor:
    """(X, Y, Z) -> shape uint8, nearest neighbour (the voxel whose centre is nearest)."""
    x = torch.from_numpy(np.ascontiguousarray(label))[None, None]
    if tuple(x.shape[2:]) != tuple(shape):
        x = torch.nn.functional.interpolate(x.float(), size=tuple(shape), mode="nearest-exact").to(torch.uint8)
    return x[0, 0].contiguous()


def resampled_affine(grid: Grid, shape: tuple) -> np.ndarray:
    """The affine of `grid` resampled to `shape` as resample_image does."""
    scale = np.asarray(grid.shape, dtype=np.float64) / np.asarray(shape, dtype=np.float64)
    step = np.eye(4)
    step[:3, :3] = np.diag(scale)
    step[:3, 3] = 0.5 * scale - 0.5
    return grid.affine @ step


def median_spacing(cases: list[CaseFiles]) -> tuple:
    """The median voxel spacing (mm) of the cases' first channels, read from their headers."""
    nib = nibabel()
    spacings = []
    for case in cases:
        try:
            image = nib.load(str(case.images[0]))
        except Exception as e:  # noqa: BLE001 - as read_canonical
            raise UsageError(f"{case.images[0]}: not a readable volume ({type(e).__name__}); replace or remove the file") from None
        ornt = nib.orientations.io_orientation(image.affine)
        zooms = np.asarray(image.header.get_zooms()[:3], dtype=np.float64)
        spacings.append(zooms[np.argsort(ornt[:, 0])])
    return tuple(round(float(v), 6) for v in np.median(spacings, axis=0))


def load_cases(root: Path, spacing: Optional[list], rule: str) -> tuple[CaseSource, DatasetSpec, dict]:
    """Every case of DIR/imagesTr, checked, normalised and resampled; and the geometry run.json keeps:
    the orientation, the target spacing, each channel's intensity rule with its numbers, the labels."""
    spec = read_spec(root)
    cases = list_cases(root, spec)
    target = tuple(float(v) for v in spacing) if spacing else median_spacing(cases)

    def read(case: CaseFiles) -> tuple:
        image, grid = read_image(case.images)
        return image, read_label(case.label, grid, len(spec.labels)), grid
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        raw = list(pool.map(read, cases))
    rules = [ct_statistics([r[0] for r in raw], [r[1] for r in raw], c) if name == "ct" else {"rule": name}
             for c, name in enumerate(channel_rules(spec, rule))]
    images, labels, affines = [], [], []
    for image, label, grid in raw:
        shape = target_shape(grid, target)
        images.append(resample_image(normalise_channels(image, rules), shape))
        labels.append(resample_label(label, shape))
        affines.append(resampled_affine(grid, shape))
    geometry = {"orientation": "RAS+", "spacing_mm": list(target), "channels": [dict(name=n, **r) for n, r in zip(spec.channels, rules)],
                "labels": spec.labels, "file_ending": spec.ending,
                "median_shape": [int(v) for v in np.median([lab.shape for lab in labels], axis=0)]}
    return CaseSource(images, labels, [c.id for c in cases], affines), spec, geometry


def is_case_folder(root: Path) -> bool:
    """A folder in nnU-Net's raw layout (it has dataset.json)."""
    return (Path(root).expanduser() / "dataset.json").is_file()
