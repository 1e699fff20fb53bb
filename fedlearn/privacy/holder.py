"""A data holder's own privacy state, kept on the holder's disk across rounds and runs.

One JSON file per dataset (named by a fingerprint of the holder's file path,
or of the records for in-memory data) holds the holder's privacy ledger, a
256-bit secret, and the releases already answered. Flower clients are
otherwise stateless; this file is what lets a holder enforce one budget over
every round of every run on the same data.

Idempotent releases
    The randomness of a round's DP-SGD (its noise, and the seed of its Poisson
    batches) comes from a :class:`~fedlearn.privacy.noise.GaussianSampler` keyed with
    ``HMAC-SHA256(secret, release key)``, where the release key binds the run,
    the round and the exact global model received. If the server asks again
    for a release already answered (e.g. it crashed and resumed), the client
    computes the bit-identical update, so sending it again reveals nothing new
    and the ledger records it once. A different model or run is a new release
    and is accounted as such.

The secret never leaves the holder, so nobody else can compute a release's key,
and the sampler's ChaCha20 keystream is a CSPRNG: the noise can be neither
predicted nor subtracted (see :mod:`fedlearn.privacy.noise`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedlearn.data import Dataset
from fedlearn.privacy.accounting import AccountantName
from fedlearn.privacy.ledger import LedgerEntry, PrivacyLedger
from fedlearn.privacy.noise import GaussianSampler

__all__ = ["HolderPrivacy", "data_fingerprint", "default_ledger_dir", "release_key"]


def default_ledger_dir() -> Path:
    """``$FEDLEARN_HOME/ledgers`` or ``~/.fedlearn/ledgers``."""
    home = os.environ.get("FEDLEARN_HOME")
    return (Path(home) if home else Path.home() / ".fedlearn") / "ledgers"


def data_fingerprint(data: Dataset) -> str:
    """SHA-256 of the examples (features and labels), independent of the file format."""
    digest = hashlib.sha256()
    digest.update(data.x.tobytes())
    digest.update(data.y.tobytes())
    return digest.hexdigest()


def release_key(*, run: str, server_round: int, model: dict[str, Any]) -> str:
    """Identify a release: the run, the round, and the global model it starts from."""
    digest = hashlib.sha256(f"{run}|{server_round}|".encode())
    for name in sorted(model):
        digest.update(name.encode())
        digest.update(bytes(memoryview(model[name]).cast("B")))
    return digest.hexdigest()


class HolderPrivacy:
    """The holder's ledger, secret and answered releases for one dataset.

    Use :meth:`open`; every change is saved atomically with :meth:`save`.
    """

    def __init__(
        self, *, path: Path, ledger: PrivacyLedger, secret: bytes, released: dict[str, int]
    ) -> None:
        self.path = path
        self.ledger = ledger
        self._secret = secret
        self.released = released

    @classmethod
    def open(
        cls,
        directory: str | Path,
        *,
        fingerprint: str,
        delta: float,
        accountant: AccountantName = "rdp",
        holder: str = "",
    ) -> HolderPrivacy:
        """Load the state for ``fingerprint`` from ``directory``, or start one."""
        path = Path(directory) / f"{fingerprint}.json"
        if path.exists():
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                path=path,
                ledger=PrivacyLedger.from_dict(raw["ledger"]),
                secret=bytes.fromhex(raw["secret"]),
                released={str(k): int(v) for k, v in raw["released"].items()},
            )
        ledger = PrivacyLedger(delta=delta, accountant=accountant, holder=holder)
        return cls(path=path, ledger=ledger, secret=secrets.token_bytes(32), released={})

    @classmethod
    @contextlib.contextmanager
    def locked(
        cls,
        directory: str | Path,
        *,
        fingerprint: str,
        delta: float,
        accountant: AccountantName = "rdp",
        holder: str = "",
    ) -> Iterator[HolderPrivacy]:
        """:meth:`open` under an exclusive lock held until the block ends.

        Two processes on the same data (two runs at once) wait for each other
        between the budget check and the record, so both cannot spend the
        last of a budget.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with (directory / f"{fingerprint}.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield cls.open(
                    directory,
                    fingerprint=fingerprint,
                    delta=delta,
                    accountant=accountant,
                    holder=holder,
                )
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def sampler(self, key: str) -> GaussianSampler:
        """The DP randomness of release ``key``: same key, same stream (module docstring)."""
        return GaussianSampler(hmac.new(self._secret, key.encode(), hashlib.sha256).digest())

    def generator(self, key: str) -> GaussianSampler:
        """Alias of :meth:`sampler`, kept while ``client_app`` still calls it by this name."""
        return self.sampler(key)

    def entry_for(self, key: str) -> LedgerEntry:
        """The ledger entry recorded for an answered release."""
        return self.ledger.entries[self.released[key]]

    def record(self, key: str, **release: Any) -> LedgerEntry:
        """Record release ``key`` in the ledger (once) and save before anything is sent."""
        if key in self.released:
            return self.entry_for(key)
        entry = self.ledger.record(**release)
        self.released[key] = len(self.ledger) - 1
        self.save()
        return entry

    def save(self) -> None:
        """Write the state atomically (0600: it holds the holder's secret)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "ledger": self.ledger.to_dict(),
            "secret": self._secret.hex(),
            "released": self.released,
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(body, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
