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


# ---------------------------------------------------------------- dataset: mni152_tissue
TISSUES = ("background_csf", "grey_matter", "white_matter")


def tissue_cases():
    """dataset: mni152_tissue, the offline demo with a label per voxel: the T1 at 2 mm, labelled by
    tissue. The honest threshold: each voxel takes the tissue that the template's own probability
    maps make most likely (grey matter gm, white matter wm, and 1 - gm - wm for the rest: CSF and
    everything outside the brain), i.e. the maximum a posteriori label of the maps, with no tuned cut.
    Cases are blocks: each hemisphere cut in four (front/back x top/bottom at the brain's centre of
    mass); the left hemisphere's four train, the right's four validate. Intensities: z-score per
    case (MRI). Returns (data/cases.py's CaseSource, the geometry run.json keeps)."""
    from data.cases import CaseSource
    from data.volumes import canonical_header

    maps = read_template()
    t1, tissue = maps["t1"], torch.stack([(1 - maps["gm"] - maps["wm"]).clamp(min=0), maps["gm"], maps["wm"]])
    label = tissue.argmax(0).to(torch.uint8)
    _, affine = canonical_header(template_folder() / FILES["t1"])
    affine = affine @ np.array([[2.0, 0, 0, 0.5], [0, 2.0, 0, 0.5], [0, 0, 2.0, 0.5], [0, 0, 0, 1]])  # 2x2x2 means (read_template)
    mid = t1.shape[0] // 2
    weights = (maps["gm"] + maps["wm"]) / (maps["gm"] + maps["wm"]).sum()
    cy, cz = (int(round(float((weights.sum(dims) * torch.arange(t1.shape[a])).sum()))) for a, dims in ((1, (0, 2)), (2, (0, 1))))
    images, labels, ids, affines = [], [], [], []
    for side, (x0, x1) in (("left", (0, mid)), ("right", (mid, t1.shape[0]))):
        for ap, (y0, y1) in (("posterior", (0, cy)), ("anterior", (cy, t1.shape[1]))):
            for si, (z0, z1) in (("inferior", (0, cz)), ("superior", (cz, t1.shape[2]))):
                block = t1[x0:x1, y0:y1, z0:z1]
                images.append(((block - block.mean()) / block.std().clamp(min=1e-8))[None].contiguous())
                labels.append(label[x0:x1, y0:y1, z0:z1].contiguous())
                ids.append(f"{side}_{ap}_{si}")
                corner = np.eye(4)
                corner[:3, 3] = (x0, y0, z0)
                affines.append(affine @ corner)
    spacing = [round(float(v), 6) for v in np.linalg.norm(affine[:3, :3], axis=0)]
    geometry = {"orientation": "RAS+", "spacing_mm": spacing, "channels": [{"name": "T1", "rule": "zscore"}],
                "labels": {name: i for i, name in enumerate(TISSUES)}, "file_ending": ".nii.gz",
                "median_shape": [int(v) for v in np.median([lab.shape for lab in labels], axis=0)],
                "split": {"train": [0, 1, 2, 3], "val": [4, 5, 6, 7],
                          "why": "the right hemisphere's four blocks (training: the left's)"}}
    return CaseSource(images, labels, ids, affines), geometry
