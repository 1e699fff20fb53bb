"""Screenshot of a run's report for the README, taken in Debian's headless Chromium.

Usage, from the repository root (``make install`` installs Chromium)::

    .venv/bin/fedlearn demo --run-dir runs/readme-demo
    .venv/bin/python docs/report_screenshot.py runs/readme-demo docs/report.png

Writes the report (``RUN_DIR/report.html``), opens it at 1280 px width with the
same browser set-up as the tests (``tests/test_run_report.py``), and saves the
top of the page (the summary, accuracy and privacy sections) as a 256-colour
PNG, small enough for the repository.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402  (matplotlib's dependency)

from fedlearn.report import write_report  # noqa: E402
from tests.test_run_report import chromium  # noqa: E402

WIDTH, HEIGHT = 1280, 1700


def main(run_dir: Path, out: Path) -> None:
    """Write the report of `run_dir` and save the top of it to `out`."""
    report = write_report(run_dir)
    with chromium() as browser:
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        page.goto(report.resolve().as_uri(), wait_until="load")
        page.screenshot(path=str(out))
    with Image.open(out) as image:
        image.convert("RGB").quantize(colors=256).save(out, optimize=True)
    print(f"{out}: {out.stat().st_size / 1000:.0f} kB")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
