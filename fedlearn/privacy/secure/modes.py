"""Build a mode's server and client sides from a run config.

Imports stay lazy: each mode pulls in its heavy dependency only when chosen.
"""

from __future__ import annotations

import math

from fedlearn.config import ConfigError, RunConfig
from fedlearn.privacy.secure.base import ClientProtocol, ServerProtocol

__all__ = ["client_protocol", "secagg_neighbourhood", "server_protocol"]


def secagg_neighbourhood(cfg: RunConfig) -> tuple[int, int]:
    """SecAgg+ ``(num_shares, reconstruction_threshold)`` for a run.

    ``secure.secagg-num-shares = 0`` takes the largest odd number not above
    the clients a round samples (every client shares with every other: the
    most dropouts tolerated); a threshold of 0 takes a strict majority.
    """
    secure, fed = cfg.secure, cfg.federation
    sampled = max(1, math.ceil(fed.clients * fed.fraction_train))
    k = secure.secagg_num_shares or (sampled if sampled % 2 else sampled - 1)
    if k < 3 or k > sampled:
        raise ConfigError(
            f"secure.secagg-num-shares: SecAgg+ needs an odd neighbourhood of 3 to {sampled} "
            f"clients (the clients a round samples), got {k}"
        )
    t = secure.secagg_reconstruction_threshold or k // 2 + 1
    if not k / 2 < t <= k:
        raise ConfigError(
            f"secure.secagg-reconstruction-threshold must be in ({k / 2:g}, {k}], got {t}"
        )
    return k, t


def server_protocol(cfg: RunConfig) -> ServerProtocol:
    """The server side of ``cfg.secure.mode`` (raise for ``"none"``)."""
    mode = cfg.secure.mode
    if mode == "ckks":
        from fedlearn.privacy.secure.ckks import CkksServer

        return CkksServer(min_contributors=max(2, cfg.federation.min_train_clients))
    if mode == "secagg+":
        from fedlearn.privacy.secure.secaggplus import SecAggPlusServer

        num_shares, threshold = secagg_neighbourhood(cfg)
        return SecAggPlusServer(
            num_shares=num_shares,
            reconstruction_threshold=threshold,
            clipping_range=cfg.secure.secagg_clipping_range,
            quantization_range=cfg.secure.secagg_quantization_range,
            min_survivors=max(2, cfg.federation.min_train_clients),
        )
    if mode == "crypten":
        from fedlearn.privacy.secure.crypten_mode import CryptenServer

        return CryptenServer(parties=cfg.secure.crypten_parties)
    raise ValueError(f"no server protocol for secure mode {mode!r}")


def client_protocol(mode: str) -> ClientProtocol:
    """The client side of ``mode`` (its state lives in the node's context, not here)."""
    if mode == "ckks":
        from fedlearn.privacy.secure.ckks import CkksClient

        return CkksClient()
    if mode == "secagg+":
        from fedlearn.privacy.secure.secaggplus import SecAggPlusClient

        return SecAggPlusClient()
    if mode == "crypten":
        from fedlearn.privacy.secure.crypten_mode import CryptenClient

        return CryptenClient()
    raise ValueError(f"unknown secure-aggregation mode {mode!r}")
