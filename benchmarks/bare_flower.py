"""A minimal FedAvg federation written directly against Flower's Message API.

This is the baseline the framework's overhead is measured against: the same
model (:func:`fedlearn.models.build_model`), the same data
(:func:`fedlearn.data.partition_bundled` plus the same local validation split),
the same local training and evaluation loops (:mod:`fedlearn.training`) and the
same Simulation Engine settings, but none of fedlearn's machinery (config
transport and validation, reply validation, round records, checkpoints, the
run directory).

The ClientApp lives at module level so that Ray pickles it by reference: each
simulated client process then imports this module once and keeps its
partition cache (:func:`local_data`) between messages, as a typical Flower app
keeps a ``FederatedDataset`` in a global.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation
from torch import nn

from fedlearn.config import RunConfig
from fedlearn.data import Dataset, partition_bundled, schema_for, split_validation
from fedlearn.models import build_model
from fedlearn.simulation import backend_config
from fedlearn.training import evaluate, train
from fedlearn.wire import EXAMPLES_KEY, TRAIN_LOSS_KEY

__all__ = ["BareRun", "client_app", "local_data", "run_bare_fedavg"]

#: The bare baseline always uses the default run config (digits, MLP, 2 local epochs).
_CFG = RunConfig()


def _model() -> nn.Module:
    schema = schema_for(_CFG.data)
    return build_model(_CFG.model, num_features=schema.num_features, num_classes=schema.num_classes)


@functools.cache
def local_data(partition_id: int, num_partitions: int) -> tuple[Dataset, Dataset]:
    """Return a client's (train, validation) split, computed once per process.

    Parameters
    ----------
    partition_id : int
        The simulated node's partition.
    num_partitions : int
        Number of simulated nodes.

    Returns
    -------
    tuple of Dataset
        Exactly the sets a fedlearn client of the default config trains and
        evaluates on.
    """
    fed = _CFG.federation
    parts, _, _ = partition_bundled(_CFG.data, clients=num_partitions, seed=fed.seed)
    return split_validation(
        parts[partition_id], fraction=_CFG.data.validation_fraction, seed=fed.seed
    )


def _node(context: Context) -> tuple[int, Dataset, Dataset]:
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    train_set, val_set = local_data(partition_id, num_partitions)
    return partition_id, train_set, val_set


#: The bare ClientApp.
client_app = ClientApp()


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)  # as fedlearn's client: simulated clients share the cores
    partition_id, train_set, _ = _node(context)
    model = _model()
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    server_round = int(cast(int, msg.content.config_records["config"]["server-round"]))
    seed = int(
        np.random.SeedSequence([_CFG.federation.seed, server_round, partition_id]).generate_state(
            1
        )[0]
    )
    loss = train(model, train_set, _CFG.train, seed=seed)
    metrics = MetricRecord({EXAMPLES_KEY: len(train_set), TRAIN_LOSS_KEY: loss})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@client_app.evaluate()
def _evaluate(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    _, train_set, val_set = _node(context)
    model = _model()
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    result = evaluate(model, val_set if len(val_set) else train_set)
    metrics = MetricRecord(
        {EXAMPLES_KEY: result.num_examples, "accuracy": result.accuracy, "loss": result.loss}
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


@dataclass
class BareRun:
    """Timestamps of one bare-Flower run.

    Attributes
    ----------
    round_ends : list of float
        ``time.perf_counter()`` at the end of each ``evaluate_fn`` call: index
        0 is the initial evaluation, index ``r`` the end of round ``r``.
    accuracies : list of float
        Server-side test accuracy after each round (index 0: initial model).
    wall_seconds : float
        The whole ``run_simulation`` call, Ray start-up and shutdown included.
    """

    round_ends: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def round_seconds(self) -> list[float]:
        """Duration of rounds 1..N (differences of consecutive round ends)."""
        ends = self.round_ends
        return [b - a for a, b in itertools.pairwise(ends)]


def run_bare_fedavg(*, clients: int, rounds: int) -> BareRun:
    """Run the bare FedAvg federation on the Simulation Engine.

    Parameters
    ----------
    clients : int
        Number of virtual SuperNodes (all train and evaluate every round).
    rounds : int
        Number of rounds.

    Returns
    -------
    BareRun
        Per-round timestamps and accuracies.
    """
    fed = _CFG.federation
    _, test_set, _ = partition_bundled(_CFG.data, clients=clients, seed=fed.seed)
    run = BareRun()
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(fed.seed)
            initial = ArrayRecord(_model().state_dict())
        eval_model = _model()

        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            eval_model.load_state_dict(arrays.to_torch_state_dict())
            result = evaluate(eval_model, test_set)
            run.accuracies.append(result.accuracy)
            run.round_ends.append(time.perf_counter())
            return MetricRecord({"accuracy": result.accuracy, "loss": result.loss})

        strategy = FedAvg(
            fraction_train=1.0,
            fraction_evaluate=1.0,
            min_train_nodes=1,
            min_evaluate_nodes=1,
            min_available_nodes=clients,
        )
        strategy.start(
            grid,
            initial,
            num_rounds=rounds,
            train_config=ConfigRecord(),
            evaluate_config=ConfigRecord(),
            evaluate_fn=evaluate_fn,
        )

    flwr_logger = logging.getLogger("flwr")
    previous_level = flwr_logger.level
    flwr_logger.setLevel(logging.WARNING)  # as fedlearn.simulation.simulate does
    started = time.perf_counter()
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=clients,
            backend_config=backend_config(),  # type: ignore[arg-type]
        )
    finally:
        flwr_logger.setLevel(previous_level)
    run.wall_seconds = time.perf_counter() - started
    if len(run.round_ends) != rounds + 1:
        raise RuntimeError(
            f"the bare Flower run completed {len(run.round_ends) - 1} of {rounds} rounds"
        )
    return run
