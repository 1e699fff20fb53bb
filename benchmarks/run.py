"""Run fedlearn's benchmarks and write ``benchmarks/results/``.

Usage (from the repository root)::

    python -m benchmarks.run                 # every benchmark, full setting
    python -m benchmarks.run --quick         # smaller setting
    python -m benchmarks.run --only overhead_fedavg
    python -m benchmarks.run --list

Every module ``benchmarks/bench_*.py`` is imported, so its registered
functions (:func:`benchmarks.core.register`) run. Each benchmark writes
``results/<name>.json``; ``results/README.md`` is then regenerated from all
result files. The exit status is 1 if a benchmark raised, and with
``--check`` 2 if a target was missed.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make this package importable
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import importlib  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import pkgutil  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

from rich.console import Console  # noqa: E402
from rich.progress import (  # noqa: E402
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table  # noqa: E402

import benchmarks  # noqa: E402
from benchmarks.core import (  # noqa: E402
    REGISTRY,
    BenchContext,
    Benchmark,
    load_results,
    machine_info,
    render_readme,
    write_result,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def discover() -> list[str]:
    """Import every ``benchmarks.bench_*`` module so that its benchmarks register.

    Returns
    -------
    list of str
        The imported module names.
    """
    if Path(benchmarks.__file__ or "").resolve().parent != RESULTS_DIR.parent:
        raise RuntimeError(
            f"imported the wrong 'benchmarks' package ({benchmarks.__file__}); "
            f"run from {ROOT} (opacus installs an unrelated 'benchmarks' package)"
        )
    names = []
    for info in pkgutil.iter_modules(benchmarks.__path__):
        if info.name.startswith("bench_"):
            names.append(f"benchmarks.{info.name}")
            importlib.import_module(f"benchmarks.{info.name}")
    return names


def prepare_environment(scratch: Path) -> None:
    """Set up the process environment every simulation of the session shares.

    Flower's and Ray's settings come from :func:`fedlearn.simulation.flower_environment`
    (no telemetry, no downloads, ``FLWR_HOME`` in the scratch directory); the
    repository root is put first on ``PYTHONPATH`` so that Ray's worker processes
    import this ``benchmarks`` package (the bare-Flower ClientApp lives in it).

    Parameters
    ----------
    scratch : Path
        The session's scratch directory.
    """
    from fedlearn.simulation import flower_environment

    os.environ.update(flower_environment(scratch / ".flwr"))
    paths = [str(ROOT), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    # Cosmetic: the same notices would be printed by every simulation run.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"ray\..*")
    logging.getLogger("flwr").addFilter(
        lambda record: "DEPRECATED FEATURE" not in str(record.getMessage())
    )


def run_benchmark(
    bench: Benchmark, *, quick: bool, scratch: Path, progress: Progress
) -> dict[str, Any]:
    """Run one benchmark and return its JSON record (errors are recorded, not raised).

    Parameters
    ----------
    bench : Benchmark
        The registered benchmark.
    quick : bool
        Use the smaller setting.
    scratch : Path
        Parent of the benchmark's scratch directory.
    progress : Progress
        The session's progress display.

    Returns
    -------
    dict
        The record written to ``results/<name>.json``.
    """
    task = progress.add_task(bench.name, total=None)
    workdir = Path(tempfile.mkdtemp(prefix=f"{bench.name}-", dir=scratch))
    machine = machine_info(ROOT)
    record: dict[str, Any] = {
        "name": bench.name,
        "description": bench.description,
        "mode": "quick" if quick else "full",
        "target": {"op": bench.target.op, "value": bench.target.value},
        "machine": machine,
    }
    started = time.perf_counter()
    try:
        outcome = bench.func(
            BenchContext(quick=quick, workdir=workdir, progress=progress, task=task)
        )
    except Exception as exc:  # a failing benchmark must not stop the others
        progress.console.print_exception()
        record.update(
            {
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
                "passed": False,
            }
        )
    else:
        record.update(
            {
                "figure": outcome.figure,
                "value": outcome.value,
                "unit": outcome.unit,
                "passed": bench.target.met(outcome.value),
                "settings": outcome.settings,
                "summary": outcome.summary,
                "notes": outcome.notes,
                "raw": outcome.raw,
            }
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    record["duration_seconds"] = time.perf_counter() - started
    record["machine"]["load_average_end"] = list(os.getloadavg())
    progress.update(task, description=f"{bench.name}: done", completed=1, total=1)
    return record


def _summary_table(records: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="benchmarks")
    for column in ("benchmark", "value", "target", "result", "took"):
        table.add_column(column)
    for rec in records:
        target = rec["target"]
        value = rec.get("value")
        verdict = (
            "[red]ERROR[/]"
            if rec.get("error")
            else "[green]pass[/]"
            if rec.get("passed")
            else "[red]FAIL[/]"
        )
        table.add_row(
            rec["name"],
            "—" if value is None else f"{value:.3f}{rec.get('unit', '')}",
            f"{target['op']} {target['value']:g}",
            verdict,
            f"{rec['duration_seconds']:.0f} s",
        )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0, 1 if a benchmark raised, 2 if ``--check`` and a target was missed.
    """
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="smaller, faster setting")
    parser.add_argument(
        "--only", action="append", metavar="NAME", help="run only this benchmark (repeatable)"
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument(
        "--check", action="store_true", help="exit with status 2 if a target is missed"
    )
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR, help="where JSON files and README go"
    )
    args = parser.parse_args(argv)

    console = Console()
    discover()
    if args.list:
        for bench in REGISTRY.values():
            console.print(f"[bold]{bench.name}[/] (target {bench.target}): {bench.description}")
        return 0
    selected = list(REGISTRY.values())
    if args.only:
        unknown = sorted(set(args.only) - set(REGISTRY))
        if unknown:
            parser.error(f"unknown benchmark(s) {unknown}; known: {sorted(REGISTRY)}")
        selected = [b for b in selected if b.name in args.only]

    records = []
    scratch = Path(tempfile.mkdtemp(prefix="fedlearn-bench-"))
    try:
        prepare_environment(scratch)
        columns = (
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            for bench in selected:
                record = run_benchmark(bench, quick=args.quick, scratch=scratch, progress=progress)
                write_result(args.results_dir, record)
                records.append(record)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    readme = args.results_dir / "README.md"
    readme.write_text(render_readme(load_results(args.results_dir)), encoding="utf-8")
    console.print(_summary_table(records))
    console.print(f"results: {args.results_dir} (README.md regenerated)")
    if any(r.get("error") for r in records):
        return 1
    if args.check and not all(r.get("passed") for r in records):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
