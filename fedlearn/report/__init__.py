"""The run report: one self-contained static HTML page per run directory.

:func:`write_report` reads a run directory (``history.json``, ``status.json``,
``config.toml``, the attestation bundles and outbox) and writes
``RUN_DIR/report.html``: the few numbers that matter first, then accuracy and
loss against the centralized baseline, each holder's privacy loss against its
budget, the rounds with their secure aggregation, skipped rounds and refusals,
contributions and rewards, the attestation of every round and how to verify
it, and the run's config. Plots are inline SVG, styles inline, no script, no
network: the file can be mailed, archived or opened from a USB stick.

It works on a finished run, a run in progress (what ``history.json`` holds so
far) and a failed run (the reason from ``status.json``), and it never raises
on what it reads, so the server can call it at the end of every run.

Examples
--------
>>> from fedlearn.report import write_report
>>> path = write_report("runs/demo-20261204-101500")  # doctest: +SKIP
>>> path.name  # doctest: +SKIP
'report.html'
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from fedlearn.report._page import render
from fedlearn.report._rundir import read_run

__all__ = ["REPORT_NAME", "render_report", "write_report"]

log = logging.getLogger(__name__)

#: File name of the report inside the run directory.
REPORT_NAME = "report.html"


def render_report(run_dir: str | Path, *, client: str | None = None) -> str:
    """The report page of ``run_dir`` as an HTML string (never raises on the run's files).

    Parameters
    ----------
    run_dir : str or Path
        The run directory; every file in it is optional and treated as untrusted.
    client : str, optional
        A holder's wallet address to highlight (its ε, scores, rewards and proofs).
    """
    return render(read_run(run_dir), client=client)


def write_report(
    run_dir: str | Path, *, out: str | Path | None = None, client: str | None = None
) -> Path:
    """Write the run's report page and return its path.

    Safe to call at the end of any run, finished or not: a missing, partial or
    damaged run directory gives a page that says what is missing, and an error
    while writing is logged, not raised (the run's own outcome must not depend
    on its report). The file is replaced atomically, so a browser never sees
    half a page.

    Parameters
    ----------
    run_dir : str or Path
        The run directory.
    out : str or Path, optional
        Where to write; default ``RUN_DIR/report.html``.
    client : str, optional
        A holder's wallet address to highlight (the holder's view).

    Returns
    -------
    Path
        The report's path. It does not exist only if writing failed (logged).

    Examples
    --------
    >>> write_report("runs/demo", client="0x7AE6963EBe1f7f20D98DeD07A7b65761a88aEbB5")
    ... # doctest: +SKIP
    PosixPath('runs/demo/report.html')
    """
    path = Path(out) if out is not None else Path(run_dir) / REPORT_NAME
    try:
        page = render_report(run_dir, client=client)
        fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(page)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except Exception:
        log.exception("could not write the run report %s", path)
    return path
