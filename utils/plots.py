"""Pictures. matplotlib is imported only when drawing (its import is slow), and through its
Figure class, not pyplot: no backend or GUI machinery, nothing to close (the pattern matplotlib
documents for web servers)."""
from pathlib import Path

from utils.runstore import atomic_write


def new_figure(width: float, height: float, **kwargs):
    """A matplotlib Figure that is not registered with pyplot; save it with save_figure."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), **kwargs)


def save_figure(fig, path: Path, dpi: int = 100) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def plot_curves(rows: list[dict], path: Path, title: str = "") -> None:
    """Loss (train and validation) and accuracy per epoch, lineage included."""
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in rows]
    fig = new_figure(10, 4)
    # Fixed margins: tight_layout measures every text box, a visible cost at the end of a short run.
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.84 if title else 0.9, wspace=0.22)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, key, name in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in rows], marker="o", label="train")
        ax.plot(epochs, [r[f"val_{key}"] for r in rows], marker="o", label="validation")
        ax.set(xlabel="epoch", ylabel=name, title=name)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
