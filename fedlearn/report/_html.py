"""Small HTML builders for the report; every value they are given is escaped here.

Strings from a run directory are untrusted: they pass through :func:`esc`
(``html.escape`` with quotes) and never into a tag or attribute name. Cells
and captions that callers pass as HTML are built from escaped parts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal
from html import escape

from fedlearn.report._rundir import TOKEN_DECIMALS, text

__all__ = [
    "LONG_TABLE",
    "code",
    "esc",
    "flr",
    "fmt",
    "legend",
    "section",
    "short",
    "size",
    "stat",
    "table",
]

LONG_TABLE = 40  # rows; longer tables fold into <details>


def esc(value: object) -> str:
    return escape(text(value), quote=True)


def fmt(value: float | None, spec: str = ".4f") -> str:
    return "–" if value is None else format(value, spec)


def flr(base_units: int) -> str:
    return f"{Decimal(base_units) / Decimal(10) ** TOKEN_DECIMALS:,.2f}"


def size(count: int | None) -> str:
    if count is None:
        return "–"
    units = ((1e9, "GB"), (1e6, "MB"), (1e3, "kB"))
    scale, unit = next(((s, u) for s, u in units if count >= s), (1.0, "B"))
    return f"{count / scale:.1f} {unit}" if unit != "B" else f"{count} B"


def code(value: object, cls: str = "hash") -> str:
    return f'<code class="{cls}">{esc(value)}</code>' if text(value) else "–"


def short(value: object) -> str:
    """A long hex value as ``0x12ab…9f0e``; the whole value in the tooltip."""
    full = text(value)
    if not full:
        return "–"
    shown = f"{full[:6]}…{full[-4:]}" if len(full) > 14 else full
    return f'<code class="short" title="{esc(full)}">{esc(shown)}</code>'


def table(headers: Sequence[str], rows: Iterable[tuple[str, Sequence[str]]], cls: str = "") -> str:
    """``rows`` are ``(row class, cells)``; cells are already HTML."""
    rows = list(rows)
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        f'<tr class="{c}">' + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"
        for c, cells in rows
    )
    markup = f'<div class="table-wrap"><table class="{cls}"><thead><tr>{head}</tr></thead>'
    markup += f"<tbody>{body}</tbody></table></div>"
    if len(rows) > LONG_TABLE:
        return f"<details><summary>{len(rows)} rows</summary>{markup}</details>"
    return markup


def legend(entries: Iterable[tuple[str, str, str]]) -> str:
    """``(label, colour, style)`` with style ``line``, ``dashed`` or ``band``."""
    items = "".join(
        f'<li><span class="key {style}" style="--c:{color}"></span>{esc(label)}</li>'
        for label, color, style in entries
    )
    return f'<ul class="legend">{items}</ul>' if items else ""


def section(anchor: str, title: str, caption: str, body: str) -> str:
    return (
        f'<section id="{anchor}"><h2>{esc(title)}</h2>'
        f'<p class="caption">{caption}</p>{body}</section>'
    )


def stat(value: str, label: str, note: str = "", cls: str = "") -> str:
    note_html = f'<div class="note">{note}</div>' if note else ""
    return (
        f'<div class="stat {cls}" data-stat="{esc(label)}"><div class="value">{value}</div>'
        f'<div class="label">{esc(label)}</div>{note_html}</div>'
    )
