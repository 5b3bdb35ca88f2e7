"""Volumes: 3D images (MRI, CT) in NIfTI files (.nii, .nii.gz) or NumPy arrays (.npy), read as the
template trains on them.

Each volume is read with nibabel, reoriented to the closest canonical orientation (RAS+: the first
axis runs to the patient's Right, the second Anterior, the third Superior), so that a flip of axis
0 is a left-right flip whatever the scanner wrote; resampled to `volume_size` with trilinear
interpolation (align_corners=False, as torch.nn.functional.interpolate); and its intensities
normalised per volume, after resampling, by the `intensity` rule. A .npy file is taken as already
in RAS order, with unit spacing. Every problem with a file is a UsageError naming it.
"""
from pathlib import Path

import numpy as np
import torch

from utils.errors import UsageError

VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".npy")
INTENSITY_RULES = ("percentile", "minmax", "zscore")
INSTALL = "pip install -r requirements-volumes.txt"


def is_volume(path: Path) -> bool:
    return path.name.lower().endswith(VOLUME_EXTENSIONS)


def nibabel():
    """The nibabel module, or exit 2 naming the install command."""
    try:
        import nibabel as nib
    except ImportError:
        raise UsageError(f"volumes need nibabel, which is not installed; {INSTALL}") from None
    return nib


def read_array(path: Path) -> np.ndarray:
    """A volume file as a float32 (X, Y, Z) array in RAS+ order."""
    if path.name.lower().endswith(".npy"):
        try:
            data = three_d(path, np.load(path, allow_pickle=False))
        except (OSError, ValueError) as e:
            raise UsageError(f"{path}: not a readable volume ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                             "replace or remove the file") from None
    else:
        data = read_nifti(path)[0]
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():  # integers always are
        raise UsageError(f"{path}: {int((~np.isfinite(data)).sum())} voxels are NaN or infinite; fix or remove the file")
    return data.astype(np.float32, copy=False)


def read_nifti(path: Path) -> tuple:
    """A NIfTI file reoriented to the closest canonical orientation (RAS+): its (X, Y, Z) array as
    stored, the canonical image (its affine) and the file's own orientation (nibabel's io_orientation)."""
    try:
        image = nibabel().load(str(path))
        ornt = nibabel().orientations.io_orientation(image.affine)
        canonical = nibabel().as_closest_canonical(image)
        data = np.asarray(canonical.dataobj)
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - nibabel, gzip and zlib each raise their own; a damaged file has one fix
        raise UsageError(f"{path}: not a readable volume ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                         "replace or remove the file") from None
    return three_d(path, data), canonical, ornt


def three_d(path: Path, data: np.ndarray) -> np.ndarray:
    """data as (X, Y, Z): a trailing axis of one dropped; anything else that is not 3D refused."""
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise UsageError(f"{path}: a {data.ndim}D array {tuple(data.shape)}, a 3D volume was expected; "
                         "keep one volume per file")
    return data


def normalised(data: np.ndarray, rule: str) -> np.ndarray:
    """Intensities by `rule`: percentile (the 1st..99th percentiles to [0, 1], clipped; the
    default: robust to a few bright voxels), minmax (min..max to [0, 1]) or zscore (mean 0, std 1)."""
    if rule == "zscore":
        out = (data - data.mean()) / max(float(data.std()), 1e-8)
    else:
        lo, hi = np.percentile(data, (1, 99)) if rule == "percentile" else (data.min(), data.max())
        out = np.clip((data - lo) / max(float(hi - lo), 1e-8), 0.0, 1.0)
    return out.astype(np.float32)


def resampled(data: np.ndarray, size: tuple) -> torch.Tensor:
    """(X, Y, Z) -> (1, *size) float32, trilinear."""
    x = torch.from_numpy(np.ascontiguousarray(data))[None, None]
    if tuple(x.shape[2:]) != tuple(size):
        x = torch.nn.functional.interpolate(x, size=tuple(size), mode="trilinear", align_corners=False)
    return x[0]


def load_volume(path: Path, size: tuple, rule: str) -> torch.Tensor:
    """One file -> (1, *size) float32, reoriented, resampled, then normalised (on the resampled voxels:
    the rule's statistics over 64^3 rather than a scan's millions cost a fraction): training and
    inference both come here."""
    return torch.from_numpy(normalised(resampled(read_array(Path(path)), size).numpy(), rule))


def canonical_header(path: Path) -> tuple[tuple, np.ndarray]:
    """The file's (X, Y, Z) and voxel-to-world affine (mm) in RAS+ order, from its header alone where
    it has one; a .npy file has unit spacing at the origin."""
    if path.name.lower().endswith(".npy"):
        return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape[:3]), np.eye(4)
    try:
        nib = nibabel()
        image = nib.load(str(path))
        shape = image.shape[:3]
        ornt = nib.orientations.io_orientation(image.affine)  # as as_closest_canonical, without decoding the voxels
        canonical = tuple(int(shape[i]) for i in np.argsort(ornt[:, 0]))
        return canonical, np.asarray(image.affine @ nib.orientations.inv_ornt_aff(ornt, shape), dtype=np.float64)
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - as read_array
        raise UsageError(f"{path}: not a readable volume ({type(e).__name__}); replace or remove the file") from None


def volume_shape(path: Path) -> tuple:
    """The file's (X, Y, Z) in RAS+ order."""
    return canonical_header(path)[0]


def resampled_affine(affine: np.ndarray, shape: tuple, size: tuple) -> np.ndarray:
    """The affine of a volume of `shape` resampled to `size` as `resampled` does (align_corners=False:
    output voxel i covers input coordinates around (i + 0.5) * shape / size - 0.5)."""
    scale = np.asarray(shape, dtype=np.float64) / np.asarray(size, dtype=np.float64)
    grid = np.eye(4)
    grid[:3, :3] = np.diag(scale)
    grid[:3, 3] = 0.5 * scale - 0.5
    return affine @ grid


def geometry(headers: list, size: tuple) -> dict:
    """What run.json keeps so that outputs can be written back as NIfTI: the orientation, the median
    voxel spacing (mm) after resampling, and the first file's affine after resampling (a reference
    grid for outputs that come from no one file, such as generated volumes). headers: canonical_header's."""
    affines = [resampled_affine(affine, shape, size) for shape, affine in headers]
    spacing = np.median([np.linalg.norm(a[:3, :3], axis=0) for a in affines], axis=0)
    return {"orientation": "RAS+", "size": list(size), "spacing_mm": [round(float(v), 6) for v in spacing],
            "affine": np.round(affines[0], 6).tolist()}


def save_nifti(volume: np.ndarray, affine: "np.ndarray | list", path: Path) -> None:
    """An (X, Y, Z) array written as a NIfTI file with `affine` (a run's geometry["affine"], say)."""
    image = nibabel().Nifti1Image(np.asarray(volume, dtype=np.float32), np.asarray(affine, dtype=np.float64))
    nibabel().save(image, str(path))


def list_volumes(path: Path) -> list[Path]:
    """The volume files at `path` (a file, or a folder searched recursively), sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and is_volume(p))
    if not files:
        raise UsageError(f"--input: no volume files ({', '.join(VOLUME_EXTENSIONS)}) in {path}")
    return files
