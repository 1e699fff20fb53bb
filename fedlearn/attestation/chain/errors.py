"""What can go wrong on a chain, and how a failure becomes one of these errors.

Transport failures (refused connection, timeout) become
:class:`ChainUnavailableError` (:func:`_guard`): retry later, nothing was
changed. A revert is decoded from its data into the contracts' custom error
name and arguments (:class:`ContractRevertError`, :func:`_translate`), using
the errors declared in the committed ABIs plus Solidity's ``Error(string)``
and ``Panic(uint256)``.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
from eth_abi.abi import decode as abi_decode
from eth_utils.abi import function_signature_to_4byte_selector
from eth_utils.hexadecimal import decode_hex, encode_hex
from web3.exceptions import ContractCustomError, ContractLogicError, ProviderConnectionError

from fedlearn.attestation.compile import CONTRACTS, load_artifact

__all__ = [
    "ChainError",
    "ChainUnavailableError",
    "ContractRevertError",
    "TransactionFailedError",
]


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
    return encode_hex(value) if isinstance(value, bytes) else repr(value)


#: Transport failures: the node did not answer (as opposed to answering with an error).
_TRANSPORT_ERRORS = (requests.ConnectionError, requests.Timeout, ProviderConnectionError)


@contextmanager
def _guard(description: str) -> Iterator[None]:
    """Translate transport failures into :class:`ChainUnavailableError`."""
    try:
        yield
    except _TRANSPORT_ERRORS as exc:
        raise ChainUnavailableError(
            f"cannot reach the chain at {description}: {type(exc).__name__}. "
            "Start the node (e.g. `anvil --host 127.0.0.1 --port PORT`) or pass the right URL; "
            "nothing was lost, pending attestations stay in the outbox"
        ) from exc


@functools.cache
def _error_table() -> dict[bytes, tuple[str, list[str]]]:
    """4-byte selector → (error name, argument types), for every error our contracts declare."""
    table: dict[bytes, tuple[str, list[str]]] = {
        function_signature_to_4byte_selector("Error(string)"): ("Error", ["string"]),
        function_signature_to_4byte_selector("Panic(uint256)"): ("Panic", ["uint256"]),
    }
    for name in CONTRACTS:
        for item in load_artifact(name)["abi"]:
            if item["type"] == "error":
                types = [i["type"] for i in item["inputs"]]
                selector = function_signature_to_4byte_selector(
                    f"{item['name']}({','.join(types)})"
                )
                table[selector] = (item["name"], types)
    return table


def _revert_data(exc: BaseException) -> bytes | None:
    data = getattr(exc, "data", None)
    if isinstance(data, str) and data.startswith("0x"):
        return decode_hex(data)
    if isinstance(data, dict) and isinstance(data.get("data"), str):
        return decode_hex(str(data["data"]))
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
                return decode_hex(match.group(1))
    return None


def _translate(exc: BaseException, context: str) -> ChainError:
    """Decode a revert into :class:`ContractRevertError`; other failures into ChainError."""
    if isinstance(exc, ChainError):
        return exc
    errors = _error_table()
    data = _revert_data(exc)
    if data is not None and len(data) >= 4 and data[:4] in errors:
        name, types = errors[data[:4]]
        try:
            arguments = tuple(abi_decode(types, data[4:]))
        except Exception:
            arguments = (encode_hex(data[4:]),)
        return ContractRevertError(name, arguments, context)
    if isinstance(exc, ContractCustomError | ContractLogicError) or "revert" in str(exc):
        return ContractRevertError("unknown", (str(exc),), context)
    return ChainError(f"{context} failed: {type(exc).__name__}: {exc}")
