"""The data holder's side of attestation: sign a commitment to what it sends.

The mod (:func:`make_attestation_mod`) sits outermost on the train handler, after the update is
protected (secure aggregation) or not: it hashes exactly the arrays the reply
carries (:func:`payload_bytes`), signs ``(run id, round, commitment)`` with
the holder's wallet key (EIP-712, :mod:`fedlearn.attestation.signing`) and
attaches the signed commitment. The server checks it before the update is
used and binds it into the round's Merkle leaf, so a holder can later prove
on chain what it contributed, and nobody can claim its reward.

The signature's domain names the chain and the ``AttestationLedger`` the run
attests on (round config :data:`~fedlearn.wire.ATTEST_CHAIN_ID_KEY`,
:data:`~fedlearn.wire.ATTEST_LEDGER_KEY`), so it is worth nothing in any other
run, chain or ledger. A round that asks for a signature without naming both is
refused before any training (a signature without them could be replayed
elsewhere). A holder may pin where it signs with the node config keys
``attestation-chain-id`` and ``attestation-ledger``: a round naming another
chain or ledger is then refused.

Wallets: a real data holder's key comes from a keystore file named in the
node config (``wallet-keystore``, password in ``$FEDLEARN_WALLET_PASSWORD``)
or from ``$FEDLEARN_WALLET_KEY``; simulated holders derive theirs from a
per-run secret file, ``RUN_DIR/secrets/wallets.secret``
(:func:`wallet_secret`, :func:`simulated_wallet`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import cast

from eth_account import Account
from eth_account.signers.local import LocalAccount
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from fedlearn.attestation.hexutil import to_bytes32
from fedlearn.attestation.signing import (
    SignedCommitment,
    SigningDomain,
    WalletError,
    load_wallet,
)
from fedlearn.files import SECRETS_DIR, create_atomically, private_directory, run_secrets
from fedlearn.wire import (
    ATTEST_CHAIN_ID_KEY,
    ATTEST_LEDGER_KEY,
    ATTEST_RUN_ID_KEY,
    ATTESTATION_KEY,
    ErrorCode,
)

__all__ = [
    "PIN_CHAIN_ID",
    "PIN_LEDGER",
    "WalletProvider",
    "make_attestation_mod",
    "node_wallet",
    "partition_wallet",
    "payload_bytes",
    "signing_domain",
    "simulated_wallet",
    "wallet_secret",
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


def wallet_secret(run_dir: str | Path) -> Path:
    """``RUN_DIR/secrets/wallets.secret``: the seed of a simulation's holder wallets.

    A run made before ``secrets/`` existed kept it in ``RUN_DIR/holders``; it
    is moved here (so a resumed run keeps its holders' wallets).
    """
    run_dir = Path(run_dir)
    path = run_dir / SECRETS_DIR / "wallets.secret"
    legacy = run_dir / "holders" / "wallets.secret"
    if legacy.exists() and not path.exists():
        run_secrets(run_dir)
        os.replace(legacy, path)  # same file system: atomic, mode 0600 kept
        log.warning("moved the simulated holders' wallet secret to %s", path)
    return path


def partition_wallet(secret_file: str | Path, *, partition: int) -> LocalAccount:
    """The wallet of simulated holder ``partition``, derived from a per-run secret.

    The secret (32 random bytes, mode 0600, see :func:`wallet_secret` for
    where a run keeps it) is created on first use, atomically: concurrent
    simulated clients all derive from the one that was created. The key of
    partition ``i`` is ``SHA-256(secret || i)``. Simulation only: every
    simulated holder's key is derivable by whoever reads the file.
    """
    path = Path(secret_file)
    if not path.exists():
        if not path.parent.exists():
            private_directory(path.parent)  # e.g. RUN_DIR/secrets: 0700
        create_atomically(path, secrets.token_bytes(32))  # or another client did first
    secret = path.read_bytes()
    if len(secret) != 32:
        raise WalletError(f"{path} is not a wallet secret (expected 32 bytes)")
    key = hashlib.sha256(secret + partition.to_bytes(8, "big")).digest()
    account: LocalAccount = Account.from_key(key)
    return account


#: Node config keys a holder pins the chain and ledger it signs for with.
PIN_CHAIN_ID = "attestation-chain-id"
PIN_LEDGER = "attestation-ledger"


def signing_domain(config: ConfigRecord, node_config: Mapping[str, object]) -> SigningDomain:
    """The chain and ledger a round asks the holder to sign for, checked against its pins.

    Raises
    ------
    ValueError
        If the round does not name both, names malformed values, or names a
        chain or ledger other than the one the holder pinned.
    """
    chain_id, ledger = config.get(ATTEST_CHAIN_ID_KEY), config.get(ATTEST_LEDGER_KEY)
    if chain_id is None or ledger is None:
        raise ValueError(
            f"the round asks for a signed commitment but names no chain id and ledger "
            f"({ATTEST_CHAIN_ID_KEY}, {ATTEST_LEDGER_KEY}); a signature bound to neither "
            "could be replayed into another run"
        )
    if isinstance(chain_id, bool) or not isinstance(chain_id, int) or not isinstance(ledger, str):
        raise ValueError(f"{ATTEST_CHAIN_ID_KEY} must be an int and {ATTEST_LEDGER_KEY} a string")
    domain = SigningDomain(chain_id=chain_id, ledger=ledger)
    pinned_chain, pinned_ledger = node_config.get(PIN_CHAIN_ID), node_config.get(PIN_LEDGER)
    if pinned_chain is not None and str(pinned_chain) != str(domain.chain_id):
        raise ValueError(
            f"the round asks for signatures on chain {domain.chain_id}; this holder signs "
            f"only for chain {pinned_chain} (node config {PIN_CHAIN_ID})"
        )
    if pinned_ledger is not None and str(pinned_ledger).lower() != domain.ledger.lower():
        raise ValueError(
            f"the round asks for signatures for ledger {domain.ledger}; this holder signs "
            f"only for ledger {pinned_ledger} (node config {PIN_LEDGER})"
        )
    return domain


def _refuse(msg: Message, reason: str) -> Message:
    return Message(Error(code=ErrorCode.ATTESTATION, reason=reason), reply_to=msg)


def make_attestation_mod(wallet: WalletProvider) -> Callable[..., Message]:
    """The client mod signing every train reply of an attested run with ``wallet``."""

    def attestation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        config = msg.content.config_records.get("config")
        run_id = config.get(ATTEST_RUN_ID_KEY) if config is not None else None
        if run_id is None:
            return call_next(msg, context)
        assert config is not None
        # Everything the signature binds is checked before training: a round this
        # holder will not sign costs it no privacy budget.
        try:
            domain = signing_domain(config, context.node_config)
            run = to_bytes32("run_id", run_id)
            server_round = int(cast(int, config["server-round"]))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("refusing to sign this round: %s", exc)
            return _refuse(msg, f"refused to sign the update: {exc}")
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        try:
            account = wallet(context)
        except WalletError as exc:
            # The detail (a keystore path, a decryption error) stays on the holder.
            log.warning("cannot sign this round's update: %s", exc)
            return _refuse(msg, "cannot sign the update: the holder's wallet is unavailable")
        try:
            signed = SignedCommitment.create(
                account=account,
                domain=domain,
                run_id=run,
                round=server_round,
                payload=payload_bytes(reply.content),
            )
        except (ValueError, TypeError) as exc:
            log.warning("cannot sign this round's update: %s", exc)
            return _refuse(msg, f"cannot sign the update: {exc}")
        reply.content[ATTESTATION_KEY] = ConfigRecord(signed.to_dict())
        return reply

    return attestation_mod
