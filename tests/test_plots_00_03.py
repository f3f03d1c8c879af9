"""The figures of notebooks 00-03: each returns a figure whose axes all have a
title and labelled axes, and draws what it is given."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from helpers import plots  # noqa: E402
from helpers.audio import mel_filterbank  # noqa: E402
from helpers.train import History  # noqa: E402

TAGS = ["rock", "guitar", "drums", "piano", "quiet"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _labels(n: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((n, len(TAGS))) < np.array([0.5, 0.4, 0.3, 0.2, 0.1])).astype(np.uint8)


def _main_axes(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def assert_labelled(fig, n_axes: int) -> None:
    """Every (non-colorbar) axes has a title, an x label and a y label."""
    assert isinstance(fig, matplotlib.figure.Figure)
    axes = _main_axes(fig)
    assert len(axes) == n_axes
    for ax in axes:
        assert ax.get_title(), f"axes without a title in {fig}"
        assert ax.get_xlabel() and ax.get_ylabel(), f"axes {ax.get_title()!r} has an unlabelled axis"
    fig.canvas.draw()                      # renders without error (and without warnings: see conftest)


def test_tag_frequencies_counts_clips_most_frequent_first():
    labels = _labels()
    fig = plots.plot_tag_frequencies(labels, TAGS)
    assert_labelled(fig, 1)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights == sorted(labels.sum(0), reverse=True)
    assert [t.get_text() for t in ax.get_xticklabels()][0] == TAGS[int(np.argmax(labels.sum(0)))]
    assert "40 clips" in ax.get_title()


def test_cooccurrence_is_conditional_share_with_unit_diagonal():
    labels = np.array([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 1, 1, 0]], dtype=np.uint8)
    fig = plots.plot_cooccurrence(labels, TAGS)
    assert_labelled(fig, 1)
    image = fig.axes[0].images[0].get_array()
    assert np.allclose(np.diag(image)[:4], 1.0)
    # rows and columns are ordered by frequency: rock (3 clips), then guitar and drums (2), piano (1)
    rows = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert rows[:3] == ["rock", "guitar", "drums"]
    assert image[0, 1] == pytest.approx(2 / 3)            # P(guitar | rock)
    assert image[1, 0] == pytest.approx(1.0)              # P(rock | guitar)
    assert image[4, 4] == 0                                # a tag no clip carries: a zero row, no NaN


def test_plot_clip_shows_waveform_and_log_mel_on_one_time_axis():
    sr = 16000
    t = np.arange(2 * sr) / sr
    wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    fig = plots.plot_clip(wave, sr, title="a 440 Hz tone")
    assert_labelled(fig, 2)
    ax1, ax2 = _main_axes(fig)
    assert ax1.get_title() == "a 440 Hz tone"
    mel = ax2.images[0].get_array()
    assert mel.shape == (96, 1 + 2 * sr // 256)
    assert ax2.images[0].get_extent()[1] == pytest.approx(2.0)      # seconds
    assert "dB" in [a for a in fig.axes if a.get_label() == "<colorbar>"][0].get_ylabel()


def test_mel_filterbank_plot_draws_every_filter():
    fb = mel_filterbank()
    fig = plots.plot_mel_filterbank(fb)
    assert_labelled(fig, 2)
    assert len(fig.axes[0].lines) == fb.shape[1]
    centres = fig.axes[1].lines[0].get_ydata()
    assert np.all(np.diff(centres) >= 0) and centres[-1] <= 8000


def test_learning_curves_accept_histories_and_their_dict_form():
    h = History(epoch=[1, 2, 3], train_loss=[0.7, 0.5, 0.4], valid_loss=[0.6, 0.5, 0.45],
                valid_roc_auc=[0.6, 0.7, 0.75], valid_pr_auc=[0.2, 0.3, 0.35])
    as_dict = {k: getattr(h, k) for k in ("epoch", "train_loss", "valid_loss", "valid_roc_auc", "valid_pr_auc")}
    fig = plots.plot_learning_curves({"1D CNN": h, "2D CNN": as_dict}, title="two runs")
    assert_labelled(fig, 3)
    loss_ax, roc_ax, _ = fig.axes
    assert len(loss_ax.lines) == 4 and len(roc_ax.lines) == 2
    assert list(roc_ax.lines[1].get_ydata()) == [0.6, 0.7, 0.75]
    assert fig.get_suptitle() == "two runs"


def test_learning_curves_of_a_single_epoch():
    h = History(epoch=[1], train_loss=[0.7], valid_loss=[0.6], valid_roc_auc=[float("nan")], valid_pr_auc=[0.2])
    assert_labelled(plots.plot_learning_curves({"ci": h}), 3)


def test_per_tag_scores_grouped_bars_with_chance():
    a = {"rock": 0.9, "guitar": 0.8, "drums": 0.7}
    b = {"rock": 0.95, "guitar": 0.6, "drums": 0.75}
    fig = plots.plot_per_tag_scores({"1D": a, "2D": b}, order=["drums", "rock", "guitar"])
    assert_labelled(fig, 1)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["drums", "rock", "guitar"]
    assert len(ax.patches) == 6
    assert any(line.get_linestyle() == "--" for line in ax.lines)               # the chance line
    fig2 = plots.plot_per_tag_scores({"1D": a}, chance={"rock": 0.5, "guitar": 0.4, "drums": 0.3},
                                     metric="PR-AUC")
    assert_labelled(fig2, 1)
    assert fig2.axes[0].get_ylabel() == "test PR-AUC"
    assert [t.get_text() for t in fig2.axes[0].get_xticklabels()] == ["rock", "guitar", "drums"]   # best first


def test_top_k_marks_true_tags_and_names_the_missed_ones():
    probs = np.array([0.1, 0.9, 0.5, 0.3, 0.05])
    fig = plots.plot_top_k(probs, TAGS, ["guitar", "quiet"], k=3, title="clip 7")
    assert_labelled(fig, 1)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["piano", "drums", "guitar"]    # best at the top
    colours = [matplotlib.colors.to_hex(p.get_facecolor()) for p in ax.patches]
    assert colours[-1] == matplotlib.colors.to_hex("tab:green") and colours[0] == matplotlib.colors.to_hex("tab:gray")
    assert "quiet" in ax.get_xlabel()


def test_per_tag_scores_keep_the_size_when_tags_are_missing():
    """A tag without a score (no positive clip in a small test subset) keeps an
    empty place: the figure has the same size as with every tag."""
    order = ["rock", "guitar", "drums"]
    full = plots.plot_per_tag_scores({"m": {"rock": 0.9, "guitar": 0.8, "drums": 0.7}}, order=order)
    part = plots.plot_per_tag_scores({"m": {"rock": 0.9}}, order=order)
    assert_labelled(part, 1)
    assert tuple(full.get_size_inches()) == tuple(part.get_size_inches())
    assert [t.get_text() for t in part.axes[0].get_xticklabels()] == ["rock", "guitar", "drums"]
