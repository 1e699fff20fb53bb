"""The demo: the whole pipeline in simulation on bundled real data, next to its baselines.

``fedlearn demo`` makes three calls, each usable on its own (notebooks, tests):

1. :func:`plan_demo` turns the demo's options into a validated run config and
   splits the bundled dataset among the simulated data holders; a wrong value
   fails here, before any engine starts;
2. :func:`fedlearn.simulation.simulate` runs the federation on Flower's
   Simulation Engine (the command shows its progress bar and round table);
3. :func:`finish_demo` trains the same model centralized on the pooled data,
   with DP-SGD at the holders' ε as well when they trained privately, saves
   and plots the history with that baseline and, in attested runs, lets every
   simulated holder verify its records against the chain and claim its reward.

The federation's clients recompute their partitions from the config; the plan
keeps the same split only to pool it for the baselines.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedlearn.attestation.session import TOKEN_DECIMALS
from fedlearn.client_app import default_model
from fedlearn.config import RunConfig
from fedlearn.data import Dataset, partition_bundled
from fedlearn.history import History
from fedlearn.report import write_report
from fedlearn.training import evaluate, train_centralized

__all__ = ["DemoPlan", "DemoResult", "HolderClaim", "finish_demo", "plan_demo"]


@dataclass(frozen=True, kw_only=True)
class DemoPlan:
    """A validated demo: its run config and the bundled data split among the holders.

    Attributes
    ----------
    config : RunConfig
        The run the Simulation Engine executes.
    partitions : tuple of Dataset
        Each simulated holder's training data (the split its client recomputes).
    test_set : Dataset
        The held-out data every accuracy is measured on.
    """

    config: RunConfig
    partitions: tuple[Dataset, ...]
    test_set: Dataset

    @property
    def training_examples(self) -> int:
        """Training examples over all holders."""
        return sum(len(p) for p in self.partitions)


def plan_demo(
    *,
    rounds: int = 15,
    clients: int = 10,
    seed: int = 42,
    dataset: str = "digits",
    alpha: float = 0.5,
    epsilon: float = 8.0,
    dp: bool = True,
    secure: str = "ckks",
    attest: bool = True,
) -> DemoPlan:
    """Validate the demo's options and split the bundled dataset.

    Parameters
    ----------
    rounds : int, default 15
        Federated rounds.
    clients : int, default 10
        Simulated data holders.
    seed : int, default 42
        Seed for the data split, the model and training.
    dataset : {"digits", "mnist"}, default "digits"
        Bundled dataset.
    alpha : float, default 0.5
        Dirichlet non-IID concentration.
    epsilon : float, default 8.0
        Each holder's ε for the whole run (local DP-SGD); validated even when
        ``dp`` is false.
    dp : bool, default True
        Train with local DP-SGD.
    secure : {"ckks", "secagg+", "crypten", "none"}, default "ckks"
        Secure aggregation mode.
    attest : bool, default True
        Score and attest every round on the embedded chain.

    Raises
    ------
    ConfigError
        If an option is out of range (the message names the config key).
    DataError
        If the dataset is not a bundled one or cannot be split this way.

    Examples
    --------
    >>> plan = plan_demo(rounds=2, clients=4, secure="none", attest=False)
    >>> plan.config.federation.clients, len(plan.partitions)
    (4, 4)
    """
    config = RunConfig().with_overrides(
        federation={"rounds": rounds, "clients": clients, "seed": seed},
        data={"dataset": dataset, "alpha": alpha},
        privacy={"local_dp": dp, "target_epsilon": epsilon, "client_epsilon_budget": epsilon},
        secure={"mode": secure},
        attestation={"enabled": attest},
    )
    partitions, test_set, _ = partition_bundled(config.data, clients=clients, seed=seed)
    return DemoPlan(config=config, partitions=tuple(partitions), test_set=test_set)


@dataclass(frozen=True, kw_only=True)
class HolderClaim:
    """One simulated holder after verifying its records on chain and claiming.

    Attributes
    ----------
    partition : int
        The holder's client number.
    address : str
        Its wallet address.
    verified_rounds : int
        Rounds whose record of the holder checks out against the on-chain root.
    rounds : int
        Rounds of the run.
    claimed : int
        Tokens received by this claim, in base units (``10**-TOKEN_DECIMALS`` FLR).
    balance : int
        The holder's token balance afterwards, in base units.
    """

    partition: int
    address: str
    verified_rounds: int
    rounds: int
    claimed: int
    balance: int

    def to_row(self) -> dict[str, Any]:
        """The holder's row, as the claims table shows it and ``--json`` prints it."""
        return {
            "client": self.partition,
            "address": self.address,
            "verified rounds": f"{self.verified_rounds}/{self.rounds}",
            "claimed (FLR)": round(self.claimed / 10**TOKEN_DECIMALS, 2),
            "balance (FLR)": round(self.balance / 10**TOKEN_DECIMALS, 2),
        }


@dataclass(frozen=True, kw_only=True)
class DemoResult:
    """The federation's history and the baselines it is measured against.

    Attributes
    ----------
    history : History
        The run, its summary holding the baseline and the federated accuracy.
    federated_accuracy : float
        The federation's final accuracy.
    centralized_accuracy : float
        The same model trained without DP on the pooled data.
    centralized_dp_accuracy : float or None
        The same model trained with DP-SGD on the pooled data at the holders'
        ε; ``None`` when the holders trained without DP.
    epsilon_budget : float or None
        Each holder's ε for the run; ``None`` without DP.
    max_client_epsilon : float or None
        The largest ε any holder spent; ``None`` without DP.
    claims : tuple of HolderClaim
        Each holder's verification and claim (empty when not attested).
    """

    history: History
    federated_accuracy: float
    centralized_accuracy: float
    centralized_dp_accuracy: float | None = None
    epsilon_budget: float | None = None
    max_client_epsilon: float | None = None
    claims: tuple[HolderClaim, ...] = ()

    @property
    def baseline(self) -> float:
        """The accuracy the federation is compared with: centralized at the same privacy."""
        if self.centralized_dp_accuracy is not None:
            return self.centralized_dp_accuracy
        return self.centralized_accuracy

    @property
    def gap_points(self) -> float:
        """Baseline minus federated accuracy, in percentage points (2 decimals)."""
        return round(100 * (self.baseline - self.federated_accuracy), 2)

    def to_summary(self) -> dict[str, Any]:
        """The demo's fields of the ``--json`` summary (after the simulation's own)."""
        summary: dict[str, Any] = {"centralized_accuracy": self.centralized_accuracy}
        if self.centralized_dp_accuracy is not None:
            summary.update(
                epsilon_budget=self.epsilon_budget,
                max_client_epsilon=self.max_client_epsilon,
                centralized_dp_accuracy=self.centralized_dp_accuracy,
            )
        summary.update(
            gap_points=self.gap_points, rewards=[claim.to_row() for claim in self.claims]
        )
        return summary


def finish_demo(plan: DemoPlan, *, history: History, run_dir: str | Path) -> DemoResult:
    """Measure the baselines, save the history and, when attested, let every holder claim.

    Parameters
    ----------
    plan : DemoPlan
        The demo that ran.
    history : History
        What the federation recorded (:func:`fedlearn.simulation.simulate`).
    run_dir : str or Path
        The run directory; ``history.json`` and ``history.png`` are written
        there, with the baseline in the history's summary.

    Raises
    ------
    ValueError
        If the history holds no accuracy (no round was evaluated).
    """
    federated = history.final_accuracy
    if federated is None:
        raise ValueError("the federation recorded no accuracy to compare with a baseline")
    cfg, run_dir = plan.config, Path(run_dir)
    pooled = Dataset(
        np.concatenate([p.x for p in plan.partitions]),
        np.concatenate([p.y for p in plan.partitions]),
    )
    private = cfg.privacy.local_dp
    result = DemoResult(
        history=history,
        federated_accuracy=federated,
        centralized_accuracy=_centralized_accuracy(cfg, pooled, plan.test_set, private=False),
        centralized_dp_accuracy=(
            _centralized_accuracy(cfg, pooled, plan.test_set, private=True) if private else None
        ),
        epsilon_budget=cfg.privacy.target_epsilon if private else None,
        max_client_epsilon=history.rounds[-1].max_client_epsilon if private else None,
    )
    history.summary.update(centralized_accuracy=result.baseline, federated_accuracy=federated)
    history.save(run_dir / "history.json")
    history.plot(run_dir / "history.png")
    write_report(run_dir)  # again: now with the centralized baseline
    if not cfg.attestation.enabled:
        return result
    claims = _holders_claim(
        run_dir=run_dir, clients=cfg.federation.clients, rounds=len(history.rounds)
    )
    return replace(result, claims=claims)


def _centralized_accuracy(
    cfg: RunConfig, pooled: Dataset, test_set: Dataset, *, private: bool
) -> float:
    """Accuracy of the run's model trained on the pooled data (DP-SGD at the run's ε if private)."""
    rounds, seed = cfg.federation.rounds, cfg.federation.seed
    with torch.random.fork_rng(devices=[]):  # the same initial model as the federation's
        torch.manual_seed(seed)
        model = default_model(cfg)
    if not private:
        train_centralized(model, pooled, cfg.train, rounds=rounds, seed=seed)
        return evaluate(model, test_set).accuracy
    from fedlearn.privacy.local_dp import train_centralized_dp

    train_centralized_dp(
        model,
        pooled,
        cfg.train,
        rounds=rounds,
        target_epsilon=cfg.privacy.target_epsilon,
        delta=cfg.privacy.delta,
        max_grad_norm=cfg.privacy.max_grad_norm,
        generator=torch.Generator().manual_seed(seed),
    )
    return evaluate(model, test_set).accuracy


def _holders_claim(*, run_dir: Path, clients: int, rounds: int) -> tuple[HolderClaim, ...]:
    """Each simulated holder verifies its records against the chain and claims its reward."""
    from fedlearn.attestation.bundle import claim_rewards, verify_bundles
    from fedlearn.attestation.client_mod import partition_wallet, wallet_secret
    from fedlearn.attestation.session import run_contracts

    chain, contracts = run_contracts(run_dir)
    claims = []
    try:
        for partition in range(clients):
            account = partition_wallet(wallet_secret(run_dir), partition=partition)
            report = verify_bundles(run_dir=run_dir, address=account.address, contracts=contracts)
            chain.ensure_gas(account.address)
            claimed = claim_rewards(run_dir=run_dir, account=account, contracts=contracts)
            claims.append(
                HolderClaim(
                    partition=partition,
                    address=account.address,
                    verified_rounds=len(report.verified),
                    rounds=rounds,
                    claimed=claimed.total,
                    balance=contracts.token_balance(account.address),
                )
            )
    finally:
        chain.close()
    return tuple(claims)
