"""``overhead_fedavg``: fedlearn's FedAvg round time over a bare-Flower FedAvg round time.

Both sides run in the same process, one after the other, on the Simulation
Engine with the same backend config: 10 clients, the default model and the
digits data partitioned by :func:`fedlearn.data.partition_bundled`, the same
local training (:func:`fedlearn.training.train`), every client training and
evaluating every round, and server-side evaluation on the same test set.

A round's time is the interval between the ends of consecutive rounds, both
sides measured the same way: for the bare baseline the end of Flower's
``evaluate_fn``, for fedlearn the ``on_round`` callback (called after the
server-side evaluation, history and checkpoint writes). Round 1 includes the
Ray actors' start-up and is excluded. Runs alternate (ABBA) and the headline
is the ratio of the medians over all measured rounds of all repetitions.

In-process micro-measurements of the work fedlearn adds per message and per
round are recorded too (``summary["attribution"]``), and the full setting runs
a third variant, fedlearn with the partitions passed in memory
(``simulate(partitions=...)``), to show how much of the gap is the clients
rebuilding their partition for every message.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context, RecordDict

from benchmarks.bare_flower import client_app as bare_client_app
from benchmarks.bare_flower import local_data, run_bare_fedavg
from benchmarks.core import BenchContext, Outcome, Target, median, register
from fedlearn.checkpoint import save_checkpoint
from fedlearn.client_app import default_model, make_client_app, node_data
from fedlearn.config import RunConfig
from fedlearn.data import partition_bundled
from fedlearn.history import History, RoundRecord
from fedlearn.simulation import simulate

__all__ = ["overhead_fedavg"]

CLIENTS = 10
#: (rounds per run, repetitions per variant, variants) for each mode.
SETTINGS: dict[str, dict[str, Any]] = {
    "quick": {"rounds": 8, "repetitions": 2, "variants": ["bare", "fedlearn"]},
    "full": {
        "rounds": 16,
        "repetitions": 2,
        "variants": ["bare", "fedlearn", "fedlearn_in_memory"],
    },
}
VARIANT_LABELS = {
    "bare": "bare Flower FedAvg",
    "fedlearn": "fedlearn simulate()",
    "fedlearn_in_memory": "fedlearn simulate(partitions=...)",
}


def _intervals(ends: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(ends)]


def _run_variant(variant: str, cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Run one simulation and return its per-round timings."""
    rounds = cfg.federation.rounds
    if variant == "bare":
        bare = run_bare_fedavg(clients=cfg.federation.clients, rounds=rounds)
        # round_seconds[0] is round 1 (actor start-up): measured rounds are 2..N.
        return {
            "round_seconds": bare.round_seconds,
            "measured_round_seconds": bare.round_seconds[1:],
            "final_accuracy": bare.accuracies[-1],
            "wall_seconds": bare.wall_seconds,
        }
    ends: list[float] = []

    def on_round(_record: RoundRecord) -> None:
        ends.append(time.perf_counter())

    started = time.perf_counter()
    if variant == "fedlearn":
        history = simulate(cfg, run_dir=run_dir, on_round=on_round)
    elif variant == "fedlearn_in_memory":
        parts, test_set, _ = partition_bundled(
            cfg.data, clients=cfg.federation.clients, seed=cfg.federation.seed
        )
        history = simulate(
            cfg, run_dir=run_dir, partitions=parts, test_set=test_set, on_round=on_round
        )
    else:
        raise ValueError(f"unknown variant {variant!r}")
    wall = time.perf_counter() - started
    if len(history.rounds) != rounds or len(ends) != rounds:
        raise RuntimeError(f"{variant}: completed {len(history.rounds)} of {rounds} rounds")
    # Intervals between consecutive round ends are rounds 2..N; round 1 has no start mark here.
    return {
        "round_seconds": [None, *_intervals(ends)],
        "measured_round_seconds": _intervals(ends),
        "recorded_seconds": [r.seconds for r in history.rounds],
        "final_accuracy": history.final_accuracy,
        "wall_seconds": wall,
    }


def _timeit(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` calls of ``fn`` (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return median(times)


def _attribution(cfg: RunConfig, workdir: Path, repeat: int) -> dict[str, Any]:
    """Time, in this process, the work fedlearn adds per client message and per round."""
    import ray.cloudpickle as cloudpickle

    clients = cfg.federation.clients
    context = Context(
        run_id=0,
        node_id=1,
        node_config={"partition-id": 0, "num-partitions": clients},
        state=RecordDict(),
        run_config={},
    )
    node_data_s = _timeit(lambda: node_data(context, cfg), repeat)
    local_data.cache_clear()
    bare_first_s = _timeit(lambda: (local_data.cache_clear(), local_data(0, clients)), repeat)
    bare_cached_s = _timeit(lambda: local_data(0, clients), repeat)
    text = cfg.to_json()
    parse_s = _timeit(lambda: RunConfig.from_json(text), repeat * 10)
    fed_app = make_client_app()
    fed_pickle_s = _timeit(lambda: cloudpickle.dumps(fed_app), repeat * 10)
    bare_pickle_s = _timeit(lambda: cloudpickle.dumps(bare_client_app), repeat * 10)

    model = default_model(cfg)
    arrays = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    history = History(rounds=[RoundRecord(round=r + 1) for r in range(cfg.federation.rounds)])
    counter = iter(range(1, 10_000))

    def checkpoint() -> None:
        save_checkpoint(
            workdir / "checkpoints",
            round=next(counter),
            arrays=arrays,
            strategy_state={},
            meta={"config": cfg.to_dict(), "history": history.to_dict()},
        )
        history.save(workdir / "history.json")

    checkpoint_s = _timeit(checkpoint, repeat)

    workers = min(clients, os.cpu_count() or 1)  # 1 CPU per client actor, num_cpus = cpu_count
    messages = 2 * clients  # every client trains and evaluates every round
    per_message = node_data_s - bare_cached_s + parse_s + fed_pickle_s - bare_pickle_s
    return {
        "node_data_ms_per_message": 1e3 * node_data_s,
        "bare_partition_ms_first_call_per_process": 1e3 * bare_first_s,
        "bare_partition_ms_cached": 1e3 * bare_cached_s,
        "config_parse_ms_per_message": 1e3 * parse_s,
        "clientapp_pickle_ms": {"fedlearn": 1e3 * fed_pickle_s, "bare": 1e3 * bare_pickle_s},
        "clientapp_pickle_bytes": {
            "fedlearn": len(cloudpickle.dumps(fed_app)),
            "bare": len(cloudpickle.dumps(bare_client_app)),
        },
        "checkpoint_and_history_ms_per_round": 1e3 * checkpoint_s,
        "messages_per_round": messages,
        "client_workers": workers,
        "estimated_extra_s_per_round": messages * per_message / workers + checkpoint_s,
        "estimated_node_data_share_s_per_round": messages * (node_data_s - bare_cached_s) / workers,
    }


@register(
    "overhead_fedavg",
    target=Target("<=", 1.10),
    description=(
        "Median FedAvg round time of `fedlearn.simulation.simulate` divided by that of a "
        "minimal Flower Message-API app (`benchmarks/bare_flower.py`) on the same model, "
        "data, clients and local training, in the same process and Simulation Engine "
        "settings; rounds 2..N of every run, runs interleaved."
    ),
)
def overhead_fedavg(ctx: BenchContext) -> Outcome:
    """Measure fedlearn's per-round overhead over bare Flower for plain FedAvg.

    Parameters
    ----------
    ctx : BenchContext
        Runner context (mode, scratch directory, progress).

    Returns
    -------
    Outcome
        Headline: median fedlearn round time / median bare round time.
    """
    mode = "quick" if ctx.quick else "full"
    setting = SETTINGS[mode]
    rounds, repetitions = int(setting["rounds"]), int(setting["repetitions"])
    variants: list[str] = list(setting["variants"])
    cfg = RunConfig().with_overrides(federation={"rounds": rounds, "clients": CLIENTS})
    schedule = [
        (rep, variant)
        for rep in range(repetitions)
        for variant in (variants if rep % 2 == 0 else variants[::-1])
    ]
    ctx.plan(len(schedule) + 1)

    runs: list[dict[str, Any]] = []
    for index, (rep, variant) in enumerate(schedule, start=1):
        ctx.status(f"overhead_fedavg: run {index}/{len(schedule)} ({VARIANT_LABELS[variant]})")
        load_before = os.getloadavg()[0]
        result = _run_variant(variant, cfg, ctx.workdir / f"run-{index:02d}-{variant}")
        result.update({"variant": variant, "repetition": rep, "load_1min_before": load_before})
        runs.append(result)
        ctx.log(
            f"{VARIANT_LABELS[variant]} (rep {rep + 1}): median round "
            f"{median(result['measured_round_seconds']):.3f} s, "
            f"wall {result['wall_seconds']:.1f} s, final accuracy {result['final_accuracy']:.4f}"
        )
        ctx.advance()

    ctx.status("overhead_fedavg: attribution micro-measurements")
    torch.set_num_threads(1)  # as the clients
    attribution = _attribution(cfg, ctx.workdir / "attribution", repeat=5 if ctx.quick else 10)
    ctx.advance()

    def pooled(variant: str) -> list[float]:
        return [
            s for run in runs if run["variant"] == variant for s in run["measured_round_seconds"]
        ]

    medians = {v: median(pooled(v)) for v in variants}
    ratio = medians["fedlearn"] / medians["bare"]
    per_rep = [
        median(
            next(r for r in runs if r["repetition"] == rep and r["variant"] == "fedlearn")[
                "measured_round_seconds"
            ]
        )
        / median(
            next(r for r in runs if r["repetition"] == rep and r["variant"] == "bare")[
                "measured_round_seconds"
            ]
        )
        for rep in range(repetitions)
    ]
    recorded = [
        s for run in runs if run["variant"] == "fedlearn" for s in run["recorded_seconds"][1:]
    ]
    accuracies = {
        v: sorted({round(float(r["final_accuracy"]), 6) for r in runs if r["variant"] == v})
        for v in variants
    }
    summary: dict[str, Any] = {
        "ratio (median fedlearn / median bare)": ratio,
        "median round seconds": {VARIANT_LABELS[v]: medians[v] for v in variants},
        "ratio per repetition": per_rep,
        "fedlearn median extra seconds per round": medians["fedlearn"] - medians["bare"],
        "fedlearn history 'seconds' median (rounds 2..N)": median(recorded),
        "IQR of round seconds": {
            VARIANT_LABELS[v]: [float(np.percentile(pooled(v), q)) for q in (25, 75)]
            for v in variants
        },
        "wall seconds per run": [
            f"{VARIANT_LABELS[r['variant']]}: {r['wall_seconds']:.1f}" for r in runs
        ],
        "final server accuracy": {VARIANT_LABELS[v]: accuracies[v] for v in variants},
        "attribution": attribution,
    }
    if "fedlearn_in_memory" in medians:
        summary["ratio with in-memory partitions (median)"] = (
            medians["fedlearn_in_memory"] / medians["bare"]
        )
    notes = [
        "Round time = interval between consecutive round ends (bare: end of `evaluate_fn`; "
        "fedlearn: `on_round`, after server evaluation, history and checkpoint writes); "
        "round 1 (Ray actor start-up) excluded. `attribution` times fedlearn's per-message "
        "and per-round additions in the driver process, outside any simulation; "
        "`estimated_extra_s_per_round` spreads the per-message costs over the client workers.",
    ]
    if ratio > 1.10 and attribution["estimated_node_data_share_s_per_round"] > 0.5 * (
        medians["fedlearn"] - medians["bare"]
    ):
        notes.append(
            "Most of the gap is `fedlearn.client_app.node_data`, which calls "
            "`partition_bundled` (re-reading the bundled dataset and re-partitioning it) for "
            "every message; the bare app computes its partition once per client process."
        )
    return Outcome(
        figure="median round time, fedlearn / bare Flower FedAvg (10 clients, digits MLP)",
        value=ratio,
        unit="x",
        settings={
            "mode": mode,
            "clients": CLIENTS,
            "rounds_per_run": rounds,
            "measured_rounds_per_run": rounds - 1,
            "repetitions_per_variant": repetitions,
            "variants": variants,
            "schedule": [f"rep{rep + 1}:{variant}" for rep, variant in schedule],
            "run_config": cfg.to_dict(),
            "backend_config": "as fedlearn.simulation.simulate (1 CPU per client, "
            "num_cpus = os.cpu_count())",
        },
        summary=summary,
        raw={"runs": runs},
        notes=notes,
    )
