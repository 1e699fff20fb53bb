"""Built-in strategies by name, for config files and the CLI."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Strategy,
)

__all__ = ["STRATEGIES", "build_strategy"]

STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "fedavg": FedAvg,
    "fedavgm": lambda **kw: FedAvgM(server_momentum=0.9, **kw),
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
    "fedprox": lambda **kw: FedProx(proximal_mu=0.1, **kw),
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
}


def build_strategy(
    name: str,
    *,
    min_nodes: int,
    fraction_train: float,
    fraction_evaluate: float | None = None,
    min_train_clients: int = 1,
    **kwargs: Any,
) -> Strategy:
    """Build a Flower strategy by name.

    Parameters
    ----------
    name : str
        One of :data:`STRATEGIES`.
    min_nodes : int
        Expected number of clients (the run waits for them before round 1).
    fraction_train : float
        Fraction of connected nodes sampled for training.
    fraction_evaluate : float, optional
        Fraction sampled for federated evaluation (default: ``fraction_train``).
    min_train_clients : int, default 1
        Connected nodes a round needs (the round rule); a round waits for them.
    **kwargs
        Passed to the strategy's constructor.
    """
    try:
        factory = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose from {sorted(STRATEGIES)}") from None
    return factory(
        fraction_train=fraction_train,
        fraction_evaluate=fraction_train if fraction_evaluate is None else fraction_evaluate,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=min_train_clients,
        **kwargs,
    )
