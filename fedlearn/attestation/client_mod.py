"""The data holder's side of attestation: sign a commitment to what it sends.

The mod (:func:`make_attestation_mod`) sits outermost on the train handler, after the update is
protected (secure aggregation) or not: it hashes exactly the arrays the reply
carries (:func:`payload_bytes`), signs ``(run id, round, commitment)`` with
the holder's wallet key (EIP-712, :mod:`fedlearn.attestation.signing`) and
attaches the signed commitment. The server checks it before the update is
used and binds it into the round's Merkle leaf, so a holder can later prove
on chain what it contributed, and nobody can claim its reward.

Wallets: a real data holder's key comes from a keystore file named in the
node config (``wallet-keystore``, password in ``$FEDLEARN_WALLET_PASSWORD``)
or from ``$FEDLEARN_WALLET_KEY``; simulated holders derive theirs from a
per-run secret file (:func:`simulated_wallet`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import struct
from collections.abc import Callable
from pathlib import Path
from typing import cast

from eth_account import Account
from eth_account.signers.local import LocalAccount
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from fedlearn.attestation.hexutil import to_bytes32
from fedlearn.attestation.signing import SignedCommitment, WalletError, load_wallet
from fedlearn.wire import ATTEST_RUN_ID_KEY, ATTESTATION_KEY, ErrorCode

__all__ = [
    "WalletProvider",
    "make_attestation_mod",
    "node_wallet",
    "partition_wallet",
    "payload_bytes",
    "simulated_wallet",
]

log = logging.getLogger(__name__)


#: ``(context) -> the holder's wallet``.
WalletProvider = Callable[[Context], LocalAccount]


def payload_bytes(content: RecordDict) -> bytes:
    """Canonical bytes of what a reply carries: its arrays, metrics and reports.

    Every ArrayRecord's arrays (framed by record name, array key, dtype, shape
    and byte length, in sorted order), then every MetricRecord and ConfigRecord
    but the signature's own (sorted-key JSON, bytes as hex): the update and
    what the attestation states about it (example count, ε spent) are signed
    together, so neither side can change one later.
    """
    out = bytearray()
    for name in sorted(content.array_records):
        record = content.array_records[name]
        for key in sorted(record.keys()):
            array = record[key]
            header = f"{name}/{key}:{array.dtype}:{list(array.shape)}".encode()
            out += struct.pack(">I", len(header)) + header
            out += struct.pack(">Q", len(array.data)) + array.data
    statements = {
        f"metrics/{name}": dict(record) for name, record in content.metric_records.items()
    } | {
        f"config/{name}": dict(record)
        for name, record in content.config_records.items()
        if name != ATTESTATION_KEY
    }
    text = json.dumps(statements, sort_keys=True, default=_hex_bytes).encode()
    return bytes(out + struct.pack(">Q", len(text)) + text)


def _hex_bytes(value: object) -> str:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot encode {type(value).__name__} in a signed statement")


def node_wallet(context: Context) -> LocalAccount:
    """A real data holder's wallet: keystore from the node config, else the environment."""
    keystore = context.node_config.get("wallet-keystore")
    return load_wallet(keystore=str(keystore) if keystore else None)


def simulated_wallet(secret_file: str | Path, context: Context) -> LocalAccount:
    """A simulated node's wallet (a :data:`WalletProvider`): see :func:`partition_wallet`."""
    partition = int(cast(int, context.node_config.get("partition-id", context.node_id)))
    return partition_wallet(secret_file, partition=partition)


def partition_wallet(secret_file: str | Path, *, partition: int) -> LocalAccount:
    """The wallet of simulated holder ``partition``, derived from a per-run secret.

    The secret (32 random bytes, mode 0600) is created on first use; the
    key of partition ``i`` is ``SHA-256(secret || i)``. Simulation only: every
    simulated holder's key is derivable by whoever reads the file.
    """
    path = Path(secret_file)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(32))
        except FileExistsError:
            pass  # another simulated client created it first
    secret = path.read_bytes()
    if len(secret) != 32:
        raise WalletError(f"{path} is not a wallet secret (expected 32 bytes)")
    key = hashlib.sha256(secret + partition.to_bytes(8, "big")).digest()
    account: LocalAccount = Account.from_key(key)
    return account


def make_attestation_mod(wallet: WalletProvider) -> Callable[..., Message]:
    """The client mod signing every train reply of an attested run with ``wallet``."""

    def attestation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        config = msg.content.config_records.get("config")
        run_id = config.get(ATTEST_RUN_ID_KEY) if config is not None else None
        if run_id is None:
            return call_next(msg, context)
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        assert config is not None
        try:
            account = wallet(context)
            signed = SignedCommitment.create(
                account=account,
                run_id=to_bytes32("run_id", run_id),
                round=int(cast(int, config["server-round"])),
                payload=payload_bytes(reply.content),
            )
        except (WalletError, ValueError, KeyError) as exc:
            log.warning("cannot sign this round's update: %s", exc)
            return Message(
                Error(code=ErrorCode.ATTESTATION, reason=f"cannot sign the update: {exc}"),
                reply_to=msg,
            )
        reply.content[ATTESTATION_KEY] = ConfigRecord(signed.to_dict())
        return reply

    return attestation_mod
