"""ankh3/downstream/plots.py: the PNGs a probe leaves, readable as written (titles inside, a colour bar)."""
import numpy as np
import pytest

from ankh3.downstream import plots
from ankh3.figures import save_figure


def contact_maps(lengths, seed=0):
    """Symmetric 0/1 maps with contacts near the diagonal, one masked residue (-1), and predictions."""
    rng = np.random.default_rng(seed)
    true, pred = [], []
    for n in lengths:
        distance = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :])
        t = np.triu((rng.random((n, n)) < np.exp(-distance / 4)).astype(np.float32))
        t = t + np.triu(t, 1).T
        t[2, :] = t[:, 2] = -1
        true.append(t)
        pred.append(np.clip(np.exp(-distance / 6) + 0.1 * rng.random((n, n)), 0, 1))
    return true, pred


def inside(extent, fig):
    width, height = fig.canvas.get_width_height()
    return extent.x0 >= 0 and extent.y0 >= 0 and extent.x1 <= width and extent.y1 <= height


@pytest.mark.parametrize("lengths", [(30,), (60, 120, 45), (40, 50, 60, 70)])
def test_contact_maps_keep_titles_inside_and_have_a_colour_bar(tmp_path, lengths):
    true, pred = contact_maps(lengths)
    names = [f"chain_{n}_with_a_rather_long_pdb_name" for n in lengths]
    fig = plots.contact_maps_figure(true, pred, names)
    save_figure(fig, str(tmp_path / "maps.png"))
    renderer = fig.canvas.get_renderer()
    maps = [ax for ax in fig.axes if ax.get_images() and ax.get_title()]
    assert len(maps) == min(3, len(lengths))
    for ax in maps:
        assert inside(ax.title.get_window_extent(renderer), fig), ax.get_title()
        assert "upper: predicted, lower: true" in ax.get_title()
    insets = [child for ax in fig.axes for child in ax.child_axes]
    (bar,) = [ax for ax in insets if ax.get_ylabel().startswith("contact probability")]
    assert inside(bar.get_tightbbox(renderer), fig)
    assert bar.get_ylim() == (0.0, 1.0)
    assert (tmp_path / "maps.png").stat().st_size > 1000


def test_plot_contact_maps_writes_the_png(tmp_path):
    true, pred = contact_maps((20, 25))
    path = plots.plot_contact_maps(true, pred, ["a", "b"], str(tmp_path / "sub" / "contact_maps.png"))
    assert path.endswith("contact_maps.png") and (tmp_path / "sub" / "contact_maps.png").stat().st_size > 1000
