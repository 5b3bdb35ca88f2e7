"""Synthetic cases in nnU-Net v2's raw layout: a ball (label 1) and a box (label 2) defined in world
space (mm), sampled on grids with random affines: some anisotropic, some stored with flipped or
permuted axes, so that reading them right is what makes the labels agree."""
import json
from pathlib import Path

import numpy as np

LABELS = {"background": 0, "ball": 1, "box": 2}
EXTENT = 36.0  # mm, each case's field of view along each world axis


def world_labels(coords: np.ndarray, centre: np.ndarray, box: np.ndarray, radius: float = 8.0, half: float = 5.0) -> np.ndarray:
    """(N, 3) world points (mm) -> label: the ball of `radius` mm at `centre`, the box of side 2 * half mm at `box`."""
    out = np.zeros(len(coords), dtype=np.uint8)
    out[np.abs(coords - box).max(1) <= half] = 2
    out[np.linalg.norm(coords - centre, axis=1) <= radius] = 1
    return out


def grid_affine(spacing: tuple, flips: tuple = (False, False, False), order: tuple = (0, 1, 2)) -> tuple[np.ndarray, tuple]:
    """An affine whose voxel axes are the world axes `order`, each with its spacing and maybe flipped,
    covering [0, EXTENT] mm; and the shape."""
    affine = np.zeros((4, 4))
    affine[3, 3] = 1
    shape = []
    for voxel_axis, world_axis in enumerate(order):
        n = int(round(EXTENT / spacing[world_axis]))
        step = spacing[world_axis] * (-1 if flips[world_axis] else 1)
        affine[world_axis, voxel_axis] = step
        affine[world_axis, 3] = (EXTENT - spacing[world_axis] / 2) if flips[world_axis] else spacing[world_axis] / 2
        shape.append(n)
    return affine, tuple(shape)


def sample_case(rng: np.random.Generator, affine: np.ndarray, shape: tuple, centre=None, box=None,
                sizes: tuple = (8.0, 5.0)) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, label uint8) of one case on the grid."""
    centre = rng.uniform(10, EXTENT - 10, 3) if centre is None else centre
    box = rng.uniform(7, EXTENT - 7, 3) if box is None else box
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    label = world_labels(world, centre, box, *sizes).reshape(shape)
    image = np.choose(label, [0.0, 1.0, 2.0]).astype(np.float32) * 100 + 300
    image += rng.normal(0, 25, shape).astype(np.float32)
    return image, label


def save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(array, affine), str(path))


def make_case_folder(root: Path, cases: int = 6, seed: int = 0) -> Path:
    """DIR/dataset.json, imagesTr/, labelsTr/ with `cases` cases; odd cases anisotropic (2 mm along z)
    and stored with axis 0 flipped; every third with its axes permuted."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(cases):
        spacing = (1.5, 1.5, 3.0) if i % 2 else (1.5, 1.5, 1.5)
        affine, shape = grid_affine(spacing, flips=(bool(i % 2), False, False), order=(2, 0, 1) if i % 3 == 2 else (0, 1, 2))
        image, label = sample_case(rng, affine, shape)
        save(image, affine, root / "imagesTr" / f"case{i:02d}_0000.nii.gz")
        save(label, affine, root / "labelsTr" / f"case{i:02d}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": LABELS, "numTraining": cases,
                                                   "file_ending": ".nii.gz"}))
    return root
