"""Pictures. matplotlib is imported only when drawing (its import is slow), and through its
Figure class, not pyplot: no backend or GUI machinery, nothing to close (the pattern matplotlib
documents for web servers)."""
from pathlib import Path

from utils.files import atomic_write


def new_figure(width: float, height: float, **kwargs):
    """A matplotlib Figure that is not registered with pyplot; save it with save_figure."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), **kwargs)


def save_figure(fig, path: Path, dpi: int = 100) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def plot_curves(rows: list[dict], path: Path, title: str = "") -> None:
    """Per epoch, lineage included: the losses (every *_loss column) on the left, the other
    metrics on the right (not the learning rates and gradient norms)."""
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in rows]
    columns = list(dict.fromkeys(k for r in rows for k in r
                                 if k not in ("epoch", "seconds") and not k.startswith(("lr", "grad_norm"))))
    panels = (("loss", [c for c in columns if c.endswith("loss")]), ("metrics", [c for c in columns if not c.endswith("loss")]))
    fig = new_figure(10, 4)
    # Fixed margins: tight_layout measures every text box, a visible cost at the end of a short run.
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.84 if title else 0.9, wspace=0.22)
    for ax, (name, keys) in zip(fig.subplots(1, 2), panels):
        for key in keys:
            ax.plot(epochs, [r.get(key, float("nan")) for r in rows], marker="o", label=key)
        ax.set(xlabel="epoch", title=name)
        ax.grid(alpha=0.3)
        if keys:
            ax.legend()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(epochs) == 1:  # one point: matplotlib's margins would tick 0.945 ... 1.050
            ax.set_xticks(epochs)
            ax.set_xlim(epochs[0] - 0.5, epochs[0] + 0.5)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def mid_slices(volume) -> list:
    """A volume (X, Y, Z) in RAS order as its three orthogonal mid-slices, each oriented as
    radiologists view it with superior (or anterior) up: sagittal (Y, Z), coronal (X, Z), axial (X, Y)."""
    x, y, z = (s // 2 for s in volume.shape)
    return [volume[x].T, volume[:, y].T, volume[:, :, z].T]


def triptych(volumes):
    """(N, C, X, Y, Z) volumes -> (N, C, H, W) pictures: each volume's three mid-slices side by side
    (sagittal, coronal, axial, superior or anterior up, one blank pixel between), so a grid of images
    (torchvision's make_grid) shows volumes too."""
    import torch

    out = []
    for volume in volumes:
        slices = [[s.flip(0) for s in mid_slices(c)] for c in volume]  # per channel: 3 (rows, cols), row 0 at the top
        height = max(s.shape[0] for s in slices[0])
        padded = [[torch.nn.functional.pad(s, (0, 1, 0, height - s.shape[0]), value=1.0) for s in c] for c in slices]
        out.append(torch.stack([torch.cat(c, dim=1) for c in padded]))
    return torch.stack(out)


def plot_samples(samples, titles: list[str], path: Path, volumetric: bool) -> None:
    """One row per sample (C, ...) in [0, 1], titled: an image, or a volume's three mid-slices."""
    views = ("sagittal", "coronal", "axial") if volumetric else ("",)
    fig = new_figure(2.2 * len(views), 2.2 * max(1, len(samples)), layout="tight")
    axes = fig.subplots(max(1, len(samples)), len(views), squeeze=False)
    for row, (sample, title) in zip(axes, zip(samples, titles)):
        pictures = mid_slices(sample[0]) if volumetric else [sample.permute(1, 2, 0) if sample.shape[0] == 3 else sample[0]]
        for ax, picture, view in zip(row, pictures, views):
            ax.imshow(picture, cmap="gray", vmin=0, vmax=1, origin="lower" if volumetric else "upper", interpolation="nearest")
            ax.set_title(f"{title}\n{view}".strip() if view == views[len(views) // 2] else view, fontsize=7)
            ax.axis("off")
    save_figure(fig, path)
