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

The summary also records an attribution, measured in this process outside any
simulation: the cost of one client message on each side (unpickling the
ClientApp, which Flower's Ray backend pickles with every message, plus the
handler), the parts fedlearn adds (its ClientApp's pickle round trip,
``node_data``, the run-config parse) and the per-round checkpoint write, and
from these an estimate of the extra seconds per round.
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
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict
from flwr.clientapp import ClientApp

from benchmarks.bare_flower import client_app as bare_client_app
from benchmarks.bare_flower import local_data, run_bare_fedavg
from benchmarks.core import BenchContext, Outcome, Target, median, register
from fedlearn.checkpoint import save_checkpoint
from fedlearn.client_app import default_model, make_client_app, node_data
from fedlearn.config import RunConfig
from fedlearn.history import History, RoundRecord
from fedlearn.simulation import simulate
from fedlearn.wire import CONFIG_KEY

__all__ = ["overhead_fedavg"]

CLIENTS = 10
#: Rounds per run and repetitions per side (runs alternate bare/fedlearn, ABBA...).
SETTINGS: dict[str, dict[str, Any]] = {
    "quick": {"rounds": 6, "repetitions": 2, "variants": ["bare", "fedlearn"]},
    "full": {"rounds": 16, "repetitions": 3, "variants": ["bare", "fedlearn"]},
}
VARIANT_LABELS = {
    "bare": "bare Flower FedAvg",
    "fedlearn": "fedlearn simulate()",
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
    if variant != "fedlearn":
        raise ValueError(f"unknown variant {variant!r}")
    history = simulate(cfg, run_dir=run_dir, on_round=on_round)
    wall = time.perf_counter() - started
    if len(history.rounds) != rounds or len(ends) != rounds:
        raise RuntimeError(f"{variant}: completed {len(history.rounds)} of {rounds} rounds")
    # Intervals between consecutive round ends are rounds 2..N; round 1 has no start mark here.
    return {
        "round_seconds": [None, *_intervals(ends)],
        "measured_round_seconds": _intervals(ends),
        "recorded_seconds": [r.seconds for r in history.rounds],
        "rejected_replies": {str(r.round): r.rejected for r in history.rounds if r.rejected},
        "skipped_rounds": [r.round for r in history.rounds if not r.applied],
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


def _incoming(kind: str, content: RecordDict) -> Message:
    """A message as a simulated node receives it from the server."""
    metadata = Metadata(
        run_id=1,
        message_id="",
        src_node_id=0,
        dst_node_id=1,
        reply_to_message_id="",
        group_id="2",
        created_at=time.time(),
        ttl=3600.0,
        message_type=kind,
    )
    # Flower builds received messages this way (flwr.app.message.make_message).
    message: Message = Message(metadata=metadata, content=content)  # type: ignore[call-overload]
    return message


def _attribution(cfg: RunConfig, workdir: Path, repeat: int) -> dict[str, Any]:
    """Time, in this process, what one client message and one round cost on each side.

    A client message is what a Ray actor does per message: unpickle the
    ClientApp that the driver pickled (Flower sends it with every message) and
    run the handler. The parts fedlearn adds are timed separately.
    """
    import ray.cloudpickle as cloudpickle

    clients = cfg.federation.clients
    context = Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 0, "num-partitions": clients, "allow-plaintext": True},
        state=RecordDict(),
        run_config={},
    )
    arrays = ArrayRecord(default_model(cfg).state_dict())
    fed_config = ConfigRecord({"server-round": 2, CONFIG_KEY: cfg.to_json()})
    bare_config = ConfigRecord({"server-round": 2})
    fed_app = make_client_app()
    apps = {"fedlearn": (fed_app, fed_config), "bare": (bare_client_app, bare_config)}

    def message_cost(app: ClientApp, config: ConfigRecord, kind: str) -> float:
        def call() -> None:
            received = cloudpickle.loads(cloudpickle.dumps(app))
            reply = received(
                _incoming(kind, RecordDict({"arrays": arrays, "config": config})), context
            )
            if reply.has_error():
                raise RuntimeError(f"{kind} handler failed: {reply.error.reason}")

        return _timeit(call, repeat)

    local_data(0, clients)  # the bare app's partition is computed once per process
    handler_ms = {
        side: {kind: 1e3 * message_cost(app, config, kind) for kind in ("train", "evaluate")}
        for side, (app, config) in apps.items()
    }

    def pickle_round_trip_ms(app: ClientApp) -> float:
        return 1e3 * _timeit(lambda: cloudpickle.loads(cloudpickle.dumps(app)), repeat)

    pickle_ms = {side: pickle_round_trip_ms(app) for side, (app, _) in apps.items()}
    node_data_ms = 1e3 * _timeit(lambda: node_data(context, cfg), repeat)
    text = cfg.to_json()
    parse_ms = 1e3 * _timeit(lambda: RunConfig.from_json(text), repeat * 10)

    state = {k: v.detach().numpy() for k, v in default_model(cfg).state_dict().items()}
    history = History(rounds=[RoundRecord(round=r + 1) for r in range(cfg.federation.rounds)])
    counter = iter(range(1, 1_000_000))

    def checkpoint() -> None:
        save_checkpoint(
            workdir / "checkpoints",
            round=next(counter),
            arrays=state,
            strategy_state={},
            meta={"config": cfg.to_dict(), "history": history.to_dict()},
        )
        history.save(workdir / "history.json")

    checkpoint_ms = 1e3 * _timeit(checkpoint, repeat)

    workers = min(clients, os.cpu_count() or 1)  # 1 CPU per client actor, num_cpus = cpu_count
    extra_per_message = {
        kind: handler_ms["fedlearn"][kind] - handler_ms["bare"][kind]
        for kind in ("train", "evaluate")
    }
    return {
        "client message ms (ClientApp pickle round trip + handler)": handler_ms,
        "fedlearn extra ms per message": extra_per_message,
        "of which ClientApp pickle round trip ms": pickle_ms,
        "of which node_data (partition_bundled) ms": node_data_ms,
        "of which run-config parse ms": parse_ms,
        "ClientApp pickle bytes": {
            side: len(cloudpickle.dumps(app)) for side, (app, _) in apps.items()
        },
        "checkpoint + history write ms per round": checkpoint_ms,
        "client workers": workers,
        "estimated extra s per round": (
            clients * sum(extra_per_message.values()) / workers + checkpoint_ms
        )
        / 1e3,
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
        "fedlearn runs with rejected replies or skipped rounds": [
            f"rep {r['repetition'] + 1}: rejected in rounds {sorted(r['rejected_replies'])}, "
            f"skipped rounds {r['skipped_rounds']}"
            for r in runs
            if r["variant"] == "fedlearn" and (r["rejected_replies"] or r["skipped_rounds"])
        ],
        "attribution": attribution,
    }
    notes = [
        "Round time = interval between consecutive round ends (bare: end of `evaluate_fn`; "
        "fedlearn: `on_round`, after server evaluation, history and checkpoint writes); "
        "round 1 (Ray actor start-up) excluded. Both sides end with the same server "
        "accuracy: the same work is done. `attribution` is measured in the driver process "
        "outside any simulation; `estimated extra s per round` spreads the per-message "
        "extra over the client workers (10 train + 10 evaluate messages per round) and adds "
        "the checkpoint write: a lower bound, since in a run the driver, the actors and "
        "Flower's 0.1 s polling share the same cores. Other processes on the machine "
        "inflate absolute times; see the load averages in the JSON file.",
    ]
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
