"""Secure aggregation: the server learns only the sum of the clients' updates.

Modes: ``ckks`` (TenSEAL homomorphic encryption, key held by the clients),
``secagg+`` (Flower's SecAgg+ masking protocol on the Message API) and
``crypten`` (additive secret shares summed by non-colluding compute parties).
"""

from fedlearn.privacy.secure.base import (
    BLOBS,
    MODES,
    QUERY_TYPE,
    RECORD,
    AggregationAbortedError,
    ClientProtocol,
    SecureMode,
    SecureSum,
    ServerProtocol,
)

__all__ = [
    "BLOBS",
    "MODES",
    "QUERY_TYPE",
    "RECORD",
    "AggregationAbortedError",
    "ClientProtocol",
    "SecureMode",
    "SecureSum",
    "ServerProtocol",
]
