"""The attestation contracts on a chain: deploy, attach, post rounds, claim rewards.

:class:`Contracts` deploys and calls ``AttestationLedger``, ``RewardToken`` and
``RewardPool`` on any :class:`~fedlearn.attestation.chain.Chain`, signing every
transaction locally with keys from :mod:`fedlearn.attestation.signing`
(keystore or environment). Reverts are decoded to the contracts' custom error
names (:class:`~fedlearn.attestation.chain.ContractRevertError`).
:class:`Deployment` records where the contracts are (``deployment.json``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils.hexadecimal import encode_hex
from web3.contract import Contract
from web3.exceptions import TimeExhausted, TransactionNotFound

from fedlearn.attestation.chain.base import Chain, _base_params, _checksum
from fedlearn.attestation.chain.errors import (
    _TRANSPORT_ERRORS,
    ChainError,
    TransactionFailedError,
    _guard,
    _translate,
)
from fedlearn.attestation.compile import load_artifact
from fedlearn.attestation.hexutil import to_bytes32
from fedlearn.attestation.leaves import ContributionLeaf

__all__ = ["CLAIM_GAS", "POST_ROUND_GAS", "Contracts", "Deployment", "RoundPosted"]

#: Gas limits of the two frequent calls (measured: postRound ~50k, claim <= ~95k at
#: 1,000 leaves). Giving them skips eth_estimateGas, which re-executes the call many
#: times (~0.4 s a transaction on the embedded chain); a plain call first still
#: surfaces a revert with its reason.
POST_ROUND_GAS = 120_000
CLAIM_GAS = 250_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Deployment:
    """Where the contracts are: written to ``deployment.json`` next to the run."""

    chain_id: int
    ledger: ChecksumAddress
    token: ChecksumAddress
    pool: ChecksumAddress
    coordinator: ChecksumAddress
    block: int

    def save(self, path: str | Path) -> Path:
        """Write as JSON (atomically: temporary file, fsync, rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            json.dump(asdict(self), handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Deployment:
        """Read a file written by :meth:`save`.

        Raises
        ------
        ValueError
            If the file is malformed.
        """
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(
                chain_id=int(data["chain_id"]),
                ledger=_checksum("ledger", data["ledger"]),
                token=_checksum("token", data["token"]),
                pool=_checksum("pool", data["pool"]),
                coordinator=_checksum("coordinator", data["coordinator"]),
                block=int(data["block"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path} is not a deployment file: {exc}") from None


@dataclass(frozen=True, slots=True)
class RoundPosted:
    """A ``RoundPosted`` event."""

    run_id: bytes
    round: int
    merkle_root: bytes
    aggregate_hash: bytes
    coordinator: str
    tx_hash: bytes
    block: int


class Contracts:
    """The deployed ledger, token and pool on one chain.

    Parameters
    ----------
    chain : Chain
        Where they are deployed.
    deployment : Deployment
        Their addresses.
    coordinator : LocalAccount, optional
        The key that posts rounds (needed by :meth:`post_round` only).
    """

    def __init__(
        self,
        *,
        chain: Chain,
        deployment: Deployment,
        coordinator: LocalAccount | None = None,
    ) -> None:
        if not isinstance(chain, Chain):
            raise TypeError(f"chain must implement Chain, got {type(chain).__name__}")
        self.chain = chain
        self.deployment = deployment
        self.coordinator = coordinator
        w3 = chain.w3
        self.ledger: Contract = w3.eth.contract(
            address=deployment.ledger,
            abi=load_artifact("AttestationLedger")["abi"],
        )
        self.token: Contract = w3.eth.contract(
            address=deployment.token,
            abi=load_artifact("RewardToken")["abi"],
        )
        self.pool: Contract = w3.eth.contract(
            address=deployment.pool,
            abi=load_artifact("RewardPool")["abi"],
        )

    # -- construction

    @classmethod
    def deploy(
        cls,
        *,
        chain: Chain,
        coordinator: LocalAccount,
        token_supply: int,
        pool_funding: int | None = None,
        path: str | Path | None = None,
        timeout: float = 30.0,
    ) -> Contracts:
        """Deploy ledger, token and pool; fund the pool; optionally write ``deployment.json``.

        Parameters
        ----------
        chain : Chain
            Target chain.
        coordinator : LocalAccount
            Admin and coordinator of the ledger, initial token holder, gas payer.
        token_supply : int
            Total FLR supply in base units (> 0).
        pool_funding : int, optional
            Tokens moved into the pool (default: the whole supply).
        path : path, optional
            Where to write the :class:`Deployment` JSON.
        timeout : float, default 30.0
            Seconds to wait for each transaction.
        """
        if isinstance(token_supply, bool) or not isinstance(token_supply, int):
            raise TypeError("token_supply must be an int")
        if token_supply <= 0:
            raise ValueError(f"token_supply must be > 0, got {token_supply}")
        funding = token_supply if pool_funding is None else pool_funding
        if (
            isinstance(funding, bool)
            or not isinstance(funding, int)
            or not 0 <= funding <= (token_supply)
        ):
            raise ValueError(f"pool_funding must be an int in [0, token_supply], got {funding!r}")
        with _guard(chain.description):
            chain.ensure_gas(coordinator.address)
            w3 = chain.w3
            chain_id = int(w3.eth.chain_id)

            def create(name: str, *args: Any) -> ChecksumAddress:
                artifact = load_artifact(name)
                factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
                tx_hash = _send(
                    chain,
                    coordinator,
                    lambda p: factory.constructor(*args).build_transaction(p),
                    name,
                )
                receipt = _wait(chain, tx_hash, timeout=timeout, context=f"deploying {name}")
                return _checksum(name, str(receipt["contractAddress"]))

            ledger = create("AttestationLedger", coordinator.address, coordinator.address)
            token = create("RewardToken", coordinator.address, token_supply)
            pool = create("RewardPool", token, ledger)
            deployment = Deployment(
                chain_id=chain_id,
                ledger=ledger,
                token=token,
                pool=pool,
                coordinator=coordinator.address,
                block=int(w3.eth.block_number),
            )
            contracts = cls(chain=chain, deployment=deployment, coordinator=coordinator)
            if funding:
                tx_hash = _send(
                    chain,
                    coordinator,
                    lambda p: contracts.token.functions.transfer(pool, funding).build_transaction(
                        p
                    ),
                    "funding the pool",
                )
                _wait(chain, tx_hash, timeout=timeout, context="funding the pool")
        if path is not None:
            deployment.save(path)
        return contracts

    @classmethod
    def load(
        cls, *, chain: Chain, path: str | Path, coordinator: LocalAccount | None = None
    ) -> Contracts:
        """Attach to a deployment recorded in ``path``, checking chain id and code.

        Raises
        ------
        ChainError
            If the chain id differs or a contract has no code (e.g. a fresh node).
        """
        deployment = Deployment.load(path)
        with _guard(chain.description):
            chain_id = int(chain.w3.eth.chain_id)
            if chain_id != deployment.chain_id:
                raise ChainError(
                    f"{path} was deployed on chain {deployment.chain_id}, "
                    f"but {chain.description} is chain {chain_id}"
                )
            for name in ("ledger", "token", "pool"):
                address = getattr(deployment, name)
                if not chain.w3.eth.get_code(address):
                    raise ChainError(
                        f"no {name} contract at {address} on {chain.description} "
                        "(was the chain reset?)"
                    )
        return cls(chain=chain, deployment=deployment, coordinator=coordinator)

    # -- attestation ledger

    def post_round(
        self,
        *,
        run_id: bytes,
        round: int,
        root: bytes,
        aggregate_hash: bytes,
        wait: bool = True,
        timeout: float = 30.0,
    ) -> bytes:
        """Post a round's Merkle root and aggregate hash; return the transaction hash.

        With ``wait`` (default) returns only once mined successfully.

        Raises
        ------
        ContractRevertError
            ``RoundAlreadyPosted``, ``EmptyRoot``, ``AccessControlUnauthorizedAccount``.
        ChainUnavailableError
            If the chain cannot be reached.
        """
        if self.coordinator is None:
            raise ChainError("posting rounds needs the coordinator account")
        run_id, root = to_bytes32("run_id", run_id), to_bytes32("root", root)
        aggregate_hash = to_bytes32("aggregate_hash", aggregate_hash)
        coordinator = self.coordinator
        context = f"postRound(round {round})"
        call = self.ledger.functions.postRound(run_id, round, root, aggregate_hash)
        with _guard(self.chain.description):
            tx_hash = _send(
                self.chain,
                coordinator,
                call.build_transaction,
                context,
                gas=POST_ROUND_GAS,
                preflight=call.call,
            )
            if wait:
                _wait(self.chain, tx_hash, timeout=timeout, context=context)
        return tx_hash

    def root_of(self, *, run_id: bytes, round: int) -> bytes:
        """The posted root of ``(run_id, round)``, 32 zero bytes if not posted."""
        run_id = to_bytes32("run_id", run_id)
        with _guard(self.chain.description):
            return bytes(self.ledger.functions.rootOf(run_id, round).call())

    def round_posted_events(
        self, *, run_id: bytes | None = None, round: int | None = None
    ) -> list[RoundPosted]:
        """``RoundPosted`` events since deployment, optionally filtered."""
        filters: dict[str, Any] = {}
        if run_id is not None:
            filters["runId"] = to_bytes32("run_id", run_id)
        if round is not None:
            filters["round"] = round
        with _guard(self.chain.description):
            logs = self.ledger.events.RoundPosted.get_logs(
                from_block=self.deployment.block, argument_filters=filters or None
            )
        return [
            RoundPosted(
                run_id=bytes(log["args"]["runId"]),
                round=int(log["args"]["round"]),
                merkle_root=bytes(log["args"]["merkleRoot"]),
                aggregate_hash=bytes(log["args"]["aggregateHash"]),
                coordinator=str(log["args"]["coordinator"]),
                tx_hash=bytes(log["transactionHash"]),
                block=int(log["blockNumber"]),
            )
            for log in logs
        ]

    # -- transactions

    def wait_for(self, tx_hash: bytes, *, timeout: float = 30.0) -> Mapping[str, Any]:
        """Wait for a transaction's receipt; raise if it reverted."""
        with _guard(self.chain.description):
            return _wait(self.chain, tx_hash, timeout=timeout, context="transaction")

    def transaction_status(self, tx_hash: bytes) -> str:
        """``"success"``, ``"reverted"``, ``"pending"`` (known, not mined) or ``"unknown"``."""
        w3 = self.chain.w3
        with _guard(self.chain.description):
            try:
                receipt = w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
            except TransactionNotFound:
                receipt = None
            if receipt is not None:
                return "success" if receipt["status"] == 1 else "reverted"
            try:
                w3.eth.get_transaction(tx_hash)  # type: ignore[arg-type]
            except TransactionNotFound:
                return "unknown"
            return "pending"

    # -- rewards

    def claim(
        self,
        *,
        account: LocalAccount,
        leaf: ContributionLeaf,
        proof: Sequence[bytes],
        timeout: float = 30.0,
    ) -> bytes:
        """Claim ``leaf``'s reward as ``account`` (who must be ``leaf.client``).

        Raises
        ------
        ContractRevertError
            ``RoundNotPosted``, ``InvalidProof`` or ``AlreadyClaimed``.
        """
        if account.address != leaf.client:
            raise ValueError(f"leaf belongs to {leaf.client}, not to {account.address}")
        proof_list = [to_bytes32(f"proof[{i}]", p) for i, p in enumerate(proof)]
        context = f"claim(round {leaf.round})"
        with _guard(self.chain.description):
            self.chain.ensure_gas(account.address)
            call = self.pool.functions.claim(
                leaf.run_id,
                leaf.round,
                leaf.commitment,
                leaf.score,
                leaf.examples,
                leaf.epsilon_micro,
                leaf.amount,
                proof_list,
            )
            tx_hash = _send(
                self.chain,
                account,
                call.build_transaction,
                context,
                gas=CLAIM_GAS,
                preflight=call.call,
            )
            _wait(self.chain, tx_hash, timeout=timeout, context=context)
        return tx_hash

    def is_claimed(self, *, leaf: ContributionLeaf) -> bool:
        """Whether ``leaf`` has been claimed."""
        with _guard(self.chain.description):
            return bool(
                self.pool.functions.isClaimed(
                    leaf.run_id,
                    leaf.round,
                    leaf.client,
                    leaf.commitment,
                    leaf.score,
                    leaf.examples,
                    leaf.epsilon_micro,
                    leaf.amount,
                ).call()
            )

    def token_balance(self, address: str) -> int:
        """FLR balance of ``address`` in base units."""
        address = _checksum("address", address)
        with _guard(self.chain.description):
            return int(self.token.functions.balanceOf(address).call())


def _send(
    chain: Chain,
    account: LocalAccount,
    build: Callable[[Any], Mapping[str, Any]],
    context: str,
    *,
    gas: int | None = None,
    preflight: Callable[..., Any] | None = None,
) -> bytes:
    """Build (estimating gas unless given, which surfaces reverts), sign locally and send."""
    try:
        params = _base_params(chain.w3, account.address)
        if gas is not None:
            if preflight is not None:
                preflight({"from": account.address})
            params["gas"] = gas
        tx = dict(build(params))
    except _TRANSPORT_ERRORS:
        raise
    except Exception as exc:
        raise _translate(exc, context) from exc
    tx.pop("from", None)
    signed = account.sign_transaction(tx)
    return chain.send_raw_transaction(bytes(signed.raw_transaction))


def _wait(chain: Chain, tx_hash: bytes, *, timeout: float, context: str) -> Mapping[str, Any]:
    try:
        receipt = chain.w3.eth.wait_for_transaction_receipt(
            tx_hash,  # type: ignore[arg-type]
            timeout=timeout,
            poll_latency=0.05,
        )
    except TimeExhausted:
        raise ChainError(
            f"{context}: transaction {encode_hex(tx_hash)} not mined within {timeout:.0f} s"
        ) from None
    if receipt["status"] != 1:
        raise TransactionFailedError(f"{context}: transaction {encode_hex(tx_hash)} reverted")
    return receipt
