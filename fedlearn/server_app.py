"""The ServerApp: runs a Flower strategy and keeps the run directory.

The round loop is Flower's own (``Strategy.start``) over the strategy stack
that :mod:`fedlearn.stack` builds from the config (the map of one round).
Around it this module adds what a production run needs, in the
``evaluate_fn`` hook Flower calls after every round:

* the round's record is collected from every layer of the stack and its
  model evaluated on the server's held-out data if it has any;
* after each round the history and a checkpoint (model + strategy state, npz +
  JSON) are written atomically, so ``resume=True`` continues from the last
  completed round and reproduces the uninterrupted run.

Run directory layout::

    RUN_DIR/config.toml      the validated config the run used
    RUN_DIR/history.json     one record per round (+ summary)
    RUN_DIR/checkpoints/     round-NNNNN.npz / .json, latest.json
    RUN_DIR/status.json      running | completed | failed (+ reason)
    RUN_DIR/report.html      the run report (one static page), written at the end
    RUN_DIR/logs/server.log  Flower's and fedlearn's log
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import tomli_w
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from fedlearn.attestation.chain import ChainError
from fedlearn.attestation.outbox import OutboxError
from fedlearn.attestation.session import AttestationSession
from fedlearn.checkpoint import load_latest, save_checkpoint
from fedlearn.client_app import ModelFactory, default_model
from fedlearn.config import ConfigError, RunConfig
from fedlearn.data import Dataset, load_file, partition_bundled, schema_for
from fedlearn.history import History, RoundRecord
from fedlearn.privacy.secure.modes import server_protocol
from fedlearn.report import write_report
from fedlearn.stack import StrategyStack, build_stack
from fedlearn.strategies import export_state, import_state
from fedlearn.training import evaluate
from fedlearn.wire import CONFIG_KEY

__all__ = ["RoundCallback", "make_server_app", "run_federation", "server_test_set"]

log = logging.getLogger(__name__)

#: Called with each finished round's record (progress bars, notebooks).
RoundCallback = Callable[[RoundRecord], None]


def server_test_set(cfg: RunConfig) -> Dataset | None:
    """The held-out data the server evaluates on, if the run has any."""
    if cfg.data.dataset != "files":
        _, test_set, _ = partition_bundled(
            cfg.data, clients=cfg.federation.clients, seed=cfg.federation.seed
        )
        return test_set
    if cfg.server.test_data:
        return load_file(cfg.server.test_data, schema_for(cfg.data))
    return None


def _comparable(cfg: RunConfig) -> dict[str, Any]:
    # Everything but deployment addresses: the rounds count enters σ calibration
    # and the clients' release keys, so a resumed run must plan the same rounds.
    raw = cfg.to_dict()
    raw.pop("server")
    return raw


def _write_status(run_dir: Path, state: str, detail: str = "") -> None:
    """Record the run's state in ``status.json`` (what ``fedlearn server`` follows)."""
    tmp = run_dir / "status.json.tmp"
    tmp.write_text(json.dumps({"state": state, "detail": detail}), encoding="utf-8")
    os.replace(tmp, run_dir / "status.json")


@contextlib.contextmanager
def _run_log(run_dir: Path) -> Iterator[None]:
    """Send Flower's and fedlearn's log to ``RUN_DIR/logs/server.log`` during the run.

    fedlearn's records do not also propagate to the root logger (which some
    dependencies configure), so progress bars stay readable; the CLI adds its
    own console handler where it wants one.
    """
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "logs" / "server.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    ours, flower = logging.getLogger("fedlearn"), logging.getLogger("flwr")
    saved = ours.level, ours.propagate
    ours.setLevel(logging.INFO)
    ours.propagate = False
    for logger in (ours, flower):
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in (ours, flower):
            logger.removeHandler(handler)
        ours.setLevel(saved[0])
        ours.propagate = saved[1]
        handler.close()


def run_federation(
    grid: Grid,
    *,
    cfg: RunConfig,
    run_dir: str | Path,
    strategy: Strategy | None = None,
    model_fn: ModelFactory = default_model,
    test_set: Dataset | None = None,
    resume: bool = False,
    on_round: RoundCallback | None = None,
) -> History:
    """Run (or resume) a federation on ``grid`` and return its history.

    Parameters
    ----------
    grid : Grid
        Flower's grid (Simulation or Deployment Engine).
    cfg : RunConfig
        The validated run config.
    run_dir : str or Path
        Where config, history, checkpoints and logs are written.
    strategy : Strategy, optional
        Any Flower message-API strategy; defaults to ``cfg.federation.strategy``.
    model_fn : ModelFactory
        Builds the model (must match the clients').
    test_set : Dataset, optional
        Server-side held-out data for evaluating the global model.
    resume : bool, default False
        Continue from the run directory's last checkpoint.
    on_round : RoundCallback, optional
        Called after every round with its record.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _run_log(run_dir):
        _write_status(run_dir, "running")
        with contextlib.ExitStack() as cleanup:
            try:
                protocol = session = None
                if cfg.secure.mode != "none":
                    protocol = server_protocol(cfg)
                    cleanup.callback(protocol.close)  # e.g. stops CrypTen's compute parties
                if cfg.attestation.enabled:
                    session = AttestationSession.open(
                        cfg.attestation,
                        run_dir=run_dir,
                        rounds=cfg.federation.rounds,
                        resume=resume,
                    )
                    cleanup.callback(session.close)
                    cleanup.callback(_final_flush, session, cfg.attestation.flush_seconds)
                stack = build_stack(
                    cfg,
                    run_dir=run_dir,
                    strategy=strategy,
                    model_fn=model_fn,
                    test_set=test_set,
                    resume=resume,
                    protocol=protocol,
                    session=session,
                )
                history = _run(grid, cfg, run_dir, stack, model_fn, test_set, resume, on_round)
            except BaseException as exc:
                log.exception("run failed")
                _write_status(run_dir, "failed", f"{type(exc).__name__}: {exc}")
                write_report(run_dir)  # what happened, for the operator (never raises)
                raise
        _write_status(run_dir, "completed")
        log.info("run report: %s", write_report(run_dir))
        return history


def _final_flush(session: AttestationSession, seconds: float) -> None:
    """Give attestations still in the outbox one last chance before the run ends."""
    try:
        result = session.outbox.flush(session.contracts, deadline=max(seconds, 30.0))
    except (OutboxError, ChainError) as exc:
        log.error("attestations left in the outbox: %s", exc)
        return
    if result.pending:
        log.warning(
            "%d attestation(s) wait in %s (%s); `fedlearn attest --run %s` posts them later",
            len(result.pending),
            session.outbox.path,
            result.error,
            session.outbox.path.parent.parent,
        )


def _run(
    grid: Grid,
    cfg: RunConfig,
    run_dir: Path,
    stack: StrategyStack,
    model_fn: ModelFactory,
    test_set: Dataset | None,
    resume: bool,
    on_round: RoundCallback | None,
) -> History:
    fed = cfg.federation
    inner, recorder = stack.inner, stack.recorder
    history = History()
    checkpoint = load_latest(run_dir / "checkpoints") if resume else None
    if resume and checkpoint is None:
        log.warning("--resume: no checkpoint in %s, starting from round 1", run_dir)
    if checkpoint is not None:
        saved = RunConfig.from_dict(checkpoint.meta["config"])
        if _comparable(saved) != _comparable(cfg):
            raise ConfigError(
                f"cannot resume {run_dir}: its config differs from this one; resume with "
                f"{run_dir / 'config.toml'} or start a new run directory"
            )
        history = History.from_dict(checkpoint.meta["history"])
        import_state(inner, checkpoint.strategy_state)
        initial = ArrayRecord({k: Array(v) for k, v in checkpoint.arrays.items()})
        done = checkpoint.round
        log.info("resuming %s after round %d", run_dir, done)
    else:
        with torch.random.fork_rng(devices=[]):  # seeded init, caller's RNG untouched
            torch.manual_seed(fed.seed)
            initial = ArrayRecord(model_fn(cfg).state_dict())
        done = 0
    (run_dir / "config.toml").write_text(tomli_w.dumps(cfg.to_dict()), encoding="utf-8")

    log.info(
        "run %s: %d rounds of %s, %d clients, local DP %s, central DP %s, secure aggregation %s",
        run_dir.name,
        fed.rounds,
        type(inner).__name__,
        fed.clients,
        "on" if cfg.privacy.local_dp else "off",
        cfg.privacy.central_dp,
        cfg.secure.mode,
    )
    remaining = fed.rounds - done
    if remaining <= 0:
        log.info("all %d rounds already done", fed.rounds)
        return history

    recorder.offset = done
    log.info("strategy stack: %s", stack.describe())
    eval_model = model_fn(cfg)

    def on_round_end(current_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if current_round == 0:
            return None
        server_round = current_round + done
        record = recorder.record(server_round)
        metrics = MetricRecord()
        if test_set is not None:
            eval_model.load_state_dict(arrays.to_torch_state_dict())
            result = evaluate(eval_model, test_set)
            record.accuracy, record.loss = result.accuracy, result.loss
            metrics = MetricRecord({"accuracy": result.accuracy, "loss": result.loss})
        history.append(record)
        log.info(
            "round %d: %d/%d updates accepted%s, accuracy %s, %.2f s",
            server_round,
            record.accepted,
            record.sampled,
            "" if record.applied else " (round skipped: model unchanged)",
            "n/a" if record.accuracy is None else f"{record.accuracy:.4f}",
            record.seconds,
        )
        save_checkpoint(
            run_dir / "checkpoints",
            round=server_round,
            arrays={k: a.numpy() for k, a in arrays.items()},
            strategy_state=export_state(inner),
            meta={"config": cfg.to_dict(), "history": history.to_dict()},
        )
        history.save(run_dir / "history.json")
        if on_round is not None:
            on_round(record)
        return metrics

    # Flower sizes a round's sample from the nodes connected when the round
    # starts; waiting for all of them first keeps round 1 the same as the others.
    # Later rounds need only the round rule's minimum, so a lost node never hangs a run.
    deadline = time.monotonic() + fed.timeout
    while (connected := len(list(grid.get_node_ids()))) < fed.clients:
        if time.monotonic() > deadline:
            if connected >= fed.min_train_clients:
                log.warning("starting with %d of %d clients", connected, fed.clients)
                break
            raise TimeoutError(
                f"only {connected} of {fed.clients} clients connected within "
                f"{fed.timeout:.0f} s (the round rule needs {fed.min_train_clients})"
            )
        time.sleep(0.2)
    train_config = ConfigRecord({CONFIG_KEY: cfg.to_json()})
    recorder.start(
        grid,
        initial,
        num_rounds=remaining,
        timeout=fed.timeout,
        train_config=train_config,
        evaluate_config=ConfigRecord({CONFIG_KEY: cfg.to_json()}),
        evaluate_fn=on_round_end,
    )
    history.save(run_dir / "history.json")
    return history


def make_server_app(
    *,
    cfg: RunConfig,
    run_dir: str | Path,
    strategy: Strategy | None = None,
    model_fn: ModelFactory = default_model,
    test_set: Dataset | None = None,
    resume: bool = False,
    on_round: RoundCallback | None = None,
    result: list[History] | None = None,
) -> ServerApp:
    """Build a ServerApp that runs :func:`run_federation`; its history is appended to ``result``."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        history = run_federation(
            grid,
            cfg=cfg,
            run_dir=run_dir,
            strategy=strategy,
            model_fn=model_fn,
            test_set=test_set,
            resume=resume,
            on_round=on_round,
        )
        if result is not None:
            result.append(history)

    return app


def _deployment_main(grid: Grid, context: Context) -> None:
    """ServerApp entry point on the Deployment Engine (``fedlearn.server_app:app``).

    Run config keys: ``config-path`` (the operator's run.toml), ``run-dir``,
    and ``resume`` (bool).
    """
    run_config = context.run_config
    cfg = RunConfig.load(str(run_config["config-path"]))
    run_federation(
        grid,
        cfg=cfg,
        run_dir=str(run_config["run-dir"]),
        test_set=server_test_set(cfg),
        resume=bool(run_config.get("resume", False)),
    )


#: The ServerApp the SuperLink runs in deployment.
app = ServerApp()
app.main()(_deployment_main)
