"""What the layers of a strategy stack tell each other: small protocols, no classes.

fedlearn's server is a stack of strategy wrappers (see :mod:`fedlearn.stack`).
A layer never imports a sibling layer's class: it asks the layers *below* it
for what it needs through one of these protocols, found by walking the stack
with :func:`layers`. So attestation works with any layer that can say who is
in an aggregate or how each contributor scored, and reply validation runs
every check the layers below declare, without anybody wiring them by hand.

======================  ===================================  =========================
protocol                who implements it                    who asks
======================  ===================================  =========================
:class:`ChecksReplies`  attestation (signed commitments),    ``ValidatedReplies``
                        secure aggregation (protected
                        payloads)
:class:`ReportsContributors`  secure aggregation             attestation
:class:`ScoresContributions`  contribution scoring,          attestation
                        secure aggregation (scores computed
                        without revealing an update)
:class:`RecordsRound`   every layer                          the round recorder
======================  ===================================  =========================
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from flwr.app import Message
from flwr.serverapp.strategy import Strategy

__all__ = [
    "ChecksReplies",
    "RecordsRound",
    "ReportsContributors",
    "RoundScores",
    "ScoresContributions",
    "layers",
]


@runtime_checkable
class ChecksReplies(Protocol):
    """A layer with a check every training reply must pass before it is used.

    ``checks_payload`` is True when the check validates the update itself (a
    protected update the plaintext array checks cannot read); the validating
    layer then runs it instead of its own shape/dtype/NaN checks.
    """

    checks_payload: bool

    def check_reply(self, msg: Message) -> str | None:
        """Why ``msg`` is unusable, or ``None`` if it passes this layer's check."""
        ...


@runtime_checkable
class ReportsContributors(Protocol):
    """A layer that knows whose update is in this round's aggregate."""

    def round_contributors(self) -> Sequence[int] | None:
        """Node ids in the aggregate (``None``: every accepted reply is)."""
        ...


@dataclass(frozen=True)
class RoundScores:
    """Per-contributor scores of one round and how they were computed."""

    scores: Mapping[int, float]
    method: str
    evaluations: int = 0


@runtime_checkable
class ScoresContributions(Protocol):
    """A layer that scores each contributor of the round."""

    def round_scores(self) -> RoundScores | None:
        """Scores of the round just aggregated (``None`` if the layer could not score it)."""
        ...


@runtime_checkable
class RecordsRound(Protocol):
    """A layer that reports what it did this round into the round's record."""

    def round_record(self) -> dict[str, Any]:
        """Fields of :class:`~fedlearn.history.RoundRecord` this layer fills in."""
        ...


def layers(strategy: Strategy) -> Iterator[Strategy]:
    """Yield ``strategy`` and every strategy it wraps, outermost first.

    Wrappers expose what they wrap as ``.strategy`` (fedlearn's
    :class:`~fedlearn.strategies.StrategyWrapper` and Flower's DP wrappers alike).
    """
    current: object = strategy
    seen: set[int] = set()
    while isinstance(current, Strategy) and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = getattr(current, "strategy", None)
