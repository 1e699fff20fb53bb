"""Stage records: one set of readers and one exchange for every secure-aggregation mode."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict

from fedlearn.privacy.secure.base import request
from fedlearn.privacy.secure.stages import (
    check_node_ids,
    error_reason,
    exchange,
    read_answers,
    read_blob,
    read_fields,
    read_int,
    read_node_ids,
    read_protected_reply,
    read_str,
    refusal,
)
from fedlearn.wire import SECURE_BLOBS, SECURE_QUERY_TYPE, SECURE_RECORD, ErrorCode
from tests.flower_messages import instruction, serverapp_identity
from tests.loopback_grid import Handler, LoopbackGrid


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with serverapp_identity():
        yield


def _stage_request(stage: str = "demo-stage", **fields: object) -> Message:
    return instruction(request(stage, **fields), node_id=3, message_type=SECURE_QUERY_TYPE)


def test_read_fields_returns_both_records_and_an_empty_blob_record_when_absent() -> None:
    config, blobs = read_fields(_stage_request(round=2, key=b"\x01\x02"), "demo-stage")
    assert config["round"] == 2 and read_blob(blobs, "key") == b"\x01\x02"
    bare = instruction(
        RecordDict({SECURE_RECORD: ConfigRecord({"stage": "demo-stage"})}), node_id=3
    )
    assert len(read_fields(bare).blobs) == 0


def test_read_fields_refuses_errors_other_stages_other_rounds_and_missing_records() -> None:
    msg = _stage_request(round=2)
    with pytest.raises(ValueError, match=r"expected a 'other' message, got stage 'demo-stage'"):
        read_fields(msg, "other")
    with pytest.raises(ValueError, match="for round 2, not round 3"):
        read_fields(msg, "demo-stage", server_round=3)
    with pytest.raises(ValueError, match="'round' must be an int"):
        read_fields(_stage_request(), "demo-stage", server_round=0)
    with pytest.raises(ValueError, match="no 'secure' ConfigRecord"):
        read_fields(instruction(RecordDict(), node_id=3))
    reply = refusal(msg, "no, thanks")
    assert reply.error.code == ErrorCode.SECURE
    assert error_reason(reply) == f"error reply (code {int(ErrorCode.SECURE)}): no, thanks"
    with pytest.raises(ValueError, match=r"error reply .* no, thanks"):
        read_fields(reply, "demo-stage")
    assert error_reason(msg) is None


def test_field_readers_name_the_field_and_refuse_near_misses() -> None:
    config = ConfigRecord(
        {"n": 5, "flag": True, "neg": -1, "s": "x", "empty": "", "ids": [3, 1], "twice": [1, 1]}
    )
    assert read_int(config, "n", minimum=5) == 5
    with pytest.raises(ValueError, match="'flag' must be an int"):
        read_int(config, "flag")
    with pytest.raises(ValueError, match=r"'neg' must be an int >= 0, got -1"):
        read_int(config, "neg", minimum=0)
    assert read_str(config, "s") == "x"
    for key in ("empty", "n", "missing"):
        with pytest.raises(ValueError, match=f"'{key}' must be a non-empty string"):
            read_str(config, key)
    assert read_node_ids(config, "ids") == [3, 1]
    with pytest.raises(ValueError, match="'twice' lists a node id more than once"):
        read_node_ids(config, "twice")
    for key in ("s", "n", "missing"):
        with pytest.raises(ValueError, match=f"'{key}' must be a list of node ids"):
            read_node_ids(config, key)


@pytest.mark.parametrize(
    "node_ids", [[1, True], [1, -2], [1, 2.0], [4, 4], "12", [np.int64(-1)], None]
)
def test_node_ids_must_be_distinct_non_negative_ints(node_ids: object) -> None:
    with pytest.raises(ValueError, match="node_ids"):
        check_node_ids(node_ids)


def test_node_ids_accept_numpy_and_64_bit_ids() -> None:
    assert check_node_ids((np.uint64(2**64 - 1), 7)) == [2**64 - 1, 7]


def test_blob_readers_refuse_missing_and_non_byte_blobs() -> None:
    blobs = ArrayRecord({"floats": Array(np.zeros(3))})
    with pytest.raises(ValueError, match="missing blob 'absent'"):
        read_blob(blobs, "absent")
    with pytest.raises(ValueError, match="blob 'floats': expected a 1-d uint8 array"):
        read_blob(blobs, "floats")
    msg = _stage_request()
    assert read_protected_reply(msg) is msg.content.array_records[SECURE_BLOBS]
    with pytest.raises(ValueError, match="no 'secure-blobs' ArrayRecord"):
        read_protected_reply(instruction(RecordDict(), node_id=3))
    with pytest.raises(ValueError, match="error reply"):
        read_protected_reply(Message(Error(code=7, reason="failed"), reply_to=msg))


def _echo(stage: str, server_round: int) -> Handler:
    def handle(msg: Message, context: Context) -> Message:
        return Message(request(stage, round=server_round), reply_to=msg)

    return handle


def test_exchange_returns_each_asked_nodes_reply_and_read_answers_keeps_the_right_ones() -> None:
    handlers: dict[int, Handler] = {
        1: _echo("demo-stage", 4),
        2: _echo("demo-stage", 3),  # answers for another round
        3: _echo("other-stage", 4),  # answers another stage
        4: lambda msg, ctx: refusal(msg, "refused"),
        5: _echo("demo-stage", 4),  # not asked
    }
    grid = LoopbackGrid(handlers, drop=lambda node, msg: node == 6)
    asked = {n: request("demo-stage", round=4) for n in (1, 2, 3, 4, 6)}
    replies = exchange(grid, asked, server_round=4, timeout=1.0)
    assert sorted(replies) == [1, 2, 3, 4]  # 6 did not answer, 5 was not asked
    assert {m.metadata.message_type for m in grid.sent} == {SECURE_QUERY_TYPE}
    assert {m.metadata.group_id for m in grid.sent} == {"4"}
    assert sorted(read_answers(replies, "demo-stage", server_round=4)) == [1]
    assert sorted(read_answers(replies, "demo-stage")) == [1, 2]
    assert exchange(grid, {}, server_round=4, timeout=1.0) == {}
