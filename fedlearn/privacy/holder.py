"""A data holder's own privacy state, kept on the holder's disk across rounds and runs.

One ledger directory per holder (``--ledger-dir``, default ``~/.fedlearn/ledgers``)
holds:

``records.json``
    the :class:`~fedlearn.privacy.records.RecordLedger`: every release the
    holder made and the records each one used, so the budget protects
    *records*, whatever file, path or format holds them (see
    :mod:`fedlearn.privacy.records`);
``holder-secret``
    a 256-bit secret (0600, created once, atomically), which keys the
    randomness of every release;
``holder.lock``
    held from the budget check to the record, so two runs on the same records
    cannot both spend the last of a budget.

Flower clients are otherwise stateless; this directory is what lets a holder
enforce one budget over every round of every run.

Failing closed
    A ledger that cannot be read is refused (``LedgerError``), and so is a
    *missing* ledger beside an existing secret: the secret proves that this
    holder released something before, whose spending can no longer be counted
    (:class:`LedgerMissingError` says how to recover). Every write is atomic
    and the directory is fsynced, so a crash leaves the old or the new ledger.

Idempotent releases
    The randomness of a round's DP-SGD (its noise, and the seed of its Poisson
    batches) comes from a :class:`~fedlearn.privacy.noise.GaussianSampler` keyed with
    ``HMAC-SHA256(secret, release key)``, where the release key binds the run,
    the round, the exact global model received *and the records used*. If the
    server asks again for a release already answered (e.g. it crashed and
    resumed), the client computes the bit-identical update, so sending it again
    reveals nothing new and the ledger records it once. Different data (an
    edited row) or another model or run is a new release, with fresh noise,
    accounted as such.

The secret never leaves the holder, so nobody else can compute a release's key,
and the sampler's ChaCha20 keystream is a CSPRNG: the noise can be neither
predicted nor subtracted (see :mod:`fedlearn.privacy.noise`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedlearn.data import Dataset
from fedlearn.files import create_atomically, private_directory
from fedlearn.privacy.accounting import AccountantName, epsilon
from fedlearn.privacy.ledger import BudgetExceeded, LedgerError, PrivacyBudget, release_event
from fedlearn.privacy.noise import GaussianSampler
from fedlearn.privacy.records import RecordLedger, RecordRelease, record_fingerprints

__all__ = [
    "DataSpending",
    "HolderPrivacy",
    "LedgerMissingError",
    "default_ledger_dir",
    "release_key",
    "spending_on",
]

_LEDGER = "records.json"
_SECRET = "holder-secret"
_LOCK = "holder.lock"


class LedgerMissingError(LedgerError):
    """The holder's ledger is gone but its secret remains: earlier spending is unknown."""


def default_ledger_dir() -> Path:
    """``$FEDLEARN_HOME/ledgers`` or ``~/.fedlearn/ledgers``."""
    home = os.environ.get("FEDLEARN_HOME")
    return (Path(home) if home else Path.home() / ".fedlearn") / "ledgers"


def release_key(*, run: str, server_round: int, model: dict[str, Any], records: str) -> str:
    """Identify a release: the run, the round, the global model and the records' cohort id."""
    digest = hashlib.sha256(f"{run}|{server_round}|{records}|".encode())
    for name in sorted(model):
        digest.update(name.encode())
        digest.update(bytes(memoryview(model[name]).cast("B")))
    return digest.hexdigest()


def _missing_ledger(ledger_path: Path, secret_path: Path) -> LedgerMissingError:
    return LedgerMissingError(
        f"the privacy ledger {ledger_path} is missing, but this holder's secret "
        f"{secret_path} shows that it released updates before: their spending can "
        "no longer be counted, so no round is trained. Restore the ledger from a "
        "backup; only if you are sure no round was ever trained with this ledger "
        f"directory, delete {secret_path} to start afresh"
    )


class HolderPrivacy:
    """The holder's record ledger and secret (one per ledger directory).

    Use :meth:`open` (or :meth:`locked` around a check and a record).
    """

    def __init__(self, *, directory: Path, ledger: RecordLedger, secret: bytes) -> None:
        self.directory = directory
        self.ledger = ledger
        self._secret = secret

    @classmethod
    def open(
        cls, directory: str | Path, *, delta: float, accountant: AccountantName = "rdp"
    ) -> HolderPrivacy:
        """Load the holder's state from ``directory``, or start one (fails closed).

        Raises
        ------
        LedgerMissingError
            If the secret exists without the ledger.
        LedgerError
            If the ledger is unreadable or was tampered with.
        """
        directory = private_directory(Path(directory))
        ledger_path, secret_path = directory / _LEDGER, directory / _SECRET
        if ledger_path.exists():
            ledger = RecordLedger.load(ledger_path)
            if ledger.releases and not secret_path.exists():
                # A new secret would answer a replayed request with fresh noise.
                raise LedgerError(
                    f"this holder's secret {secret_path} is missing while its ledger "
                    "records releases: restore the secret from a backup (a new one would "
                    "answer a repeated request with new noise)"
                )
        elif secret_path.exists():
            raise _missing_ledger(ledger_path, secret_path)
        else:
            # The (empty) ledger is on disk before the secret, so a secret never
            # exists without a ledger unless the ledger was removed.
            ledger = RecordLedger(delta=delta, accountant=accountant)
            ledger.save(ledger_path)
        create_atomically(secret_path, secrets.token_bytes(32).hex().encode())
        secret = bytes.fromhex(secret_path.read_text(encoding="ascii").strip())
        if len(secret) != 32:
            raise LedgerError(f"{secret_path} is not a 32-byte holder secret")
        return cls(directory=directory, ledger=ledger, secret=secret)

    @classmethod
    @contextlib.contextmanager
    def locked(
        cls, directory: str | Path, *, delta: float, accountant: AccountantName = "rdp"
    ) -> Iterator[HolderPrivacy]:
        """:meth:`open` under an exclusive lock held until the block ends.

        Two processes on the same records (two runs at once) wait for each
        other between the budget check and the record, so both cannot spend
        the last of a budget.
        """
        directory = private_directory(Path(directory))
        with (directory / _LOCK).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield cls.open(directory, delta=delta, accountant=accountant)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def sampler(self, key: str) -> GaussianSampler:
        """The DP randomness of release ``key``: same key, same stream (module docstring)."""
        return GaussianSampler(hmac.new(self._secret, key.encode(), hashlib.sha256).digest())

    def check(
        self,
        budget: PrivacyBudget,
        *,
        records: frozenset[str],
        noise_multiplier: float,
        steps: int,
        sample_rate: float,
    ) -> None:
        """Refuse a release after which any of ``records`` would pass ``budget``.

        Raises
        ------
        BudgetExceeded
            With the largest ε spent by any of the records, the release's own ε
            and the largest ε after it (all at the budget's δ).
        """
        event = release_event(
            mechanism="dpsgd",
            noise_multiplier=noise_multiplier,
            steps=steps,
            sample_rate=sample_rate,
        )
        after = self.ledger.spent_if(records, event, delta=budget.delta)
        if after <= budget.epsilon:
            return
        spent = self.ledger.spent(records, delta=budget.delta)
        alone = epsilon(event, delta=budget.delta, accountant=self.ledger.accountant)
        raise BudgetExceeded(
            f"privacy budget exceeded: spent ε={spent:.6g} on some of these records, this "
            f"release alone ε={alone:.6g}, after it ε={after:.6g} > budget "
            f"ε={budget.epsilon:.6g} (δ={budget.delta:g}); the release is refused",
            spent=spent,
            release=alone,
            after=after,
            budget=budget,
        )

    def record(self, key: str, **release: Any) -> RecordRelease:
        """Record release ``key`` (once) and save it before anything is sent."""
        entry = self.ledger.record(key=key, **release)
        self.ledger.save(self.directory / _LEDGER)
        return entry


@dataclass(frozen=True)
class DataSpending:
    """What a holder has spent on the records of one data file (``fedlearn budget``).

    Attributes
    ----------
    records : int
        Distinct records in the file.
    spent : float
        The largest ε any of them has spent (at ``delta``).
    delta : float
        δ of the ledger.
    releases : list of (RecordRelease, int)
        Every release that used some of these records, with how many it used.
    """

    records: int
    spent: float
    delta: float
    releases: list[tuple[RecordRelease, int]]


def spending_on(directory: str | Path, data: Dataset) -> DataSpending:
    """Read (never create) the holder's ledger and report the spending on ``data``'s records.

    Raises
    ------
    LedgerMissingError, LedgerError
        As :meth:`HolderPrivacy.open` (a missing ledger beside a secret fails closed).
    """
    directory = Path(directory)
    records = record_fingerprints(data)
    ledger_path = directory / _LEDGER
    if not ledger_path.exists():
        if (directory / _SECRET).exists():
            raise _missing_ledger(ledger_path, directory / _SECRET)
        return DataSpending(records=len(records), spent=0.0, delta=float("nan"), releases=[])
    ledger = RecordLedger.load(ledger_path)
    used = [(r, len(ledger.cohorts[r.cohort] & records)) for r in ledger.releases_using(records)]
    return DataSpending(
        records=len(records), spent=ledger.spent(records), delta=ledger.delta, releases=used
    )
