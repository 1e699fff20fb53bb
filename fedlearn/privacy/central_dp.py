"""User-level DP on the aggregate: central (server or client clipping) and distributed.

The mechanism is the Gaussian mechanism on the *sum* of clipped updates
(DP-FedAvg, McMahan et al. 2018): each sampled client's update
``Δ_i = w_i − w`` is clipped to L2 norm ``C``, so adding or removing one
client moves the sum by at most ``C``; noise ``N(0, σ²C²)`` is added to the sum,
which is divided by the number of clients *sampled* (a public, fixed
denominator), never by a data-dependent count or by example weights.

Modes
    ``"server"``: clients send raw updates; the server clips and adds the noise.
    Protects the published model, not updates from the server.
    ``"client"``: clients clip (the server checks the norm and drops a
    violator), the server adds the noise.
    ``"distributed"``: clients clip and each adds ``N(0, σ²C²/(t−f))`` where
    ``t`` is the round's minimum number of valid replies and ``f`` the number
    of clients that may skip their share (``dishonest_clients``, default 1):
    any ``≥ t`` survivors of whom at most ``f`` cheat still carry at least the
    calibrated noise, and no party ever sees an un-noised update (for use under
    secure aggregation; with plaintext aggregation the server sees each noised
    update).

Accounting: Flower samples a fixed number ``m`` of the ``N`` connected clients
without replacement and the sum is divided by ``m``, which is public only
under replace-one neighbouring (sensitivity ``2C``); so every round, ``m = N``
included, is a ``SampledWithoutReplacementDpEvent`` in the server's
:class:`PrivacyLedger`, which the server writes to disk before the noised
model leaves it. ``N`` is the number of nodes connected when the round
sampled (never the configured federation size: with 3 of 10 connected every
round takes all 3, q = 1). In ``"distributed"`` mode the party the noise
protects against is the server, and the server picks the sample, so no
amplification by sampling is claimed (``N = m``).

Known limitation: a client's distributed noise share is drawn afresh for every
request, so a server that asks for the same round twice could average two
shares; under secure aggregation the server sees only sums, and clients
protect at most one update per round (``secure_aggregation_mod``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp.typing import ClientAppCallable
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from numpy.typing import NDArray

from fedlearn.privacy.accounting import AccountantName
from fedlearn.privacy.clipping import clip_by_global_norm, global_norm
from fedlearn.privacy.ledger import LedgerEntry, PrivacyLedger
from fedlearn.privacy.noise import add_gaussian_noise, central_noise_std, distributed_noise_std
from fedlearn.strategies.wrapper import StrategyWrapper
from fedlearn.wire import DP_CLIP_KEY, DP_NOISE_KEY, EXAMPLES_KEY, SECURE_CONTRIBUTORS_KEY

__all__ = ["CentralDP", "CentralDPMode", "user_level_dp_mod"]

log = logging.getLogger(__name__)

CentralDPMode = Literal["server", "client", "distributed"]


def _arrays(record: ArrayRecord) -> dict[str, NDArray[Any]]:
    return {k: a.numpy() for k, a in record.items()}


def _record(arrays: dict[str, NDArray[Any]]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


class CentralDP(StrategyWrapper):
    """Wrap a linear strategy so the aggregate is user-level differentially private.

    Parameters
    ----------
    strategy : Strategy
        Receives one noised aggregate per round as if from a single client;
        server optimizers (FedAvgM, FedAdam, ...) then act on it.
    mode : {"server", "client", "distributed"}
        Who clips and who adds the noise (see the module docstring).
    noise_multiplier : float
        σ: the noise std on the sum is ``σ·C``.
    clipping_norm : float
        C: the L2 bound of each client's update.
    min_replies : int
        t: the fewest valid replies a round is applied with; distributed noise
        is calibrated so that t survivors carry the full noise.
    dishonest_clients : int, default 1
        f (distributed mode): how many of the t survivors may skip their noise
        share; shares are sized for ``t − f`` honest ones (needs ``t − f ≥ 1``).
    delta : float
        δ of the server's ledger.
    accountant : {"rdp", "pld"}
        Accountant of the ledger (fixed-size sampling needs ``"rdp"``).
    ledger_path : Path, optional
        Where the server's ledger is saved after every release, before the
        noised model is sent anywhere (and loaded from, if it exists).
    rng : numpy.random.Generator, optional
        Only for reproducible tests; default noise comes from the OS's CSPRNG.
    behind_secure_aggregation : bool, default False
        Set when :class:`~fedlearn.privacy.secure.SecureAggregation` wraps this
        strategy: its single aggregate reply stands for the sum of several
        clients' clipped updates (the server cannot check their norms).

    Examples
    --------
    >>> from flwr.serverapp.strategy import FedAvg
    >>> strategy = CentralDP(FedAvg(), mode="server", noise_multiplier=1.0,
    ...                      clipping_norm=0.5, min_replies=5, delta=1e-5)
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        mode: CentralDPMode,
        noise_multiplier: float,
        clipping_norm: float,
        min_replies: int,
        delta: float,
        dishonest_clients: int = 1,
        accountant: AccountantName = "rdp",
        ledger_path: Path | None = None,
        rng: np.random.Generator | None = None,
        behind_secure_aggregation: bool = False,
    ) -> None:
        if mode not in ("server", "client", "distributed"):
            raise ValueError(f"mode must be 'server', 'client' or 'distributed', got {mode!r}")
        for name, value in (
            ("noise_multiplier", noise_multiplier),
            ("clipping_norm", clipping_norm),
        ):
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number, got {value}")
        if behind_secure_aggregation and mode == "server":
            raise ValueError("server-side clipping needs every update, not a secure sum")
        if min_replies < 1:
            raise ValueError(f"min_replies must be >= 1, got {min_replies}")
        if dishonest_clients < 0 or (mode == "distributed" and dishonest_clients >= min_replies):
            raise ValueError(
                f"dishonest_clients must be in [0, min_replies) = [0, {min_replies}) so that "
                f"at least one honest noise share remains, got {dishonest_clients}"
            )
        self.strategy = strategy
        self.mode = mode
        self.noise_multiplier = noise_multiplier
        self.clipping_norm = clipping_norm
        self.min_replies = min_replies
        self.dishonest_clients = dishonest_clients
        self.ledger_path = ledger_path
        self.behind_secure_aggregation = behind_secure_aggregation
        if ledger_path is not None and ledger_path.exists():
            self.ledger = PrivacyLedger.load(ledger_path)
        else:
            self.ledger = PrivacyLedger(delta=delta, accountant=accountant, holder="server")
        self.last_release: LedgerEntry | None = None
        self._rng = rng
        self._global: dict[str, NDArray[Any]] = {}
        self._sampled = 0
        self._population = 0

    def round_record(self) -> dict[str, Any]:
        """The server's ledger entry for this round's release (empty if none)."""
        entry = self.last_release
        if entry is None:
            return {}
        return {
            "central_privacy": {
                "epsilon": entry.cumulative_epsilon,
                "round-epsilon": entry.epsilon,
                "delta": entry.delta,
                "noise-multiplier": entry.noise_multiplier,
                "clipping-norm": entry.clipping_norm,
                "sample-rate": entry.sample_rate,
                "dishonest-clients": self.dishonest_clients if self.mode == "distributed" else 0,
            }
        }

    def summary(self) -> None:
        """Log the wrapped strategy's summary and the mechanism."""
        self.strategy.summary()
        log.debug(
            "CentralDP(%s): σ=%g, C=%g, noise shares for %d honest survivors",
            self.mode,
            self.noise_multiplier,
            self.clipping_norm,
            self.min_replies - self.dishonest_clients,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample clients; in client/distributed modes tell them to clip (and noise)."""
        if self.mode != "server":
            config[DP_CLIP_KEY] = self.clipping_norm
            config[DP_NOISE_KEY] = (
                distributed_noise_std(
                    noise_multiplier=self.noise_multiplier,
                    clipping_norm=self.clipping_norm,
                    num_clients=self.min_replies - self.dishonest_clients,
                )
                if self.mode == "distributed"
                else 0.0
            )
        self._global = _arrays(arrays)
        self.last_release = None
        # Counted before Flower samples: a node that joins in between can only make
        # the true population larger than the one booked (ε over-, never understated).
        connected = len(list(grid.get_node_ids()))
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._sampled = len(messages)
        self._population = (
            self._sampled if self.mode == "distributed" else max(connected, self._sampled)
        )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Sum the clipped updates, add the noise, divide by the number sampled."""
        replies = [m for m in replies if not m.has_error()]
        keys = list(self._global)
        total = {k: np.zeros_like(v, dtype=np.float64) for k, v in self._global.items()}
        used = 0
        for msg in replies:
            local = _arrays(next(iter(msg.content.array_records.values())))
            update = [local[k].astype(np.float64) - self._global[k] for k in keys]
            # Only SecureAggregation's own aggregate reply may stand for several
            # clients; a client's reply claiming so is treated as the one it is.
            summed = _secure_contributors(msg) if self.behind_secure_aggregation else None
            if summed is not None:
                # SecureAggregation's reply: the mean of `summed` updates the clients
                # clipped (and noised) themselves; the server cannot check their norms.
                for k, u in zip(keys, update, strict=True):
                    total[k] += u * summed
                used += summed
                continue
            if self.mode == "server":
                update, _ = clip_by_global_norm(update, self.clipping_norm)
            elif self.mode == "client" and global_norm(update) > self.clipping_norm * (1 + 1e-5):
                log.warning(
                    "round %d: node %d sent an update of norm %.4g > C=%g; dropped",
                    server_round,
                    msg.metadata.src_node_id,
                    global_norm(update),
                    self.clipping_norm,
                )
                continue
            for k, u in zip(keys, update, strict=True):
                total[k] += u
            used += 1
        if used == 0 or self._sampled == 0:
            return None, None
        if self.mode != "distributed":
            std = central_noise_std(
                noise_multiplier=self.noise_multiplier, clipping_norm=self.clipping_norm
            )
            noised_sum = add_gaussian_noise([total[k] for k in keys], std=std, rng=self._rng)
            total = dict(zip(keys, noised_sum, strict=True))
        self.last_release = self._account(server_round)
        if self.ledger_path is not None:
            self.ledger.save(self.ledger_path)
        noised = {
            k: (self._global[k] + total[k] / self._sampled).astype(self._global[k].dtype)
            for k in keys
        }
        first = replies[0]
        single = Message(  # type: ignore[call-overload]  # metadata-only form exists at run time
            content=RecordDict(
                {"arrays": _record(noised), "metrics": MetricRecord({EXAMPLES_KEY: 1})}
            ),
            metadata=first.metadata,
        )
        arrays, _ = self.strategy.aggregate_train(server_round, [single])
        metrics = MetricRecord(
            {"dp-epsilon": self.last_release.cumulative_epsilon, "dp-clients": used}
        )
        return arrays, metrics

    def _account(self, server_round: int) -> LedgerEntry:
        # Dividing by the number sampled is public only under replace-one
        # neighbouring (sensitivity 2C), so every round is accounted as
        # fixed-size sampling, full participation (m = N) included, over the
        # population actually sampled from (see the module docstring).
        return self.ledger.record(
            round=server_round,
            mechanism="sampled_gaussian_fixed",
            noise_multiplier=self.noise_multiplier,
            clipping_norm=self.clipping_norm,
            population_size=self._population,
            sample_size=self._sampled,
        )


def _secure_contributors(msg: Message) -> int | None:
    """How many clients a secure aggregate stands for (``None`` for a plain reply)."""
    for metrics in msg.content.metric_records.values():
        if SECURE_CONTRIBUTORS_KEY in metrics:
            return int(cast(int, metrics[SECURE_CONTRIBUTORS_KEY]))
    return None


def clip_and_noise(
    update: list[NDArray[Any]],
    *,
    clipping_norm: float,
    noise_std: float,
    rng: np.random.Generator | None = None,
) -> list[NDArray[np.float64]]:
    """Clip a client's update to ``clipping_norm`` and add its share of the noise."""
    clipped, _ = clip_by_global_norm([u.astype(np.float64) for u in update], clipping_norm)
    return add_gaussian_noise(clipped, std=noise_std, rng=rng) if noise_std > 0 else clipped


def user_level_dp_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Client mod: clip the trained update (and add the distributed noise share).

    Acts only when the server's config carries ``dp-clipping-norm``; the
    un-noised update never leaves this function.
    """
    reply = call_next(msg, context)
    config = msg.content.config_records.get("config")
    if reply.has_error() or config is None or DP_CLIP_KEY not in config:
        return reply
    sent = _arrays(msg.content.array_records["arrays"])
    trained = _arrays(reply.content.array_records["arrays"])
    keys = list(sent)
    protected = clip_and_noise(
        [trained[k].astype(np.float64) - sent[k] for k in keys],
        clipping_norm=float(cast(float, config[DP_CLIP_KEY])),
        noise_std=float(cast(float, config.get(DP_NOISE_KEY, 0.0))),
    )
    reply.content["arrays"] = _record(
        {k: (sent[k] + p).astype(sent[k].dtype) for k, p in zip(keys, protected, strict=True)}
    )
    return reply
