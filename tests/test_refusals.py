"""A holder's refusals tell the server the rule, never a private figure.

Each test drives the holder's real client mod into a refusal and reads the
error reply exactly as the server receives it: the reason names the rule
broken (with the server's own public parameters at most), while the private
figure that triggered it (a value of the unprotected update) appears only
in the holder's local log. The budget refusal (no ε figure in the reason) is
tested with the holder's ledger in ``tests/test_local_dp.py``; the attestation
mod's wallet refusal in ``tests/test_attestation_client_mod.py``.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedlearn.loopback import node_context
from fedlearn.privacy.secure.base import request
from fedlearn.privacy.secure.client_mod import secure_aggregation_mod
from fedlearn.privacy.secure.crypten_mode import MAX_ABS
from fedlearn.privacy.secure.envelope import generate_keypair
from fedlearn.privacy.secure.secaggplus import SecAggPlusServer
from fedlearn.wire import (
    EXAMPLES_KEY,
    SECURE_MODE_KEY,
    SECURE_UNIFORM_KEY,
    CryptenStage,
    ErrorCode,
)
from tests.flower_messages import instruction, serverapp_identity
from tests.test_secure_secaggplus import NODE_IDS, SPACED, Federation, make_vectors


def _numbers(text: str) -> set[str]:
    return set(re.findall(r"\d+(?:\.\d+)?(?:e[-+]?\d+)?", text))


def _through_the_mod(mode: str, msg: Message, context: Context, update: np.ndarray) -> Message:
    """``secure_aggregation_mod`` around a handler that trained ``update`` (from zeros)."""
    config = msg.content.config_records.get("config") or ConfigRecord({"server-round": 1})
    config[SECURE_MODE_KEY] = mode
    config[SECURE_UNIFORM_KEY] = True
    msg.content["config"] = config
    msg.content["arrays"] = ArrayRecord({"w": Array(np.zeros_like(update))})

    def trained(m: Message, _: Context) -> Message:
        content = RecordDict(
            {
                "arrays": ArrayRecord({"w": Array(update)}),
                "metrics": MetricRecord({EXAMPLES_KEY: 1}),
            }
        )
        return Message(content, reply_to=m)

    return secure_aggregation_mod(msg, context, trained)


def _assert_rule_only(reply: Message, *, public: set[str], private: float, log: str) -> str:
    assert reply.has_error() and reply.error.code == ErrorCode.SECURE
    reason = reply.error.reason
    assert _numbers(reason) <= public, reason  # only the server's own parameters
    for digits in (f"{private:.6g}", f"{private:.3g}", f"{private:.4g}", str(private)):
        assert digits not in reason
    assert any(f"{private:{f}}" in log for f in (".3g", ".6g"))  # the holder sees why, locally
    return reason


def test_a_secaggplus_range_refusal_does_not_send_the_updates_largest_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    private = 9.87654321  # beyond the clipping range 8
    vectors = make_vectors(NODE_IDS, 39, seed=5)
    for node in SPACED:
        vectors[node][7] = private

    def handler(node: int, msg: Message, ctx: Context) -> Message:
        return _through_the_mod("secagg+", msg, ctx, vectors[node])

    fed = Federation(vectors, train_reply=handler)
    caplog.set_level(logging.WARNING, logger="fedlearn")
    with serverapp_identity():
        replies = fed.train(SecAggPlusServer(num_shares=5, reconstruction_threshold=3))
    refused = [r for r in replies if r.has_error()]
    assert {r.metadata.src_node_id for r in refused} == set(SPACED)
    for reply in refused:
        reason = _assert_rule_only(reply, public={"8"}, private=private, log=caplog.text)
        assert "exceeds clipping_range 8" in reason


def test_a_crypten_range_refusal_does_not_send_the_updates_largest_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    private = MAX_ABS * 1.2345678
    content = request(
        CryptenStage.TRAIN,
        run="r",
        round=1,
        parties=2,
        **{f"party-key-{i}": generate_keypair()[1] for i in range(2)},
    )
    with serverapp_identity():
        msg = instruction(content, node_id=3)
    caplog.set_level(logging.WARNING, logger="fedlearn")
    update = np.array([0.5, private, -1.0])
    reply = _through_the_mod("crypten", msg, node_context(3), update)
    reason = _assert_rule_only(reply, public={"2", "36"}, private=private, log=caplog.text)
    assert "MAX_ABS = 2**36" in reason
