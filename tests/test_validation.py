"""ValidatedReplies: bad updates are set aside, the round rule is explicit."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedlearn.strategies import ValidatedReplies
from fedlearn.wire import EXAMPLES_KEY
from tests.flower_messages import instruction

GLOBAL = {"w": np.zeros((2, 3), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}


def reply(node: int, arrays: dict, examples: object = 10) -> Message:
    request = instruction(RecordDict(), node_id=node)
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord({EXAMPLES_KEY: examples}),
        }
        if examples is not None
        else {"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()})}
    )
    return Message(content=content, reply_to=request)


def error_reply(node: int) -> Message:
    return Message(
        Error(code=1002, reason="data file not found"),
        reply_to=instruction(RecordDict(), node_id=node),
    )


def prepared(min_replies: int = 2) -> ValidatedReplies:
    strategy = ValidatedReplies(FedAvg(), min_replies=min_replies)
    strategy._expected = {k: (v.shape, str(v.dtype)) for k, v in GLOBAL.items()}
    return strategy


def full(value: float) -> dict:
    return {k: np.full_like(v, value) for k, v in GLOBAL.items()}


def test_aggregate_of_valid_replies_is_their_weighted_mean() -> None:
    strategy = prepared()
    arrays, _ = strategy.aggregate_train(1, [reply(1, full(1.0), 10), reply(2, full(4.0), 30)])
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), 3.25)  # (10*1 + 30*4) / 40
    assert strategy.last_report.accepted == 2 and strategy.last_report.applied


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (reply(9, full(np.nan)), "NaN or infinity"),
        (
            reply(9, {"w": np.zeros((3, 2), np.float32), "b": np.zeros(3, np.float32)}),
            "expected float32[2, 3]",
        ),
        (reply(9, {"w": np.zeros((2, 3), np.float64), "b": np.zeros(3, np.float32)}), "float64"),
        (reply(9, {"w": np.zeros((2, 3), np.float32)}), "array keys"),
        (reply(9, full(1.0), examples=0), "positive number"),
        (reply(9, full(1.0), examples=None), "exactly one MetricRecord"),
        (error_reply(9), "client error: data file not found"),
    ],
)
def test_bad_reply_is_rejected_with_reason_and_round_goes_on(bad: Message, reason: str) -> None:
    strategy = prepared()
    arrays, _ = strategy.aggregate_train(1, [reply(1, full(1.0)), bad, reply(2, full(3.0))])
    assert arrays is not None
    np.testing.assert_allclose(arrays["b"].numpy(), 2.0)  # the bad reply had no influence
    assert reason in strategy.last_report.rejected[9]
    assert strategy.last_report.accepted == 2


def test_round_is_skipped_when_fewer_valid_replies_than_the_rule() -> None:
    strategy = prepared(min_replies=3)
    arrays, metrics = strategy.aggregate_train(
        1, [reply(1, full(1.0)), reply(2, full(1.0)), error_reply(3)]
    )
    assert arrays is None and metrics is None
    assert not strategy.last_report.applied


def test_min_replies_must_be_positive() -> None:
    with pytest.raises(ValueError, match="min_replies"):
        ValidatedReplies(FedAvg(), min_replies=0)
