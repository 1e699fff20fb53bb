"""Local DP end to end on the Simulation Engine: budgets enforced, ledgers exact after a crash."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from fedlearn import Dataset, Federation, History, RunConfig
from fedlearn.data import load_bundled
from fedlearn.privacy import PrivacyLedger
from fedlearn.privacy.records import RecordLedger

pytestmark = pytest.mark.slow

CLIENTS, PER_CLIENT, BATCH = 4, 150, 16


def _partitions() -> tuple[list[Dataset], Dataset]:
    data, _ = load_bundled("digits")
    order = np.random.default_rng(0).permutation(len(data))
    parts = [
        data.subset(np.sort(order[i * PER_CLIENT : (i + 1) * PER_CLIENT])) for i in range(CLIENTS)
    ]
    return parts, data.subset(np.sort(order[CLIENTS * PER_CLIENT :]))


def _two_round_budget() -> float:
    """ε after exactly two rounds of every holder's DP-SGD (all holders have equal data)."""
    ledger = PrivacyLedger(delta=1e-5)
    for r in (1, 2):
        ledger.record(
            round=r,
            mechanism="dpsgd",
            noise_multiplier=1.0,
            clipping_norm=1.0,
            sample_rate=BATCH / PER_CLIENT,
            steps=math.ceil(PER_CLIENT / BATCH),
        )
    return ledger.spent_epsilon() + 1e-9


CFG = RunConfig.from_dict(
    {
        "federation": {
            "rounds": 4,
            "clients": CLIENTS,
            "min-train-clients": 2,
            "fraction-evaluate": 0.0,
        },
        "train": {"batch-size": BATCH, "local-epochs": 1},
        "privacy": {
            "local-dp": True,
            "noise-multiplier": 1.0,
            "max-grad-norm": 1.0,
            "client-epsilon-budget": _two_round_budget(),
        },
    }
)


class CrashOnce(FedAvg):
    """A server that dies while aggregating round 2 (after the clients trained), once."""

    def __init__(self, flag: Path) -> None:
        super().__init__(fraction_evaluate=0.0)
        self.flag = flag

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if server_round == 2 and not self.flag.exists():
            self.flag.touch()
            raise RuntimeError("server crashed mid-round")
        return super().aggregate_train(server_round, replies)


def _ledgers(run_dir: Path) -> list[list[tuple]]:
    out = []
    for path in sorted((run_dir / "holders").glob("holder-*/records.json")):
        ledger = RecordLedger.load(path)
        out.append(
            [
                (
                    e.round,
                    e.round_epsilon,
                    e.epsilon,
                    e.noise_multiplier,
                    e.sample_rate,
                    e.steps,
                )
                for e in ledger.releases
            ]
        )
    return sorted(out)


def _check_budget_run(history: History, budget: float) -> None:
    assert [r.round for r in history.rounds] == [1, 2, 3, 4]
    for r in history.rounds[:2]:
        assert r.accepted == CLIENTS and r.applied
        assert all(p["epsilon"] <= budget for p in r.privacy.values())
    for r in history.rounds[2:]:  # the third round would overspend: every holder refuses it
        assert r.accepted == 0 and not r.applied
        assert len(r.rejected) == CLIENTS
        assert all("privacy budget" in reason for reason in r.rejected.values())


def test_budget_is_enforced_and_a_crash_does_not_change_the_ledger(tmp_path: Path) -> None:
    parts, test_set = _partitions()
    budget = CFG.privacy.client_epsilon_budget

    reference = Federation(
        config=CFG, partitions=parts, test_set=test_set, strategy=FedAvg(fraction_evaluate=0.0)
    )
    history = reference.simulate(run_dir=tmp_path / "reference")
    _check_budget_run(history, budget)
    expected = _ledgers(tmp_path / "reference")
    assert len(expected) == CLIENTS and all(len(entries) == 2 for entries in expected)

    crashing = Federation(
        config=CFG,
        partitions=parts,
        test_set=test_set,
        strategy=CrashOnce(tmp_path / "crashed.flag"),
    )
    with pytest.raises(RuntimeError):
        crashing.simulate(run_dir=tmp_path / "crash")
    # the clients had trained (and recorded) round 2 before the server died
    assert all(len(entries) == 2 for entries in _ledgers(tmp_path / "crash"))
    resumed = crashing.simulate(run_dir=tmp_path / "crash", resume=True)
    _check_budget_run(resumed, budget)
    assert _ledgers(tmp_path / "crash") == expected
