"""Aggregation strategies researchers use and extend (Flower ``Strategy`` subclasses)."""

from fedlearn.strategies.registry import STRATEGIES, build_strategy
from fedlearn.strategies.state import export_state, import_state
from fedlearn.strategies.validation import RoundReport, ValidatedReplies

__all__ = [
    "STRATEGIES",
    "RoundReport",
    "ValidatedReplies",
    "build_strategy",
    "export_state",
    "import_state",
]
