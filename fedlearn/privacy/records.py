"""Per-record privacy accounting: a budget protects records, not files.

A data holder's budget is a promise about each *record* (row) of its data, so
the ledger is keyed by what the records are, not by where a file lives:

* every record has a fingerprint, ``SHA-256(domain ‖ features ‖ label)``
  truncated to 128 bits, computed from the parsed values (float32 features,
  the label's class index), so a copy, a rename, a re-export in another
  format, with shuffled rows or other number formatting, is the *same data*;
* every release (one round of DP-SGD) is stored once with its
  ``dp_accounting`` parameters and the set of records it used (a *cohort*,
  stored once however many rounds use it);
* a record's spending is the composition of the releases that used it
  (individual accounting, Feldman & Zrnic 2021), and a release is allowed
  only if *every* record it would use stays within the budget after it.

So a file that adds new rows to old ones is charged for the old ones' past
spending (the maximum over its records), an edited row is a new record, and
two files that share no record do not share a budget.

"The same data" therefore means: the same multiset of (feature values as
float32, label) rows under the run's schema. Rounding values to fewer
decimals, rescaling a column or relabelling classes makes different records.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np

from fedlearn.config import AccountantName
from fedlearn.data import Dataset
from fedlearn.files import write_atomically
from fedlearn.privacy.accounting import epsilon
from fedlearn.privacy.ledger import LedgerError, release_event

__all__ = [
    "RecordLedger",
    "RecordRelease",
    "cohort_id",
    "record_fingerprints",
]

_FORMAT = "fedlearn.record-ledger"
_VERSION = 1
_DOMAIN = b"fedlearn/record/v1\x00"
_FINGERPRINT_BYTES = 16


def record_fingerprints(data: Dataset) -> frozenset[str]:
    """The fingerprints of ``data``'s records (duplicate rows are one record).

    Parameters
    ----------
    data : Dataset
        Parsed records (float32 features, int64 class indices).

    Returns
    -------
    frozenset of str
        128-bit hex fingerprints, independent of row order and file format.
    """
    x = np.ascontiguousarray(data.x, dtype="<f4")
    y = np.ascontiguousarray(data.y, dtype="<i8")
    out = set()
    for row, label in zip(x, y, strict=True):
        digest = hashlib.sha256(_DOMAIN)
        digest.update(row.tobytes())
        digest.update(label.tobytes())
        out.add(digest.hexdigest()[: 2 * _FINGERPRINT_BYTES])
    return frozenset(out)


def cohort_id(records: Iterable[str]) -> str:
    """A content id of a set of records (what release keys and seeds bind)."""
    digest = hashlib.sha256(b"fedlearn/cohort/v1\x00")
    for fingerprint in sorted(records):
        digest.update(bytes.fromhex(fingerprint))
    return digest.hexdigest()


@dataclass(frozen=True)
class RecordRelease:
    """One release that used a cohort of records: what the accountant needs.

    ``epsilon`` is the largest cumulative ε of any record of the cohort right
    after this release (what the holder is shown); ``round_epsilon`` is the
    release's own ε.
    """

    key: str
    run: str
    round: int
    cohort: str
    noise_multiplier: float
    steps: int
    sample_rate: float
    clipping_norm: float
    epsilon: float
    round_epsilon: float

    def event(self) -> dp_accounting.DpEvent:
        """The release's ``dp_accounting`` event (DP-SGD with Poisson sampling)."""
        return release_event(
            mechanism="dpsgd",
            noise_multiplier=self.noise_multiplier,
            steps=self.steps,
            sample_rate=self.sample_rate,
        )


class RecordLedger:
    """Every release a holder made, and which records each one used.

    Parameters
    ----------
    delta : float
        δ at which ε is reported and budgets are checked.
    accountant : {"rdp", "pld"}, default "rdp"
        The ``dp_accounting`` accountant that composes a record's releases.
    """

    def __init__(self, *, delta: float, accountant: AccountantName = "rdp") -> None:
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.delta = delta
        self.accountant: AccountantName = accountant
        self.releases: list[RecordRelease] = []
        self.cohorts: dict[str, frozenset[str]] = {}

    # ------------------------------------------------------------------ queries

    def release(self, key: str) -> RecordRelease | None:
        """The release made under ``key`` before, if any (a replayed request)."""
        return next((r for r in self.releases if r.key == key), None)

    def histories(self, records: Iterable[str]) -> dict[tuple[int, ...], int]:
        """Distinct release histories of ``records``: {release indices: how many records}."""
        wanted = set(records)
        memberships: dict[str, list[int]] = {r: [] for r in wanted}
        for index, release in enumerate(self.releases):
            for record in self.cohorts[release.cohort] & wanted:
                memberships[record].append(index)
        counts: dict[tuple[int, ...], int] = {}
        for history in memberships.values():
            counts[tuple(history)] = counts.get(tuple(history), 0) + 1
        return counts

    def _epsilon(self, events: list[dp_accounting.DpEvent], delta: float | None = None) -> float:
        if not events:
            return 0.0
        return epsilon(
            dp_accounting.ComposedDpEvent(events),
            delta=self.delta if delta is None else delta,
            accountant=self.accountant,
        )

    def spent(self, records: Iterable[str], *, delta: float | None = None) -> float:
        """The largest ε any of ``records`` has spent so far (0 for fresh records).

        ``delta`` defaults to the ledger's own (e.g. a budget stated at another δ).
        """
        return max(
            (
                self._epsilon([self.releases[i].event() for i in history], delta)
                for history in self.histories(records)
            ),
            default=0.0,
        )

    def spent_if(
        self, records: Iterable[str], event: dp_accounting.DpEvent, *, delta: float | None = None
    ) -> float:
        """The largest ε any of ``records`` would have after also releasing ``event``."""
        return max(
            (
                self._epsilon([*(self.releases[i].event() for i in history), event], delta)
                for history in self.histories(records)
            ),
            default=0.0,
        )

    def releases_using(self, records: Iterable[str]) -> list[RecordRelease]:
        """Releases that used at least one of ``records``, in the order they happened."""
        wanted = set(records)
        return [r for r in self.releases if self.cohorts[r.cohort] & wanted]

    # ------------------------------------------------------------------ changes

    def record(
        self,
        *,
        key: str,
        run: str,
        round: int,
        records: frozenset[str],
        noise_multiplier: float,
        steps: int,
        sample_rate: float,
        clipping_norm: float,
    ) -> RecordRelease:
        """Add a release that used ``records`` (idempotent per ``key``)."""
        if (earlier := self.release(key)) is not None:
            return earlier
        if not records:
            raise ValueError("a release must use at least one record")
        cohort = cohort_id(records)
        event = release_event(
            mechanism="dpsgd",
            noise_multiplier=noise_multiplier,
            steps=steps,
            sample_rate=sample_rate,
        )
        after = self.spent_if(records, event)
        self.cohorts.setdefault(cohort, records)
        release = RecordRelease(
            key=key,
            run=run,
            round=round,
            cohort=cohort,
            noise_multiplier=noise_multiplier,
            steps=steps,
            sample_rate=sample_rate,
            clipping_norm=clipping_norm,
            epsilon=after,
            round_epsilon=self._epsilon([event]),
        )
        self.releases.append(release)
        return release

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (cohorts stored once, sorted)."""
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "delta": self.delta,
            "accountant": self.accountant,
            "cohorts": {cid: sorted(members) for cid, members in sorted(self.cohorts.items())},
            "releases": [asdict(r) for r in self.releases],
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RecordLedger:
        """Rebuild a ledger, checking every field (a corrupt ledger fails closed)."""
        try:
            if raw.get("format") != _FORMAT or raw.get("version") != _VERSION:
                raise LedgerError(f"not a {_FORMAT} v{_VERSION} file")
            ledger = cls(delta=float(raw["delta"]), accountant=raw["accountant"])
            for cid, members in raw["cohorts"].items():
                records = frozenset(str(m) for m in members)
                if cohort_id(records) != cid:
                    raise LedgerError(f"cohort {cid[:12]}… does not match its records")
                ledger.cohorts[cid] = records
            for entry in raw["releases"]:
                release = RecordRelease(**entry)
                if release.cohort not in ledger.cohorts:
                    raise LedgerError(f"release {release.key[:12]}… names an unknown cohort")
                ledger.releases.append(release)
        except LedgerError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise LedgerError(f"malformed record ledger: {exc}") from exc
        return ledger

    def save(self, path: Path) -> None:
        """Write atomically (temporary file, fsync, rename, fsync of the directory)."""
        write_atomically(path, json.dumps(self.to_dict(), separators=(",", ":")).encode())

    @classmethod
    def load(cls, path: Path) -> RecordLedger:
        """Read a ledger written by :meth:`save` (``LedgerError`` if corrupt)."""
        try:
            raw = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise LedgerError(f"cannot read the record ledger {path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise LedgerError(f"{path} is not a record ledger")
        return cls.from_dict(raw)
