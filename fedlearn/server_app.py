"""The ServerApp: runs a Flower strategy and keeps the run directory.

The round loop is Flower's own (``Strategy.start``). Around it this module
adds what a production run needs, as a strategy wrapper and the
``evaluate_fn`` hook Flower calls after every round:

* malformed replies are set aside and the explicit completion rule applies
  (:class:`~fedlearn.strategies.ValidatedReplies`);
* each round is timed, its bytes counted, its model evaluated on the
  server's held-out data if it has any;
* after each round the history and a checkpoint (model + strategy state, npz +
  JSON) are written atomically, so ``resume=True`` continues from the last
  completed round and reproduces the uninterrupted run.

Run directory layout::

    RUN_DIR/config.toml      the validated config the run used
    RUN_DIR/history.json     one record per round (+ summary)
    RUN_DIR/checkpoints/     round-NNNNN.npz / .json, latest.json
    RUN_DIR/status.json      running | completed | failed (+ reason)
    RUN_DIR/logs/server.log  Flower's and fedlearn's log
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from fedlearn.attestation.chain import ChainError
from fedlearn.attestation.outbox import OutboxError
from fedlearn.attestation.round_attestation import RoundAttestation
from fedlearn.attestation.session import AttestationSession
from fedlearn.checkpoint import load_latest, save_checkpoint
from fedlearn.client_app import ModelFactory, default_model
from fedlearn.config import ConfigError, RunConfig
from fedlearn.data import Dataset, load_file, partition_bundled, schema_for
from fedlearn.history import History, RoundRecord
from fedlearn.privacy.central_dp import CentralDP
from fedlearn.privacy.secure.aggregation import SecureAggregation
from fedlearn.privacy.secure.base import ServerProtocol
from fedlearn.privacy.secure.modes import server_protocol, value_scale
from fedlearn.strategies import (
    ContributionScoring,
    StrategyWrapper,
    ValidatedReplies,
    build_strategy,
    export_state,
    import_state,
)
from fedlearn.training import evaluate
from fedlearn.wire import CONFIG_KEY, PRIVACY_KEY, TRAIN_LOSS_KEY

__all__ = ["RoundCallback", "make_server_app", "run_federation", "server_test_set"]

log = logging.getLogger(__name__)

#: Called with each finished round's record (progress bars, notebooks).
RoundCallback = Callable[[RoundRecord], None]


class _RoundRecorder(StrategyWrapper):
    """Times and measures each round and shifts round numbers after a resume."""

    def __init__(self, strategy: ValidatedReplies, *, offset: int) -> None:
        self.strategy = strategy
        self.offset = offset
        self.started = 0.0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.train_metrics: MetricRecord | None = None
        self.eval_metrics: MetricRecord | None = None
        self.privacy: dict[str, dict[str, float]] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.started = time.perf_counter()
        self.train_metrics = self.eval_metrics = None
        messages = list(
            self.strategy.configure_train(server_round + self.offset, arrays, config, grid)
        )
        self.bytes_sent = sum(_payload_bytes(m) for m in messages)
        self.bytes_received = 0
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self.bytes_received += sum(_payload_bytes(m) for m in replies)
        self.privacy = {}
        for msg in replies:
            if not msg.has_error() and PRIVACY_KEY in msg.content.config_records:
                # As reported by the client (the server cannot recompute a holder's ε
                # without its record count); keyed by node so no client overwrites another.
                report = msg.content.config_records[PRIVACY_KEY]
                client = f"{report.get('client', '?')!s}@node{msg.metadata.src_node_id}"
                self.privacy[client] = {
                    k: float(v)
                    for k, v in report.items()
                    if isinstance(v, int | float) and k != "client"
                }
        arrays, self.train_metrics = self.strategy.aggregate_train(
            server_round + self.offset, replies
        )
        return arrays, self.train_metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(
            self.strategy.configure_evaluate(server_round + self.offset, arrays, config, grid)
        )
        self.bytes_sent += sum(_payload_bytes(m) for m in messages)
        return messages

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
        self.bytes_received += sum(_payload_bytes(m) for m in replies)
        self.eval_metrics = self.strategy.aggregate_evaluate(server_round + self.offset, replies)
        return self.eval_metrics


def _payload_bytes(msg: Message) -> int:
    if msg.has_error():
        return 0
    return sum(record.count_bytes() for record in msg.content.array_records.values())


def _metric(record: MetricRecord | None, key: str) -> float | None:
    if record is None or key not in record:
        return None
    return float(record[key])  # type: ignore[arg-type]


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
                stack = _build_stack(
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
                raise
        _write_status(run_dir, "completed")
        return history


@dataclass
class _Stack:
    """The run's strategy wrappers, outermost first (the order reads like the threat model)."""

    validated: ValidatedReplies
    attestation: RoundAttestation | None
    secure: SecureAggregation | None
    central: CentralDP | None
    inner: Strategy


def _build_stack(
    cfg: RunConfig,
    *,
    run_dir: Path,
    strategy: Strategy | None,
    model_fn: ModelFactory,
    test_set: Dataset | None,
    resume: bool,
    protocol: ServerProtocol | None,
    session: AttestationSession | None,
) -> _Stack:
    fed = cfg.federation
    inner = strategy or build_strategy(
        fed.strategy,
        min_nodes=fed.clients,
        fraction_train=fed.fraction_train,
        # Under local DP, evaluation replies would release un-noised statistics.
        fraction_evaluate=0.0 if cfg.privacy.local_dp else fed.fraction_evaluate,
        min_train_clients=fed.min_train_clients,
    )
    aggregator: Strategy = inner
    central: CentralDP | None = None
    if cfg.privacy.central_dp != "none":
        ledger_path = run_dir / "central_ledger.json"
        if not resume:
            ledger_path.unlink(missing_ok=True)  # a new run starts a new ledger
        aggregator = central = CentralDP(
            inner,
            mode=cfg.privacy.central_dp,
            noise_multiplier=cfg.privacy.central_noise_multiplier,
            clipping_norm=cfg.privacy.central_clipping_norm,
            num_clients=fed.clients,
            min_replies=fed.min_train_clients,
            delta=cfg.privacy.delta,
            accountant=cfg.privacy.accountant,
            ledger_path=ledger_path,
            behind_secure_aggregation=protocol is not None,
        )
    scoring: ContributionScoring | None = None
    method = cfg.attestation.scoring
    per_update = protocol is None and cfg.privacy.central_dp == "none" and test_set is not None
    if session is not None and not per_update and method not in ("auto", "examples"):
        log.warning(
            "attestation.scoring = %r needs each update and server test data; this run "
            "scores %s instead",
            method,
            "inside the secure mode (or by examples)" if protocol else "by attested examples",
        )
    if session is not None and per_update and method != "examples":
        aggregator = scoring = ContributionScoring(
            aggregator,
            utility_data=test_set,  # type: ignore[arg-type]  # per_update checks it
            model_fn=lambda: model_fn(cfg),
            max_examples=cfg.secure.max_examples,
            method="gtg-shapley" if method == "auto" else method,
            seed=fed.seed,
        )
    secure: SecureAggregation | None = None
    if protocol is not None:
        aggregator = secure = SecureAggregation(
            aggregator,
            protocol=protocol,
            min_contributors=fed.min_train_clients,
            max_examples=cfg.secure.max_examples,
            # Under DP the weights are public constants (counts are not released).
            uniform_weights=cfg.privacy.local_dp or cfg.privacy.central_dp != "none",
            value_scale=value_scale(cfg),
            timeout=fed.timeout,
        )
    attestation: RoundAttestation | None = None
    if session is not None:
        aggregator = attestation = RoundAttestation(
            aggregator,
            run_id=session.run_id,
            run_dir=run_dir,
            outbox=session.outbox,
            contracts=session.contracts,
            budget=session.budget,
            max_examples=cfg.secure.max_examples,
            scoring=scoring,
            secure=secure,
            flush_seconds=cfg.attestation.flush_seconds,
        )
    validated = ValidatedReplies(
        aggregator,
        min_replies=fed.min_train_clients,
        payload_check=secure.check_reply if secure is not None else None,
        reply_checks=(attestation.check_reply,) if attestation is not None else (),
        max_examples=cfg.secure.max_examples,
    )
    return _Stack(validated, attestation, secure, central, inner)


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
    stack: _Stack,
    model_fn: ModelFactory,
    test_set: Dataset | None,
    resume: bool,
    on_round: RoundCallback | None,
) -> History:
    fed = cfg.federation
    inner, central, secure, validated = stack.inner, stack.central, stack.secure, stack.validated
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

    recorder = _RoundRecorder(validated, offset=done)
    eval_model = model_fn(cfg)

    def on_round_end(current_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if current_round == 0:
            return None
        server_round = current_round + done
        report = validated.last_report
        record = RoundRecord(
            round=server_round,
            federated_accuracy=_metric(recorder.eval_metrics, "accuracy"),
            federated_loss=_metric(recorder.eval_metrics, "loss"),
            train_loss=_metric(recorder.train_metrics, TRAIN_LOSS_KEY),
            sampled=report.sampled,
            accepted=report.accepted,
            rejected={str(k): v for k, v in report.rejected.items()},
            applied=report.applied,
            seconds=time.perf_counter() - recorder.started,
            bytes_sent=recorder.bytes_sent,
            bytes_received=recorder.bytes_received,
            privacy=recorder.privacy,
        )
        if central is not None and central.last_release is not None and report.applied:
            entry = central.last_release
            record.central_privacy = {
                "epsilon": entry.cumulative_epsilon,
                "round-epsilon": entry.epsilon,
                "delta": entry.delta,
                "noise-multiplier": entry.noise_multiplier,
                "clipping-norm": entry.clipping_norm,
                "sample-rate": entry.sample_rate,
            }
        if secure is not None:
            secure_report = secure.last_report
            record.secure = {
                "mode": secure_report.mode,
                "contributors": len(secure_report.contributors),
                "dropped": {str(k): v for k, v in secure_report.dropped.items()},
                "aborted": secure_report.aborted,
                "setup-seconds": secure_report.setup_seconds,
                "aggregate-seconds": secure_report.aggregate_seconds,
            }
        if stack.attestation is not None:
            attested = stack.attestation.last_report
            record.contributions = {
                f"node{node}": {
                    "address": c.address,
                    "score": c.score,
                    "examples": c.examples,
                    "epsilon": c.epsilon,
                    "reward": str(c.reward),  # uint256 base units: JSON numbers lose digits
                }
                for node, c in attested.clients.items()
            }
            record.attestation = {
                "scoring": attested.scoring,
                "evaluations": attested.evaluations,
                "root": attested.root,
                "aggregate-hash": attested.aggregate_hash,
                "confirmed": attested.confirmed,
                "pending-rounds": attested.pending_rounds,
                "error": attested.error,
            }
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
