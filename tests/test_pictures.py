"""The pictures the template draws, checked on their figures (issue "What a new user hits", item 7)."""
from pathlib import Path

import pytest
import torch


@pytest.fixture
def figures(monkeypatch) -> list:
    """The figures save_figure is given, instead of PNG files."""
    import utils.plots

    drawn = []
    monkeypatch.setattr(utils.plots, "save_figure", lambda fig, path, dpi=100: drawn.append(fig))
    return drawn


def test_one_epoch_is_one_tick(figures):
    from utils.plots import plot_curves

    plot_curves([{"epoch": 1, "train_loss": 1.0, "val_loss": 1.2, "val_acc": 0.5}], Path("x.png"))
    assert all([t for t in ax.get_xticks()] == [1] for ax in figures[0].axes)


@pytest.mark.groups
def test_the_group_ab_figure_says_a_against_b_and_labels_each_pair(figures):
    from groups.compare import plot_pairs

    pairs = [{"seed": s, "fold": None, "B_minus_A": d} for s, d in ((0, 0.1), (1, 0.2))]
    plot_pairs({"A": "2026-01-01_00-00-00", "B": "2026-01-02_00-00-00", "metric": "val_acc", "pairs": pairs,
                "mean_difference": 0.15, "bootstrap_ci95": [0.1, 0.2]}, Path("x.png"))
    ax = figures[0].axes[0]
    assert ax.get_title() == "A 2026-01-01_00-00-00 against B 2026-01-02_00-00-00"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["seed 0", "seed 1"]


def test_sample_grids_are_large_enough_and_their_title_has_its_own_band(tmp_path):
    from PIL import Image

    from tasks.wgan_gp.measure import save_grid

    save_grid(torch.rand(16, 1, 8, 8, 8), tmp_path / "v.png", columns=4, title="volumes")
    save_grid(torch.rand(64, 1, 8, 8), tmp_path / "i.png", title="images")
    for name in ("v.png", "i.png"):
        width, height = Image.open(tmp_path / name).size
        assert width >= 600 and height >= 250, (name, width, height)
