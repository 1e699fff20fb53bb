"""The ClientApp every data holder runs (Flower Message API).

Everything a client needs to know about the run (schema, model, training
settings) arrives in the server's message and is validated; the data comes
from the data holder's own file (``node_config["data-path"]``) or, in
simulation, from a bundled dataset partition (``node_config["partition-id"]``).
Problems become error replies with a reason the server logs, never crashes of
the SuperNode.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import cast

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from fedlearn.attestation.client_mod import WalletProvider, make_attestation_mod, node_wallet
from fedlearn.config import AccountantName, ConfigError, DataConfig, RunConfig
from fedlearn.data import (
    DataError,
    Dataset,
    load_file,
    partition_bundled,
    schema_for,
    split_validation,
)
from fedlearn.models import build_model
from fedlearn.privacy.accounting import calibrate_noise_multiplier
from fedlearn.privacy.central_dp import user_level_dp_mod
from fedlearn.privacy.holder import HolderPrivacy, default_ledger_dir, release_key
from fedlearn.privacy.ledger import BudgetExceeded, LedgerError, PrivacyBudget
from fedlearn.privacy.local_dp import DPSGDPlan, check_dp_compatible, plan_dp_sgd, train_dp_sgd
from fedlearn.privacy.policy import make_holder_policy_mod
from fedlearn.privacy.records import cohort_id, record_fingerprints
from fedlearn.privacy.secure.client_mod import handle_secure_query, secure_aggregation_mod
from fedlearn.training import evaluate, train
from fedlearn.wire import CONFIG_KEY, EXAMPLES_KEY, PRIVACY_KEY, TRAIN_LOSS_KEY, ErrorCode

__all__ = [
    "DataProvider",
    "ModelFactory",
    "client_seed",
    "dp_round_plan",
    "make_client_app",
    "node_data",
]

log = logging.getLogger(__name__)

#: ``(context, run config) -> the client's whole local dataset``.
DataProvider = Callable[[Context, RunConfig], Dataset]
#: ``(run config) -> an untrained model`` with the same layout as the server's.
ModelFactory = Callable[[RunConfig], nn.Module]


@functools.lru_cache(maxsize=4)
def _bundled_partitions(data_cfg: DataConfig, clients: int, seed: int) -> tuple[Dataset, ...]:
    """Partitions of a bundled dataset, computed once per process (a pure function)."""
    return tuple(partition_bundled(data_cfg, clients=clients, seed=seed)[0])


def node_data(context: Context, cfg: RunConfig) -> Dataset:
    """Load this node's data: its own file, or its partition of a bundled dataset.

    ``node_config["data-path"]`` names a CSV, NPZ or image folder;
    ``node_config["label-column"]`` overrides the label column's name.
    Without a data path, ``node_config["partition-id"]`` selects a partition
    of the run's bundled dataset (simulation).
    """
    node_cfg = context.node_config
    if "data-path" in node_cfg:
        schema = schema_for(cfg.data)
        label_column = node_cfg.get("label-column")
        if label_column:
            schema = type(schema)(**{**schema.__dict__, "label_column": str(label_column)})
        return load_file(str(node_cfg["data-path"]), schema)
    if "partition-id" in node_cfg and cfg.data.dataset != "files":
        partition = int(cast(int, node_cfg["partition-id"]))
        parts = _bundled_partitions(cfg.data, cfg.federation.clients, cfg.federation.seed)
        if not 0 <= partition < len(parts):
            raise DataError(f"partition-id {partition} outside 0..{len(parts) - 1}")
        return parts[partition]
    raise DataError("this node has no data: start it with --data PATH (node config 'data-path')")


def default_model(cfg: RunConfig) -> nn.Module:
    """The model named in the run config."""
    schema = schema_for(cfg.data)
    return build_model(cfg.model, num_features=schema.num_features, num_classes=schema.num_classes)


def client_seed(seed: int, server_round: int, client: int) -> int:
    """A per-(run, round, client) seed, independent across clients and rounds."""
    return int(np.random.SeedSequence([seed, server_round, client]).generate_state(1)[0])


def _client_index(context: Context) -> int:
    return int(context.node_config.get("partition-id", context.node_id % (2**31)))


def _ledger_dir(
    context: Context, default: str | Path | None, *, client: int, simulated: bool
) -> Path:
    """The holder's ledger directory: its own (node config), or one per simulated holder."""
    if "ledger-dir" in context.node_config:
        return Path(str(context.node_config["ledger-dir"]))
    base = Path(default) if default is not None else default_ledger_dir()
    return base / f"holder-{client}" if simulated else base


def _error(msg: Message, code: int, reason: str) -> Message:
    log.warning("replying with error %d: %s", code, reason)
    return Message(Error(code=code, reason=reason), reply_to=msg)


def _budget(context: Context, cfg: RunConfig, *, simulated: bool) -> PrivacyBudget | None:
    """The holder's own budget (node config); simulated holders take the run's."""
    node_cfg = context.node_config
    delta = float(cast(float, node_cfg.get("delta", cfg.privacy.delta)))
    if "epsilon-budget" in node_cfg:
        return PrivacyBudget(epsilon=float(cast(float, node_cfg["epsilon-budget"])), delta=delta)
    if simulated and cfg.privacy.client_epsilon_budget > 0:
        return PrivacyBudget(epsilon=cfg.privacy.client_epsilon_budget, delta=delta)
    return None


@functools.lru_cache(maxsize=64)
def _calibrated_sigma(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: AccountantName
) -> float:
    """σ so the planned steps end at the target ε (a pure function: cached per process)."""
    return calibrate_noise_multiplier(
        target_epsilon=target_epsilon,
        delta=delta,
        sample_rate=sample_rate,
        steps=steps,
        accountant=accountant,
    )


def dp_round_plan(cfg: RunConfig, num_examples: int) -> DPSGDPlan:
    """A client's DP-SGD plan for one round: σ given, or calibrated to the run's target ε."""
    privacy = cfg.privacy
    unit = plan_dp_sgd(
        num_examples=num_examples,
        train=cfg.train,
        noise_multiplier=1.0,
        max_grad_norm=privacy.max_grad_norm,
    )
    sigma = privacy.noise_multiplier or _calibrated_sigma(
        privacy.target_epsilon,
        privacy.delta,
        unit.sample_rate,
        unit.steps * cfg.federation.rounds,
        privacy.accountant,
    )
    return replace(unit, noise_multiplier=sigma)


def _private_train(
    msg: Message,
    context: Context,
    cfg: RunConfig,
    model: nn.Module,
    train_set: Dataset,
    client: int,
    ledger_dir: Path,
    budget: PrivacyBudget | None,
) -> Message:
    """One round of DP-SGD under the holder's own, persistent budget.

    The holder's ledger is keyed by the records used (per-record accounting,
    :mod:`fedlearn.privacy.records`) and locked from the budget check to the
    record, so two runs on the same records cannot both spend the last of a
    budget. Refusals name the rule, never the holder's ε. The reply carries
    nothing un-noised about the records: the update, a public weight of 1 (the
    record count is not released) and the ledger entry.
    """
    server_round = int(cast(int, msg.content.config_records["config"]["server-round"]))
    privacy = cfg.privacy
    try:
        plan = dp_round_plan(cfg, len(train_set))
        check_dp_compatible(model)
    except ValueError as exc:
        log.error("cannot run DP-SGD: %s", exc)  # may depend on the record count: stays here
        return _error(
            msg,
            ErrorCode.TRAINING,
            "DP-SGD: this holder cannot run the run's DP-SGD setting on its data or model "
            "(the holder's log says why)",
        )
    run = hashlib.sha256(json.dumps({**cfg.to_dict(), "server": None}, sort_keys=True).encode())
    records = record_fingerprints(train_set)
    key = release_key(
        run=run.hexdigest(),
        server_round=server_round,
        model={k: v.numpy() for k, v in msg.content.array_records["arrays"].items()},
        records=cohort_id(records),
    )
    try:
        with HolderPrivacy.locked(
            ledger_dir,
            delta=budget.delta if budget else privacy.delta,
            accountant=privacy.accountant,
        ) as state:
            if budget is not None and state.ledger.release(key) is None:
                try:
                    state.check(
                        budget,
                        records=records,
                        noise_multiplier=plan.noise_multiplier,
                        steps=plan.steps,
                        sample_rate=plan.sample_rate,
                    )
                except BudgetExceeded as exc:
                    log.warning("round %d refused: %s", server_round, exc)
                    first = " (the budget is smaller than one round)" if exc.spent == 0 else ""
                    return _error(
                        msg,
                        ErrorCode.BUDGET,
                        "privacy budget: this round would take some of this holder's records "
                        f"past the holder's ε budget{first}; the round is refused",
                    )
            train_dp_sgd(model, train_set, cfg.train, plan=plan, generator=state.sampler(key))
            entry = state.record(
                key,
                run=run.hexdigest(),
                round=server_round,
                records=records,
                noise_multiplier=plan.noise_multiplier,
                clipping_norm=plan.max_grad_norm,
                steps=plan.steps,
                sample_rate=plan.sample_rate,
            )
            delta = state.ledger.delta
    except LedgerError as exc:
        log.error("privacy ledger: %s", exc)
        return _error(
            msg,
            ErrorCode.BUDGET,
            "privacy ledger: this holder's ledger is missing or unreadable, so no round is "
            "trained (the holder's log says how to recover)",
        )
    # Only ε and δ leave the holder: the sampling rate (batch / n), the step count
    # and the calibrated σ are functions of the record count n, which is private.
    report = ConfigRecord(
        {
            "client": str(client),
            "epsilon": entry.epsilon,
            "round-epsilon": entry.round_epsilon,
            "delta": delta,
        }
    )
    metrics = MetricRecord({EXAMPLES_KEY: 1})
    content = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), "metrics": metrics, PRIVACY_KEY: report}
    )
    return Message(content=content, reply_to=msg)


class _RebuildableClientApp(ClientApp):
    """A ClientApp that pickles as the call that builds it.

    Flower's Ray backend pickles the ClientApp with every message; pickling
    the recipe (module-level functions and a path) instead of the closures
    keeps that to ~100 bytes.
    """

    def __init__(self, rebuild: Callable[[], ClientApp]) -> None:
        super().__init__()
        self._rebuild = rebuild

    def __reduce__(self) -> tuple[Callable[[], ClientApp], tuple[()]]:
        return (self._rebuild, ())


def make_client_app(
    *,
    data: DataProvider = node_data,
    model_fn: ModelFactory = default_model,
    ledger_dir: str | Path | None = None,
    simulated: bool = False,
    wallet: WalletProvider = node_wallet,
) -> ClientApp:
    """Build the ClientApp.

    Parameters
    ----------
    data : DataProvider, default :func:`node_data`
        Where each node's data comes from.
    model_fn : ModelFactory, default the model named in the run config
        Builds the untrained model that the global weights are loaded into.
    ledger_dir : str or Path, optional
        Where holders keep their privacy ledgers when the node config names
        none (``ledger-dir``); default ``~/.fedlearn/ledgers``.
    simulated : bool, default False
        Simulated holders enforce the run's ``privacy.client-epsilon-budget``;
        real holders only their own (``--epsilon-budget``). It also sets the
        defaults of the holder's policy (:mod:`fedlearn.privacy.policy`) for
        what the node config omits: real holders accept any secure mode and
        never plaintext; simulated holders accept the modes the run asks for.
    wallet : WalletProvider, default :func:`~fedlearn.attestation.client_mod.node_wallet`
        The holder's wallet, which signs its updates in attested runs.

    Examples
    --------
    >>> app = make_client_app()
    """
    app = _RebuildableClientApp(
        functools.partial(
            make_client_app,
            data=data,
            model_fn=model_fn,
            ledger_dir=ledger_dir,
            simulated=simulated,
            wallet=wallet,
        )
    )

    def _prepare(
        msg: Message, context: Context
    ) -> tuple[RunConfig, nn.Module, Dataset, Dataset, int] | Message:
        torch.set_num_threads(1)  # simulated clients share two cores
        config = msg.content.config_records.get("config")
        try:
            if config is None or CONFIG_KEY not in config:
                raise ConfigError(f"the server's message has no {CONFIG_KEY!r}")
            cfg = RunConfig.from_json(str(config[CONFIG_KEY]))
        except (ConfigError, ValueError) as exc:
            return _error(msg, ErrorCode.CONFIG, f"invalid run config: {exc}")
        try:
            local = data(context, cfg)
        except (DataError, OSError) as exc:
            # Paths, row numbers, values and shapes are the holder's business: the
            # holder's console shows them, the server only learns the rule.
            log.error("data: %s", exc)
            return _error(
                msg,
                ErrorCode.DATA,
                "data: this holder's file is missing or does not match the run's schema "
                "(the holder's log names the file, row and column)",
            )
        client = _client_index(context)
        # Under local DP evaluation is refused (it would release un-noised statistics),
        # so nothing is held out: a hold-out drawn as a permutation of range(n) would
        # move ~0.1·n records between training and hold-out when one record is added.
        evaluates = cfg.federation.fraction_evaluate > 0 and not cfg.privacy.local_dp
        holdout = cfg.data.validation_fraction if evaluates else 0.0
        train_set, val_set = split_validation(local, fraction=holdout, seed=cfg.federation.seed)
        model = model_fn(cfg)
        arrays = msg.content.array_records.get("arrays")
        try:
            if arrays is None:
                raise ValueError("the server's message has no 'arrays'")
            model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
        except (RuntimeError, ValueError, KeyError) as exc:
            return _error(msg, ErrorCode.MODEL, f"global model does not fit the local one: {exc}")
        return cfg, model, train_set, val_set, client

    # Outermost first: the holder's policy refuses a request below its floor before
    # anything trains; the holder signs what it sends, which the secure mod
    # protected after the DP mod clipped and noised it.
    @app.train(
        mods=[
            make_holder_policy_mod(simulated=simulated),
            make_attestation_mod(wallet),
            secure_aggregation_mod,
            user_level_dp_mod,
        ]
    )
    def _train(msg: Message, context: Context) -> Message:
        prepared = _prepare(msg, context)
        if isinstance(prepared, Message):
            return prepared
        cfg, model, train_set, _, client = prepared
        budget = _budget(context, cfg, simulated=simulated)
        if budget is not None and not cfg.privacy.local_dp:
            return _error(
                msg,
                ErrorCode.BUDGET,
                "this data holder has a privacy budget and only joins runs with local DP "
                "(privacy.local-dp = true); the round is refused",
            )
        if cfg.privacy.local_dp:
            return _private_train(
                msg,
                context,
                cfg,
                model,
                train_set,
                client,
                _ledger_dir(context, ledger_dir, client=client, simulated=simulated),
                budget,
            )
        server_round = int(cast(int, msg.content.config_records["config"]["server-round"]))
        try:
            loss = train(
                model,
                train_set,
                cfg.train,
                seed=client_seed(cfg.federation.seed, server_round, client),
                proximal_mu=float(cast(float, msg.content["config"].get("proximal-mu", 0.0))),
            )
        except (ValueError, RuntimeError) as exc:
            return _error(msg, ErrorCode.TRAINING, f"local training failed: {exc}")
        metrics = MetricRecord({EXAMPLES_KEY: len(train_set), TRAIN_LOSS_KEY: loss})
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        prepared = _prepare(msg, context)
        if isinstance(prepared, Message):
            return prepared
        cfg, model, train_set, val_set, _ = prepared
        if cfg.privacy.local_dp:
            return _error(
                msg,
                ErrorCode.BUDGET,
                "federated evaluation is refused under local DP: it would release "
                "un-noised statistics of this holder's records",
            )
        result = evaluate(model, val_set if len(val_set) else train_set)
        metrics = MetricRecord(
            {EXAMPLES_KEY: result.num_examples, "accuracy": result.accuracy, "loss": result.loss}
        )
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    app.query("secure")(functools.partial(handle_secure_query, simulated=simulated))
    return app


#: The ClientApp SuperNodes load in deployment (``fedlearn.client_app:app``).
app = make_client_app()
