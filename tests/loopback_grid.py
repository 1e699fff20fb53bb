"""Re-export of :mod:`fedlearn.loopback` under the name the protocol tests use."""

from fedlearn.loopback import DropRule, Handler, LoopbackGrid, node_context

__all__ = ["DropRule", "Handler", "LoopbackGrid", "node_context"]
