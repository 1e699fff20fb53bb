"""Stage records, read and sent in one place for every secure-aggregation mode.

A stage message carries two records (see :mod:`fedlearn.wire`): the
``ConfigRecord`` :data:`~fedlearn.wire.SECURE_RECORD` with ``stage`` and the
stage's fields, and the ``ArrayRecord`` :data:`~fedlearn.wire.SECURE_BLOBS`
with byte blobs. Every mode reads them with the typed readers here, so a
malformed field is refused with the same ``ValueError`` wording whichever mode
reads it, and every server sends its stage requests through :func:`exchange`.

Readers raise ``ValueError`` naming the field and what was wrong with it; a
client turns that into an error reply (:func:`refusal`), a server leaves the
node out of the stage (:func:`read_answers`).

Examples
--------
>>> config, blobs = read_fields(reply, "ckks-deal")  # doctest: +SKIP
>>> fingerprint = read_str(config, "fingerprint")  # doctest: +SKIP
>>> replies = exchange(grid, requests, server_round=3, timeout=30.0)  # doctest: +SKIP
>>> answers = read_answers(replies, "secagg-setup", server_round=3)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, RecordDict
from flwr.serverapp import Grid

from fedlearn.privacy.secure.base import blob_bytes, stage_of
from fedlearn.wire import SECURE_BLOBS, SECURE_QUERY_TYPE, SECURE_RECORD, ErrorCode

__all__ = [
    "StageFields",
    "check_node_ids",
    "error_reason",
    "exchange",
    "read_answers",
    "read_blob",
    "read_fields",
    "read_int",
    "read_node_ids",
    "read_protected_reply",
    "read_str",
    "refusal",
]


class StageFields(NamedTuple):
    """The two protocol records of a stage message (unpacks as ``config, blobs``).

    Attributes
    ----------
    config : ConfigRecord
        The :data:`~fedlearn.wire.SECURE_RECORD` record (``stage`` and the fields).
    blobs : ArrayRecord
        The :data:`~fedlearn.wire.SECURE_BLOBS` record (empty if the message has none).
    """

    config: ConfigRecord
    blobs: ArrayRecord


# --------------------------------------------------------------------------- messages


def error_reason(msg: Message) -> str | None:
    """Why ``msg`` is an error reply, as ``"error reply (code C): reason"``; ``None`` if not."""
    if not msg.has_error():
        return None
    return f"error reply (code {msg.error.code}): {msg.error.reason}"


def read_fields(
    msg: Message, stage: str | None = None, *, server_round: int | None = None
) -> StageFields:
    """The protocol records of a stage request or reply.

    Parameters
    ----------
    msg : Message
        A stage request, a stage reply or a secure train message.
    stage : str, optional
        The stage the message must be (any stage if omitted).
    server_round : int, optional
        If given, the message's ``round`` field must equal it.

    Returns
    -------
    StageFields
        ``(config, blobs)``; ``blobs`` is empty if the message carries none.

    Raises
    ------
    ValueError
        ``msg`` is an error reply, has no ``stage``, is another stage or
        belongs to another round.
    """
    reason = error_reason(msg)
    if reason is not None:
        raise ValueError(reason)
    actual = stage_of(msg)
    if stage is not None and actual != stage:
        raise ValueError(f"expected a {stage!r} message, got stage {actual!r}")
    config = msg.content.config_records[SECURE_RECORD]
    if server_round is not None:
        found = read_int(config, "round", minimum=0)
        if found != server_round:
            raise ValueError(f"the message is for round {found}, not round {server_round}")
    blobs = msg.content.array_records.get(SECURE_BLOBS)
    return StageFields(config, blobs if blobs is not None else ArrayRecord())


def read_protected_reply(msg: Message) -> ArrayRecord:
    """The :data:`~fedlearn.wire.SECURE_BLOBS` record of a protected train reply.

    Raises
    ------
    ValueError
        The reply is an error reply or carries no such record.
    """
    reason = error_reason(msg)
    if reason is not None:
        raise ValueError(reason)
    record = msg.content.array_records.get(SECURE_BLOBS)
    if record is None:
        raise ValueError(f"the reply has no {SECURE_BLOBS!r} ArrayRecord")
    return record


# --------------------------------------------------------------------------- fields


def read_blob(blobs: ArrayRecord, key: str) -> bytes:
    """The bytes of blob ``key``; ``ValueError`` if it is missing or not a ``uint8`` vector."""
    if key not in blobs:
        raise ValueError(f"missing blob {key!r}")
    try:
        return blob_bytes(blobs[key])
    except ValueError as exc:
        raise ValueError(f"blob {key!r}: {exc}") from None


def read_str(config: ConfigRecord, key: str) -> str:
    """Field ``key`` as a non-empty string; ``ValueError`` otherwise."""
    value = config.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"field {key!r} must be a non-empty string, got {value!r}")
    return value


def read_int(config: ConfigRecord, key: str, *, minimum: int | None = None) -> int:
    """Field ``key`` as an int (``bool`` is not one), at least ``minimum`` if given."""
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"field {key!r} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"field {key!r} must be an int >= {minimum}, got {value}")
    return value


def read_node_ids(config: ConfigRecord, key: str) -> list[int]:
    """Field ``key`` as a list of distinct node ids (non-negative ints)."""
    return check_node_ids(config.get(key), name=f"field {key!r}")


def check_node_ids(node_ids: object, *, name: str = "node_ids") -> list[int]:
    """``node_ids`` as a list of distinct non-negative ints (Flower's ids are uint64).

    ``name`` says what is checked in the ``ValueError`` (a server's argument
    or a record field).
    """
    if not isinstance(node_ids, Iterable) or isinstance(node_ids, str | bytes):
        raise ValueError(f"{name} must be a list of node ids, got {node_ids!r}")
    ids = list(node_ids)
    if not all(isinstance(n, int | np.integer) and not isinstance(n, bool) and n >= 0 for n in ids):
        raise ValueError(f"{name} must be a list of node ids (ints >= 0), got {ids!r}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{name} lists a node id more than once: {ids}")
    return [int(n) for n in ids]


# --------------------------------------------------------------------------- exchanges


def exchange(
    grid: Grid,
    requests_by_node: Mapping[int, RecordDict],
    *,
    server_round: int,
    timeout: float,
) -> dict[int, Message]:
    """Send one stage request per node; each node's first reply, by node.

    Nodes that did not answer within ``timeout`` are missing from the result;
    replies from nodes that were not asked are ignored. Replies are returned
    as they came (error replies included): read them with :func:`read_fields`
    or :func:`read_answers`.
    """
    if not requests_by_node:
        return {}
    messages = [
        Message(
            content, dst_node_id=node, message_type=SECURE_QUERY_TYPE, group_id=str(server_round)
        )
        for node, content in requests_by_node.items()
    ]
    replies: dict[int, Message] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if node in requests_by_node and node not in replies:
            replies[node] = reply
    return replies


def read_answers(
    replies: Mapping[int, Message], stage: str, *, server_round: int | None = None
) -> dict[int, StageFields]:
    """The records of the replies that answer ``stage`` (of ``server_round`` if given).

    Error replies and replies of another stage or round are left out: the
    caller drops those nodes from the stage.
    """
    answers: dict[int, StageFields] = {}
    for node, reply in replies.items():
        with contextlib.suppress(ValueError):
            answers[node] = read_fields(reply, stage, server_round=server_round)
    return answers


def refusal(msg: Message, reason: str) -> Message:
    """The error reply of a client that refuses a stage request (:attr:`ErrorCode.SECURE`)."""
    return Message(Error(code=ErrorCode.SECURE, reason=reason), reply_to=msg)
