"""Audits of the shipped user-level DP path: the code that runs, not a model of it.

Canary audits of ``CentralDP``
------------------------------
Every trial is one release of a fresh :class:`~fedlearn.privacy.central_dp.CentralDP`
wrapper (a fresh ledger: one release, one claim) over an in-process
:class:`~fedlearn.loopback.LoopbackGrid` whose nodes answer through the real
client mod :func:`~fedlearn.privacy.central_dp.user_level_dp_mod`: in
``"server"`` mode the wrapper clips and adds ``N(0, σ²C²)`` to the sum, in
``"client"`` mode the canary's own mod clips its update and the wrapper checks
the norm and adds the noise, in ``"distributed"`` mode each node's mod clips and
adds its share ``N(0, σ²C²/(t − f))``. The noise is the production noise (a
fresh OS-keyed ChaCha20 sampler per call, no test seed).

The neighbouring inputs are the ones the ledger accounts for. The wrapper
divides the noised sum by the public number of clients sampled, so its ledger
books every round as fixed-size sampling under the replace-one relation
(sensitivity ``2C``); the worst pair that relation allows is one client (the
canary) whose update is a large vector in a fixed direction ``u`` (norm 10·C,
clipped to ``C``) against the same client sending ``−10·C·u``. Every other
client's update is fixed and known to the adversary, who scores a release by
its projection on ``u``; :func:`tests.audit_statistics.epsilon_lower_bound`
turns the two score samples into an ε lower bound with 95% confidence, which
must stay below the ε the wrapper's own ledger books for that release. A bug
planted in the shipped path (noise calibrated for the mean, divided by the
number of clients, then added to the sum) must be caught: lower bound above
the claim.

What the trial count buys: the worst-case pair above is a Gaussian mechanism
with shift ``2C`` at noise ``σC`` (μ = 2/3), whose exact ε at δ = 1e-5 is 2.75
(the RDP ledger books 2.99). 1000 releases per input typically prove less than
1 of that for a correct mechanism and up to 4.9 for a broken one, so the black-box
bound refutes gross miscalibrations (noise several times too small), not a few
percent. The finer checks are white-box: the canary must arrive in the sum at
norm exactly ``C`` (neither dropped, which would make the audit vacuous, nor
unclipped) and the release's noise along ``u`` must have the calibrated std.

Noise of the revealed sum under distributed DP
----------------------------------------------
A whole federation (``run_federation`` with the stack ``build_stack`` makes
from the config: ``SecureAggregation`` over ``CentralDP(mode="distributed")``)
runs one round with real ClientApps (``make_client_app``: training, the DP mod,
the secure mod) in every secure mode. The model has a 20 000-parameter block
that no loss depends on, so every client's clipped update is exactly zero there
and the revealed sum is pure noise: ``n`` shares of variance ``σ²C²/(t − f)``,
``n·σ²C²/(t − f)`` per coordinate. Each mode runs at a clipping norm at which
the public ``value_scale`` ``S`` is above 2, so clients really divide by ``S``
and the server really multiplies back. A lost share or a forgotten rescaling
must fail the check.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from numpy.typing import NDArray
from torch import nn

from fedlearn.checkpoint import load_latest
from fedlearn.client_app import make_client_app
from fedlearn.config import RunConfig
from fedlearn.loopback import LoopbackGrid
from fedlearn.privacy import central_dp
from fedlearn.privacy.accounting import epsilon, gaussian_event
from fedlearn.privacy.central_dp import CentralDP, CentralDPMode, user_level_dp_mod
from fedlearn.privacy.noise import central_noise_std
from fedlearn.privacy.secure import aggregation
from fedlearn.privacy.secure.aggregation import SecureAggregation
from fedlearn.privacy.secure.modes import value_scale
from fedlearn.privacy.secure.packing import mean_update
from fedlearn.server_app import run_federation
from fedlearn.wire import DP_NOISE_KEY, EXAMPLES_KEY
from tests.audit_statistics import clopper_pearson_upper, epsilon_lower_bound

pytestmark = pytest.mark.usefixtures("as_serverapp")

# -- canary audits ---------------------------------------------------------------------

SIGMA = 3.0  # noise multiplier: the ledger books ε ≈ 2.99 at δ = 1e-5 for one release
CLIP = 1.0  # clipping norm C
DELTA = 1e-5
#: Clients per round, all sampled (no amplification claimed or used). Honest audits
#: need few; the planted bug divides the noise by the number of clients, so its
#: audit runs with ten (noise 10x too small).
HONEST_CLIENTS = 3
CLIENTS = 10
DISHONEST = 1  # f of distributed mode: shares sized for t − f honest survivors
DIM = 4  # model size: the audit needs many releases, not many coordinates
#: Releases per neighbouring input (half choose the threshold, half evaluate it).
#: 500 evaluation trials can prove ε up to log(500 / 3.7) ≈ 4.9, enough to refute
#: the claimed 2.99 when the noise is 10x too small.
TRIALS = 1000
ALPHA = 0.05
CANARY = 1  # the canary's node id


@pytest.fixture(autouse=True)
def _quiet_flower() -> Iterator[None]:
    """Flower logs two INFO lines per round; thousands of releases need none of them."""
    logger = logging.getLogger("flwr")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


@dataclass(frozen=True)
class CanaryAudit:
    """What one audit measured.

    Attributes
    ----------
    epsilon_lower : float
        ε proved with 95% confidence by the threshold test.
    claimed : float
        ε the wrapper's ledger booked for each of the releases (all equal).
    shift : float
        Mean score with the canary minus without, in units of the sum (``2C``
        when the canary arrives clipped and undropped).
    spread : float
        Standard deviation of the scores, in units of the sum (the noise on the
        sum along ``u``: ``σC`` for a correct central mechanism).
    """

    epsilon_lower: float
    claimed: float
    shift: float
    spread: float


class CanaryFederation:
    """``clients`` nodes behind a LoopbackGrid, each answering through the real DP mod.

    Every node's "training" returns the global model plus its fixed update; node
    ``CANARY`` returns ``±10·C·u`` (``sign``), the others small updates the
    adversary knows. The mod then does what a real ClientApp's mod does with
    the server's config: nothing (server mode), clip (client mode), clip and
    add the noise share (distributed mode).
    """

    def __init__(self, clients: int, *, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        raw = rng.normal(size=DIM)
        self.direction = raw / np.linalg.norm(raw)
        self.sign = 1.0
        self.updates: dict[int, NDArray[np.float64]] = {}
        for node in range(1, clients + 1):
            other = rng.normal(size=DIM)
            self.updates[node] = 0.5 * CLIP * other / np.linalg.norm(other)
        self.global_model = np.zeros(DIM, np.float32)
        self.grid = LoopbackGrid({node: self._handler(node) for node in self.updates})

    def _handler(self, node: int) -> Callable[[Message, Context], Message]:
        def train(msg: Message, context: Context) -> Message:
            sent = msg.content.array_records["arrays"]["w"].numpy()
            if node == CANARY:
                update = self.sign * 10.0 * CLIP * self.direction
            else:
                update = self.updates[node]
            trained = ArrayRecord({"w": Array((sent + update).astype(np.float32))})
            content = RecordDict({"arrays": trained, "metrics": MetricRecord({EXAMPLES_KEY: 1})})
            return Message(content, reply_to=msg)

        return lambda msg, context: user_level_dp_mod(msg, context, train)

    def release(self, mode: CentralDPMode) -> tuple[float, float]:
        """One round of a fresh wrapper: (score of the release, ε its ledger booked)."""
        clients = len(self.updates)
        dp = CentralDP(
            FedAvg(min_available_nodes=clients, min_train_nodes=clients),
            mode=mode,
            noise_multiplier=SIGMA,
            clipping_norm=CLIP,
            min_replies=clients,
            dishonest_clients=DISHONEST if mode == "distributed" else 0,
            delta=DELTA,
        )
        arrays = ArrayRecord({"w": Array(self.global_model)})
        messages = list(dp.configure_train(1, arrays, ConfigRecord(), self.grid))
        assert len(messages) == clients
        replies = list(self.grid.send_and_receive(messages))
        self.grid.sent.clear()
        self.grid.received.clear()
        new, _ = dp.aggregate_train(1, replies)
        assert new is not None and dp.last_release is not None
        released = new["w"].numpy().astype(np.float64) - self.global_model
        # The wrapper publishes global + noised sum / (number sampled): back to the sum.
        return float(released @ self.direction) * clients, dp.last_release.epsilon

    def audit(self, mode: CentralDPMode, *, trials: int = TRIALS) -> CanaryAudit:
        """``trials`` releases with the canary's update at ``−u`` and as many at ``+u``."""
        scores: dict[float, NDArray[np.float64]] = {}
        claims: set[float] = set()
        for sign in (-1.0, 1.0):
            self.sign = sign
            runs = [self.release(mode) for _ in range(trials)]
            scores[sign] = np.array([score for score, _ in runs])
            claims.update(claim for _, claim in runs)
        assert len(claims) == 1, claims  # one mechanism, one claim per release
        out, into = scores[-1.0], scores[1.0]
        return CanaryAudit(
            epsilon_lower=epsilon_lower_bound(out, into, delta=DELTA, alpha=ALPHA),
            claimed=claims.pop(),
            shift=float(into.mean() - out.mean()),
            spread=float(np.sqrt((out.var(ddof=1) + into.var(ddof=1)) / 2)),
        )


def _noise_on_sum(mode: CentralDPMode, clients: int) -> float:
    """The std of the noise on the sum the calibration promises along any direction."""
    if mode != "distributed":
        return SIGMA * CLIP
    return SIGMA * CLIP * math.sqrt(clients / (clients - DISHONEST))


def _assert_canary_arrives_clipped(audit: CanaryAudit, noise: float) -> None:
    """The audit has something to see: the canary is in the sum at norm exactly C.

    The shift between the two inputs is ``2C`` (the clipped canary, neither
    dropped nor unclipped); its estimate from 2·TRIALS releases has standard
    error ``noise·sqrt(2/TRIALS)``, and 5 of those is the tolerance.
    """
    standard_error = noise * math.sqrt(2 / TRIALS)
    assert abs(audit.shift - 2 * CLIP) < 5 * standard_error, audit


@pytest.mark.parametrize("mode", ["server", "client", "distributed"])
def test_shipped_central_dp_stays_below_the_epsilon_its_ledger_claims(
    mode: CentralDPMode,
) -> None:
    audit = CanaryFederation(HONEST_CLIENTS).audit(mode)
    noise = _noise_on_sum(mode, HONEST_CLIENTS)
    _assert_canary_arrives_clipped(audit, noise)
    # The release's noise along u is the calibrated σC (distributed: the t − f honest
    # shares' σC, times sqrt(n/(t−f)) as all n added theirs); sample std within 10%.
    assert audit.spread == pytest.approx(noise, rel=0.1), audit
    # The ledger books the worst case (one release, replace-one, no amplification).
    assert audit.claimed == pytest.approx(2.99, abs=0.01)
    assert audit.epsilon_lower < audit.claimed, audit


def test_noise_scaled_for_the_mean_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug planted in the shipped calibration: the std meant for the mean, added to the sum.

    ``CentralDP`` asks ``central_noise_std`` for the std of the noise on the sum;
    the bug divides it by the number of clients (``σC/m``, right for the mean,
    ``m`` times too small for the sum the wrapper adds it to).
    """
    real = central_noise_std

    def for_the_mean(**kwargs: Any) -> float:
        return real(**kwargs) / CLIENTS

    monkeypatch.setattr(central_dp, "central_noise_std", for_the_mean)
    audit = CanaryFederation(CLIENTS).audit("server")
    _assert_canary_arrives_clipped(audit, SIGMA * CLIP / CLIENTS)
    # The ledger still claims the calibrated ε; the audit proves more leaks.
    assert audit.claimed == pytest.approx(2.99, abs=0.01)
    assert audit.epsilon_lower > audit.claimed + 1.0, audit


def test_clopper_pearson_bound_is_conservative() -> None:
    # Zero failures in n trials: the exact one-sided bound is 1 − level^(1/n).
    assert clopper_pearson_upper(0, 1000, 0.025) == pytest.approx(1 - 0.025 ** (1 / 1000))
    assert clopper_pearson_upper(10, 10, 0.025) == 1.0
    assert clopper_pearson_upper(50, 1000, 0.025) > 50 / 1000


def test_threshold_test_bound_is_valid_and_has_power() -> None:
    """On exact Gaussians of known ε the bound stays below it and finds a real loss."""
    rng = np.random.default_rng(3)
    # Shift 1 at unit noise: the Gaussian mechanism with σ = 1 (ε ≈ 4.4 at δ = 1e-5).
    exact = epsilon(gaussian_event(noise_multiplier=1.0), delta=DELTA, accountant="pld")
    out, into = rng.normal(size=40_000), rng.normal(size=40_000) + 1.0
    lower = epsilon_lower_bound(out, into, delta=DELTA)
    assert 0.5 < lower < exact, (lower, exact)


# -- the revealed sum's noise under distributed DP, in every secure mode --------------

NODES = 4  # n: every sampled client contributes
MIN_REPLIES = 3  # t = federation.min-train-clients
#: f (privacy.distributed-dishonest-clients): each share has variance σ²C²/(t − f) = σ²C²/2.
SKIPPERS = 1
NOISE_SIGMA = 1.0
#: The idle block: coordinates no loss depends on, where every client's update is zero.
IDLE = 20_000
#: The sample variance of IDLE independent Gaussian coordinates has relative standard
#: deviation sqrt(2 / IDLE) = 1%; 5% is five of those (two-sided miss < 1e-6). The
#: modes' own errors (CKKS decryption noise, SecAgg+ quantization, CrypTen's 16
#: fractional bits) add variances below 1e-5 of the calibrated one.
VARIANCE_TOLERANCE = 0.05
#: C per mode: large enough that value_scale S = (C + 6σC/√(t − f)) / (mode's range)
#: exceeds 2, so the clients really divide by S and the server really multiplies back.
SECURE_CLIP = {"ckks": 1.0, "secagg+": 4.0, "crypten": 2.0**19}


class IdleBlockModel(nn.Module):
    """A classifier head plus ``IDLE`` parameters that no output depends on.

    Real local training changes the head only (SGD leaves a parameter without a
    gradient untouched), so on the idle block each client's clipped update is
    exactly zero and what the round reveals there is the noise alone.
    """

    def __init__(self, num_features: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.head = nn.Linear(num_features, num_classes)
        self.idle = nn.Parameter(torch.zeros(IDLE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(x)
        return logits


def _idle_block_model(cfg: RunConfig) -> nn.Module:
    return IdleBlockModel()


@dataclass(frozen=True)
class NoiseRound:
    """What one distributed-DP round in a secure mode revealed on the idle block.

    Attributes
    ----------
    scale : float
        The public value_scale S the clients divided by.
    contributors : int
        n: clients in the revealed sum.
    sampled : int
        Clients the round sampled (the wrapper divides the noised sum by it).
    expected : float
        The calibration: ``n·σ²C²/(t − f)`` per coordinate of the sum.
    weight : float or None
        The revealed sum's weight slot after the server's rescaling (n when
        it is undone correctly); None if no sum reached the strategy.
    revealed : float or None
        Per-coordinate variance of the revealed (rescaled) sum on the idle block.
    applied : float or None
        Per-coordinate variance of ``(new − old) · sampled`` on the idle block:
        the noise the published model carries, scaled back to the sum.
    """

    scale: float
    contributors: int
    sampled: int
    expected: float
    weight: float | None
    revealed: float | None
    applied: float | None

    def calibrated(self) -> bool:
        """The check: a sum was revealed and applied with exactly the calibrated noise."""
        if self.weight is None or self.revealed is None or self.applied is None:
            return False
        return (
            abs(self.weight - self.contributors) <= 1e-3 * self.contributors
            and abs(self.revealed / self.expected - 1) <= VARIANCE_TOLERANCE
            and abs(self.applied / self.expected - 1) <= VARIANCE_TOLERANCE
        )


def _skips_its_share(app: Callable[[Message, Context], Message]) -> Callable[..., Message]:
    """A node whose DP mod is told to add no noise: its share is lost (a cheating client)."""

    def handler(msg: Message, context: Context) -> Message:
        config = msg.content.config_records.get("config")
        if msg.metadata.message_type == "train" and config is not None:
            # A copy: the round's messages share one config record.
            msg.content = RecordDict(
                {**msg.content, "config": ConfigRecord({**config, DP_NOISE_KEY: 0.0})}
            )
        return app(msg, context)

    return handler


def _noise_round(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    *,
    skip_share: int | None = None,
) -> NoiseRound:
    """One round of a whole federation in ``mode`` under distributed DP; measure its noise."""
    clip = SECURE_CLIP[mode]
    cfg = RunConfig.from_dict(
        {
            "federation": {
                "rounds": 1,
                "clients": NODES,
                "min-train-clients": MIN_REPLIES,
                "fraction-evaluate": 0.0,
                "seed": 11,
            },
            "train": {"local-epochs": 1},
            "privacy": {
                "central-dp": "distributed",
                "central-noise-multiplier": NOISE_SIGMA,
                "central-clipping-norm": clip,
                "distributed-dishonest-clients": SKIPPERS,
            },
            "secure": {"mode": mode},
        }
    )
    scale = value_scale(cfg)
    assert scale > 2, scale  # the rescaling is exercised
    revealed: list[tuple[NDArray[np.float64], dict[str, NDArray[Any]]]] = []
    real_mean_update = mean_update

    def spy(vector: NDArray[np.float64], *, like: dict[str, NDArray[Any]]) -> Any:
        # SecureAggregation hands the revealed, rescaled sum to mean_update: keep a copy.
        revealed.append((np.array(vector, dtype=np.float64), like))
        return real_mean_update(vector, like=like)

    monkeypatch.setattr(aggregation, "mean_update", spy)
    app = make_client_app(
        model_fn=_idle_block_model, simulated=True, ledger_dir=tmp_path / "ledgers"
    )
    handlers: dict[int, Callable[[Message, Context], Message]] = {
        node: app for node in range(1, NODES + 1)
    }
    if skip_share is not None:
        handlers[skip_share] = _skips_its_share(app)
    grid = LoopbackGrid(handlers)
    run_dir = tmp_path / f"run-{mode}"
    history = run_federation(grid, cfg=cfg, run_dir=run_dir, model_fn=_idle_block_model)
    (record,) = history.rounds
    contributors = int(record.secure.get("contributors", 0))
    sampled = record.sampled
    expected = contributors * (NOISE_SIGMA * clip) ** 2 / (MIN_REPLIES - SKIPPERS)
    train = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert train, f"no client was asked to train: {record.secure}"
    old = train[0].content.array_records["arrays"]["idle"].numpy().astype(np.float64)
    checkpoint = load_latest(run_dir / "checkpoints")
    assert checkpoint is not None
    new = checkpoint.arrays["idle"].astype(np.float64)
    weight = revealed_variance = applied_variance = None
    if record.applied:
        applied_variance = float(np.var((new - old) * sampled))
    if revealed:
        vector, like = revealed[-1]
        start = 0
        for key, reference in like.items():  # the packing order: the model's keys
            if key == "idle":
                break
            start += int(np.asarray(reference).size)
        weight = float(vector[-1])
        revealed_variance = float(np.var(vector[start : start + IDLE]))
    return NoiseRound(
        scale=scale,
        contributors=contributors,
        sampled=sampled,
        expected=expected,
        weight=weight,
        revealed=revealed_variance,
        applied=applied_variance,
    )


@pytest.mark.parametrize("mode", ["ckks", "secagg+", "crypten"])
def test_revealed_sum_carries_the_calibrated_noise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    measured = _noise_round(tmp_path, monkeypatch, mode)
    assert measured.contributors == measured.sampled == NODES, measured
    assert measured.calibrated(), measured


def test_a_lost_noise_share_fails_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One client skips its share: n − 1 shares, variance (n − 1)/n of the calibration.

    Within what ``f = 1`` tolerates (the aggregate still carries ``≥ σ²C²``), so the
    round is applied; the check sees the missing share all the same.
    """
    measured = _noise_round(tmp_path, monkeypatch, "secagg+", skip_share=2)
    assert measured.contributors == NODES
    assert measured.revealed is not None and measured.applied is not None
    lost = (NODES - 1) / NODES
    assert measured.revealed / measured.expected == pytest.approx(lost, rel=VARIANCE_TOLERANCE)
    assert measured.applied / measured.expected == pytest.approx(lost, rel=VARIANCE_TOLERANCE)
    assert not measured.calibrated()


@pytest.mark.parametrize("weight_check", [True, False], ids=["shipped", "weight-check-removed"])
def test_a_forgotten_rescaling_fails_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weight_check: bool
) -> None:
    """The server forgets to multiply the revealed sum by S (the clients divided by it).

    The shipped weight-slot check refuses such a sum (its weights add up to n/S,
    not n), so nothing is applied; with that check removed too, the revealed
    sum's variance is the calibration divided by S². (The published model would
    then be unchanged: the mean update is a ratio of two sums that both lack S.)
    """
    real_configure = SecureAggregation.configure_train

    def forgets_to_rescale(
        self: SecureAggregation,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        grid: Any,
    ) -> Any:
        messages = real_configure(self, server_round, arrays, config, grid)
        self.value_scale = 1.0  # the clients were told S; the server no longer undoes it
        return messages

    monkeypatch.setattr(SecureAggregation, "configure_train", forgets_to_rescale)
    if not weight_check:
        monkeypatch.setattr(SecureAggregation, "_check_weight", lambda *args: None)
    measured = _noise_round(tmp_path, monkeypatch, "secagg+")
    assert not measured.calibrated(), measured
    if weight_check:
        assert measured.weight is None and measured.applied is None, measured
    else:
        assert measured.weight is not None and measured.revealed is not None
        assert measured.weight == pytest.approx(NODES / measured.scale, rel=1e-3)
        assert measured.revealed / measured.expected == pytest.approx(
            measured.scale**-2, rel=VARIANCE_TOLERANCE
        )
