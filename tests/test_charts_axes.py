"""Readable charts: accuracy axes end at 100% (fractions at 1), tick labels and point names never overprint."""
import logging

import matplotlib.pyplot as plt
import pytest

from edgeres.plots import plot_confusion, plot_pr_curve, plot_training_curves, save_figure
from edgeres.report.charts import plot_latency_distributions, plot_tradeoff

# Names as the demo's artifacts have them; two pairs sit almost on one point, as FP32 and INT8 files do.
NAMES = ["train (torch)", "pruned (torch)", "model.fp32.onnx", "model.int8.onnx", "model.fp32.xml", "model.int8.xml"]
GROUPS = ["torch fp32", "torch fp32", "onnxruntime fp32", "onnxruntime int8", "openvino fp32", "openvino int8"]


@pytest.fixture
def kept(monkeypatch):
    """The figures save_figure closes, kept open so a test can look at what was drawn."""
    figures, close = [], plt.close
    monkeypatch.setattr(plt, "close", figures.append)
    yield figures
    close("all")


def _drawn_labels(axis) -> list:
    """Visible, non-empty tick labels of the ticks drawn (inside the view), major and minor."""
    lo, hi = sorted(axis.get_view_interval())
    slack = 1e-9 * max(abs(lo), abs(hi), 1.0)
    axis.get_ticklabels(which="both")  # places the ticks and sets their text
    ticks = axis.get_major_ticks() + axis.get_minor_ticks()
    return [t.label1 for t in ticks if lo - slack <= t.get_loc() <= hi + slack
            and t.label1.get_visible() and t.label1.get_text()]


def _overlapping(texts, renderer) -> list[tuple[str, str]]:
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    return [(a, b) for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1:] if box_a.overlaps(box_b)]


def _tick_overlaps(fig) -> list[tuple[str, str]]:
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    return [pair for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)
            for pair in _overlapping(_drawn_labels(axis), renderer)]


def _crowded_figure():
    """Forty long category names on a narrow axis, and a y axis with a tick every unit over 0-60."""
    fig, ax = plt.subplots(figsize=(4, 2.5))
    ax.plot(range(40), [i * 1.5 for i in range(40)])
    ax.set_xticks(range(40), [f"artifact number {i}" for i in range(40)])
    ax.set_yticks(range(61))
    return fig


@pytest.mark.parametrize("accuracy", [[1.0] * 6, [0.9712, 0.9685, 0.9685, 0.9657, 0.9685, 0.9694]])
def test_the_accuracy_axis_ends_at_100_percent_and_shows_every_point(tmp_path, kept, accuracy):
    plot_tradeoff(NAMES, [14.8, 29.6, 11.5, 15.9, 4.2, 0.65], accuracy, GROUPS, tmp_path / "t.png",
                  "p50 (ms)", "Accuracy vs latency")
    (ax,) = [a for a in kept[0].axes if a.get_ylabel()]
    low, high = ax.get_ylim()
    assert high <= 100.0
    assert low <= 100 * min(accuracy) and 100 * max(accuracy) <= high
    kept[0].draw_without_rendering()
    shown = [float(t.get_text().replace("\N{MINUS SIGN}", "-")) for t in _drawn_labels(ax.yaxis)]
    assert shown and max(shown) <= 100.0


def test_a_metric_in_db_is_drawn_as_it_is_without_a_ceiling(tmp_path, kept):
    psnr = [34.45, 34.39, 34.39, 34.41, 34.53, 34.2]
    plot_tradeoff(NAMES, [14.8, 29.6, 11.5, 15.9, 4.2, 0.65], psnr, GROUPS, tmp_path / "t.png", "p50 (ms)",
                  "PSNR vs latency", ylabel="PSNR (dB)", scale=1.0, top=None)
    (ax,) = [a for a in kept[0].axes if a.get_ylabel() == "PSNR (dB)"]
    low, high = ax.get_ylim()
    assert low <= min(psnr) and max(psnr) <= high < 100  # dB, not 3,445 "%"


def test_point_names_stay_inside_the_axes_without_overprinting(tmp_path, kept):
    # On a log axis (spread > 20x) the two ~15 ms points are close in pixels though 1 ms apart in data.
    plot_tradeoff(NAMES, [14.8, 29.6, 11.5, 15.9, 4.2, 0.65], [1.0] * 6, GROUPS, tmp_path / "t.png",
                  "p50 (ms)", "Accuracy vs latency")
    fig = kept[0]
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    (ax,) = [a for a in fig.axes if a.get_ylabel()]
    names = [t for t in ax.texts if t.get_text() in NAMES]
    assert sorted(t.get_text() for t in names) == sorted(NAMES)
    assert _overlapping(names, renderer) == []
    frame = ax.get_window_extent(renderer)
    for t in names:
        box = t.get_window_extent(renderer)
        assert frame.y0 <= box.y0 and box.y1 <= frame.y1, t.get_text()


def test_save_figure_rotates_or_thins_tick_labels_that_would_overlap(tmp_path, kept):
    raw = _crowded_figure()
    assert _tick_overlaps(raw), "the figure must start crowded, or this test proves nothing"
    fig = _crowded_figure()
    save_figure(fig, tmp_path / "c.png")
    assert _tick_overlaps(fig) == []
    (ax,) = fig.axes
    fig.draw_without_rendering()
    assert len(_drawn_labels(ax.xaxis)) >= 5 and len(_drawn_labels(ax.yaxis)) >= 5  # thinned, not emptied
    assert (tmp_path / "c.png").stat().st_size > 0


def test_save_figure_leaves_labels_that_fit_alone(tmp_path, kept):
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([0, 1, 2, 3], [0, 1, 4, 9])
    fig.draw_without_rendering()
    before = [(t.get_text(), t.get_rotation()) for t in _drawn_labels(ax.xaxis) + _drawn_labels(ax.yaxis)]
    save_figure(fig, tmp_path / "f.png")
    fig.draw_without_rendering()
    assert [(t.get_text(), t.get_rotation()) for t in _drawn_labels(ax.xaxis) + _drawn_labels(ax.yaxis)] == before


@pytest.mark.parametrize("draw", ["latency", "confusion", "tradeoff_log"])
def test_edgeres_charts_have_no_overlapping_tick_labels(tmp_path, kept, draw):
    long_names = [f"resnet18_pruned_{i}.int8.openvino.xml" for i in range(14)]
    if draw == "latency":
        plot_latency_distributions(long_names, [[1.0 + i, 2.0 + i, 900.0] for i in range(14)], tmp_path / "l.png")
    elif draw == "confusion":
        classes = [f"class {i} long" for i in range(24)]
        plot_confusion([[int(i == j) * 9 for j in range(24)] for i in range(24)], classes, tmp_path / "c.png")
    else:  # under two decades on a log axis: the 2s and 5s between powers of ten are labelled too
        plot_tradeoff(NAMES, [2.1, 2.4, 3.0, 4.5, 6.0, 48.0], [0.97] * 6, GROUPS, tmp_path / "t.png", "ms", "t")
    assert _tick_overlaps(kept[0]) == []


def test_fraction_axes_end_at_one(tmp_path, kept):
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "train_accuracy": min(1.0, 0.8 + 0.1 * e),
                "val_accuracy": min(1.0, 0.85 + 0.05 * e)} for e in range(1, 6)]
    plot_training_curves(history, tmp_path / "curves.png")
    loss_ax, acc_ax = kept[0].axes
    assert acc_ax.get_ylim()[1] <= 1.0 and acc_ax.get_ylim()[0] <= 0.9
    assert loss_ax.get_ylim()[1] >= 1.2  # the loss is no fraction: its axis keeps matplotlib's room
    recall = [i / 10 for i in range(11)]
    plot_pr_curve({"recall": recall, "all": [1.0] * 11, "per_class": {"a": [1.0] * 11}}, tmp_path / "pr.png")
    assert kept[1].axes[0].get_ylim()[1] <= 1.0


def test_third_party_warnings_stay_quiet_unless_verbose():
    from edgeres.ui import setup_logging

    cuda, ours = logging.getLogger("torch.utils.cpp_extension"), logging.getLogger("edgeres")
    levels = cuda.level, ours.level
    try:
        setup_logging(verbose=False)
        assert not cuda.isEnabledFor(logging.WARNING)
        setup_logging(verbose=True)
        assert cuda.isEnabledFor(logging.WARNING)
    finally:
        cuda.setLevel(levels[0])
        ours.setLevel(levels[1])
