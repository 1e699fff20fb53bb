"""EVM chain access: an embedded chain that survives restarts, any JSON-RPC node, the contracts.

Two implementations of :class:`Chain`:

* :class:`EmbeddedChain` runs py-evm in-process through eth-tester, so the demo
  and notebooks need no node. eth-tester keeps state in memory only, so the
  chain persists itself as a *transaction journal*: every raw signed
  transaction it accepts is appended (and fsynced) to
  ``STATE_DIR/transactions.jsonl`` with its hash and receipt status before the
  hash is returned to the caller. Opening the directory again replays the
  journal into a fresh chain with the same genesis and checks, line by line,
  that every transaction gets the same hash and status back (a divergence
  raises :class:`ChainError`). Transactions are signed and deterministic, so
  the replayed state (balances, storage, nonces, logs) is the same; block
  timestamps and hashes are not. A lock file keeps a second process from
  opening the same directory. A torn last line (crash while appending) is a
  transaction whose hash nobody received; it is dropped on replay.
  Pre-funded eth-tester development accounts pay for gas (:meth:`Chain.ensure_gas`).
* :class:`RpcChain` talks to any JSON-RPC endpoint (anvil in the tests). An
  unreachable endpoint raises :class:`ChainUnavailableError` naming the URL.

:class:`Contracts` deploys and calls ``AttestationLedger``, ``RewardToken`` and
``RewardPool`` on either chain, signing every transaction locally with keys
from :mod:`fedlearn.attestation.signing` (keystore or environment). Reverts are
decoded to the contracts' custom error names (:class:`ContractRevertError`).

Examples
--------
>>> import tempfile
>>> from eth_account import Account
>>> chain = EmbeddedChain(state_dir=tempfile.mkdtemp())
>>> coordinator = Account.create()
>>> contracts = Contracts.deploy(chain=chain, coordinator=coordinator, token_supply=10**21)
>>> contracts.root_of(run_id=bytes([1]) * 32, round=1) == bytes(32)
True
>>> chain.close()
"""

from __future__ import annotations

import ast
import fcntl
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO, runtime_checkable

import requests
from eth_abi.abi import decode as abi_decode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils.abi import function_signature_to_4byte_selector
from eth_utils.address import is_address, to_checksum_address
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import (
    ContractCustomError,
    ContractLogicError,
    ProviderConnectionError,
    TimeExhausted,
    TransactionNotFound,
)
from web3.types import RPCEndpoint

from fedlearn.attestation.compile import load_artifact
from fedlearn.attestation.leaves import ContributionLeaf

__all__ = [
    "Chain",
    "ChainError",
    "ChainUnavailableError",
    "ContractRevertError",
    "Contracts",
    "Deployment",
    "EmbeddedChain",
    "RoundPosted",
    "RpcChain",
    "TransactionFailedError",
]

_JOURNAL = "transactions.jsonl"
_LOCK = "chain.lock"
_DEFAULT_GAS_WEI = 10**17  # 0.1 ETH: thousands of attestation transactions
_FAUCET_WEI = 10**18
_CONTRACT_NAMES = ("AttestationLedger", "RewardToken", "RewardPool")


class ChainError(RuntimeError):
    """A chain operation failed (base class)."""


class ChainUnavailableError(ChainError):
    """The chain's endpoint cannot be reached; retry later, nothing was changed."""


class TransactionFailedError(ChainError):
    """A transaction was mined but reverted."""


class ContractRevertError(ChainError):
    """A contract call reverted with a known custom error.

    Attributes
    ----------
    error : str
        The custom error's name (e.g. ``"RoundAlreadyPosted"``), or ``"Error"``
        for a string reason, ``"Panic"``, or ``"unknown"``.
    arguments : tuple
        The error's decoded arguments.
    """

    def __init__(self, error: str, arguments: tuple[Any, ...], context: str) -> None:
        self.error = error
        self.arguments = arguments
        shown = ", ".join(_show(a) for a in arguments)
        super().__init__(f"{context} reverted: {error}({shown})")


def _show(value: Any) -> str:
    return "0x" + value.hex() if isinstance(value, bytes) else repr(value)


@runtime_checkable
class Chain(Protocol):
    """What :class:`Contracts` needs from a chain."""

    @property
    def w3(self) -> Web3:
        """The Web3 instance bound to this chain."""
        ...

    @property
    def description(self) -> str:
        """Where the chain is (URL or state directory), for error messages."""
        ...

    def send_raw_transaction(self, raw: bytes) -> bytes:
        """Submit a signed transaction; return its hash once durably accepted."""
        ...

    def ensure_gas(self, address: str, *, minimum_wei: int = _DEFAULT_GAS_WEI) -> None:
        """Make sure ``address`` can pay for gas, or raise :class:`ChainError`."""
        ...

    def close(self) -> None:
        """Release resources (files, locks, connections)."""
        ...


@contextmanager
def _guard(description: str) -> Iterator[None]:
    """Translate transport failures into :class:`ChainUnavailableError`."""
    try:
        yield
    except (requests.ConnectionError, requests.Timeout, ProviderConnectionError) as exc:
        raise ChainUnavailableError(
            f"cannot reach the chain at {description}: {type(exc).__name__}. "
            "Start the node (e.g. `anvil --host 127.0.0.1 --port PORT`) or pass the right URL; "
            "nothing was lost, pending attestations stay in the outbox"
        ) from exc


# ---------------------------------------------------------------- embedded chain


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
                raw = bytes.fromhex(entry["raw"].removeprefix("0x"))
                expected_hash = entry["tx_hash"]
                expected_status = int(entry["status"])
            except (ValueError, KeyError, TypeError, AttributeError):
                if number == len(lines) and not line.endswith("\n"):
                    self._truncate_torn_tail(lines[:-1])
                    break
                raise ChainError(f"{self._journal_path}:{number} is corrupt") from None
            tx_hash = self._w3.eth.send_raw_transaction(raw)
            status = self._eth.get_transaction_receipt(tx_hash)["status"]
            if "0x" + bytes(tx_hash).hex() != expected_hash or status != expected_status:
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
        entry = {"tx_hash": "0x" + tx_hash.hex(), "status": status, "raw": "0x" + raw.hex()}
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


# ---------------------------------------------------------------- JSON-RPC chain


class RpcChain:
    """Any Ethereum JSON-RPC endpoint (anvil, hardhat, a testnet node).

    Parameters
    ----------
    url : str
        ``http(s)://`` URL of the node.
    timeout : float, default 10.0
        Per-request timeout in seconds.
    dev_faucet : bool, default False
        Let :meth:`ensure_gas` mint ether with ``anvil_setBalance`` (development
        nodes only). Otherwise accounts must be funded beforehand.

    Raises
    ------
    ChainUnavailableError
        If the endpoint does not answer.
    """

    def __init__(self, *, url: str, timeout: float = 10.0, dev_faucet: bool = False) -> None:
        if not isinstance(url, str) or not re.match(r"^https?://", url):
            raise ValueError(f"url must be an http(s):// URL, got {url!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        self._url = url
        self._dev_faucet = dev_faucet
        self._w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout}))
        with _guard(url):
            self.chain_id = int(self._w3.eth.chain_id)

    @property
    def w3(self) -> Web3:
        """The Web3 instance bound to the endpoint."""
        return self._w3

    @property
    def description(self) -> str:
        """The URL."""
        return self._url

    def send_raw_transaction(self, raw: bytes) -> bytes:
        """Submit a signed transaction; return its hash."""
        with _guard(self._url):
            try:
                return bytes(self._w3.eth.send_raw_transaction(raw))
            except ChainError:
                raise
            except (requests.ConnectionError, requests.Timeout, ProviderConnectionError):
                raise
            except Exception as exc:
                raise _translate(exc, "transaction") from exc

    def ensure_gas(self, address: str, *, minimum_wei: int = _DEFAULT_GAS_WEI) -> None:
        """Check ``address`` holds ``minimum_wei``; top it up only with ``dev_faucet``."""
        address = _checksum("address", address)
        with _guard(self._url):
            balance = self._w3.eth.get_balance(address)
            if balance >= minimum_wei:
                return
            if not self._dev_faucet:
                raise ChainError(
                    f"{address} holds {balance} wei on {self._url}, less than the "
                    f"{minimum_wei} wei needed for gas; fund it first"
                )
            self._w3.provider.make_request(
                RPCEndpoint("anvil_setBalance"), [address, hex(max(minimum_wei, _FAUCET_WEI))]
            )

    def close(self) -> None:
        """Nothing to release (HTTP sessions are per request)."""


# ---------------------------------------------------------------- helpers


def _checksum(name: str, value: object) -> ChecksumAddress:
    if not isinstance(value, str) or not is_address(value):
        raise ValueError(f"{name} must be an address, got {value!r}")
    return to_checksum_address(value)


def _bytes32(name: str, value: object) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != 32:
        raise ValueError(f"{name} must be 32 bytes, got {value!r}")
    return bytes(value)


def _base_params(w3: Web3, sender: str) -> dict[str, Any]:
    latest = w3.eth.get_block("latest")
    base_fee = int(latest.get("baseFeePerGas", 0) or 0)
    tip = 10**9
    return {
        "from": sender,
        "nonce": w3.eth.get_transaction_count(sender, "pending"),  # type: ignore[arg-type]
        "chainId": int(w3.eth.chain_id),
        "maxPriorityFeePerGas": tip,
        "maxFeePerGas": 2 * base_fee + tip,
        "type": 2,
    }


def _error_table() -> dict[bytes, tuple[str, list[str]]]:
    table: dict[bytes, tuple[str, list[str]]] = {
        function_signature_to_4byte_selector("Error(string)"): ("Error", ["string"]),
        function_signature_to_4byte_selector("Panic(uint256)"): ("Panic", ["uint256"]),
    }
    for name in _CONTRACT_NAMES:
        for item in load_artifact(name)["abi"]:
            if item["type"] == "error":
                types = [i["type"] for i in item["inputs"]]
                selector = function_signature_to_4byte_selector(
                    f"{item['name']}({','.join(types)})"
                )
                table[selector] = (item["name"], types)
    return table


_ERRORS: dict[bytes, tuple[str, list[str]]] = {}


def _revert_data(exc: BaseException) -> bytes | None:
    data = getattr(exc, "data", None)
    if isinstance(data, str) and data.startswith("0x"):
        return bytes.fromhex(data[2:])
    if isinstance(data, dict) and isinstance(data.get("data"), str):
        return bytes.fromhex(str(data["data"]).removeprefix("0x"))
    for arg in exc.args:
        if isinstance(arg, bytes):
            return arg
        if isinstance(arg, str):
            # eth-tester: "execution reverted: b'...'" (a bytes repr)
            match = re.search(r"execution reverted: (b'.*'|b\".*\")$", arg, re.DOTALL)
            if match:
                value = ast.literal_eval(match.group(1))
                return value if isinstance(value, bytes) else None
            match = re.search(r"(0x[0-9a-fA-F]{8,})", arg)
            if match and isinstance(exc, ContractLogicError):
                return bytes.fromhex(match.group(1)[2:])
    return None


def _translate(exc: BaseException, context: str) -> ChainError:
    """Decode a revert into :class:`ContractRevertError`; other failures into ChainError."""
    if isinstance(exc, ChainError):
        return exc
    if not _ERRORS:
        _ERRORS.update(_error_table())
    data = _revert_data(exc)
    if data is not None and len(data) >= 4 and data[:4] in _ERRORS:
        name, types = _ERRORS[data[:4]]
        try:
            arguments = tuple(abi_decode(types, data[4:]))
        except Exception:
            arguments = ("0x" + data[4:].hex(),)
        return ContractRevertError(name, arguments, context)
    if isinstance(exc, ContractCustomError | ContractLogicError) or "revert" in str(exc):
        return ContractRevertError("unknown", (str(exc),), context)
    return ChainError(f"{context} failed: {type(exc).__name__}: {exc}")


# ---------------------------------------------------------------- contracts


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
        run_id, root = _bytes32("run_id", run_id), _bytes32("root", root)
        aggregate_hash = _bytes32("aggregate_hash", aggregate_hash)
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
        run_id = _bytes32("run_id", run_id)
        with _guard(self.chain.description):
            return bytes(self.ledger.functions.rootOf(run_id, round).call())

    def round_posted_events(
        self, *, run_id: bytes | None = None, round: int | None = None
    ) -> list[RoundPosted]:
        """``RoundPosted`` events since deployment, optionally filtered."""
        filters: dict[str, Any] = {}
        if run_id is not None:
            filters["runId"] = _bytes32("run_id", run_id)
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
        proof_list = [_bytes32(f"proof[{i}]", p) for i, p in enumerate(proof)]
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


#: Gas limits of the two frequent calls (measured: postRound ~50k, claim <= ~95k at
#: 1,000 leaves). Giving them skips eth_estimateGas, which re-executes the call many
#: times (~0.4 s a transaction on the embedded chain); a plain call first still
#: surfaces a revert with its reason.
POST_ROUND_GAS = 120_000
CLAIM_GAS = 250_000


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
    except (requests.ConnectionError, requests.Timeout, ProviderConnectionError):
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
            f"{context}: transaction 0x{tx_hash.hex()} not mined within {timeout:.0f} s"
        ) from None
    if receipt["status"] != 1:
        raise TransactionFailedError(f"{context}: transaction 0x{tx_hash.hex()} reverted")
    return receipt
