"""Aggregation strategies researchers use and extend, and contribution scoring.

Strategies are Flower ``Strategy`` subclasses and wrappers; scoring offers
leave-one-out, GTG-Shapley and exact Shapley values of each client's update.
"""

from fedlearn.strategies.contribution import ContributionScoring
from fedlearn.strategies.registry import STRATEGIES, build_strategy
from fedlearn.strategies.shapley import (
    ClientContribution,
    ContributionScores,
    accumulate,
    exact_shapley,
    gtg_shapley,
    leave_one_out,
    reward_shares,
    update_utility,
)
from fedlearn.strategies.state import export_state, import_state
from fedlearn.strategies.validation import RoundReport, ValidatedReplies
from fedlearn.strategies.wrapper import StrategyWrapper

__all__ = [
    "STRATEGIES",
    "ClientContribution",
    "ContributionScores",
    "ContributionScoring",
    "RoundReport",
    "StrategyWrapper",
    "ValidatedReplies",
    "accumulate",
    "build_strategy",
    "exact_shapley",
    "export_state",
    "gtg_shapley",
    "import_state",
    "leave_one_out",
    "reward_shares",
    "update_utility",
]
