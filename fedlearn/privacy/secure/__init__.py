"""Secure aggregation: the server learns only the sum of the clients' updates.

Modes: ``ckks`` (TenSEAL homomorphic encryption, key held by the clients),
``secagg+`` (SecAgg+ masking on Flower's Message API) and ``crypten``
(additive secret shares summed by non-colluding compute parties). Names are
imported on first use (PEP 562), so a compute-party process loads only what
it runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedlearn.privacy.secure.aggregation import SecureAggregation
    from fedlearn.privacy.secure.base import (
        AggregationAbortedError,
        ClientProtocol,
        SecureSum,
        ServerProtocol,
    )
    from fedlearn.privacy.secure.ckks import CkksClient, CkksParameters, CkksServer
    from fedlearn.privacy.secure.client_mod import handle_secure_query, secure_aggregation_mod
    from fedlearn.privacy.secure.crypten_mode import CryptenClient, CryptenServer, PartyPool
    from fedlearn.privacy.secure.secaggplus import SecAggPlusClient, SecAggPlusServer

__all__ = [
    "AggregationAbortedError",
    "CkksClient",
    "CkksParameters",
    "CkksServer",
    "ClientProtocol",
    "CryptenClient",
    "CryptenServer",
    "PartyPool",
    "SecAggPlusClient",
    "SecAggPlusServer",
    "SecureAggregation",
    "SecureSum",
    "ServerProtocol",
    "handle_secure_query",
    "secure_aggregation_mod",
]

_MODULES = {
    "aggregation": ("SecureAggregation",),
    "base": (
        "AggregationAbortedError",
        "ClientProtocol",
        "SecureSum",
        "ServerProtocol",
    ),
    "ckks": ("CkksClient", "CkksParameters", "CkksServer"),
    "client_mod": ("handle_secure_query", "secure_aggregation_mod"),
    "crypten_mode": ("CryptenClient", "CryptenServer"),
    "crypten_pool": ("PartyPool",),
    "secaggplus": ("SecAggPlusClient", "SecAggPlusServer"),
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"fedlearn.privacy.secure.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'fedlearn.privacy.secure' has no attribute {name!r}")
