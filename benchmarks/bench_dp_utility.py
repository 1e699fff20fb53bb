"""``dp_utility``: federated accuracy under local DP over centralized DP-SGD accuracy, same ε.

Federated side: :func:`fedlearn.simulation.simulate` on Flower's Simulation
Engine, 10 clients holding Dirichlet(α = 0.5) partitions of the digits data
(:func:`fedlearn.data.partition_bundled`, seed 42), FedAvg for 15 rounds, every
client running DP-SGD (``privacy.local_dp``) with σ calibrated so that its ε
after all rounds is the target ε, and enforcing that ε as its budget
(``privacy.client_epsilon_budget``). Accuracy is the server's, on the held-out
test split, after the last round. Federated evaluation is off
(``fraction_evaluate = 0``), so every client trains on its whole partition.
The wider offline search behind :data:`CANDIDATES` is summarised in the
benchmark's notes.

Centralized side: :func:`fedlearn.privacy.local_dp.train_centralized_dp` on the
pooled partitions (exactly the data the clients train on), the same initial
model, the same DP-SGD hyperparameters and as many expected epochs as each
client trains over the run (``rounds × local_epochs``), σ calibrated to the same
ε and δ; evaluated on the same test split. Median over seeds.

Hyperparameters: in the full setting, a small grid of DP-SGD settings (batch
size, learning rate, clipping norm, local epochs, momentum), fedlearn's default
among them, is first tried at ε = 3 on both sides with an in-process FedAvg
loop (fedlearn's own ``plan_dp_sgd``/``train_dp_sgd`` per client, weighted
averaging as Flower's FedAvg, no Ray: fast but not the reported figure). The
setting with the best median *federated* accuracy is then run through
``simulate`` at every ε; the centralized baseline gets the same setting. The
quick setting skips the grid and uses :data:`CHOSEN`, the setting the full
runs selected. Non-private federated (``simulate``) and centralized
(:func:`fedlearn.training.train_centralized`) runs with fedlearn's default
TrainConfig are reported for reference.

Federated accuracy is the median of three ``simulate`` runs per ε (one in the
quick setting): ``simulate``'s DP noise is seeded from each holder's fresh
secret, so runs differ, by several points at ε = 3. The headline is the
smallest ratio of medians over the ε values run.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.core import BenchContext, Outcome, Target, median, register
from fedlearn.client_app import client_seed, default_model
from fedlearn.config import RunConfig, TrainConfig
from fedlearn.data import Dataset, partition_bundled
from fedlearn.history import History
from fedlearn.privacy.accounting import calibrate_noise_multiplier
from fedlearn.privacy.local_dp import DPSGDPlan, plan_dp_sgd, train_centralized_dp, train_dp_sgd
from fedlearn.simulation import simulate
from fedlearn.training import evaluate, train_centralized

__all__ = ["dp_utility"]

CLIENTS = 10
ALPHA = 0.5
SEED = 42
DELTA = 1e-5
EXPLORE_EPSILON = 3.0


@dataclass(frozen=True)
class DPSetting:
    """DP-SGD hyperparameters shared by both sides."""

    batch_size: int
    learning_rate: float
    max_grad_norm: float
    local_epochs: int = 2
    momentum: float = 0.9

    @property
    def label(self) -> str:
        return (
            f"batch {self.batch_size}, lr {self.learning_rate:g}, C {self.max_grad_norm:g}, "
            f"{self.local_epochs} local epochs, momentum {self.momentum:g}"
        )

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            local_epochs=self.local_epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            momentum=self.momentum,
        )


#: fedlearn's defaults (TrainConfig() and PrivacyConfig().max_grad_norm).
DEFAULT_DP = DPSetting(
    batch_size=TrainConfig().batch_size,
    learning_rate=TrainConfig().learning_rate,
    max_grad_norm=1.0,
    local_epochs=TrainConfig().local_epochs,
    momentum=TrainConfig().momentum,
)
#: The grid tried at ε = 3 in the full setting (chosen from a wider offline search).
CANDIDATES: tuple[DPSetting, ...] = (
    DEFAULT_DP,
    DPSetting(batch_size=32, learning_rate=0.2, max_grad_norm=1.0, local_epochs=1),
    DPSetting(batch_size=64, learning_rate=0.2, max_grad_norm=1.0),
    DPSetting(batch_size=64, learning_rate=0.1, max_grad_norm=2.0),
    DPSetting(batch_size=64, learning_rate=0.5, max_grad_norm=1.0, momentum=0.5),
)
#: The setting the full run selects (deterministic: seeded in-process runs); --quick uses it.
CHOSEN = DPSetting(batch_size=64, learning_rate=0.1, max_grad_norm=2.0)
#: Centralized DP-SGD tuned for itself rather than held to the federation's 30 epochs:
#: (setting, expected epochs), reported as a stricter reference next to the headline.
CENTRAL_TUNED: tuple[tuple[DPSetting, int], ...] = (
    (
        DPSetting(
            batch_size=64, learning_rate=0.5, max_grad_norm=1.0, local_epochs=1, momentum=0.5
        ),
        5,
    ),
    (
        DPSetting(
            batch_size=64, learning_rate=0.5, max_grad_norm=1.0, local_epochs=1, momentum=0.5
        ),
        10,
    ),
)

#: The wider search (in-process FedAvg, ε = 3, 15 rounds, one generator per run seeded 0..k-1)
#: that :data:`CANDIDATES` was drawn from: median federated / centralized accuracy.
OFFLINE_SEARCH = (
    "Offline search behind the grid (in-process FedAvg at ε=3, 15 rounds, median of 2-3 "
    "seeds, federated / centralized accuracy; batch b, learning rate, clipping norm C, "
    "local epochs E, momentum m 0.9 unless given): "
    "b16 lr0.05 C1 E2 (fedlearn default) 0.79/0.78; b16 lr0.08 0.72/0.76; "
    "b32 lr0.1 0.79/0.81; b32 lr0.15 0.79/0.75; b32 lr0.1 E3 0.80/0.78; "
    "b32 lr0.2 E1 0.81/0.77; b64 lr0.05 0.54/0.90; b64 lr0.15 0.77/0.84; "
    "b64 lr0.2 0.80/0.81; b64 lr0.25 0.80/0.79; b64 lr0.3 0.79/0.79; b64 lr0.5 0.74/0.74; "
    "b64 lr0.2 E1 0.55/0.83; b64 lr0.3 E1 0.65/0.79; b64 lr0.5 E1 0.76/0.76; "
    "b64 lr0.2 E3 0.76/0.82; b64 lr0.2 E4 0.71/0.73; b64 lr0.1 C2 0.81/0.81; "
    "b64 lr0.2 C2 0.75/0.76; b64 lr0.1 C5 0.71/0.74; b64 lr0.4 C0.5 0.80/0.82; "
    "b64 lr0.5 m0.5 0.80/0.87; b64 lr1.0 m0 0.78/0.86; b64 lr2.0 m0 0.70/0.81; "
    "b128 lr0.2 0.73/0.85; b128 lr0.4 0.78/0.81; b140 (full batch) lr0.5 0.75/0.81. "
    "Federated accuracy is flat at about 0.78-0.81 wherever lr × C is about 0.05 × batch/16 "
    "and E = 2 (seed spread ±3 points); centralized DP-SGD, trained for the same 30 "
    "expected epochs, prefers smaller steps or less momentum. Checked at ε=1 and ε=8 "
    "(4 seeds): federated 0.40-0.47 and 0.81-0.85 for the default, b64 lr0.2, "
    "b64 lr0.5 m0.5 and b32 lr0.2 E1 alike."
)

SETTINGS: dict[str, dict[str, Any]] = {
    "quick": {
        "epsilons": [3.0],
        "rounds": 10,
        "explore": False,
        "central_seeds": 3,
        "simulate_runs": 1,
    },
    "full": {
        "epsilons": [1.0, 3.0, 8.0],
        "rounds": 15,
        "explore": True,
        "explore_seeds": 3,
        "central_seeds": 3,
        "simulate_runs": 3,
    },
}


# --------------------------------------------------------------------------- helpers


def _run_config(rounds: int, setting: DPSetting | None, epsilon: float | None) -> RunConfig:
    """The federation's config: DP-SGD with ``setting`` at ``epsilon``, or non-private."""
    sections: dict[str, dict[str, Any]] = {
        "federation": {
            "rounds": rounds,
            "clients": CLIENTS,
            "seed": SEED,
            "fraction_evaluate": 0.0,
        },
        "data": {"alpha": ALPHA},
    }
    if setting is not None and epsilon is not None:
        sections["train"] = {
            "batch_size": setting.batch_size,
            "learning_rate": setting.learning_rate,
            "local_epochs": setting.local_epochs,
            "momentum": setting.momentum,
        }
        sections["privacy"] = {
            "local_dp": True,
            "target_epsilon": epsilon,
            "client_epsilon_budget": epsilon,
            "delta": DELTA,
            "max_grad_norm": setting.max_grad_norm,
        }
    return RunConfig().with_overrides(**sections)


def _initial_model(cfg: RunConfig) -> torch.nn.Module:
    """The server's initial global model (seeded as :mod:`fedlearn.server_app` does)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.federation.seed)
        return default_model(cfg)


@functools.lru_cache(maxsize=256)
def _sigma(epsilon: float, sample_rate: float, steps: int) -> float:
    return calibrate_noise_multiplier(
        target_epsilon=epsilon, delta=DELTA, sample_rate=sample_rate, steps=steps
    )


def fedavg_in_process(
    setting: DPSetting,
    epsilon: float,
    rounds: int,
    parts: list[Dataset],
    test: Dataset,
    seed: int,
) -> float:
    """FedAvg with every client running fedlearn's DP-SGD, in this process (no Ray).

    Each round each client starts from the global model, runs ``train_dp_sgd`` with
    the plan and calibrated σ fedlearn's client uses, and the server averages the
    models weighted by examples (Flower's FedAvg). Returns the test accuracy.
    """
    cfg = _run_config(rounds, setting, epsilon)
    train_cfg = setting.train_config()
    global_model = _initial_model(cfg)
    local = _initial_model(cfg)
    weights = np.array([len(p) for p in parts], dtype=np.float64)
    weights /= weights.sum()
    for server_round in range(1, rounds + 1):
        start = {k: v.clone() for k, v in global_model.state_dict().items()}
        acc = {k: torch.zeros_like(v) for k, v in start.items()}
        for client, (part, w) in enumerate(zip(parts, weights, strict=True)):
            local.load_state_dict(start)
            unit = plan_dp_sgd(
                num_examples=len(part),
                train=train_cfg,
                noise_multiplier=1.0,
                max_grad_norm=setting.max_grad_norm,
            )
            sigma = _sigma(epsilon, unit.sample_rate, unit.steps * rounds)
            generator = torch.Generator().manual_seed(client_seed(seed, server_round, client))
            plan = DPSGDPlan(unit.sample_rate, unit.steps, sigma, setting.max_grad_norm)
            train_dp_sgd(local, part, train_cfg, plan=plan, generator=generator)
            for k, v in local.state_dict().items():
                acc[k] += float(w) * v
        global_model.load_state_dict(acc)
    return evaluate(global_model, test).accuracy


@functools.lru_cache(maxsize=256)
def _centralized_dp_cached(setting: DPSetting, epsilon: float, rounds: int, seed: int) -> float:
    parts, test = _data()
    pooled = _pool(parts)
    model = _initial_model(_run_config(rounds, setting, epsilon))
    train_centralized_dp(
        model,
        pooled,
        setting.train_config(),
        rounds=rounds,
        target_epsilon=epsilon,
        delta=DELTA,
        max_grad_norm=setting.max_grad_norm,
        generator=torch.Generator().manual_seed(seed),
    )
    return evaluate(model, test).accuracy


def centralized_dp(setting: DPSetting, epsilon: float, rounds: int, seeds: int) -> list[float]:
    """Centralized DP-SGD test accuracy for seeds 0..seeds-1."""
    return [_centralized_dp_cached(setting, epsilon, rounds, s) for s in range(seeds)]


def centralized_nonprivate(rounds: int, seeds: int) -> list[float]:
    parts, test = _data()
    pooled = _pool(parts)
    out = []
    for s in range(seeds):
        cfg = _run_config(rounds, None, None)
        model = _initial_model(cfg)
        train_centralized(model, pooled, cfg.train, rounds=rounds, seed=s)
        out.append(evaluate(model, test).accuracy)
    return out


@functools.lru_cache(maxsize=1)
def _data() -> tuple[list[Dataset], Dataset]:
    cfg = _run_config(1, None, None)
    parts, test, _ = partition_bundled(cfg.data, clients=CLIENTS, seed=SEED)
    return parts, test


def _pool(parts: list[Dataset]) -> Dataset:
    return Dataset(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))


def _no_fraction_evaluate_notice(record: logging.LogRecord) -> bool:
    return "fraction_evaluate is set to 0.0" not in str(record.getMessage())


def _simulate(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.addFilter(_no_fraction_evaluate_notice)  # intended here: printed every run
    started = time.perf_counter()
    try:
        history: History = simulate(cfg, run_dir=run_dir)
    finally:
        flwr_logger.removeFilter(_no_fraction_evaluate_notice)
    wall = time.perf_counter() - started
    rounds = history.rounds
    if len(rounds) != cfg.federation.rounds:
        raise RuntimeError(f"completed {len(rounds)} of {cfg.federation.rounds} rounds")
    final = history.final_accuracy
    if final is None:
        raise RuntimeError("the run recorded no server-side accuracy")
    return {
        "final_accuracy": final,
        "accuracy_per_round": [r.accuracy for r in rounds],
        "max_client_epsilon": rounds[-1].max_client_epsilon,
        "rejected_replies": {str(r.round): r.rejected for r in rounds if r.rejected},
        "skipped_rounds": [r.round for r in rounds if not r.applied],
        "noise_multipliers": sorted(
            {round(float(p["noise-multiplier"]), 4) for p in rounds[-1].privacy.values()}
        ),
        "wall_seconds": wall,
    }


# --------------------------------------------------------------------------- the benchmark


@register(
    "dp_utility",
    target=Target(">=", 0.95),
    description=(
        "Federated accuracy with local DP-SGD on every client (`fedlearn.simulation.simulate`, "
        "10 clients, Dirichlet 0.5 digits, 15 rounds, each client's ε over the whole run = "
        "1, 3, 8) divided by centralized DP-SGD accuracy "
        "(`fedlearn.privacy.local_dp.train_centralized_dp` on the pooled client data) at the "
        "same ε, hyperparameters and test split; the headline is the smallest ratio."
    ),
)
def dp_utility(ctx: BenchContext) -> Outcome:
    """Compare federated local-DP accuracy with centralized DP-SGD at equal ε.

    Parameters
    ----------
    ctx : BenchContext
        Runner context (mode, scratch directory, progress).

    Returns
    -------
    Outcome
        Headline: min over ε of federated accuracy / centralized accuracy.
    """
    mode = "quick" if ctx.quick else "full"
    setting_cfg = SETTINGS[mode]
    epsilons: list[float] = list(setting_cfg["epsilons"])
    rounds = int(setting_cfg["rounds"])
    central_seeds = int(setting_cfg["central_seeds"])
    repeats = int(setting_cfg["simulate_runs"])
    explore = bool(setting_cfg["explore"])
    explore_seeds = int(setting_cfg.get("explore_seeds", 0))
    parts, test = _data()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the simulated clients
    ctx.plan((len(CANDIDATES) if explore else 0) + (1 + repeats) * len(epsilons) + 2)
    started = time.perf_counter()
    exploration: dict[str, dict[str, Any]] = {}
    try:
        chosen = CHOSEN
        if explore:
            for setting in CANDIDATES:
                ctx.status(f"dp_utility: ε={EXPLORE_EPSILON:g} in-process, {setting.label}")
                fed = [
                    fedavg_in_process(setting, EXPLORE_EPSILON, rounds, parts, test, seed=s)
                    for s in range(explore_seeds)
                ]
                cen = centralized_dp(setting, EXPLORE_EPSILON, rounds, explore_seeds)
                exploration[setting.label] = {
                    "setting": asdict(setting),
                    "federated_in_process": fed,
                    "centralized": cen,
                    "federated_median": median(fed),
                    "centralized_median": median(cen),
                }
                ctx.log(
                    f"ε={EXPLORE_EPSILON:g} {setting.label}: federated (in-process) "
                    f"{median(fed):.4f}, centralized {median(cen):.4f}"
                )
                ctx.advance()
            best = max(exploration.values(), key=lambda e: e["federated_median"])
            chosen = DPSetting(**best["setting"])
        exploration_seconds = time.perf_counter() - started

        runs: dict[str, list[dict[str, Any]]] = {}
        central: dict[str, list[float]] = {}
        for eps in epsilons:
            key = f"{eps:g}"
            ctx.status(f"dp_utility: centralized DP-SGD, ε={key}")
            central[key] = centralized_dp(chosen, eps, rounds, central_seeds)
            ctx.advance()
            runs[key] = []
            for rep in range(repeats):
                ctx.status(f"dp_utility: simulate {rep + 1}/{repeats}, local DP ε={key}")
                run = _simulate(
                    _run_config(rounds, chosen, eps),
                    ctx.workdir / f"dp-eps{key}-{rep + 1}".replace(".", "_"),
                )
                runs[key].append(run)
                ctx.log(
                    f"ε={key} run {rep + 1}: federated (simulate) {run['final_accuracy']:.4f}, "
                    f"centralized {median(central[key]):.4f} (max client ε "
                    f"{run['max_client_epsilon']:.4f}, wall {run['wall_seconds']:.0f} s)"
                )
                ctx.advance()
        tuned: dict[str, dict[str, list[float]]] = {}
        for eps in epsilons:
            ctx.status(f"dp_utility: centralized DP-SGD tuned for itself, ε={eps:g}")
            tuned[f"{eps:g}"] = {
                f"batch {setting.batch_size}, lr {setting.learning_rate:g}, "
                f"C {setting.max_grad_norm:g}, momentum {setting.momentum:g}, "
                f"{epochs} epochs": centralized_dp(setting, eps, epochs, central_seeds)
                for setting, epochs in CENTRAL_TUNED
            }
        ctx.status("dp_utility: non-private references")
        central_np = centralized_nonprivate(rounds, central_seeds)
        ctx.advance()
        run_np = _simulate(_run_config(rounds, None, None), ctx.workdir / "nonprivate")
        ctx.log(
            f"non-private: federated {run_np['final_accuracy']:.4f}, centralized "
            f"{median(central_np):.4f}"
        )
        ctx.advance()
    finally:
        torch.set_num_threads(threads_before)

    fed_acc = {eps: [r["final_accuracy"] for r in rs] for eps, rs in runs.items()}
    ratios = {eps: median(fed_acc[eps]) / median(central[eps]) for eps in runs}
    headline = min(ratios.values())
    summary: dict[str, Any] = {
        f"headline: min ratio over ε ∈ {[f'{e:g}' for e in epsilons]}": headline,
        "ratio per ε (median federated simulate / median centralized)": {
            f"ε={eps}": (
                f"federated {median(fed_acc[eps]):.4f} / centralized "
                f"{median(central[eps]):.4f} = {ratios[eps]:.3f}"
            )
            for eps in runs
        },
        "DP-SGD setting used (both sides)": chosen.label,
        "stricter: federated / centralized tuned for itself (fewer epochs), per ε": {
            f"ε={eps}": {
                label: f"centralized {median(accs):.4f} {[round(a, 4) for a in accs]}, ratio "
                f"{median(fed_acc[eps]) / median(accs):.3f}"
                for label, accs in by_setting.items()
            }
            for eps, by_setting in tuned.items()
        },
        "federated accuracy per simulate run": {
            eps: [round(a, 4) for a in accs] for eps, accs in fed_acc.items()
        },
        "centralized accuracy per seed": {
            eps: [round(a, 4) for a in accs] for eps, accs in central.items()
        },
        "non-private (default TrainConfig)": (
            f"federated {run_np['final_accuracy']:.4f} (simulate), centralized "
            f"{median(central_np):.4f} (median of {[round(a, 4) for a in central_np]}); "
            f"ratio {run_np['final_accuracy'] / median(central_np):.3f}"
        ),
        "ratio to non-private centralized": {
            eps: f"federated {median(fed_acc[eps]) / median(central_np):.3f}, "
            f"centralized {median(central[eps]) / median(central_np):.3f}"
            for eps in runs
        },
        "max client ε after each run (budget = target ε)": {
            eps: [round(r["max_client_epsilon"], 4) for r in rs] for eps, rs in runs.items()
        },
        "client noise multipliers σ (smallest, largest)": {
            eps: [rs[0]["noise_multipliers"][0], rs[0]["noise_multipliers"][-1]]
            for eps, rs in runs.items()
        },
        "rejected replies / skipped rounds": (
            "none"
            if not any(
                r["rejected_replies"] or r["skipped_rounds"]
                for r in [run_np, *(r for rs in runs.values() for r in rs)]
            )
            else {
                eps: [(r["rejected_replies"], r["skipped_rounds"]) for r in rs]
                for eps, rs in runs.items()
            }
        ),
        "simulate wall seconds": {
            **{eps: [round(r["wall_seconds"], 1) for r in rs] for eps, rs in runs.items()},
            "non-private": round(run_np["wall_seconds"], 1),
        },
    }
    if exploration:
        ranked = sorted(exploration.items(), key=lambda kv: -kv[1]["federated_median"])
        summary[f"hyperparameter grid at ε={EXPLORE_EPSILON:g} (in-process, median of seeds)"] = {
            label: (
                f"federated {e['federated_median']:.4f} "
                f"{[round(a, 4) for a in e['federated_in_process']]}, "
                f"centralized {e['centralized_median']:.4f} "
                f"{[round(a, 4) for a in e['centralized']]}"
            )
            for label, e in ranked
        }
        best_central = max(exploration.values(), key=lambda e: e["centralized_median"])
        eps_key = f"{EXPLORE_EPSILON:g}"
        if eps_key in runs:
            summary[f"ε={eps_key} vs the best centralized setting of the grid"] = (
                f"federated {median(fed_acc[eps_key]):.4f} / centralized "
                f"{best_central['centralized_median']:.4f} "
                f"({DPSetting(**best_central['setting']).label}) = "
                f"{median(fed_acc[eps_key]) / best_central['centralized_median']:.3f}"
            )
        summary["grid seconds"] = round(exploration_seconds, 1)
    notes = [
        f"Federated figures are medians of {repeats} `simulate` run(s) per ε (Ray, 10 virtual "
        "clients, fraction_evaluate = 0 so clients train on their whole partition); each "
        "client calibrates σ so its ε after all rounds is the target and enforces it as its "
        "budget. Centralized figures are medians over seeds of `train_centralized_dp` on the "
        "pooled partitions with the same hyperparameters, rounds × local_epochs expected "
        "epochs. The setting was chosen by the best median federated accuracy of an "
        "in-process FedAvg loop at ε = 3 on the same test split (a selection that favours "
        "the federated side slightly; the centralized side is not tuned for itself, see the "
        "grid for its own best, and the stricter ratios against a centralized DP-SGD tuned "
        "for itself with 5 or 10 epochs). The test split has 359 examples (one example is 0.28 "
        "points); run-to-run spread of the federated accuracy under DP is several points.",
        OFFLINE_SEARCH,
    ]
    return Outcome(
        figure="min over ε of federated local-DP accuracy / centralized DP-SGD accuracy",
        value=headline,
        unit="x",
        settings={
            "mode": mode,
            "clients": CLIENTS,
            "rounds": rounds,
            "data": f"digits, Dirichlet α={ALPHA}, partition seed {SEED}, "
            f"{sum(len(p) for p in parts)} training / {len(test)} test examples",
            "partition_sizes": [len(p) for p in parts],
            "epsilons": epsilons,
            "delta": DELTA,
            "dp_setting": asdict(chosen),
            "default_dp_setting": asdict(DEFAULT_DP),
            "candidates": [asdict(c) for c in CANDIDATES] if explore else [],
            "explore_epsilon": EXPLORE_EPSILON if explore else None,
            "explore_seeds": explore_seeds,
            "simulate_runs_per_epsilon": repeats,
            "central_seeds": list(range(central_seeds)),
            "central_tuned": [
                {**asdict(setting), "expected_epochs": epochs} for setting, epochs in CENTRAL_TUNED
            ],
            "seeds": "model init torch seed 42 on both sides; centralized DP generator seeds "
            "0..k-1; in-process clients' generators client_seed(s, round, client), s = 0..k-1; "
            "simulate: each holder's noise from a fresh random secret (not repeatable)",
            "fraction_evaluate": 0.0,
            "torch_threads": 1,
        },
        summary=summary,
        raw={
            "simulate": {"dp": runs, "nonprivate": run_np},
            "centralized_dp": central,
            "centralized_nonprivate": central_np,
            "centralized_dp_tuned": tuned,
            "exploration": exploration,
        },
        notes=notes,
    )
