"""Test helpers shared by the suite: real Flower messages outside a federation,
a grid stand-in that only lists nodes, and an object-graph walker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, cast

from flwr.app import Message, Metadata, RecordDict
from flwr.serverapp import Grid

from fedlearn.loopback import serverapp_identity

__all__ = ["instruction", "node_list_grid", "reachable", "serverapp_identity"]


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


class _NodeListGrid:
    """A grid stand-in that lists nodes 1..n; Flower's strategies build the messages."""

    def __init__(self, n: int) -> None:
        self.n = n

    def get_node_ids(self) -> list[int]:
        return list(range(1, self.n + 1))


def node_list_grid(n: int) -> Grid:
    """A :class:`Grid` for ``configure_train`` calls only: nodes 1..n, no transport."""
    return cast(Grid, _NodeListGrid(n))


def reachable(obj: Any, *, max_depth: int = 12) -> Iterator[Any]:
    """Every value reachable from ``obj`` through attributes, slots and containers.

    What the "server holds no secret" tests walk: anything the server object
    can reach is something an honest-but-curious operator can read.
    """
    seen: set[int] = set()
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        current, depth = stack.pop()
        if id(current) in seen or depth > max_depth:
            continue
        seen.add(id(current))
        yield current
        children: list[Any] = []
        if isinstance(current, dict):
            children = [*current.keys(), *current.values()]
        elif isinstance(current, list | tuple | set | frozenset):
            children = list(current)
        elif hasattr(current, "__dict__") and not isinstance(current, type):
            children = list(vars(current).values())
        elif hasattr(current, "__slots__"):
            children = [getattr(current, name, None) for name in current.__slots__]
        stack.extend((child, depth + 1) for child in children)
