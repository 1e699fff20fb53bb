"""A Flower Grid that delivers messages to ClientApps in this process.

Runs a federation's whole message flow (strategies, wrappers, secure
aggregation stages, the real ClientApp and its mods) without network or Ray:
for debugging a strategy in a notebook, for protocol tests and for measuring
a protocol's own cost in benchmarks. ``drop`` makes chosen nodes stop
answering, to rehearse dropouts. Messages are not serialized and nodes run
one after the other, so timings exclude transport; use the Simulation or
Deployment Engine for those.

Examples
--------
>>> from fedlearn.client_app import make_client_app
>>> app = make_client_app()
>>> grid = LoopbackGrid({node: app for node in (1, 2, 3)})
>>> sorted(grid.get_node_ids())
[1, 2, 3]
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

__all__ = ["DropRule", "Handler", "LoopbackGrid", "node_context", "serverapp_identity"]

#: ``(message, context) -> reply``, e.g. a ClientApp or a protocol's handler.
Handler = Callable[[Message, Context], Message]
#: ``(node_id, message) -> True`` if the node does not answer this message.
DropRule = Callable[[int, Message], bool]


@contextlib.contextmanager
def serverapp_identity() -> Iterator[None]:
    """Let strategies and protocols build Flower messages outside a ServerApp process.

    Flower stamps every new message with the sending task's identity; code that
    drives a server side in a plain process (a notebook, a test, a benchmark)
    poses as the ServerApp (run 1, node 0) meanwhile and restores what was there.
    """
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def node_context(node_id: int, *, partition: int = 0, partitions: int = 1) -> Context:
    """A fresh node context, as a SuperNode keeps one per run."""
    return Context(
        run_id=1,
        node_id=node_id,
        node_config={"partition-id": partition, "num-partitions": partitions},
        state=RecordDict(),
        run_config={},
    )


class LoopbackGrid(Grid):
    """Route each message to ``handlers[dst_node_id]`` with that node's context.

    Parameters
    ----------
    handlers : dict[int, Handler]
        One handler per node id.
    drop : DropRule, optional
        Nodes for which it returns True do not answer (as if they had gone).

    Attributes
    ----------
    sent, received : list of Message
        Every message delivered to a node, and every reply, in order.
    """

    def __init__(self, handlers: dict[int, Handler], *, drop: DropRule | None = None) -> None:
        self.handlers = handlers
        self.contexts = {
            node: node_context(node, partition=i, partitions=len(handlers))
            for i, node in enumerate(sorted(handlers))
        }
        self.drop = drop
        self.sent: list[Message] = []
        self.received: list[Message] = []
        self._replies: dict[str, Message] = {}
        self._ids = itertools.count(1)
        self._run = Run.create_empty(run_id=1)

    def set_run(self, run: Run) -> None:
        """Set the run the grid belongs to."""
        self._run = run

    @property
    def run(self) -> Run:
        """The run the grid belongs to."""
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Build a message to ``dst_node_id`` (Flower's deprecated helper, kept working)."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """The nodes of this grid, sorted."""
        return sorted(self.handlers)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message to its node now; keep the replies for ``pull_messages``."""
        ids = []
        for msg in messages:
            msg_id = f"loopback-{next(self._ids)}"
            msg.metadata.__dict__["_message_id"] = msg_id
            self.sent.append(msg)
            node = msg.metadata.dst_node_id
            ids.append(msg_id)
            if node not in self.handlers or (self.drop is not None and self.drop(node, msg)):
                continue
            reply = self.handlers[node](msg, self.contexts[node])
            self.received.append(reply)
            self._replies[msg_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies to ``message_ids`` that exist (dropped nodes have none)."""
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push and pull at once (nothing to wait for in process)."""
        return list(self.pull_messages(self.push_messages(messages)))
