"""Build a mode's server and client sides from a run config.

Imports stay lazy: each mode pulls in its heavy dependency only when chosen.
"""

from __future__ import annotations

import math

from fedlearn.config import ConfigError, RunConfig
from fedlearn.privacy.secure.base import ClientProtocol, ServerProtocol

__all__ = ["client_protocol", "secagg_neighbourhood", "server_protocol", "value_scale"]

#: Largest |value| each mode protects (CKKS: CkksParameters().max_abs_value; CrypTen:
#: far below its 2^36 fixed-point limit, a bound on what an update can be).
_CKKS_LIMIT = 1.0
_CRYPTEN_LIMIT = 2.0**20


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


def value_scale(cfg: RunConfig) -> float:
    """The public factor clients divide their vector by to stay in the mode's range.

    Under user-level DP a coordinate of a client's vector is its clipped update
    (at most ``C``) plus, distributed, its noise share: ``C + 6·σC/√(t−f)`` bounds
    it except with probability ~2e-9 per coordinate. Otherwise weighted
    updates are used as they are (1).
    """
    privacy = cfg.privacy
    if cfg.secure.mode == "none" or privacy.central_dp not in ("client", "distributed"):
        return 1.0
    from fedlearn.privacy.noise import distributed_noise_std

    bound = privacy.central_clipping_norm
    if privacy.central_dp == "distributed":
        bound += 6 * distributed_noise_std(
            noise_multiplier=privacy.central_noise_multiplier,
            clipping_norm=privacy.central_clipping_norm,
            num_clients=cfg.federation.min_train_clients - privacy.distributed_dishonest_clients,
        )
    limit = {
        "ckks": _CKKS_LIMIT,
        "secagg+": cfg.secure.secagg_clipping_range,
        "crypten": _CRYPTEN_LIMIT,
    }[cfg.secure.mode]
    return max(1.0, bound / limit)


def server_protocol(cfg: RunConfig) -> ServerProtocol:
    """The server side of ``cfg.secure.mode`` (raise for ``"none"``)."""
    mode = cfg.secure.mode
    if mode == "ckks":
        from fedlearn.privacy.secure.ckks import CkksParameters, CkksServer

        sampled = math.ceil(cfg.federation.clients * cfg.federation.fraction_train)
        if sampled > CkksParameters().max_clients:
            raise ConfigError(
                f"secure.mode = 'ckks' sums at most {CkksParameters().max_clients} clients per "
                f"round without overflow; this run samples {sampled} (lower "
                "federation.fraction-train, or use secagg+ or crypten)"
            )
        registered = dict(
            (name.strip(), identity.strip())
            for name, _, identity in (e.partition("=") for e in cfg.secure.ckks_holders)
        )
        return CkksServer(
            min_contributors=max(2, cfg.federation.min_train_clients),
            registered=registered or None,
        )
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

        # In-MPC scores are functions of un-noised clipped updates under user-level
        # DP, which the ledger does not account: then the run scores by examples.
        # With endpoints the server attaches to parties run by their own operators
        # (`fedlearn party`); without, it starts its own, which CryptenServer allows
        # in simulation only (its setup refuses them on a deployment's grid).
        return CryptenServer(
            parties=cfg.secure.crypten_parties,
            score=cfg.privacy.central_dp == "none",
            endpoints=cfg.secure.crypten_party_endpoints,
            public_keys=[bytes.fromhex(k) for k in cfg.secure.crypten_party_keys],
        )
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
