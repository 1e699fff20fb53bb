"""The facade for the common case: build a federation, simulate it, get a History.

Examples
--------
>>> from fedlearn import Federation
>>> fed = Federation(clients=5, rounds=3)          # bundled digits, non-IID
>>> history = fed.simulate()                       # doctest: +SKIP
>>> history.plot()                                 # doctest: +SKIP
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from flwr.serverapp.strategy import Strategy
from torch import nn

from fedlearn.client_app import ModelFactory, default_model
from fedlearn.config import RunConfig
from fedlearn.data import Dataset
from fedlearn.history import History
from fedlearn.server_app import RoundCallback
from fedlearn.simulation import simulate

__all__ = ["Federation"]


class Federation:
    """A federation of simulated data holders.

    Parameters
    ----------
    config : RunConfig, optional
        Base configuration; keyword overrides below are applied on top.
    partitions : sequence of Dataset, optional
        One dataset per client. Default: the config's bundled dataset,
        partitioned as configured (Dirichlet non-IID by default).
    test_set : Dataset, optional
        Server-side evaluation data (default: the bundled held-out split).
    model : callable returning ``torch.nn.Module``, optional
        Builds the model (default: the config's model).
    strategy : flwr.serverapp.strategy.Strategy, optional
        Any Flower message-API strategy (default: the config's, FedAvg). The
        object itself is used, so it can be inspected after a run; a stateful
        one (FedAvgM, FedAdam) keeps its server-optimizer state between
        ``simulate`` calls, so give each independent run a fresh one.
    **overrides
        Section-free shortcuts: ``rounds``, ``clients``, ``seed``,
        ``dataset``, ``alpha``, ``partitioner``, ``local_epochs``,
        ``learning_rate``, ``batch_size``, ``secure`` (the secure-aggregation
        mode: ``"ckks"``, ``"secagg+"``, ``"crypten"`` or ``"none"``).
    """

    _SHORTCUTS: ClassVar[dict[str, str]] = {
        "rounds": "federation",
        "clients": "federation",
        "seed": "federation",
        "fraction_train": "federation",
        "fraction_evaluate": "federation",
        "min_train_clients": "federation",
        "strategy_name": "federation",
        "dataset": "data",
        "alpha": "data",
        "partitioner": "data",
        "local_epochs": "train",
        "learning_rate": "train",
        "batch_size": "train",
        "momentum": "train",
        "secure": "secure",
    }

    def __init__(
        self,
        *,
        config: RunConfig | None = None,
        partitions: Sequence[Dataset] | None = None,
        test_set: Dataset | None = None,
        model: Callable[[], nn.Module] | None = None,
        strategy: Strategy | None = None,
        **overrides: Any,
    ) -> None:
        sections: dict[str, dict[str, Any]] = {}
        for key, value in overrides.items():
            if key not in self._SHORTCUTS:
                raise TypeError(f"unknown option {key!r}; known: {sorted(self._SHORTCUTS)}")
            name = {"strategy_name": "strategy", "secure": "mode"}.get(key, key)
            sections.setdefault(self._SHORTCUTS[key], {})[name] = value
        if partitions is not None:
            sections.setdefault("federation", {})["clients"] = len(partitions)
        self.config = (config or RunConfig()).with_overrides(**sections)
        self.partitions = partitions
        self.test_set = test_set
        self.strategy = strategy
        self.model_fn: ModelFactory = default_model if model is None else (lambda _cfg: model())
        if model is not None and self.config.privacy.local_dp:
            from fedlearn.privacy.local_dp import check_dp_compatible

            check_dp_compatible(model())  # refuse BatchNorm & co. now, not in round 1

    def simulate(
        self,
        *,
        rounds: int | None = None,
        run_dir: str | Path | None = None,
        resume: bool = False,
        on_round: RoundCallback | None = None,
    ) -> History:
        """Run the federation on Flower's Simulation Engine.

        Parameters
        ----------
        rounds : int, optional
            Overrides the configured number of rounds.
        run_dir : str or Path, optional
            Run directory (default: a new temporary directory).
        resume : bool
            Continue from ``run_dir``'s last checkpoint.
        on_round : RoundCallback, optional
            Called after every round.
        """
        cfg = self.config
        if rounds is not None:
            cfg = cfg.with_overrides(federation={"rounds": rounds})
        if run_dir is None:
            run_dir = tempfile.mkdtemp(prefix="fedlearn-run-")
        return simulate(
            cfg,
            run_dir=run_dir,
            strategy=self.strategy,
            partitions=self.partitions,
            test_set=self.test_set,
            model_fn=self.model_fn,
            resume=resume,
            on_round=on_round,
        )
