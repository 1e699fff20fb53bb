"""Build real Flower messages outside a running federation (for unit tests)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from flwr.app import Message, Metadata, RecordDict


def instruction(content: RecordDict, *, node_id: int, message_type: str = "train") -> Message:
    """A server-to-client message addressed to ``node_id``, as the SuperLink would deliver it."""
    metadata = Metadata(
        run_id=1,
        message_id=f"msg-{node_id}-{time.monotonic_ns()}",
        src_node_id=0,
        dst_node_id=node_id,
        reply_to_message_id="",
        group_id="",
        created_at=time.time(),
        ttl=3600.0,
        message_type=message_type,
    )
    return Message(content=content, metadata=metadata)


@contextlib.contextmanager
def serverapp_identity() -> Iterator[None]:
    """Let strategies build instruction messages outside a ServerApp process."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
