"""Any Ethereum JSON-RPC node (anvil in the tests, hardhat, a testnet node).

An unreachable endpoint raises
:class:`~fedlearn.attestation.chain.ChainUnavailableError` naming the URL.
"""

from __future__ import annotations

import re

from web3 import Web3
from web3.types import RPCEndpoint

from fedlearn.attestation.chain.base import _DEFAULT_GAS_WEI, _FAUCET_WEI, _checksum
from fedlearn.attestation.chain.errors import (
    _TRANSPORT_ERRORS,
    ChainError,
    _guard,
    _translate,
)

__all__ = ["RpcChain"]


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
            except _TRANSPORT_ERRORS:
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
