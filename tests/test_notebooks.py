"""Execute the tutorial notebooks end to end, on a small setting.

Each notebook reads ``FEDLEARN_NB_ROUNDS`` / ``FEDLEARN_NB_CLIENTS`` and ends
with assertions, so a broken framework fails here. The kernel is *this*
interpreter (a throw-away kernelspec pointing at ``sys.executable``), whatever
kernels the user or the system has registered; it runs in a temporary
directory, so the notebooks' run directories never land in the repository.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = {
    "01_quickstart.ipynb",
    "02_custom_strategy.ipynb",
    "03_privacy_utility.ipynb",
    "04_secure_aggregation.ipynb",
    "05_contributions_and_rewards.ipynb",
}

KERNEL_NAME = "fedlearn-test-kernel"
SMALL_SETTING = {"FEDLEARN_NB_ROUNDS": "3", "FEDLEARN_NB_CLIENTS": "4"}
# Notebooks that need more than SMALL_SETTING run in their own tests below.
PRIVACY_UTILITY = NOTEBOOK_DIR / "03_privacy_utility.ipynb"
# Three simulations (one per ε, Ray start included) plus the centralized baselines: 1-2 min.
PRIVACY_UTILITY_SETTING = {**SMALL_SETTING, "FEDLEARN_NB_EPSILONS": "1,8,inf"}
SECURE_AGGREGATION = NOTEBOOK_DIR / "04_secure_aggregation.ipynb"
# Four simulations (plaintext, CKKS, SecAgg+, CrypTen; Ray start each, CrypTen parties): 2-3 min.
SECURE_AGGREGATION_SETTING = dict(SMALL_SETTING)
CONTRIBUTIONS = NOTEBOOK_DIR / "05_contributions_and_rewards.ipynb"
# One attested simulation (Ray start, embedded chain), then claims on that chain: ~1 min.
CONTRIBUTIONS_SETTING = dict(SMALL_SETTING)
DEDICATED = {PRIVACY_UTILITY, SECURE_AGGREGATION, CONTRIBUTIONS}
CELL_TIMEOUT = 600  # seconds; one simulate() call starts Ray (~30-45 s on 2 cores)


def _kernel_manager(kernel_dir: Path) -> object:
    """A kernel manager whose only kernelspec runs this interpreter."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = kernel_dir / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "fedlearn tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    specs = KernelSpecManager(kernel_dirs=[str(kernel_dir)], ensure_native_kernel=False)
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)


def test_expected_notebooks_exist() -> None:
    assert {p.name for p in NOTEBOOKS} >= EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_valid_and_has_no_stored_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs, f"{path.name}: clear outputs before committing"
            assert cell.execution_count is None, f"{path.name}: clear execution counts"


def _execute(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: dict[str, str]
) -> Any:
    """Run ``path`` with ``setting`` in its environment; return the executed notebook."""
    for key, value in setting.items():
        monkeypatch.setenv(key, value)
    # Import this checkout's fedlearn even when the kernel's cwd is elsewhere
    # and the package is not (or not correctly) installed in editable mode.
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    )
    workdir = tmp_path / "work"
    workdir.mkdir()
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        km=_kernel_manager(tmp_path / "kernels"),
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(workdir)}},
    )
    try:
        client.execute()  # raises CellExecutionError (with the cell's traceback) on failure
    finally:
        # Keep what ran, with outputs, next to the run's files for post-mortems.
        nbformat.write(nb, workdir / path.name)
    return nb


@pytest.mark.slow
@pytest.mark.parametrize(
    "path",
    [p for p in NOTEBOOKS if p not in DEDICATED],
    ids=[p.stem for p in NOTEBOOKS if p not in DEDICATED],
)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _execute(path, tmp_path, monkeypatch, SMALL_SETTING)


@pytest.mark.slow
def test_03_privacy_utility_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Privacy vs. utility at ε = 1, 8 and ∞; the notebook's last cell checks the ledgers."""
    nb = _execute(PRIVACY_UTILITY, tmp_path, monkeypatch, PRIVACY_UTILITY_SETTING)
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert "all checks passed" in text
    assert "ε=1:" in text and "ε=8:" in text and "ε=∞:" in text
    figures = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(figures) >= 2  # accuracy vs ε, cumulative ε per round
    # One run directory per ε; the DP runs hold one ledger file per simulated holder.
    runs = tmp_path / "work" / "runs" / "privacy_utility"
    assert sorted(p.name for p in runs.iterdir()) == ["eps-1", "eps-8", "eps-inf"]
    for name in ("eps-1", "eps-8"):
        assert len(list((runs / name / "holders").glob("holder-*/records.json"))) == 4


@pytest.mark.slow
def test_04_secure_aggregation_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The three modes and plaintext side by side; the last cell checks them against plaintext."""
    nb = _execute(SECURE_AGGREGATION, tmp_path, monkeypatch, SECURE_AGGREGATION_SETTING)
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert "all checks passed" in text
    assert all(name in text for name in ("plaintext", "CKKS", "SecAgg+", "CrypTen"))
    assert any("image/png" in out.get("data", {}) for out in outputs)  # the bar plot
    runs = tmp_path / "work" / "runs" / "secure_aggregation"
    assert sorted(p.name for p in runs.iterdir()) == ["ckks", "crypten", "none", "secaggplus"]


@pytest.mark.slow
def test_05_contributions_and_rewards_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scores, roots on chain, verify and claim; the last cell checks noisy client and claims."""
    nb = _execute(CONTRIBUTIONS, tmp_path, monkeypatch, CONTRIBUTIONS_SETTING)
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert "all checks passed" in text
    assert "claiming again pays 0" in text
    assert any("image/png" in out.get("data", {}) for out in outputs)  # scores per round
    run = tmp_path / "work" / "runs" / "contributions"
    bundles = sorted(p.name for p in (run / "attestations").glob("round-*.json"))
    assert bundles == [f"round-{r:06d}.json" for r in (1, 2, 3)]
