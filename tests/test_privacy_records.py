"""Per-record accounting: the same records are charged the same, whatever file holds them."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest

from fedlearn.data import Dataset, Schema, load_file
from fedlearn.files import write_atomically
from fedlearn.privacy.ledger import LedgerError, release_event
from fedlearn.privacy.records import RecordLedger, record_fingerprints

SCHEMA = Schema(num_features=3, classes=("benign", "malignant"), label_column="diagnosis")
ROWS = [
    (0.0012, 1520.0, 3.25, "benign"),
    (0.0031, 980.5, 2.0, "malignant"),
    (0.0007, 2210.0, 4.5, "benign"),
    (0.0044, 1105.25, 1.75, "malignant"),
]
DPSGD = {"noise_multiplier": 1.1, "steps": 20, "sample_rate": 0.25, "clipping_norm": 1.0}


def _csv(path: Path, rows: list[tuple[float, float, float, str]], *, fmt: str = "{}") -> Path:
    lines = ["f1,f2,f3,diagnosis"]
    lines += [",".join([*(fmt.format(v) for v in row[:3]), row[3]]) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _records(path: Path) -> frozenset[str]:
    return record_fingerprints(load_file(path, SCHEMA))


def test_copy_rename_reexport_and_shuffle_are_the_same_records(tmp_path: Path) -> None:
    original = _records(_csv(tmp_path / "export.csv", ROWS))
    renamed = _records(_csv(tmp_path / "copy of export.csv", ROWS))
    shuffled = _records(_csv(tmp_path / "shuffled.csv", [ROWS[2], ROWS[0], ROWS[3], ROWS[1]]))
    reformatted = _records(_csv(tmp_path / "sci.csv", ROWS, fmt="{:.6e}"))
    npz = tmp_path / "export.npz"
    x = np.array([r[:3] for r in ROWS], np.float32)
    np.savez(npz, x=x, y=np.array([r[3] for r in ROWS]))
    assert len(original) == 4
    assert original == renamed == shuffled == reformatted == _records(npz)


def test_an_edited_row_is_a_new_record_and_the_others_keep_their_identity(tmp_path: Path) -> None:
    original = _records(_csv(tmp_path / "a.csv", ROWS))
    edited_rows = [ROWS[0], ROWS[1], ROWS[2], (0.0044, 1105.5, 1.75, "malignant")]
    edited = _records(_csv(tmp_path / "b.csv", edited_rows))
    assert len(original & edited) == 3 and len(edited - original) == 1


def _release(ledger: RecordLedger, key: str, records: frozenset[str]) -> float:
    return ledger.record(key=key, run="run", round=1, records=records, **DPSGD).epsilon


def test_each_record_is_charged_by_the_releases_that_used_it(tmp_path: Path) -> None:
    old = _records(_csv(tmp_path / "old.csv", ROWS[:2]))
    new = _records(_csv(tmp_path / "new.csv", ROWS[2:]))
    ledger = RecordLedger(delta=1e-5)
    one = _release(ledger, "r1", old)
    assert ledger.spent(old) == pytest.approx(one) and ledger.spent(new) == 0.0
    # A file with the old records plus new ones is charged for the old ones' spending.
    both = old | new
    assert ledger.spent(both) == pytest.approx(one)
    two = _release(ledger, "r2", both)
    assert two > one  # the old records composed two releases
    assert ledger.spent(new) == pytest.approx(one)  # the new ones only one
    assert ledger.spent(old) == pytest.approx(two)
    assert [r.key for r in ledger.releases_using(new)] == ["r2"]
    event = release_event(mechanism="dpsgd", noise_multiplier=1.1, steps=20, sample_rate=0.25)
    assert ledger.spent_if(new, event) == pytest.approx(two)


def test_a_replayed_release_is_recorded_once() -> None:
    records = frozenset({"00" * 16, "11" * 16})
    ledger = RecordLedger(delta=1e-5)
    first = ledger.record(key="k", run="run", round=1, records=records, **DPSGD)
    again = ledger.record(key="k", run="run", round=1, records=records, **DPSGD)
    assert again is first and len(ledger.releases) == 1


def test_ledger_round_trips_and_a_tampered_one_fails_closed(tmp_path: Path) -> None:
    records = frozenset({"aa" * 16, "bb" * 16})
    ledger = RecordLedger(delta=1e-5)
    _release(ledger, "k", records)
    path = tmp_path / "ledger.json"
    ledger.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = RecordLedger.load(path)
    assert loaded.spent(records) == pytest.approx(ledger.spent(records))
    raw = json.loads(path.read_text())
    cohort = next(iter(raw["cohorts"]))
    raw["cohorts"][cohort] = ["aa" * 16]  # drop a record from a release: under-charging
    path.write_text(json.dumps(raw))
    with pytest.raises(LedgerError, match="does not match"):
        RecordLedger.load(path)
    path.write_text("{")
    with pytest.raises(LedgerError):
        RecordLedger.load(path)


def test_duplicate_rows_are_one_record() -> None:
    data = Dataset(np.ones((3, 2), np.float32), np.zeros(3, np.int64))
    assert len(record_fingerprints(data)) == 1


def test_atomic_write_creates_private_files_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "d" / "secret"
    write_atomically(target, b"x" * 32)
    assert target.read_bytes() == b"x" * 32
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["secret"]
