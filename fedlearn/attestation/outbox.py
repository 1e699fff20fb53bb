"""Durable SQLite outbox: round attestations are written before they are sent, posted exactly once.

Lifecycle of an entry (one per ``(run_id, round)``):

``pending`` → ``sent`` (a transaction hash is recorded *before* waiting for it)
→ ``confirmed`` (the chain's ``rootOf(run, round)`` equals the entry's root).
An entry is never deleted; an entry whose round holds a *different* root on
chain becomes ``conflict`` and :meth:`Outbox.flush` raises
:class:`AttestationConflictError` naming it (never dropped silently).

Exactly once: before (re)sending, :meth:`Outbox.flush` reads ``rootOf`` on
chain. A crash after sending but before confirming therefore never posts twice
(the ledger is write-once as well: a duplicate would revert with
``RoundAlreadyPosted``, which counts as confirmed when the root on chain is
ours). A transaction still known to the node is waited for rather than
replaced.

Unreachable chain: :meth:`Outbox.flush` retries with exponential backoff until
its deadline, then returns with the entries still pending. After an outage,
and on the first flush of each :class:`Outbox` instance, confirmed entries are
re-checked against the chain (:meth:`Outbox.reconcile`); an entry the chain no
longer has (a development node restarted without its state, a reorg) goes back
to ``pending`` and is posted again.

SQLite runs in WAL mode with ``synchronous=FULL``: a returned :meth:`put` has
reached the disk.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from eth_utils.hexadecimal import decode_hex, encode_hex

from fedlearn.attestation.chain import (
    ChainError,
    ChainUnavailableError,
    ContractRevertError,
    Contracts,
)
from fedlearn.attestation.hexutil import to_bytes32

__all__ = [
    "AttestationConflictError",
    "FlushResult",
    "Outbox",
    "OutboxEntry",
    "OutboxError",
]

_LOG = logging.getLogger(__name__)
_ZERO = bytes(32)
Status = Literal["pending", "sent", "confirmed", "conflict"]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS attestations (
    run_id         TEXT    NOT NULL,
    round          INTEGER NOT NULL CHECK (round >= 0),
    root           TEXT    NOT NULL,
    aggregate_hash TEXT    NOT NULL,
    status         TEXT    NOT NULL
                   CHECK (status IN ('pending', 'sent', 'confirmed', 'conflict')),
    tx_hash        TEXT,
    block_number   INTEGER,
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT,
    created_at     REAL    NOT NULL,
    updated_at     REAL    NOT NULL,
    PRIMARY KEY (run_id, round)
);
"""


class OutboxError(RuntimeError):
    """Misuse of the outbox (e.g. a second, different attestation for a round)."""


class AttestationConflictError(OutboxError):
    """The chain holds a different root for a round than the outbox: reported, never dropped."""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One attestation in the outbox."""

    run_id: bytes
    round: int
    root: bytes
    aggregate_hash: bytes
    status: Status
    tx_hash: bytes | None
    block_number: int | None
    attempts: int
    last_error: str | None


@dataclass(slots=True)
class FlushResult:
    """What one :meth:`Outbox.flush` achieved.

    Attributes
    ----------
    confirmed : list of (bytes, int)
        ``(run_id, round)`` confirmed during this flush.
    pending : list of OutboxEntry
        Entries still not confirmed (including conflicts).
    error : str or None
        Why the flush stopped early (e.g. chain unreachable until the deadline).
    """

    confirmed: list[tuple[bytes, int]] = field(default_factory=list)
    pending: list[OutboxEntry] = field(default_factory=list)
    error: str | None = None

    @property
    def complete(self) -> bool:
        """Whether nothing is left to send."""
        return not self.pending


class Outbox:
    """Durable outbox of round attestations in a SQLite file.

    Parameters
    ----------
    path : path
        SQLite file (created with its parent directory if missing).

    Examples
    --------
    >>> import tempfile, os
    >>> box = Outbox(path=os.path.join(tempfile.mkdtemp(), "outbox.sqlite"))
    >>> box.put(run_id=bytes([1]) * 32, round=1, root=bytes([2]) * 32,
    ...         aggregate_hash=bytes([3]) * 32)
    True
    >>> [e.round for e in box.pending()]
    [1]
    >>> box.close()
    """

    def __init__(self, *, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._needs_reconcile = True

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing

    def put(self, *, run_id: bytes, round: int, root: bytes, aggregate_hash: bytes) -> bool:
        """Record an attestation durably before anything is sent.

        Idempotent: putting the same attestation again is a no-op.

        Returns
        -------
        bool
            True if it was new, False if it was already there.

        Raises
        ------
        OutboxError
            If ``(run_id, round)`` already holds a different root or aggregate hash.
        ValueError
            If an argument is malformed (a zero root is refused, like on chain).
        """
        run_id, root = to_bytes32("run_id", run_id), to_bytes32("root", root)
        aggregate_hash = to_bytes32("aggregate_hash", aggregate_hash)
        if isinstance(round, bool) or not isinstance(round, int) or not 0 <= round < 2**64:
            raise ValueError(f"round must be an int in [0, 2**64), got {round!r}")
        if root == _ZERO:
            raise ValueError("an all-zero Merkle root cannot be posted")
        run_hex, root_hex = encode_hex(run_id), encode_hex(root)
        aggregate_hex = encode_hex(aggregate_hash)
        now = time.time()
        with self._transaction():
            row = self._db.execute(
                "SELECT root, aggregate_hash FROM attestations WHERE run_id = ? AND round = ?",
                (run_hex, round),
            ).fetchone()
            if row is not None:
                if (row[0], row[1]) == (root_hex, aggregate_hex):
                    return False
                raise OutboxError(
                    f"round {round} of run {run_hex} already has attestation root {row[0]}; "
                    f"refusing to replace it with {root_hex}"
                )
            self._db.execute(
                "INSERT INTO attestations (run_id, round, root, aggregate_hash, status, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                (run_hex, round, root_hex, aggregate_hex, now, now),
            )
        return True

    def _transaction(self) -> _Tx:
        self._db.execute("BEGIN IMMEDIATE")
        return _Tx(self._db)

    def _update(self, entry: OutboxEntry, **values: object) -> None:
        values = {k: (encode_hex(v) if isinstance(v, bytes) else v) for k, v in values.items()} | {
            "updated_at": time.time()
        }
        assignments = ", ".join(f"{key} = ?" for key in values)
        self._db.execute(
            f"UPDATE attestations SET {assignments} WHERE run_id = ? AND round = ?",
            (*values.values(), encode_hex(entry.run_id), entry.round),
        )

    # -- reading

    def entries(self, *, status: Status | None = None) -> list[OutboxEntry]:
        """All entries (optionally of one status), in round order."""
        query = (
            "SELECT run_id, round, root, aggregate_hash, status, tx_hash, block_number, "
            "attempts, last_error FROM attestations"
        )
        params: tuple[object, ...] = ()
        if status is not None:
            query += " WHERE status = ?"
            params = (status,)
        rows = self._db.execute(query + " ORDER BY round, created_at, run_id", params).fetchall()
        return [
            OutboxEntry(
                run_id=decode_hex(r[0]),
                round=int(r[1]),
                root=decode_hex(r[2]),
                aggregate_hash=decode_hex(r[3]),
                status=r[4],
                tx_hash=decode_hex(r[5]) if r[5] else None,
                block_number=r[6],
                attempts=int(r[7]),
                last_error=r[8],
            )
            for r in rows
        ]

    def pending(self) -> list[OutboxEntry]:
        """Entries not confirmed yet (pending, sent or in conflict), in round order."""
        return [e for e in self.entries() if e.status != "confirmed"]

    def get(self, *, run_id: bytes, round: int) -> OutboxEntry | None:
        """The entry of ``(run_id, round)``, if any."""
        for entry in self.entries():
            if entry.run_id == run_id and entry.round == round:
                return entry
        return None

    # -- sending

    def reconcile(self, contracts: Contracts) -> list[OutboxEntry]:
        """Re-check confirmed entries on chain; requeue those the chain no longer has.

        Returns
        -------
        list of OutboxEntry
            The entries put back to ``pending``.

        Raises
        ------
        ChainUnavailableError
            If the chain cannot be reached.
        """
        requeued = []
        for entry in self.entries(status="confirmed"):
            on_chain = contracts.root_of(run_id=entry.run_id, round=entry.round)
            if on_chain == entry.root:
                continue
            if on_chain == _ZERO:
                _LOG.warning(
                    "round %d was confirmed but is missing on %s; posting it again",
                    entry.round,
                    contracts.chain.description,
                )
                with self._transaction():
                    self._update(entry, status="pending", tx_hash=None, block_number=None)
                requeued.append(entry)
            else:
                with self._transaction():
                    self._update(
                        entry, status="conflict", last_error=f"chain holds {encode_hex(on_chain)}"
                    )
        self._needs_reconcile = False
        return requeued

    def flush(
        self,
        contracts: Contracts,
        *,
        deadline: float = 30.0,
        initial_backoff: float = 0.1,
        max_backoff: float = 2.0,
    ) -> FlushResult:
        """Send every unconfirmed entry in round order, exactly once each.

        Parameters
        ----------
        contracts : Contracts
            The deployment, with its coordinator account.
        deadline : float, default 30.0
            Seconds from now after which flushing stops (entries stay pending).
        initial_backoff, max_backoff : float
            Retry delays (seconds) while the chain is unreachable, doubling.

        Returns
        -------
        FlushResult
            Confirmed rounds, what is still pending, and why.

        Raises
        ------
        AttestationConflictError
            If the chain holds a different root for a round in the outbox (after
            the other entries were processed).
        """
        if not deadline > 0:
            raise ValueError(f"deadline must be > 0 seconds, got {deadline!r}")
        end = time.monotonic() + deadline
        result = FlushResult()
        backoff = initial_backoff
        conflicts: list[str] = []
        while True:
            try:
                if self._needs_reconcile:
                    self.reconcile(contracts)
                for entry in self.pending():
                    if entry.status == "conflict":
                        conflicts.append(f"round {entry.round}: {entry.last_error}")
                        continue
                    remaining = max(end - time.monotonic(), 0.1)
                    outcome = self._deliver(contracts, entry, timeout=remaining)
                    if outcome == "confirmed":
                        result.confirmed.append((entry.run_id, entry.round))
                    else:
                        conflicts.append(f"round {entry.round}: {outcome}")
                result.error = None
                break
            except ChainUnavailableError as exc:
                self._needs_reconcile = True
                result.error = str(exc)
                if time.monotonic() + backoff > end:
                    break
                time.sleep(backoff)
                backoff = min(backoff * 2, max_backoff)
            except ChainError as exc:
                # e.g. not mined before the deadline; keep the entry, report it
                result.error = str(exc)
                break
        result.pending = self.pending()
        if conflicts:
            raise AttestationConflictError(
                "the chain holds different roots than the outbox for: " + "; ".join(conflicts)
            )
        return result

    def _deliver(self, contracts: Contracts, entry: OutboxEntry, *, timeout: float) -> str:
        """Bring one entry to ``confirmed``; return "confirmed" or a conflict description."""
        on_chain = contracts.root_of(run_id=entry.run_id, round=entry.round)
        if on_chain == entry.root:
            with self._transaction():
                self._update(entry, status="confirmed", last_error=None)
            return "confirmed"
        if on_chain != _ZERO:
            message = (
                f"chain holds root {encode_hex(on_chain)}, outbox has {encode_hex(entry.root)}"
            )
            with self._transaction():
                self._update(entry, status="conflict", last_error=message)
            _LOG.error("round %d: %s", entry.round, message)
            return message
        tx_hash = entry.tx_hash
        if tx_hash is not None and contracts.transaction_status(tx_hash) == "pending":
            _LOG.info(
                "round %d: waiting for earlier transaction %s", entry.round, encode_hex(tx_hash)
            )
        else:
            try:
                tx_hash = contracts.post_round(
                    run_id=entry.run_id,
                    round=entry.round,
                    root=entry.root,
                    aggregate_hash=entry.aggregate_hash,
                    wait=False,
                )
            except ContractRevertError as exc:
                if exc.error != "RoundAlreadyPosted":
                    with self._transaction():
                        self._update(entry, attempts=entry.attempts + 1, last_error=str(exc))
                    raise
                # posted meanwhile (by an earlier send); decide from the root on chain
                return self._deliver(contracts, entry, timeout=timeout)
            with self._transaction():
                self._update(entry, status="sent", tx_hash=tx_hash, attempts=entry.attempts + 1)
        receipt = contracts.wait_for(tx_hash, timeout=timeout)
        on_chain = contracts.root_of(run_id=entry.run_id, round=entry.round)
        if on_chain != entry.root:
            raise ChainError(f"round {entry.round}: mined, but rootOf does not show it yet")
        with self._transaction():
            self._update(
                entry,
                status="confirmed",
                tx_hash=tx_hash,
                block_number=int(receipt["blockNumber"]),
                last_error=None,
            )
        return "confirmed"


class _Tx:
    """Commit on success, roll back on error (the connection runs in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        return self._db

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
