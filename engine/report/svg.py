"""Line charts as inline SVG: the HTML report opens offline, with no script and no library."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22")
WIDTH, HEIGHT = 900, 260
LEFT, RIGHT, TOP, BOTTOM = 70, 170, 28, 36
MAX_POINTS = 1000
LEGEND_LINES = 12  # what fits beside the plot; the rest is counted


@dataclass(frozen=True)
class Line:
    label: str
    x: np.ndarray
    y: np.ndarray
    dashed: bool = False


@dataclass(frozen=True)
class Chart:
    title: str
    y_label: str
    lines: Sequence[Line]
    markers: Sequence[tuple[float, str]] = field(default_factory=tuple)  # (x, label): verdicts
    spans: Sequence[tuple[float, float, str]] = field(default_factory=tuple)  # (from x, to x, label): shaded


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most MAX_POINTS points, keeping each stretch's maximum (a spike stays visible)."""
    if len(x) <= MAX_POINTS:
        return x, y
    step = math.ceil(len(x) / MAX_POINTS)
    cut = len(x) // step * step
    return x[:cut:step], y[:cut].reshape(-1, step).max(axis=1)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def _label(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.2e}"


def render_chart(chart: Chart) -> str:
    lines = [Line(ln.label, *_thin(np.asarray(ln.x, float), np.asarray(ln.y, float)), ln.dashed)
             for ln in chart.lines if len(ln.x)]
    title = html.escape(chart.title)
    if not lines:
        return f'<p class="empty">{title}: no data</p>'
    xs = np.concatenate([ln.x for ln in lines] + [np.array([m[0] for m in chart.markers], float),
                                                   np.array([x for a, b, _ in chart.spans for x in (a, b)], float)])
    ys = np.concatenate([ln.y[np.isfinite(ln.y)] for ln in lines])
    x0, x1 = float(xs.min()), float(xs.max()) if xs.max() > xs.min() else float(xs.min()) + 1
    y0, y1 = min(0.0, float(ys.min()) if len(ys) else 0.0), float(ys.max()) if len(ys) and ys.max() > 0 else 1.0
    y1 *= 1.05
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return TOP + plot_h - (y - y0) / (y1 - y0) * plot_h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
           f'height="{HEIGHT}" role="img" aria-label="{title}">',
           f'<text x="{LEFT}" y="18" class="title">{title}</text>',
           f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" class="frame"/>']
    for tick in _ticks(y0, y1):
        out.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{py(tick):.1f}" y2="{py(tick):.1f}" class="grid"/>')
        out.append(f'<text x="{LEFT - 6}" y="{py(tick) + 4:.1f}" class="ytick">{_label(tick)}</text>')
    for tick in _ticks(x0, x1, 8):
        out.append(f'<text x="{px(tick):.1f}" y="{TOP + plot_h + 16}" class="xtick">{_clock(tick)}</text>')
    out.append(f'<text x="14" y="{TOP + plot_h / 2:.0f}" class="ylabel" '
               f'transform="rotate(-90 14 {TOP + plot_h / 2:.0f})">{html.escape(chart.y_label)}</text>')
    for a, b, label in chart.spans:
        out.append(f'<rect x="{px(a):.1f}" y="{TOP}" width="{max(px(b) - px(a), 1.0):.1f}" height="{plot_h}" '
                   f'class="span"><title>{html.escape(label)}</title></rect>')
    for x, label in chart.markers:
        out.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{TOP}" y2="{TOP + plot_h}" class="marker">'
                   f'<title>{html.escape(label)}</title></line>')
    for index, line in enumerate(lines):
        color = PALETTE[index % len(PALETTE)]
        finite = np.isfinite(line.y)
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(line.x[finite], line.y[finite]))
        dash = ' stroke-dasharray="6 4"' if line.dashed else ""
        out.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.5"{dash}/>')
        ly = TOP + 12 + 16 * index
        if index >= LEGEND_LINES:
            if index == LEGEND_LINES:
                out.append(f'<text x="{WIDTH - RIGHT + 32}" y="{ly}" class="legend">+{len(lines) - index} more</text>')
            continue
        out.append(f'<line x1="{WIDTH - RIGHT + 10}" x2="{WIDTH - RIGHT + 28}" y1="{ly - 4}" y2="{ly - 4}" '
                   f'stroke="{color}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{WIDTH - RIGHT + 32}" y="{ly}" class="legend">{html.escape(line.label[:24])}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"
