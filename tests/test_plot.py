"""The notebook plot API: every function draws from results (nothing refitted) and returns an open
matplotlib Figure (or the Axes it drew on); missing inputs are one-line errors."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from switchscope import DataError, plot  # noqa: E402
from switchscope.pipeline import run  # noqa: E402


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    import warnings

    from switchscope import SyntheticConfig

    out = tmp_path_factory.mktemp("plot") / "o"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the synthetic film's planted Inf values, a short NMF
        return run(None, out, stages=["clean", "loops", "decomposition", "autoencoder", "interpret"],
                   progress=False, log=lambda m: None, configs={"synthetic": SyntheticConfig(rows=5, cols=6)})


@pytest.mark.parametrize("name, args", [
    ("loop_maps", ()), ("loop_examples", ()), ("cleaning", ()), ("pca", ()), ("nmf", ()), ("clusters", ()),
    ("embedding", ("resonance",)), ("generated", ("piezoresponse",)), ("reconstruction_error", ()),
])
def test_every_plot_returns_an_open_figure(results, name, args):
    fig = getattr(plot, name)(results, *args)
    try:
        assert isinstance(fig, matplotlib.figure.Figure)
        assert plt.fignum_exists(fig.number)  # open, for the notebook to show or change
        assert len(fig.axes) >= 1
    finally:
        plt.close(fig)


def test_loop_maps_of_a_result_object_match_the_dataset(results):
    from switchscope.report.figures.loops import result_from_dataset

    res = result_from_dataset(results)
    fig = plot.loop_maps(res)
    plt.close(fig)
    html = res._repr_html_()
    assert html.startswith("<table>") and "median R²" in html and res.model in html
    assert f"{int(res.converged.sum())} of {res.r2.size}" in html


def test_one_panel_plots_draw_on_the_given_axes(results):
    fig, (a, b) = plt.subplots(1, 2)
    try:
        assert plot.map(results, "loop_coercive_pos", ax=a) is a
        img = a.images[0].get_array()
        np.testing.assert_allclose(np.ma.filled(img, np.nan), results["loop_coercive_pos"].values, equal_nan=True)
        assert a.figure.axes[-1].get_ylabel() == "V"  # the colour bar carries the units
        assert plot.curves(results, 2, 3, ax=b) is b
        labels = {line.get_label() for line in b.lines}
        assert {"piezoresponse (down)", "piezoresponse_clean (up)", "loop_fit (down)"} <= labels
    finally:
        plt.close(fig)


def test_missing_results_are_one_line_errors(results):
    bare = results[["piezoresponse"]]
    for call, match in ((lambda: plot.loop_maps(bare), "no loop fit"),
                        (lambda: plot.embedding(bare), "run the autoencoder stage"),
                        (lambda: plot.map(results, "piezoresponse"), "not a \\(row, col\\) map"),
                        (lambda: plot.curves(results, 99, 0), "outside the 5 x 6 grid")):
        with pytest.raises(DataError, match=match):
            call()
