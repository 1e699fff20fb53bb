"""The chain protocol ``Contracts`` relies on, and what both chains share.

:class:`Chain` is a small protocol (a Web3 instance, a description for error
messages, durable submission of signed transactions, gas for an address);
:class:`~fedlearn.attestation.chain.EmbeddedChain` and
:class:`~fedlearn.attestation.chain.RpcChain` implement it. Transactions are
EIP-1559 (type 2) with parameters from :func:`_base_params`, signed locally.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from eth_typing import ChecksumAddress
from eth_utils.address import is_address, to_checksum_address
from web3 import Web3

__all__ = ["Chain"]

_DEFAULT_GAS_WEI = 10**17  # 0.1 ETH: thousands of attestation transactions
_FAUCET_WEI = 10**18


@runtime_checkable
class Chain(Protocol):
    """What :class:`~fedlearn.attestation.chain.Contracts` needs from a chain."""

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


def _checksum(name: str, value: object) -> ChecksumAddress:
    if not isinstance(value, str) or not is_address(value):
        raise ValueError(f"{name} must be an address, got {value!r}")
    return to_checksum_address(value)


def _base_params(w3: Web3, sender: str) -> dict[str, Any]:
    """Nonce, chain id and EIP-1559 fees of ``sender``'s next transaction."""
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
