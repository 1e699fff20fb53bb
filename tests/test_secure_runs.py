"""Whole federations with secure aggregation, server loop and ClientApps in this process.

The server runs fedlearn's real round loop (``run_federation``: Flower's
``Strategy.start`` under our wrappers) and every node is fedlearn's real
ClientApp (training, DP mods, the secure mod); only the transport is the
in-process :class:`~fedlearn.loopback.LoopbackGrid`. Training is
deterministic, so a secure run must end at the plaintext run's model within
the mode's stated error: the test of "the aggregate equals the plaintext
aggregate" through every layer. The engines are covered by the e2e tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message

from fedlearn.checkpoint import load_latest
from fedlearn.client_app import make_client_app
from fedlearn.config import ConfigError, RunConfig
from fedlearn.history import History
from fedlearn.loopback import DropRule, LoopbackGrid
from fedlearn.privacy.secure.aggregation import SecureAggregation
from fedlearn.server_app import run_federation, server_test_set
from fedlearn.wire import SECURE_BLOBS, SECURE_QUERY_TYPE
from tests.flower_messages import serverapp_identity

CLIENTS = 5
BASE = {
    "federation": {"rounds": 2, "clients": CLIENTS, "seed": 3, "min-train-clients": 3},
    "train": {"local-epochs": 1},
}
#: Largest |Δθ| between the secure and the plaintext run's final model after two rounds:
#: each mode's aggregation error (CKKS adds decryption noise against key recovery),
#: divided by the total weight (~1 here), then carried through round 2's training.
TOLERANCE = {"ckks": 2e-3, "secagg+": 1e-3, "crypten": 1e-3}


def _run(
    tmp_path: Path, mode: str, *, drop: DropRule | None = None, **sections: dict[str, object]
) -> tuple[History, dict[str, np.ndarray], LoopbackGrid]:
    raw: dict[str, dict[str, object]] = {k: dict(v) for k, v in BASE.items()}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    raw.setdefault("secure", {})["mode"] = mode
    cfg = RunConfig.from_dict(raw)
    app = make_client_app(simulated=True, ledger_dir=tmp_path / "ledgers")
    grid = LoopbackGrid({node: app for node in range(101, 101 + CLIENTS)}, drop=drop)
    run_dir = tmp_path / f"run-{mode}"
    with serverapp_identity():
        history = run_federation(grid, cfg=cfg, run_dir=run_dir, test_set=server_test_set(cfg))
    checkpoint = load_latest(run_dir / "checkpoints")
    assert checkpoint is not None
    return history, checkpoint.arrays, grid


@pytest.fixture(scope="module")
def plaintext(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    _, model, _ = _run(tmp_path_factory.mktemp("plain"), "none")
    return model


def _max_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


@pytest.mark.parametrize("mode", ["ckks", "secagg+", "crypten"])
def test_secure_run_ends_at_the_plaintext_model(
    tmp_path: Path, plaintext: dict[str, np.ndarray], mode: str
) -> None:
    history, model, grid = _run(tmp_path, mode)
    assert all(r.applied and r.secure["contributors"] == CLIENTS for r in history.rounds)
    assert all(r.secure["mode"] == mode for r in history.rounds)
    assert _max_difference(model, plaintext) < TOLERANCE[mode]
    assert history.final_accuracy is not None and history.final_accuracy > 0.5
    # No train reply the server received carries a plaintext model.
    train = [m for m in grid.received if m.metadata.message_type == "train"]
    assert len(train) == 2 * CLIENTS
    assert all(set(m.content.array_records) == {SECURE_BLOBS} for m in train)
    # A node protects one update per round: the last round's request, sent again, is refused.
    replay = next(m for m in reversed(grid.sent) if m.metadata.message_type == "train")
    node = replay.metadata.dst_node_id
    answer = grid.handlers[node](replay, grid.contexts[node])
    assert answer.has_error() and "already sent a protected update for round 2" in (
        answer.error.reason
    )


def test_server_momentum_runs_on_the_decrypted_aggregate(
    tmp_path: Path, plaintext: dict[str, np.ndarray]
) -> None:
    # FedAvgM over the secure sum equals FedAvgM over the plaintext replies.
    _, plain_m, _ = _run(tmp_path / "a", "none", federation={"strategy": "fedavgm"})
    _, secure_m, _ = _run(tmp_path / "b", "ckks", federation={"strategy": "fedavgm"})
    assert _max_difference(plain_m, secure_m) < TOLERANCE["ckks"]
    assert _max_difference(plain_m, plaintext) > 1e-3  # momentum did change the result


def test_round_goes_on_without_a_client_that_vanishes_after_setup(tmp_path: Path) -> None:
    def drop(node: int, msg: Message) -> bool:
        return node == 102 and msg.metadata.message_type == "train"

    history, _, _ = _run(tmp_path, "secagg+", drop=drop)
    for record in history.rounds:
        assert record.applied
        assert record.secure["contributors"] == CLIENTS - 1


def test_round_is_skipped_when_too_few_clients_remain(tmp_path: Path) -> None:
    def drop(node: int, msg: Message) -> bool:
        return node in (101, 102, 103) and msg.metadata.message_type == SECURE_QUERY_TYPE

    history, model, _ = _run(tmp_path, "ckks", drop=drop)
    assert not any(r.applied for r in history.rounds)
    initial = load_latest(tmp_path / "run-ckks" / "checkpoints")
    assert initial is not None and model.keys() == initial.arrays.keys()


@pytest.mark.parametrize("strategy", ["fedmedian", "fedtrimmedavg"])
def test_strategies_that_need_individual_updates_are_refused(strategy: str) -> None:
    with pytest.raises(ConfigError, match="individual update"):
        RunConfig.from_dict({"federation": {"strategy": strategy}, "secure": {"mode": "ckks"}})


def test_server_side_clipping_is_refused_in_a_secure_mode() -> None:
    with pytest.raises(ConfigError, match=r"privacy\.central-dp"):
        RunConfig.from_dict({"privacy": {"central-dp": "server"}, "secure": {"mode": "secagg+"}})


def test_wrapper_refuses_a_nonlinear_strategy_object() -> None:
    from flwr.serverapp.strategy import FedMedian

    from fedlearn.privacy.secure.secaggplus import SecAggPlusServer

    with pytest.raises(ValueError, match="FedMedian needs every individual update"):
        SecureAggregation(FedMedian(), protocol=SecAggPlusServer(), min_contributors=3)


@pytest.mark.parametrize("mode", ["ckks", "crypten"])
def test_distributed_dp_composes_with_the_mode(tmp_path: Path, mode: str) -> None:
    """Noise shares (σC/√t each) fit the mode's value range through the public scale."""
    history, model, _ = _run(
        tmp_path,
        mode,
        privacy={"central-dp": "distributed", "central-noise-multiplier": 1.0},
    )
    for record in history.rounds:
        assert record.applied and record.secure["contributors"] == CLIENTS
        assert record.central_privacy["epsilon"] > 0
    assert all(np.isfinite(a).all() for a in model.values())
