"""Build real Flower messages outside a running federation (for unit tests)."""

from __future__ import annotations

import time

from flwr.app import Message, Metadata, RecordDict

from fedlearn.loopback import serverapp_identity

__all__ = ["instruction", "serverapp_identity"]


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
