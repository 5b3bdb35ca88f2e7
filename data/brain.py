"""dataset: mni152, an offline 3D demo: patches of a real brain, the MNI152 2009 template (T1 and
its grey- and white-matter maps, 1 mm) that nilearn's wheel carries, labelled by where in the brain
they come from.

Built deterministically: the volumes are reoriented to RAS and averaged to 2 mm voxels, and patches
of `volume_size` voxels (default 24: 48 mm) are cut around centres on a 3-voxel grid, where the
patch is at least half brain tissue (grey plus white matter). The label is the quadrant of the
centre in the sagittal plane, about the brain's centre of mass: anterior or posterior, superior or
inferior (centres within MARGIN voxels of a dividing plane are left out, so no label is a coin
toss). It is an honest label, read off the template's own geometry, and it needs anatomy to
predict: a patch shows no coordinates. Training patches lie wholly in the left hemisphere and
validation patches wholly in the right one, so the two sets share no voxel but come from nearly
one distribution (a split by slab would not); left-right flips (the `volume` policy) make the
hemispheres alike. PER_CLASS patches a class, evenly spread over the candidates, in each set.
"""
import importlib.util
from pathlib import Path

import numpy as np
import torch

from utils.errors import UsageError

REGIONS = ("anterior_superior", "anterior_inferior", "posterior_superior", "posterior_inferior")
MARGIN = 4       # voxels (8 mm) about each dividing plane without a label
PER_CLASS = {"train": 240, "val": 80}
FILES = {name: f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz" for name in ("t1", "gm", "wm")}
GRID = 3         # voxels between candidate centres (2 mm voxels)
DEFAULT_SIDE = 24


def template_folder() -> Path:
    """Where nilearn's wheel keeps the template, or exit 2 naming the install command."""
    spec = importlib.util.find_spec("nilearn")
    folder = Path(spec.origin).parent / "datasets" / "data" if spec and spec.origin else None
    if folder is None or not all((folder / f).exists() for f in FILES.values()):
        raise UsageError("dataset mni152 reads the MNI152 template in nilearn's wheel, which is not installed; "
                         "pip install -r requirements-volumes.txt")
    return folder


def read_template() -> dict:
    """t1, gm, wm as float tensors in [0, 1], RAS, at 2 mm: (X, Y, Z) each."""
    from data.volumes import nibabel

    nib, folder, out = nibabel(), template_folder(), {}
    for name, file in FILES.items():
        data = np.asarray(nib.as_closest_canonical(nib.load(str(folder / file))).dataobj, dtype=np.float32) / 255.0
        out[name] = torch.nn.functional.avg_pool3d(torch.from_numpy(data)[None, None], 2)[0, 0]
    return out


def centres(maps: dict, side: int, hemisphere: str) -> dict:
    """Per region, the candidate centres (K, 3) whose patch lies wholly in the hemisphere."""
    half, shape = side // 2, maps["t1"].shape
    midline = shape[0] // 2  # the template is centred: voxel x = 98 mm of 197 is x = 0
    x_range = range(half, midline - half + 1, GRID) if hemisphere == "left" else range(midline + half, shape[0] - half, GRID)
    grid = torch.stack(torch.meshgrid(torch.tensor(list(x_range)), torch.arange(half, shape[1] - half, GRID),
                                      torch.arange(half, shape[2] - half, GRID), indexing="ij"), -1).reshape(-1, 3)
    tissue = maps["gm"] + maps["wm"]
    lo = grid - half
    grid = grid[box_mean(tissue, side)[lo[:, 0], lo[:, 1], lo[:, 2]] >= 0.5]  # patches at least half brain
    weights = tissue / tissue.sum()
    centre_y, centre_z = (float((weights.sum(dims) * torch.arange(tissue.shape[a])).sum()) for a, dims in ((1, (0, 2)), (2, (0, 1))))
    dy, dz = grid[:, 1] - centre_y, grid[:, 2] - centre_z
    clear = (dy.abs() >= MARGIN) & (dz.abs() >= MARGIN)
    kinds = {"anterior_superior": (dy > 0) & (dz > 0), "anterior_inferior": (dy > 0) & (dz < 0),
             "posterior_superior": (dy < 0) & (dz > 0), "posterior_inferior": (dy < 0) & (dz < 0)}
    return {r: grid[kinds[r] & clear] for r in REGIONS}


def box_mean(volume: torch.Tensor, side: int) -> torch.Tensor:
    """The mean over every side^3 window, indexed by its lowest corner: separable sums of cumsums."""
    out = volume.double()
    for axis in range(3):
        c = torch.nn.functional.pad(out.cumsum(axis), [0, 0] * (2 - axis) + [1, 0])
        out = (c.narrow(axis, side, c.shape[axis] - side) - c.narrow(axis, 0, c.shape[axis] - side)) / side
    return out.float()


def patches(t1: torch.Tensor, points: torch.Tensor, side: int) -> torch.Tensor:
    """(K, 1, side, side, side) patches of t1 around `points` (K, 3)."""
    lo = points - side // 2
    return torch.stack([t1[x:x + side, y:y + side, z:z + side] for x, y, z in lo.tolist()])[:, None]


def patch_geometry(side: int, centre: tuple) -> dict:
    """The geometry (data/volumes.py) of the patch around `centre` (2 mm voxels): the template's
    affine, averaged 2x (voxel i covers 1 mm voxels 2i and 2i + 1), moved to the patch's corner."""
    from data.volumes import canonical_header, geometry

    _, affine = canonical_header(template_folder() / FILES["t1"])
    to_patch = np.diag([2.0, 2.0, 2.0, 1.0])
    to_patch[:3, 3] = 2.0 * (np.asarray(centre) - side // 2) + 0.5
    return geometry([((side,) * 3, affine @ to_patch)], (side,) * 3)


def brain_patches(side: int) -> dict:
    """{"train": (x, y, ids), "val": (x, y, ids)}: PER_CLASS patches a region, evenly spread."""
    maps = read_template()
    if not 8 <= side <= 48:
        raise UsageError(f"volume_size: dataset mni152 cuts patches of 8 to 48 voxels (2 mm), got {side}")
    out = {}
    for split, hemisphere in (("train", "left"), ("val", "right")):
        xs, ys, ids = [], [], []
        for label, (region, points) in enumerate(centres(maps, side, hemisphere).items()):
            chosen = points[torch.linspace(0, len(points) - 1, min(PER_CLASS[split], len(points))).round().long()]
            xs.append(patches(maps["t1"], chosen, side))
            ys += [label] * len(chosen)
            ids += [f"{hemisphere}/{region}/{x}_{y}_{z}" for x, y, z in chosen.tolist()]
        out[split] = (torch.cat(xs), torch.tensor(ys, dtype=torch.int64), ids)
    return out
