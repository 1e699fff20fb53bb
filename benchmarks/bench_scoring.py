"""``scoring_cost``: contribution scoring time per round over the round's local training time.

What a plaintext attested run adds to every round is the server's scoring of
each update on its validation data (:class:`fedlearn.strategies.ContributionScoring`,
GTG-Shapley by default). This benchmark measures that cost against what the
round costs anyway, the clients' local training, in the same process:

* the federation is fedlearn's default (:class:`~fedlearn.config.RunConfig`):
  10 clients, Dirichlet(0.5) partitions of the bundled dataset from
  :func:`fedlearn.data.partition_bundled`, the default MLP, the default
  :class:`~fedlearn.config.TrainConfig` (2 local epochs, batch 16), and the
  server's held-out split as the scoring validation set (as ``server_app``
  does);
* each round trains the 10 clients' updates with :func:`fedlearn.training.train`
  from the common global model, one after the other, seeded per
  (run, round, client) like fedlearn's clients, and times each client;
* then scores the round's updates with each method, as
  ``ContributionScoring.score`` does: updates ``local − global`` in float64,
  weights = example counts capped at ``secure.max-examples``,
  :func:`~fedlearn.strategies.update_utility` with the negative validation
  loss of the moved global model (state load + :func:`fedlearn.training.evaluate`),
  then :func:`~fedlearn.strategies.gtg_shapley` (default tolerances, seeded by
  ``(seed, round)``) or :func:`~fedlearn.strategies.leave_one_out`, each with a
  fresh memo; the methods alternate order from round to round;
* the global model moves on by FedAvg (example-weighted mean of the local
  models), so later rounds are scored on a trained model, as in a run.

Times are the calling thread's CPU time (``time.thread_time``, one torch
thread, as a simulated client): the machine is shared and waiting for a core
is no cost of either side; wall-time ratios are recorded alongside. The
headline is, per dataset, the median over all rounds and seeds of
``GTG-Shapley scoring time / sum of the 10 clients' training times`` (the
round's training compute), and the largest of these medians over datasets.
Against the slowest client's training (the round's training latency when
clients train in parallel on their own machines) the ratios are 10 times
larger or so; they are in the summary too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from benchmarks.core import BenchContext, Outcome, Target, median, register
from fedlearn.client_app import client_seed, default_model
from fedlearn.config import RunConfig
from fedlearn.data import Dataset, partition_bundled
from fedlearn.strategies import gtg_shapley, leave_one_out, update_utility
from fedlearn.strategies.shapley import ContributionScores
from fedlearn.training import evaluate, train

__all__ = ["scoring_cost"]

CLIENTS = 10
METHODS = ("gtg-shapley", "leave-one-out")
#: Per mode: datasets, rounds per run, seeds (one run per dataset and seed).
SETTINGS: dict[str, dict[str, Any]] = {
    "quick": {"datasets": ("digits",), "rounds": 4, "seeds": (0, 1)},
    "full": {"datasets": ("digits", "mnist"), "rounds": 10, "seeds": (0, 1, 2)},
}

State = dict[str, NDArray[Any]]


def _state(model: nn.Module) -> State:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _load(model: nn.Module, state: State) -> None:
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})


def _scorer(
    model: nn.Module, global_state: State, validation: Dataset
) -> Callable[[dict[str, NDArray[np.float64]]], float]:
    """``ContributionScoring._evaluate``: negative validation loss of global + aggregate."""

    def negative_loss(aggregate: dict[str, NDArray[np.float64]]) -> float:
        state: dict[str, torch.Tensor] = {}
        for key, base in global_state.items():
            if np.issubdtype(base.dtype, np.floating):
                moved = (base.astype(np.float64) + aggregate[key]).astype(base.dtype)
            else:
                moved = base
            state[key] = torch.from_numpy(np.ascontiguousarray(moved))
        model.load_state_dict(state, strict=True)
        return -evaluate(model, validation).loss

    return negative_loss


def _score(
    method: str,
    *,
    seed: int,
    server_round: int,
    global_state: State,
    local_states: dict[int, State],
    examples: dict[int, int],
    max_examples: int,
    model: nn.Module,
    validation: Dataset,
) -> ContributionScores:
    """Score one round's updates the way ``ContributionScoring.score`` does."""
    updates = {
        k: {n: a.astype(np.float64) - global_state[n].astype(np.float64) for n, a in s.items()}
        for k, s in local_states.items()
    }
    weights = {k: min(float(n), float(max_examples)) for k, n in examples.items()}
    utility = update_utility(
        updates=updates, weights=weights, evaluate=_scorer(model, global_state, validation)
    )
    if method == "leave-one-out":
        return leave_one_out(utility, clients=updates)
    round_seed = int(np.random.SeedSequence([seed, server_round]).generate_state(1)[0])
    return gtg_shapley(utility, clients=updates, seed=round_seed)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """Run ``fn``; return its result, thread CPU seconds and wall seconds."""
    cpu, wall = time.thread_time(), time.perf_counter()
    result = fn()
    return result, time.thread_time() - cpu, time.perf_counter() - wall


def _run(dataset: str, *, seed: int, rounds: int) -> list[dict[str, Any]]:
    """One in-process federation; one record per round."""
    cfg = RunConfig().with_overrides(
        federation={"clients": CLIENTS, "rounds": rounds, "seed": seed},
        data={"dataset": dataset},
    )
    partitions, validation, _ = partition_bundled(cfg.data, clients=CLIENTS, seed=seed)
    torch.manual_seed(seed)
    global_model = default_model(cfg)
    scoring_model = default_model(cfg)
    local = default_model(cfg)
    global_state = _state(global_model)
    examples = {k: len(p) for k, p in enumerate(partitions)}
    # Warm-up (untimed): torch's first backward and forward passes pay one-off set-up costs.
    _load(local, global_state)
    train(local, partitions[0], cfg.train, seed=seed)
    evaluate(scoring_model, validation)
    records = []
    for server_round in range(1, rounds + 1):
        local_states: dict[int, State] = {}
        train_cpu: list[float] = []
        train_wall: list[float] = []
        for client, data in enumerate(partitions):
            _load(local, global_state)
            seed_k = client_seed(seed, server_round, client)
            _, cpu, wall = _timed(partial(train, local, data, cfg.train, seed=seed_k))
            local_states[client] = _state(local)
            train_cpu.append(cpu)
            train_wall.append(wall)
        order = METHODS if server_round % 2 else METHODS[::-1]
        scored: dict[str, dict[str, Any]] = {}
        for method in order:
            result, cpu, wall = _timed(
                partial(
                    _score,
                    method,
                    seed=seed,
                    server_round=server_round,
                    global_state=global_state,
                    local_states=local_states,
                    examples=examples,
                    max_examples=cfg.secure.max_examples,
                    model=scoring_model,
                    validation=validation,
                )
            )
            scored[method] = {
                "cpu_seconds": cpu,
                "wall_seconds": wall,
                "evaluations": result.evaluations,
                "permutations": result.permutations,
                "converged": result.converged,
                "round_truncated": result.round_truncated,
                "utility_gain": result.utility_all - (result.utility_empty or 0.0)
                if result.utility_empty is not None
                else None,
            }
        total = float(sum(examples.values()))
        global_state = {
            k: (
                sum(
                    (examples[c] / total) * s[k].astype(np.float64) for c, s in local_states.items()
                )
            ).astype(v.dtype)
            if np.issubdtype(v.dtype, np.floating)
            else v
            for k, v in global_state.items()
        }
        _load(global_model, global_state)
        records.append(
            {
                "dataset": dataset,
                "seed": seed,
                "round": server_round,
                "train_cpu_seconds": train_cpu,
                "train_wall_seconds": train_wall,
                "scoring": scored,
                "accuracy_after": evaluate(global_model, validation).accuracy,
                "validation_examples": len(validation),
            }
        )
    return records


def _attribution(dataset: str, *, repeat: int = 200) -> dict[str, float]:
    """Median ms of the parts of one coalition utility, outside any scoring."""
    cfg = RunConfig().with_overrides(federation={"clients": CLIENTS}, data={"dataset": dataset})
    _, validation, _ = partition_bundled(cfg.data, clients=CLIENTS, seed=0)
    torch.manual_seed(0)
    model = default_model(cfg)
    state = _state(model)
    rng = np.random.default_rng(0)
    updates = {
        k: {n: rng.normal(0.0, 1e-3, a.shape) for n, a in state.items()} for k in range(CLIENTS)
    }
    weights = {k: float(100 + k) for k in range(CLIENTS)}
    scorer = _scorer(model, state, validation)
    utility = update_utility(updates=updates, weights=weights, evaluate=scorer)
    everyone = frozenset(range(CLIENTS))
    zero = {n: np.zeros(a.shape) for n, a in state.items()}

    def ms(fn: Callable[[], Any]) -> float:
        for _ in range(10):
            fn()
        times = []
        for _ in range(repeat):
            start = time.thread_time()
            fn()
            times.append(time.thread_time() - start)
        return 1000 * median(times)

    return {
        "forward pass on the validation split (evaluate)": ms(partial(evaluate, model, validation)),
        "state load incl. float64 round trip": ms(partial(scorer, zero))
        - ms(partial(evaluate, model, validation)),
        "whole utility of the 10-client coalition": ms(partial(utility, everyone)),
        "whole utility of a 1-client coalition": ms(partial(utility, frozenset({0}))),
    }


def _ratios(records: list[dict[str, Any]], method: str, *, clock: str, against: str) -> list[float]:
    pick = sum if against == "sum" else max
    return [
        r["scoring"][method][f"{clock}_seconds"] / pick(r[f"train_{clock}_seconds"])
        for r in records
    ]


@register(
    "scoring_cost",
    target=Target("<=", 1.0),
    description=(
        "Server-side contribution scoring time per round (GTG-Shapley, and leave-one-out, on "
        "the server's validation split, as `ContributionScoring` scores) divided by the "
        "round's local training time of the 10 clients (`fedlearn.training.train`, default "
        "TrainConfig, from the common global model), measured in the same process, CPU time "
        "of one thread; default federation (Dirichlet 0.5, default MLP)."
    ),
)
def scoring_cost(ctx: BenchContext) -> Outcome:
    """Measure contribution scoring's cost per round relative to local training.

    Parameters
    ----------
    ctx : BenchContext
        Runner context (mode, scratch directory, progress).

    Returns
    -------
    Outcome
        Headline: the largest, over datasets, median GTG-Shapley / training time ratio.
    """
    mode = "quick" if ctx.quick else "full"
    setting = SETTINGS[mode]
    datasets: tuple[str, ...] = setting["datasets"]
    rounds, seeds = int(setting["rounds"]), tuple(setting["seeds"])
    torch.set_num_threads(1)  # as a simulated client; the scoring server gets the same
    runs = [(d, s) for d in datasets for s in seeds]
    ctx.plan(len(runs))
    records: list[dict[str, Any]] = []
    loads: list[float] = []
    for index, (dataset, seed) in enumerate(runs, start=1):
        ctx.status(f"scoring_cost: {dataset}, seed {seed} ({index}/{len(runs)})")
        loads.append(os.getloadavg()[0])
        run = _run(dataset, seed=seed, rounds=rounds)
        records += run
        gtg = median(_ratios(run, "gtg-shapley", clock="cpu", against="sum"))
        ctx.log(
            f"{dataset} seed {seed}: median GTG-Shapley / training {gtg:.3f}, "
            f"evaluations {[r['scoring']['gtg-shapley']['evaluations'] for r in run]}, "
            f"final accuracy {run[-1]['accuracy_after']:.3f}"
        )
        ctx.advance()

    def of(dataset: str) -> list[dict[str, Any]]:
        return [r for r in records if r["dataset"] == dataset]

    headline_per_dataset = {
        d: median(_ratios(of(d), "gtg-shapley", clock="cpu", against="sum")) for d in datasets
    }
    value = max(headline_per_dataset.values())
    per_dataset: dict[str, Any] = {}
    for d in datasets:
        rows = of(d)
        train_sum = [sum(r["train_cpu_seconds"]) for r in rows]
        entry: dict[str, Any] = {
            "median training CPU s per round (10 clients)": median(train_sum),
            "median slowest client CPU s": median(max(r["train_cpu_seconds"]) for r in rows),
        }
        for method in METHODS:
            evals = [r["scoring"][method]["evaluations"] for r in rows]
            cpu = [r["scoring"][method]["cpu_seconds"] for r in rows]
            entry[method] = {
                "median ratio to training (CPU)": median(
                    _ratios(rows, method, clock="cpu", against="sum")
                ),
                "median ratio to training (wall)": median(
                    _ratios(rows, method, clock="wall", against="sum")
                ),
                "max ratio to training (CPU)": max(
                    _ratios(rows, method, clock="cpu", against="sum")
                ),
                "median ratio to slowest client (CPU)": median(
                    _ratios(rows, method, clock="cpu", against="max")
                ),
                "median scoring CPU s": median(cpu),
                "evaluations median [min, max]": f"{median(evals):g} [{min(evals)}, {max(evals)}]",
                "ms per evaluation": 1000 * sum(cpu) / sum(evals),
            }
        gtg_rows = [r["scoring"]["gtg-shapley"] for r in rows]
        entry["gtg-shapley"]["rounds truncated / not converged"] = (
            f"{sum(g['round_truncated'] for g in gtg_rows)} / "
            f"{sum(not g['converged'] for g in gtg_rows)} of {len(rows)}"
        )
        ms_eval = entry["gtg-shapley"]["ms per evaluation"]
        entry["exact Shapley estimate (2^10 evaluations), ratio to training"] = (
            2**CLIENTS * ms_eval / 1000 / median(train_sum)
        )
        entry["median GTG-Shapley ratio per round"] = [
            median(
                _ratios(
                    [r for r in rows if r["round"] == k], "gtg-shapley", clock="cpu", against="sum"
                )
            )
            for k in range(1, rounds + 1)
        ]
        entry["validation examples"] = rows[0]["validation_examples"]
        entry["final accuracy per seed"] = [
            r["accuracy_after"] for r in rows if r["round"] == rounds
        ]
        entry["ms per coalition utility, by part (median, outside scoring)"] = _attribution(d)
        per_dataset[d] = entry

    summary: dict[str, Any] = {
        "headline: median GTG-Shapley / training (CPU) per dataset": headline_per_dataset,
        **{f"{d}": per_dataset[d] for d in datasets},
        "load average (1 min) before each run": loads,
    }
    notes = [
        "Training time = the sum of the 10 clients' `train` calls in the round (the round's "
        "training compute; on one machine, its duration). Clients that train in parallel on "
        "their own machines take only as long as the slowest one: see 'ratio to slowest "
        "client', the scoring's added latency per round. Scoring time includes computing "
        "the updates (local − global, float64) and every coalition utility: the FedAvg "
        "average of the coalition's updates, the state load and one forward pass over the "
        "validation split; an 'evaluation' is one distinct coalition utility (memoised). "
        "GTG-Shapley uses ContributionScoring's defaults (tolerances 1e-3, 0.05 convergence "
        "over 3 cycles, at most 50 cycles); a round whose utility gain is below 1e-3 is "
        "truncated (2 evaluations). The exact-Shapley figure is an estimate from the "
        "measured ms per evaluation, not a measurement.",
    ]
    for d in datasets:
        gtg, loo = per_dataset[d]["gtg-shapley"], per_dataset[d]["leave-one-out"]
        parts = per_dataset[d]["ms per coalition utility, by part (median, outside scoring)"]
        forward = parts["forward pass on the validation split (evaluate)"]
        notes.append(
            f"Where the time goes ({d}): GTG-Shapley evaluated "
            f"{gtg['evaluations median [min, max]']} distinct coalitions per round (of "
            f"2^{CLIENTS} = {2**CLIENTS} possible; rounds truncated / not converged: "
            f"{gtg['rounds truncated / not converged']}) at {gtg['ms per evaluation']:.2f} ms "
            f"each, of which the forward pass over the {per_dataset[d]['validation examples']} "
            f"validation examples is {forward:.2f} ms; the rest is the state load and the "
            f"coalition average of the updates. Leave-one-out needs {CLIENTS + 1} evaluations: "
            f"{loo['median ratio to training (CPU)']:.3f}x."
        )
    return Outcome(
        figure=(
            "GTG-Shapley scoring time / the round's local training time, 10 clients "
            f"({', '.join(datasets)}; median over rounds, worst dataset)"
        ),
        value=value,
        unit="x",
        settings={
            "mode": mode,
            "clients": CLIENTS,
            "datasets": list(datasets),
            "rounds_per_run": rounds,
            "seeds": list(seeds),
            "methods": list(METHODS),
            "run_config": RunConfig().to_dict(),
            "clock": "time.thread_time (CPU of the calling thread), torch.set_num_threads(1)",
        },
        summary=summary,
        raw={"rounds": records},
        notes=notes,
    )
