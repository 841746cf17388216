"""A small PNG line-plot writer on PIL (no matplotlib dependency): several series with markers,
a legend, axis labels, tick values, an optional log-scaled x axis and a title. Readable, not fancy.

    line_plot("fid.png", {"f=4": ([1, 2, 3], [40.0, 30.0, 25.0])}, title="FID-like", xlabel="steps",
              ylabel="FID-like")
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

from PIL import Image, ImageDraw, ImageFont

__all__ = ["COLORS", "BACKGROUND", "PlotBox", "line_plot", "nice_ticks", "plot_box"]

BACKGROUND = (255, 255, 255)
AXIS = (0, 0, 0)
GRID = (225, 225, 225)
# Distinct, colour-blind-friendly-ish colours (Okabe-Ito), cycled over the series.
COLORS = [(0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233),
          (120, 120, 120), (240, 228, 66)]
MARKER = 3  # marker half-size in pixels

Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]


@dataclass(frozen=True)
class PlotBox:
    """The data area in pixels (inclusive edges) and the data ranges it shows."""

    left: int
    top: int
    right: int
    bottom: int
    x_range: tuple[float, float]  # in transformed units (log10 when log_x)
    y_range: tuple[float, float]
    log_x: bool

    def to_pixel(self, x: float, y: float) -> tuple[float, float]:
        xt = math.log10(x) if self.log_x else x
        x0, x1 = self.x_range
        y0, y1 = self.y_range
        px = self.left + (xt - x0) / (x1 - x0) * (self.right - self.left)
        py = self.bottom - (y - y0) / (y1 - y0) * (self.bottom - self.top)
        return px, py


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values (1, 2, 2.5 or 5 times a power of ten) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"tick range must be finite, got [{lo}, {hi}]")
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step + 1e-9) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        if t >= lo - step * 1e-9:
            ticks.append(round(t, 12))
        t += step
    return ticks


def _fmt(v: float) -> str:
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.0e}"
    return f"{v:.4g}"


def _finite_points(xs: Sequence[float], ys: Sequence[float], log_x: bool) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in zip(xs, ys)
            if x is not None and y is not None and math.isfinite(float(x)) and math.isfinite(float(y))
            and (not log_x or float(x) > 0)]


def plot_box(series: Series, width: int, height: int, log_x: bool = False, margins: tuple[int, int, int, int] = (
        70, 50, 20, 55)) -> PlotBox:
    """Where the data area of a plot of ``series`` lies (margins: left, top, right, bottom), with
    the data ranges padded by 5 % so that markers at the extremes stay inside."""
    pts = [p for xs, ys in series.values() for p in _finite_points(xs, ys, log_x)]
    if not pts:
        raise ValueError("line_plot: no finite points to plot" + (" (log x needs x > 0)" if log_x else ""))
    xs = [math.log10(x) if log_x else x for x, _ in pts]
    ys = [y for _, y in pts]

    def padded(lo: float, hi: float) -> tuple[float, float]:
        span = hi - lo if hi > lo else max(abs(lo), 1.0)
        return lo - 0.05 * span, hi + 0.05 * span

    left, top, right, bottom = margins
    if width - left - right < 20 or height - top - bottom < 20:
        raise ValueError(f"line_plot: {width}x{height} px leaves no room for the data area")
    return PlotBox(left, top, width - 1 - right, height - 1 - bottom, padded(min(xs), max(xs)),
                   padded(min(ys), max(ys)), log_x)


def line_plot(path: Union[str, os.PathLike], series: Series, title: str = "", xlabel: str = "", ylabel: str = "",
              log_x: bool = False, size: tuple[int, int] = (640, 420),
              hline: Optional[tuple[float, str]] = None) -> Path:
    """Write a PNG line plot of ``series`` ({label: (xs, ys)}) of ``size`` (width, height) pixels.
    Non-finite points (and x <= 0 on a log axis) are skipped. ``hline``: (y, label), a dashed
    reference line."""
    width, height = size
    box = plot_box(series, width, height, log_x)
    if hline is not None:  # widen the y range to include the reference line
        y0, y1 = box.y_range
        lo, hi = min(y0, hline[0]), max(y1, hline[0])
        if (lo, hi) != (y0, y1):
            span = hi - lo
            box = PlotBox(box.left, box.top, box.right, box.bottom, box.x_range,
                          (lo - 0.05 * span, hi + 0.05 * span), log_x)
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()

    # Grid and ticks.
    if log_x:
        lo, hi = box.x_range
        xticks = [10.0 ** e for e in range(math.floor(lo), math.ceil(hi) + 1)]
        xticks += [m * 10.0 ** e for e in range(math.floor(lo), math.ceil(hi) + 1) for m in (2, 5)]
        xticks = sorted(t for t in xticks if lo <= math.log10(t) <= hi)
    else:
        xticks = nice_ticks(*box.x_range)
    for t in xticks:
        px, _ = box.to_pixel(t, box.y_range[0])
        draw.line([(px, box.top), (px, box.bottom)], fill=GRID)
        draw.line([(px, box.bottom), (px, box.bottom + 4)], fill=AXIS)
        label = _fmt(t)
        draw.text((px - draw.textlength(label, font=font) / 2, box.bottom + 6), label, fill=AXIS, font=font)
    for t in nice_ticks(*box.y_range):
        _, py = box.to_pixel(10 ** box.x_range[0] if log_x else box.x_range[0], t)
        draw.line([(box.left, py), (box.right, py)], fill=GRID)
        draw.line([(box.left - 4, py), (box.left, py)], fill=AXIS)
        label = _fmt(t)
        draw.text((box.left - 6 - draw.textlength(label, font=font), py - 5), label, fill=AXIS, font=font)
    draw.rectangle([box.left, box.top, box.right, box.bottom], outline=AXIS)

    if hline is not None:
        _, py = box.to_pixel(10 ** box.x_range[0] if log_x else box.x_range[0], hline[0])
        for x in range(box.left, box.right, 8):
            draw.line([(x, py), (min(x + 4, box.right), py)], fill=(120, 120, 120))
        draw.text((box.left + 4, py - 12), hline[1], fill=(90, 90, 90), font=font)

    # Series: lines, then markers on top.
    entries = []
    for i, (label, (xs, ys)) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        pts = [box.to_pixel(x, y) for x, y in _finite_points(xs, ys, log_x)]
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2)
        for px, py in pts:
            draw.rectangle([px - MARKER, py - MARKER, px + MARKER, py + MARKER], fill=color)
        entries.append((label, color))

    # Legend: one row between the title and the data area, so that it never hides a point.
    x = box.left
    for label, color in entries:
        y = box.top - 16
        draw.line([(x, y + 6), (x + 16, y + 6)], fill=color, width=2)
        draw.text((x + 20, y), label, fill=AXIS, font=font)
        x += 20 + draw.textlength(label, font=font) + 16

    if title:
        draw.text(((width - draw.textlength(title, font=font)) / 2, 12), title, fill=AXIS, font=font)
    if xlabel:
        xl = xlabel + (" (log scale)" if log_x else "")
        draw.text(((box.left + box.right - draw.textlength(xl, font=font)) / 2, height - 22), xl, fill=AXIS,
                  font=font)
    if ylabel:  # drawn horizontally then rotated onto the left edge
        tw = int(draw.textlength(ylabel, font=font)) + 4
        tag = Image.new("RGB", (tw, 14), BACKGROUND)
        ImageDraw.Draw(tag).text((2, 1), ylabel, fill=AXIS, font=font)
        tag = tag.rotate(90, expand=True)
        img.paste(tag, (4, max(0, (box.top + box.bottom - tag.height) // 2)))

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
