"""The PIL line-plot writer: image size, lines where the data are, legend, log axis, errors."""
import numpy as np
import pytest
from PIL import Image

from ldm.eval.plots import BACKGROUND, COLORS, line_plot, nice_ticks, plot_box


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def _has_color_near(arr, x, y, color, radius=1):
    patch = arr[int(round(y)) - radius:int(round(y)) + radius + 1, int(round(x)) - radius:int(round(x)) + radius + 1]
    return bool((patch == np.array(color, dtype=np.uint8)).all(axis=-1).any())


def test_size_and_series_pixels_exactly_where_the_data_are(tmp_path):
    series = {"a": ([0, 1, 2], [0.0, 1.0, 4.0]), "b": ([0, 1, 2], [4.0, 3.0, 2.0])}
    path = line_plot(tmp_path / "p.png", series, title="t", xlabel="x", ylabel="y", size=(500, 300))
    arr = _pixels(path)
    assert arr.shape == (300, 500, 3)
    box = plot_box(series, 500, 300)
    for color, (xs, ys) in zip(COLORS, series.values()):
        for x, y in zip(xs, ys):
            assert _has_color_near(arr, *box.to_pixel(x, y), color)  # a marker at every point
        # the middle of each segment is on the line
        mx, my = box.to_pixel((xs[0] + xs[1]) / 2, (ys[0] + ys[1]) / 2)
        assert _has_color_near(arr, mx, my, color)
    # a corner of the data area far from both lines stays background
    cx, cy = box.to_pixel(0.1, 2.6)
    assert (arr[int(cy), int(cx)] == np.array(BACKGROUND, dtype=np.uint8)).all()


def test_series_colour_absent_when_series_absent(tmp_path):
    arr = _pixels(line_plot(tmp_path / "p.png", {"a": ([1, 2], [1, 2])}))
    assert (arr == np.array(COLORS[0], dtype=np.uint8)).all(axis=-1).any()
    assert not (arr == np.array(COLORS[1], dtype=np.uint8)).all(axis=-1).any()


def test_log_x_places_points_by_decade(tmp_path):
    series = {"ddim": ([1, 10, 100], [1.0, 2.0, 3.0])}
    box = plot_box(series, 640, 420, log_x=True)
    x1, _ = box.to_pixel(1, 1.0)
    x10, _ = box.to_pixel(10, 1.0)
    x100, _ = box.to_pixel(100, 1.0)
    assert x10 - x1 == pytest.approx(x100 - x10)
    arr = _pixels(line_plot(tmp_path / "p.png", series, log_x=True))
    assert _has_color_near(arr, *box.to_pixel(10, 2.0), COLORS[0])


def test_nice_ticks():
    assert nice_ticks(0, 10, 6) == [0, 2, 4, 6, 8, 10]
    assert nice_ticks(0.13, 0.61, 5) == [0.2, 0.4, 0.6]  # raw step 0.12 -> 0.2
    assert nice_ticks(3, 3) == [3]


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="no finite points"):
        line_plot(tmp_path / "p.png", {"a": ([1], [float("nan")])})
    with pytest.raises(ValueError, match="log x needs x > 0"):
        line_plot(tmp_path / "p.png", {"a": ([0, -1], [1, 2])}, log_x=True)
    with pytest.raises(ValueError, match="no room"):
        line_plot(tmp_path / "p.png", {"a": ([1, 2], [1, 2])}, size=(60, 60))
