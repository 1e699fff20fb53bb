"""Run a federation on Flower's Simulation Engine (Ray), in this process.

Each virtual SuperNode gets ``node_config = {"partition-id": i,
"num-partitions": n}`` and loads its partition through the client's
:data:`~fedlearn.client_app.DataProvider`.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from flwr.app import Context
from flwr.serverapp.strategy import Strategy
from flwr.simulation import run_simulation

from fedlearn.attestation.client_mod import simulated_wallet, wallet_secret
from fedlearn.client_app import (
    DataProvider,
    ModelFactory,
    default_model,
    make_client_app,
    node_data,
)
from fedlearn.config import RunConfig
from fedlearn.data import Dataset
from fedlearn.history import History
from fedlearn.server_app import RoundCallback, make_server_app, server_test_set

__all__ = ["backend_config", "flower_environment", "simulate"]


def flower_environment(flwr_home: str | Path) -> dict[str, str]:
    """Environment every Flower process of a run gets: no telemetry, no downloads."""
    return {
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_DEDUP_LOGS": "0",
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
        # Without this, Flower may call `uv sync` and download a CUDA torch.
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_HOME": str(flwr_home),
    }


def backend_config() -> dict[str, object]:
    """Ray settings: one CPU per simulated client, quiet workers, no dashboard."""
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": os.cpu_count() or 2,
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": "error",
        },
    }


def _partition_provider(partitions: Sequence[Dataset]) -> DataProvider:
    def provide(context: Context, _cfg: RunConfig) -> Dataset:
        return partitions[int(context.node_config["partition-id"])]

    return provide


def simulate(
    cfg: RunConfig,
    *,
    run_dir: str | Path,
    strategy: Strategy | None = None,
    partitions: Sequence[Dataset] | None = None,
    test_set: Dataset | None = None,
    model_fn: ModelFactory = default_model,
    resume: bool = False,
    on_round: RoundCallback | None = None,
) -> History:
    """Run ``cfg`` on the Simulation Engine and return the history.

    Parameters
    ----------
    cfg : RunConfig
        The run; ``cfg.federation.clients`` virtual SuperNodes are started.
    run_dir : str or Path
        The run directory (config, history, checkpoints, logs).
    strategy : Strategy, optional
        Overrides ``cfg.federation.strategy``.
    partitions : sequence of Dataset, optional
        One dataset per client; by default each client loads its partition of
        the bundled dataset named in the config.
    test_set : Dataset, optional
        Server-side evaluation data; by default the bundled dataset's held-out split.
    model_fn : ModelFactory
        Builds the model on server and clients.
    resume : bool
        Continue from the run directory's last checkpoint.
    on_round : RoundCallback, optional
        Called after every round.

    Notes
    -----
    Simulated data holders keep their privacy ledgers in ``RUN_DIR/holders/holder-N``.
    """
    run_dir = Path(run_dir).resolve()
    if partitions is not None and len(partitions) != cfg.federation.clients:
        raise ValueError(f"got {len(partitions)} partitions for {cfg.federation.clients} clients")
    if test_set is None and partitions is None:
        test_set = server_test_set(cfg)
    for key, value in flower_environment(run_dir / ".flwr").items():
        if key == "FLWR_HOME":
            os.environ[key] = value  # per run, not the first run's of this process
        else:
            os.environ.setdefault(key, value)
    result: list[History] = []
    server_app = make_server_app(
        cfg=cfg,
        run_dir=run_dir,
        strategy=strategy,
        model_fn=model_fn,
        test_set=test_set,
        resume=resume,
        on_round=on_round,
        result=result,
    )
    client_app = make_client_app(
        data=node_data if partitions is None else _partition_provider(partitions),
        model_fn=model_fn,
        ledger_dir=run_dir / "holders",
        simulated=True,
        wallet=functools.partial(simulated_wallet, wallet_secret(run_dir)),
    )
    flwr_logger = logging.getLogger("flwr")
    previous_level = flwr_logger.level
    flwr_logger.setLevel(logging.WARNING)
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=cfg.federation.clients,
            backend_config=backend_config(),  # type: ignore[arg-type]
        )
    finally:
        flwr_logger.setLevel(previous_level)
    if not result:
        raise RuntimeError(
            f"the simulation ended without a result; see {run_dir / 'logs' / 'server.log'}"
        )
    return result[0]
