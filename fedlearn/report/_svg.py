"""Hand-built inline SVG charts: a line chart over rounds and a horizontal bar chart.

Why not matplotlib's SVG backend: its files carry fonts as paths and fixed
pixel sizes (tens of kB per chart, text that does not reflow), while these are
a few kB, scale with the page (``viewBox``, ``width: 100%``) and take their
fonts and colours from the page's stylesheet. Every label is escaped here;
callers pass plain strings.

Honest axes: accuracy and bars start at zero, the x axis spans all planned
rounds (a run in progress shows how far it got), and no point is interpolated
that was not measured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

__all__ = ["BarItem", "Rule", "Series", "bar_chart", "line_chart", "nice_ticks"]

_W, _H = 520, 300  # viewBox of a line chart
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 14, 44


@dataclass
class Series:
    """One line: measured points ``(round, value)``; ``step`` holds a value until the next."""

    label: str
    points: list[tuple[float, float]]
    color: str
    dashed: bool = False
    step: bool = False
    emphasis: bool = False
    muted: bool = False


@dataclass
class Rule:
    """A horizontal reference line (a baseline, a budget)."""

    y: float
    label: str
    color: str = "#555"


@dataclass
class BarItem:
    """One bar of a horizontal bar chart."""

    label: str
    value: float
    emphasis: bool = False
    note: str = ""


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values from at or below ``low`` to at or above ``high``."""
    if not high > low:
        high = low + 1.0
    raw = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def _fmt(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e6 else f"{value:.3g}"


@dataclass
class _Frame:
    x_low: float
    x_high: float
    y_low: float
    y_high: float
    width: int = _W
    height: int = _H
    parts: list[str] = field(default_factory=list)

    def x(self, value: float) -> float:
        span = self.x_high - self.x_low or 1.0
        return _LEFT + (value - self.x_low) / span * (self.width - _LEFT - _RIGHT)

    def y(self, value: float) -> float:
        span = self.y_high - self.y_low or 1.0
        return self.height - _BOTTOM - (value - self.y_low) / span * (self.height - _TOP - _BOTTOM)


def _round_ticks(low: int, high: int) -> list[int]:
    span = high - low
    step = 1 if span <= 12 else max(1, int(nice_ticks(0, span, 8)[1]))
    ticks = list(range(low, high + 1, step))
    return ticks if ticks[-1] == high or span <= 12 else [*ticks, high]


def line_chart(
    *,
    title: str,
    series: Sequence[Series],
    rounds: int,
    y_label: str,
    y_range: tuple[float, float] | None = None,
    rules: Sequence[Rule] = (),
    skipped: Sequence[int] = (),
) -> str:
    """An SVG line chart of values per round, rounds ``1..rounds`` on the x axis.

    ``y_range`` fixes the y axis (e.g. accuracy 0-1); otherwise it runs from 0
    to a little above the largest value or rule. ``skipped`` rounds get a grey
    band (no model update happened).
    """
    rounds = max(rounds, 1, *(int(p[0]) for s in series for p in s.points))
    values = [p[1] for s in series for p in s.points] + [r.y for r in rules]
    if y_range is None:
        top = max(values, default=1.0)
        low = min(0.0, *values) if values else 0.0
        y_range = (low, top * 1.08 if top > 0 else 1.0)
    ticks = nice_ticks(*y_range)
    frame = _Frame(0.5, rounds + 0.5, min(y_range[0], ticks[0]), max(y_range[1], ticks[-1]))
    out = frame.parts
    out.append(
        f'<svg class="chart" viewBox="0 0 {frame.width} {frame.height}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>"
    )
    band = frame.x(1) - frame.x(0)
    for r in skipped:
        out.append(
            f'<rect class="skipped" x="{frame.x(r) - band / 2:.1f}" y="{_TOP}" '
            f'width="{band:.1f}" height="{frame.height - _TOP - _BOTTOM}">'
            f"<title>round {r}: skipped, model unchanged</title></rect>"
        )
    for tick in ticks:
        y = frame.y(tick)
        out.append(
            f'<line class="grid" x1="{_LEFT}" x2="{frame.width - _RIGHT}" y1="{y:.1f}" '
            f'y2="{y:.1f}"/><text class="tick" x="{_LEFT - 6}" y="{y + 4:.1f}" '
            f'text-anchor="end">{_fmt(tick)}</text>'
        )
    base = frame.height - _BOTTOM
    out.append(
        f'<line class="axis" x1="{_LEFT}" x2="{frame.width - _RIGHT}" y1="{base}" y2="{base}"/>'
    )
    for r in _round_ticks(1, rounds):
        out.append(
            f'<text class="tick" x="{frame.x(r):.1f}" y="{base + 16}" '
            f'text-anchor="middle">{r}</text>'
        )
    out.append(
        f'<text class="axis-label" x="{(_LEFT + frame.width - _RIGHT) / 2:.0f}" '
        f'y="{frame.height - 8}" text-anchor="middle">round</text>'
        f'<text class="axis-label" transform="translate(14 {(_TOP + base) / 2:.0f}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    for rule in rules:
        y = frame.y(rule.y)
        out.append(
            f'<line class="rule" x1="{_LEFT}" x2="{frame.width - _RIGHT}" y1="{y:.1f}" '
            f'y2="{y:.1f}" stroke="{rule.color}"><title>{escape(rule.label)}</title></line>'
        )
    ordered = sorted(series, key=lambda s: (s.emphasis, not s.muted))  # emphasis drawn last
    for s in ordered:
        out.append(_polyline(frame, s, rounds))
    out.append("</svg>")
    return "".join(out)


def _polyline(frame: _Frame, s: Series, rounds: int) -> str:
    points = sorted(s.points)
    if not points:
        return ""
    coords: list[str] = []
    for i, (x, y) in enumerate(points):
        if s.step and i:
            coords.append(f"{frame.x(x):.1f},{frame.y(points[i - 1][1]):.1f}")
        coords.append(f"{frame.x(x):.1f},{frame.y(y):.1f}")
    if s.step and points[-1][0] < rounds:
        coords.append(f"{frame.x(rounds):.1f},{frame.y(points[-1][1]):.1f}")
    classes = "line" + (" dashed" if s.dashed else "") + (" emphasis" if s.emphasis else "")
    classes += " muted" if s.muted else ""
    label = escape(s.label)
    marks = "".join(
        f'<circle cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" r="{4 if s.emphasis else 3}">'
        f"<title>{label}, round {x:g}: {y:.4g}</title></circle>"
        for x, y in points
    )
    return (
        f'<g class="{classes}" stroke="{s.color}" fill="{s.color}"><title>{label}</title>'
        f'<polyline fill="none" points="{" ".join(coords)}"/>{marks}</g>'
    )


def bar_chart(*, title: str, items: Sequence[BarItem], unit: str) -> str:
    """A horizontal bar chart from zero, one bar per item, value written at the bar's end."""
    if not items:
        return ""
    width, label_w, row, top = 520, 150, 26, 8
    height = top + row * len(items) + 34
    high = max((i.value for i in items), default=0.0)
    ticks = nice_ticks(0.0, high if high > 0 else 1.0, 4)
    span = width - label_w - 80  # room for the value written after the longest bar

    def x(value: float) -> float:
        return label_w + value / (ticks[-1] or 1.0) * span

    out = [
        f'<svg class="chart bars" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>"
    ]
    axis = top + row * len(items)
    for tick in ticks:
        out.append(
            f'<line class="grid" x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{top}" y2="{axis}"/>'
            f'<text class="tick" x="{x(tick):.1f}" y="{axis + 16}" '
            f'text-anchor="middle">{_fmt(tick)}</text>'
        )
    out.append(
        f'<text class="axis-label" x="{label_w + span / 2:.0f}" y="{height - 4}" '
        f'text-anchor="middle">{escape(unit)}</text>'
    )
    for i, item in enumerate(items):
        y = top + i * row
        label = item.label if len(item.label) <= 22 else item.label[:21] + "…"
        cls = "bar emphasis" if item.emphasis else "bar"
        out.append(
            f'<g class="{cls}"><title>{escape(item.label)}: {item.value:,.2f} {escape(unit)}'
            f"{escape(item.note)}</title>"
            f'<text class="tick" x="{label_w - 8}" y="{y + row / 2 + 4:.1f}" '
            f'text-anchor="end">{escape(label)}</text>'
            f'<rect x="{label_w}" y="{y + 4}" width="{max(x(item.value) - label_w, 0):.1f}" '
            f'height="{row - 8}"/>'
            f'<text class="value" x="{x(item.value) + 6:.1f}" y="{y + row / 2 + 4:.1f}">'
            f"{item.value:,.2f}</text></g>"
        )
    out.append(f'<line class="axis" x1="{label_w}" x2="{label_w}" y1="{top}" y2="{axis}"/></svg>')
    return "".join(out)
