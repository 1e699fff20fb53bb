"""Benchmark registry, result records and the results README.

A benchmark is a function that takes a :class:`BenchContext` and returns an
:class:`Outcome`; registering it is all a new benchmark needs::

    @register("dp_cost", target=Target("<=", 1.5), description="...")
    def dp_cost(ctx: BenchContext) -> Outcome:
        ...

Modules named ``benchmarks/bench_*.py`` are imported by the runner, so a new
file with a registered function is picked up without further changes. Each
run writes ``results/<name>.json`` (settings, raw timings, machine info) and
the runner regenerates ``results/README.md`` from every JSON file there.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from rich.progress import Progress, TaskID

__all__ = [
    "REGISTRY",
    "BenchContext",
    "Benchmark",
    "Outcome",
    "Target",
    "load_results",
    "machine_info",
    "median",
    "register",
    "render_readme",
    "write_result",
]

Comparison = Literal["<=", ">=", "<", ">"]


@dataclass(frozen=True)
class Target:
    """A pass/fail threshold on a benchmark's headline figure.

    Parameters
    ----------
    op : {"<=", ">=", "<", ">"}
        How the measured value must compare with ``value``.
    value : float
        The threshold.
    """

    op: Comparison
    value: float

    def met(self, measured: float) -> bool:
        """Return whether ``measured`` satisfies the target.

        Parameters
        ----------
        measured : float
            The benchmark's headline value.

        Returns
        -------
        bool
            ``True`` if the comparison holds.
        """
        checks: dict[str, Callable[[float, float], bool]] = {
            "<=": lambda a, b: a <= b,
            ">=": lambda a, b: a >= b,
            "<": lambda a, b: a < b,
            ">": lambda a, b: a > b,
        }
        return checks[self.op](measured, self.value)

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}"


@dataclass
class Outcome:
    """What a benchmark function returns.

    Parameters
    ----------
    figure : str
        What the headline value is (one line, shown in the README table).
    value : float
        The headline value, compared with the benchmark's target.
    unit : str
        Unit of ``value`` (``"x"`` for a ratio, ``"s"``, ...).
    settings : dict
        Everything needed to reproduce the measurement.
    summary : dict
        Derived figures worth reading (absolute medians, per-repetition values).
    raw : dict
        Raw measurements (per-round timings of every run).
    notes : list of str
        Free-text remarks shown under the table.
    """

    figure: str
    value: float
    unit: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class BenchContext:
    """What a running benchmark gets from the runner.

    Parameters
    ----------
    quick : bool
        Use the smaller setting (``--quick``).
    workdir : Path
        A scratch directory, removed after the benchmark.
    progress : Progress
        The runner's rich progress display.
    task : TaskID
        This benchmark's task in ``progress``.
    """

    quick: bool
    workdir: Path
    progress: Progress
    task: TaskID

    def plan(self, steps: int) -> None:
        """Declare how many steps (e.g. simulation runs) the benchmark will take.

        Parameters
        ----------
        steps : int
            Total number of :meth:`advance` calls to come.
        """
        self.progress.update(self.task, total=steps, completed=0)

    def status(self, text: str) -> None:
        """Show what the benchmark is doing now.

        Parameters
        ----------
        text : str
            A short description of the current step.
        """
        self.progress.update(self.task, description=text)

    def advance(self) -> None:
        """Mark one planned step as done."""
        self.progress.advance(self.task)

    def log(self, text: str) -> None:
        """Print a line above the progress display.

        Parameters
        ----------
        text : str
            The message (rich markup allowed).
        """
        self.progress.console.log(text)


BenchFunction = Callable[[BenchContext], Outcome]


@dataclass(frozen=True)
class Benchmark:
    """A registered benchmark.

    Parameters
    ----------
    name : str
        Identifier (``--only NAME``, ``results/<name>.json``).
    func : callable
        ``(BenchContext) -> Outcome``.
    target : Target
        Threshold on the headline value.
    description : str
        One sentence on what is measured.
    """

    name: str
    func: BenchFunction
    target: Target
    description: str


#: Every registered benchmark by name, in registration order.
REGISTRY: dict[str, Benchmark] = {}


def register(
    name: str, *, target: Target, description: str
) -> Callable[[BenchFunction], BenchFunction]:
    """Register a benchmark function under ``name``.

    Parameters
    ----------
    name : str
        Unique benchmark name (a valid file stem).
    target : Target
        Threshold the headline value must meet.
    description : str
        One sentence on what is measured.

    Returns
    -------
    callable
        A decorator that registers and returns the function unchanged.

    Raises
    ------
    ValueError
        If ``name`` is already registered.
    """

    def decorate(func: BenchFunction) -> BenchFunction:
        if name in REGISTRY:
            raise ValueError(f"benchmark {name!r} is registered twice")
        REGISTRY[name] = Benchmark(name=name, func=func, target=target, description=description)
        return func

    return decorate


def median(values: Iterable[float]) -> float:
    """Return the median of ``values`` (``nan`` if there are none).

    Parameters
    ----------
    values : iterable of float
        The sample.

    Returns
    -------
    float
        The median.
    """
    data = list(values)
    return statistics.median(data) if data else float("nan")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def machine_info(root: Path) -> dict[str, Any]:
    """Describe the machine and software a result was measured on.

    Parameters
    ----------
    root : Path
        The repository root (for the git commit).

    Returns
    -------
    dict
        CPU count, load average, platform, Python and package versions, git
        commit and whether the work tree had local changes, and the date (UTC).
    """
    status = _git(root, "status", "--porcelain")
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "torch": _version("torch"),
        "flwr": _version("flwr"),
        "ray": _version("ray"),
        "numpy": _version("numpy"),
        "fedlearn": _version("fedlearn"),
        "git_commit": _git(root, "rev-parse", "--short", "HEAD"),
        "git_dirty": None if status is None else bool(status),
    }


def write_result(results_dir: Path, record: dict[str, Any]) -> Path:
    """Write one benchmark's record as ``results_dir/<name>.json``.

    Parameters
    ----------
    results_dir : Path
        The results directory (created if missing).
    record : dict
        The JSON-able record; must contain ``"name"``.

    Returns
    -------
    Path
        The written file.
    """
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{record['name']}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_results(results_dir: Path) -> list[dict[str, Any]]:
    """Read every ``*.json`` record in ``results_dir`` (unreadable files are skipped).

    Parameters
    ----------
    results_dir : Path
        The results directory.

    Returns
    -------
    list of dict
        The records, sorted by name.
    """
    records = []
    for path in sorted(results_dir.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and "name" in record:
            records.append(record)
    return records


def _format_value(record: dict[str, Any]) -> str:
    value = record.get("value")
    if not isinstance(value, int | float):
        return "—"
    unit = record.get("unit", "")
    return f"{value:.3g}{unit}" if unit == "x" else f"{value:.3g} {unit}".rstrip()


def _verdict(record: dict[str, Any]) -> str:
    if record.get("error"):
        return "ERROR"
    passed = record.get("passed")
    return "—" if passed is None else ("pass" if passed else "FAIL")


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_readme(records: Sequence[dict[str, Any]]) -> str:
    """Render the results README: one table row per benchmark, then details.

    Parameters
    ----------
    records : sequence of dict
        Records as written by :func:`write_result`.

    Returns
    -------
    str
        Markdown text.
    """
    lines = [
        "# Benchmark results",
        "",
        "Generated by `python -m benchmarks.run` (`--quick` for the smaller setting, "
        "`--only NAME` for one benchmark); do not edit by hand. Raw timings, settings "
        "and machine info are in `<name>.json` next to this file.",
        "",
        "| benchmark | figure | value | target | result | mode | measured |",
        "|---|---|---|---|---|---|---|",
    ]
    for rec in records:
        machine = rec.get("machine", {})
        target = rec.get("target") or {}
        target_text = f"{target.get('op', '')} {target.get('value', '')}".strip() or "—"
        if rec.get("unit") == "x" and target_text != "—":
            target_text += "x"
        lines.append(
            "| "
            + " | ".join(
                _cell(c)
                for c in (
                    f"`{rec['name']}`",
                    rec.get("figure", "—"),
                    _format_value(rec),
                    target_text,
                    _verdict(rec),
                    rec.get("mode", "—"),
                    f"{machine.get('date', '—')}, {machine.get('cpu_count', '?')} CPUs",
                )
            )
            + " |"
        )
    for rec in records:
        machine = rec.get("machine", {})
        lines += ["", f"## `{rec['name']}`", "", rec.get("description", "")]
        if rec.get("error"):
            lines += ["", f"**Error:** `{_cell(rec['error'])}`"]
        summary = rec.get("summary") or {}
        if summary:
            lines += [""]
            lines += [f"- {key}: {_summary_value(value)}" for key, value in summary.items()]
        for note in rec.get("notes") or []:
            lines += ["", note]
        load = machine.get("load_average")
        load_text = ", ".join(f"{x:.2f}" for x in load) if load else "n/a"
        lines += [
            "",
            f"Machine: {machine.get('cpu_count', '?')} CPUs, {machine.get('platform', '?')}; "
            f"Python {machine.get('python', '?')}, torch {machine.get('torch', '?')}, "
            f"flwr {machine.get('flwr', '?')}, ray {machine.get('ray', '?')}; "
            f"git {machine.get('git_commit', '?')}"
            f"{' (with local changes)' if machine.get('git_dirty') else ''}; "
            f"load average at start {load_text}; "
            f"benchmark took {rec.get('duration_seconds', float('nan')):.0f} s.",
        ]
    return "\n".join(lines) + "\n"


def _summary_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_summary_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_summary_value(v)}" for k, v in value.items()) + "}"
    return str(value)
