"""Overlap and distance between a predicted and a true label map, per foreground class.

Dice is 2|P & T| / (|P| + |T|), NaN when the class is in neither (nnU-Net's convention: such a
case does not count in the class's mean). HD95 is the 95th percentile of the distances, in
millimetres, from each surface voxel of one map to the nearest surface voxel of the other, the
larger of the two directions (MONAI's compute_hausdorff_distance with percentile 95); NaN when the
class is absent from either map.
"""
import numpy as np
import torch


def dice_per_class(pred: torch.Tensor, target: torch.Tensor, classes: int) -> list[float]:
    """Dice of each foreground class 1 .. classes - 1 of two (X, Y, Z) integer maps."""
    out = []
    for c in range(1, classes):
        p, t = pred == c, target == c
        denominator = int(p.sum()) + int(t.sum())
        out.append(float("nan") if denominator == 0 else 2.0 * int((p & t).sum()) / denominator)
    return out


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0)


def hd95(pred: np.ndarray, target: np.ndarray, spacing: tuple) -> float:
    """The 95th-percentile Hausdorff distance (mm) between two boolean (X, Y, Z) masks on a grid of `spacing`."""
    from scipy import ndimage

    if not pred.any() or not target.any():
        return float("nan")
    sp, st = _surface(pred), _surface(target)
    to_target = ndimage.distance_transform_edt(~st, sampling=spacing)[sp]
    to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)[st]
    return float(max(np.percentile(to_target, 95), np.percentile(to_pred, 95)))


def hd95_per_class(pred: torch.Tensor, target: torch.Tensor, classes: int, spacing: tuple) -> list[float]:
    p, t = pred.cpu().numpy(), target.cpu().numpy()
    return [hd95(p == c, t == c, tuple(spacing)) for c in range(1, classes)]
