"""An in-process py-evm chain (eth-tester) whose state survives restarts.

eth-tester keeps state in memory only, so the chain persists itself as a
*transaction journal*: every raw signed transaction it accepts is appended
(and fsynced) to ``STATE_DIR/transactions.jsonl`` with its hash and receipt
status before the hash is returned to the caller. Opening the directory again
replays the journal into a fresh chain with the same genesis and checks, line
by line, that every transaction gets the same hash and status back (a
divergence raises :class:`~fedlearn.attestation.chain.ChainError`).
Transactions are signed and deterministic, so the replayed state (balances,
storage, nonces, logs) is the same; block timestamps and hashes are not. A
lock file keeps a second process from opening the same directory. A torn last
line (crash while appending) is a transaction whose hash nobody received; it
is dropped on replay. Pre-funded eth-tester development accounts pay for gas
(:meth:`EmbeddedChain.ensure_gas`).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.hexadecimal import decode_hex, encode_hex
from web3 import Web3

from fedlearn.attestation.chain.base import (
    _DEFAULT_GAS_WEI,
    _FAUCET_WEI,
    _base_params,
    _checksum,
)
from fedlearn.attestation.chain.errors import ChainError, _translate

__all__ = ["EmbeddedChain"]

_JOURNAL = "transactions.jsonl"
_LOCK = "chain.lock"


class EmbeddedChain:
    """In-process py-evm chain whose state survives restarts (transaction journal).

    Parameters
    ----------
    state_dir : path
        Directory for the journal and lock file (created if missing).

    Raises
    ------
    ChainError
        If another process holds the directory, or the journal does not replay.
    """

    def __init__(self, *, state_dir: str | Path) -> None:
        from eth_tester import EthereumTester, PyEVMBackend
        from eth_tester.backends.pyevm.main import get_default_account_keys
        from web3.providers.eth_tester import EthereumTesterProvider

        self._dir = Path(state_dir)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._lock: TextIO | None = (self._dir / _LOCK).open("a")
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise ChainError(f"chain state {self._dir} is in use by another process") from None
        self._w3 = Web3(EthereumTesterProvider(EthereumTester(PyEVMBackend())))
        self._eth: Any = self._w3.eth
        # eth-tester's development accounts (keys 1, 2, ...): public test keys that only
        # ever hold this private chain's ether.
        self._faucet: LocalAccount = Account.from_key(get_default_account_keys()[0].to_bytes())
        self._journal_path = self._dir / _JOURNAL
        self.replayed = self._replay()
        self._journal: TextIO | None = self._journal_path.open("a", encoding="utf-8")

    @property
    def w3(self) -> Web3:
        """The Web3 instance bound to the in-process chain."""
        return self._w3

    @property
    def description(self) -> str:
        """``embedded chain at STATE_DIR``."""
        return f"embedded chain at {self._dir}"

    def _replay(self) -> int:
        if not self._journal_path.exists():
            return 0
        lines = self._journal_path.read_text(encoding="utf-8").splitlines(keepends=True)
        replayed = 0
        for number, line in enumerate(lines, start=1):
            try:
                entry = json.loads(line)
                raw = decode_hex(entry["raw"])
                expected_hash = entry["tx_hash"]
                expected_status = int(entry["status"])
            except (ValueError, KeyError, TypeError, AttributeError):
                if number == len(lines) and not line.endswith("\n"):
                    self._truncate_torn_tail(lines[:-1])
                    break
                raise ChainError(f"{self._journal_path}:{number} is corrupt") from None
            tx_hash = self._w3.eth.send_raw_transaction(raw)
            status = self._eth.get_transaction_receipt(tx_hash)["status"]
            if encode_hex(tx_hash) != expected_hash or status != expected_status:
                raise ChainError(
                    f"{self._journal_path}:{number}: replay diverged "
                    f"(transaction {expected_hash}, status {expected_status} expected)"
                )
            replayed += 1
        return replayed

    def _truncate_torn_tail(self, keep: Sequence[str]) -> None:
        with self._journal_path.open("w", encoding="utf-8") as handle:
            handle.writelines(keep)
            handle.flush()
            os.fsync(handle.fileno())

    def send_raw_transaction(self, raw: bytes) -> bytes:
        """Apply a signed transaction, journal it (fsync), return its hash."""
        if self._journal is None:
            raise ChainError(f"{self.description} is closed")
        try:
            tx_hash = bytes(self._w3.eth.send_raw_transaction(raw))
        except Exception as exc:
            raise _translate(exc, "transaction") from exc
        status = self._eth.get_transaction_receipt(tx_hash)["status"]
        entry = {"tx_hash": encode_hex(tx_hash), "status": status, "raw": encode_hex(raw)}
        self._journal.write(json.dumps(entry) + "\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())
        return tx_hash

    def ensure_gas(self, address: str, *, minimum_wei: int = _DEFAULT_GAS_WEI) -> None:
        """Top ``address`` up from a development account if it holds less than ``minimum_wei``."""
        address = _checksum("address", address)
        balance = self._w3.eth.get_balance(address)
        if balance >= minimum_wei:
            return
        tx = {
            "to": address,
            "value": max(minimum_wei, _FAUCET_WEI) - balance,
            "gas": 21_000,
            **_base_params(self._w3, self._faucet.address),
        }
        tx.pop("from")
        self.send_raw_transaction(bytes(self._faucet.sign_transaction(tx).raw_transaction))

    def close(self) -> None:
        """Close the journal and release the directory lock."""
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._lock is not None:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def __enter__(self) -> EmbeddedChain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
