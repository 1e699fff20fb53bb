"""Federations on Flower's real Simulation Engine (Ray): learning, faults, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import tomli_w

from fedlearn import Dataset, Federation, RunConfig
from fedlearn.checkpoint import load_latest
from fedlearn.data import partition_bundled
from fedlearn.history import History
from fedlearn.simulation import simulate

pytestmark = pytest.mark.slow

CFG = RunConfig.from_dict({"federation": {"rounds": 6, "clients": 6, "seed": 7}})


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, History]:
    run_dir = tmp_path_factory.mktemp("reference")
    return run_dir, simulate(CFG, run_dir=run_dir)


def test_federated_training_learns_and_leaves_a_run_directory(
    reference: tuple[Path, History],
) -> None:
    run_dir, history = reference
    assert [r.round for r in history.rounds] == list(range(1, 7))
    first, last = history.rounds[0].accuracy, history.rounds[-1].accuracy
    assert last is not None and first is not None
    assert last > 0.85, f"final accuracy {last:.3f} below the 0.85 threshold"
    assert last > first
    assert all(r.accepted == 6 and r.applied for r in history.rounds)
    assert all(r.bytes_sent > 0 and r.bytes_received > 0 for r in history.rounds)
    assert RunConfig.load(run_dir / "config.toml") == CFG
    assert History.load(run_dir / "history.json").to_dict() == history.to_dict()
    assert load_latest(run_dir / "checkpoints").round == 6
    assert (run_dir / "logs" / "server.log").stat().st_size > 0
    report = (run_dir / "report.html").read_text(encoding="utf-8")  # written at the end
    assert f"{last:.3f}"[:4] in report and "completed" in report.lower()


class FlakyPartitions(Sequence[Dataset]):
    """Client 1's disk fails on every access; client 2's data is corrupt (NaN)."""

    def __init__(self, parts: list[Dataset]) -> None:
        self.parts = parts

    def __len__(self) -> int:
        return len(self.parts)

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        if index == 1:
            raise OSError("disk I/O error while reading the holder's data")
        if index == 2:
            bad = self.parts[2].x.copy()
            bad[0, 0] = np.nan
            return Dataset(bad, self.parts[2].y)
        return self.parts[index]


def test_rounds_complete_without_a_crashing_and_a_corrupt_client(tmp_path: Path) -> None:
    cfg = CFG.with_overrides(
        federation={"rounds": 3, "min_train_clients": 4, "fraction_evaluate": 0.0}
    )
    parts, test_set, _ = partition_bundled(cfg.data, clients=6, seed=7)
    fed = Federation(config=cfg, partitions=FlakyPartitions(parts), test_set=test_set)
    history = fed.simulate(run_dir=tmp_path / "run")
    assert len(history.rounds) == 3
    for record in history.rounds:
        assert record.sampled == 6 and record.accepted == 4 and record.applied
        reasons = sorted(record.rejected.values())
        assert len(reasons) == 2
        assert any("NaN" in r for r in reasons), reasons
        assert any("disk I/O error" in r or "client error" in r for r in reasons), reasons
    assert history.rounds[-1].accuracy > history.rounds[0].accuracy


class _NoCheckpoint:
    round = 0


_NONE = _NoCheckpoint()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from fedlearn.cli import main; main()", *args]


def test_sigkill_of_the_server_then_resume_gives_the_uninterrupted_model(
    tmp_path: Path, reference: tuple[Path, History]
) -> None:
    ref_dir, ref_history = reference
    config = tmp_path / "run.toml"
    config.write_text(tomli_w.dumps(CFG.to_dict()))
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli("simulate", "--config", str(config), "--run-dir", str(run_dir)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while (load_latest(run_dir / "checkpoints") or _NONE).round < 2:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    killed_at = load_latest(run_dir / "checkpoints").round
    assert 2 <= killed_at < 6

    subprocess.run(
        _cli("simulate", "--resume", str(run_dir), "--json"),
        check=True,
        timeout=600,
        capture_output=True,
    )
    resumed, reference_ckpt = (
        load_latest(run_dir / "checkpoints"),
        load_latest(ref_dir / "checkpoints"),
    )
    assert resumed.round == 6
    for key, value in reference_ckpt.arrays.items():
        np.testing.assert_allclose(resumed.arrays[key], value, rtol=0, atol=1e-6)
    history = History.load(run_dir / "history.json")
    assert [r.round for r in history.rounds] == list(range(1, 7))
    assert [r.accuracy for r in history.rounds] == pytest.approx(
        [r.accuracy for r in ref_history.rounds], abs=1e-6
    )
