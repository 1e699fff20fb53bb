"""The ``fedlearn`` command line (typer + rich)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from fedlearn.config import ConfigError, RunConfig
from fedlearn.data import DataError

app = typer.Typer(
    name="fedlearn",
    help="Privacy-preserving federated learning on Flower.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()


def _fail(message: str, hint: str = "") -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    if hint:
        err.print(f"[yellow]next:[/] {hint}")
    return typer.Exit(code=2)


def _default_run_dir(prefix: str) -> Path:
    return Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def _run_simulation(
    cfg: RunConfig, *, run_dir: Path, resume: bool, as_json: bool
) -> dict[str, Any]:
    from fedlearn.reporting import round_progress, round_table
    from fedlearn.simulation import simulate

    first = 0
    if resume:
        from fedlearn.checkpoint import load_latest

        checkpoint = load_latest(run_dir / "checkpoints")
        first = checkpoint.round if checkpoint else 0
    started = time.perf_counter()
    with round_progress(err, rounds=cfg.federation.rounds, first=first) as on_round:
        history = simulate(cfg, run_dir=run_dir, resume=resume, on_round=on_round)
    elapsed = time.perf_counter() - started
    if not as_json:
        out.print(round_table(history, title=f"fedlearn — {run_dir}"))
    return {
        "run_dir": str(run_dir),
        "rounds": len(history.rounds),
        "clients": cfg.federation.clients,
        "seed": cfg.federation.seed,
        "final_accuracy": history.final_accuracy,
        "seconds": round(elapsed, 2),
        "bytes_sent": sum(r.bytes_sent + r.bytes_received for r in history.rounds),
        "history": history,
    }


@app.command()
def demo(
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 15,
    clients: Annotated[int, typer.Option(help="Simulated data holders.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed for data split, model and training.")] = 42,
    dataset: Annotated[str, typer.Option(help="Bundled dataset: digits or mnist.")] = "digits",
    alpha: Annotated[float, typer.Option(help="Dirichlet non-IID concentration.")] = 0.5,
    run_dir: Annotated[Path | None, typer.Option(help="Run directory.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Train a model federated across simulated data holders on bundled real data.

    Measures centralized training of the same model on the same data in the
    same run and prints both accuracies.
    """
    import numpy as np
    import torch

    from fedlearn.client_app import default_model
    from fedlearn.data import Dataset, partition_bundled
    from fedlearn.training import evaluate, train_centralized

    try:
        cfg = RunConfig().with_overrides(
            federation={"rounds": rounds, "clients": clients, "seed": seed},
            data={"dataset": dataset, "alpha": alpha},
        )
        parts, test_set, _ = partition_bundled(cfg.data, clients=clients, seed=seed)
    except (ConfigError, DataError) as exc:
        raise _fail(str(exc), "check the option values (fedlearn demo --help)") from None
    run_dir = run_dir or _default_run_dir("demo")
    err.print(
        f"[bold]fedlearn demo[/]: {clients} data holders, {dataset} "
        f"(Dirichlet α={alpha}, {sum(len(p) for p in parts)} training examples), "
        f"{rounds} rounds of FedAvg on Flower's Simulation Engine → {run_dir}"
    )
    summary = _run_simulation(cfg, run_dir=run_dir, resume=False, as_json=as_json)
    history = summary.pop("history")

    pooled = Dataset(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = default_model(cfg)
    train_centralized(model, pooled, cfg.train, rounds=rounds, seed=seed)
    central = evaluate(model, test_set).accuracy
    federated = summary["final_accuracy"]
    summary.update(
        centralized_accuracy=central,
        gap_points=round(100 * (central - federated), 2),
    )
    history.summary.update(centralized_accuracy=central, federated_accuracy=federated)
    history.save(run_dir / "history.json")
    history.plot(run_dir / "history.png")
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    out.print(
        f"federated accuracy [bold]{federated:.4f}[/]  vs  centralized [bold]{central:.4f}[/] "
        f"(gap {summary['gap_points']:+.2f} points)   plot: {run_dir / 'history.png'}"
    )


@app.command("simulate")
def simulate_cmd(
    config: Annotated[Path | None, typer.Option(help="Run config (TOML).")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Run directory.")] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue this run directory from its last checkpoint.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Run a config on Flower's Simulation Engine (the same config `server` deploys)."""
    try:
        if resume is not None:
            saved = resume / "config.toml"
            cfg = RunConfig.load(config or saved)
        elif config is not None:
            cfg = RunConfig.load(config)
        else:
            raise ConfigError("give --config run.toml (or --resume RUN_DIR)")
    except ConfigError as exc:
        raise _fail(str(exc), "fix the config file; every key is documented in README.md") from None
    target = resume or run_dir or _default_run_dir("sim")
    try:
        summary = _run_simulation(cfg, run_dir=target, resume=resume is not None, as_json=as_json)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    summary.pop("history")
    if as_json:
        print(json.dumps(summary, indent=2))


def main() -> None:
    """Console entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted; resume with --resume RUN_DIR")
        sys.exit(130)
