"""The client's secure mod and the server's weight check, on real Flower messages."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedlearn.loopback import node_context
from fedlearn.privacy.secure.aggregation import (
    AggregationAbortedError,
    SecureAggregation,
)
from fedlearn.privacy.secure.client_mod import secure_aggregation_mod
from fedlearn.privacy.secure.secaggplus import SecAggPlusServer
from fedlearn.wire import EXAMPLES_KEY, SECURE_MODE_KEY, SECURE_UNIFORM_KEY
from tests.flower_messages import instruction


def _train(server_round: int) -> Message:
    config = ConfigRecord(
        {SECURE_MODE_KEY: "crypten", SECURE_UNIFORM_KEY: True, "server-round": server_round}
    )
    arrays = ArrayRecord({"w": Array(np.zeros(3, np.float32))})
    return instruction(RecordDict({"arrays": arrays, "config": config}), node_id=5)


def _trained(msg: Message, context: Context) -> Message:
    arrays = ArrayRecord({"w": Array(np.ones(3, np.float32))})
    metrics = MetricRecord({EXAMPLES_KEY: 10})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


def test_a_node_protects_at_most_one_update_per_round() -> None:
    context = node_context(5)
    called: list[int] = []

    def train(msg: Message, ctx: Context) -> Message:
        called.append(1)
        return _trained(msg, ctx)

    # Without the set-up records the mode refuses (and nothing is recorded) ...
    first = secure_aggregation_mod(_train(1), context, train)
    assert first.has_error() and "cannot protect" in first.error.reason
    # ... once a round's update was protected (the state the mod records), a
    # request for that round again, or an earlier one, is refused before training.
    context.state["secure-last-round"] = ConfigRecord({"last-round": 1})
    again = secure_aggregation_mod(_train(1), context, train)
    assert again.has_error() and "already sent a protected update for round 1" in again.error.reason
    assert len(called) == 1  # the replayed round did not even train


@pytest.mark.parametrize(("uniform", "weight"), [(True, 2.5), (True, 0.01), (False, 4.5)])
def test_a_forged_weight_slot_aborts_the_round(uniform: bool, weight: float) -> None:
    from flwr.serverapp.strategy import FedAvg

    wrapper = SecureAggregation(
        FedAvg(),
        protocol=SecAggPlusServer(num_shares=3, reconstruction_threshold=2),
        min_contributors=2,
        uniform_weights=uniform,
    )
    with pytest.raises(AggregationAbortedError, match="weight slot"):
        wrapper._check_weight(weight, 3)
    wrapper._check_weight(3.0 if uniform else 1.2, 3)  # honest sums pass
