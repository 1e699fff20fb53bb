"""A Flower Grid that delivers messages to client handlers in this process.

Protocol tests drive a real server-side protocol against real client-side
protocol objects (real crypto, real Flower messages) without network or Ray;
``drop`` simulates a node that stops answering from a given stage on.
The engines themselves are exercised by the e2e tests.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

#: ``(message, context) -> reply``, e.g. a ClientApp or a protocol's handler.
Handler = Callable[[Message, Context], Message]
#: ``(node_id, message) -> True`` if the node does not answer this message.
DropRule = Callable[[int, Message], bool]


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
    """

    def __init__(self, handlers: dict[int, Handler], *, drop: DropRule | None = None) -> None:
        self.handlers = handlers
        self.contexts = {
            node: node_context(node, partition=i, partitions=len(handlers))
            for i, node in enumerate(sorted(handlers))
        }
        self.drop = drop
        self.sent: list[Message] = []
        self._replies: dict[str, Message] = {}
        self._ids = itertools.count(1)
        self._run = Run.create_empty(run_id=1)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return sorted(self.handlers)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg_id = f"loopback-{next(self._ids)}"
            msg.metadata.__dict__["_message_id"] = msg_id
            self.sent.append(msg)
            node = msg.metadata.dst_node_id
            ids.append(msg_id)
            if node not in self.handlers or (self.drop is not None and self.drop(node, msg)):
                continue
            self._replies[msg_id] = self.handlers[node](msg, self.contexts[node])
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return list(self.pull_messages(self.push_messages(messages)))
