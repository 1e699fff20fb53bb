"""User-level DP on the aggregate: the noise actually added, clipping, accounting."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedlearn.privacy.central_dp import CentralDP, clip_and_noise
from fedlearn.privacy.noise import distributed_noise_std
from fedlearn.wire import EXAMPLES_KEY
from tests.flower_messages import instruction, node_list_grid

pytestmark = pytest.mark.usefixtures("as_serverapp")

DIM = 20_000
SIGMA, C = 1.3, 0.5
# The sample variance of DIM draws has relative std sqrt(2/DIM) = 1%: 5% is 5 std.
TOLERANCE = 0.05


def _reply(node: int, arrays: dict[str, np.ndarray]) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord({EXAMPLES_KEY: 100}),
        }
    )
    return Message(content=content, reply_to=instruction(RecordDict(), node_id=node))


def _round(
    strategy: CentralDP, clients: int, global_w: np.ndarray, sent: list[np.ndarray]
) -> np.ndarray:
    config = ConfigRecord()
    messages = strategy.configure_train(
        1, ArrayRecord({"w": Array(global_w)}), config, node_list_grid(clients)
    )
    assert len(list(messages)) == clients
    arrays, _ = strategy.aggregate_train(1, [_reply(i + 1, {"w": w}) for i, w in enumerate(sent)])
    assert arrays is not None
    return arrays["w"].numpy()


def _dp(mode: str, min_replies: int, *, fraction: float = 1.0, dishonest: int = 0) -> CentralDP:
    return CentralDP(
        FedAvg(fraction_train=fraction, min_train_nodes=1, min_available_nodes=1),
        mode=mode,
        noise_multiplier=SIGMA,
        clipping_norm=C,
        min_replies=min_replies,
        dishonest_clients=dishonest,
        delta=1e-5,
        rng=np.random.default_rng(0),
    )


def test_server_mode_adds_calibrated_noise_to_the_sum() -> None:
    clients = 10
    global_w = np.zeros(DIM, np.float32)
    new = _round(_dp("server", 5), clients, global_w, [global_w] * clients)
    noise_on_sum = (new.astype(np.float64) - global_w) * clients
    assert abs(noise_on_sum.mean()) < 5 * SIGMA * C / np.sqrt(DIM)
    assert noise_on_sum.var() == pytest.approx((SIGMA * C) ** 2, rel=TOLERANCE)


def test_distributed_shares_sum_to_the_calibrated_noise() -> None:
    clients = min_replies = 8
    std = distributed_noise_std(noise_multiplier=SIGMA, clipping_norm=C, num_clients=min_replies)
    rng = np.random.default_rng(1)
    zero = np.zeros(DIM, np.float32)
    sent = [
        clip_and_noise([zero], clipping_norm=C, noise_std=std, rng=rng)[0] for _ in range(clients)
    ]
    # each share alone is far below the calibrated noise: nobody sees the aggregate's noise level
    assert np.var(sent[0]) == pytest.approx((SIGMA * C) ** 2 / min_replies, rel=TOLERANCE)
    new = _round(
        _dp("distributed", min_replies),
        clients,
        zero,
        [s.astype(np.float32) for s in sent],
    )
    noise_on_sum = new.astype(np.float64) * clients
    assert noise_on_sum.var() == pytest.approx((SIGMA * C) ** 2, rel=TOLERANCE)


def _noiseless(mode: str, clients: int) -> CentralDP:
    """Negligible noise (σ = 1e-9) and C = 1, to check clipping exactly."""
    return CentralDP(
        FedAvg(min_train_nodes=1, min_available_nodes=1),
        mode=mode,
        noise_multiplier=1e-9,
        clipping_norm=1.0,
        min_replies=1,
        delta=1e-5,
        rng=np.random.default_rng(0),
    )


def test_server_mode_clips_each_update_before_summing() -> None:
    clients = 4
    dp = _noiseless("server", clients)
    global_w = np.zeros(3, np.float32)
    big = np.array([30.0, 40.0, 0.0], np.float32)  # norm 50, clipped to 1
    new = _round(dp, clients, global_w, [big, global_w, global_w, global_w])
    np.testing.assert_allclose(new, np.array([0.6, 0.8, 0.0]) / clients, atol=1e-6)


def test_client_mode_drops_an_update_above_the_clipping_norm() -> None:
    clients = 3
    dp = _noiseless("client", clients)
    ok = np.array([0.3, 0.4], np.float32)
    new = _round(dp, clients, np.zeros(2, np.float32), [ok, ok, np.array([3.0, 4.0], np.float32)])
    np.testing.assert_allclose(new, 2 * ok / clients, atol=1e-6)


def test_a_client_cannot_claim_to_be_a_secure_aggregate() -> None:
    """Only behind SecureAggregation does a reply stand for several clipped updates."""
    clients = 2
    dp = _noiseless("server", clients)
    huge = np.array([300.0, 400.0], np.float32)
    config = ConfigRecord()
    list(
        dp.configure_train(
            1, ArrayRecord({"w": Array(np.zeros(2, np.float32))}), config, node_list_grid(2)
        )
    )
    forged = _reply(1, {"w": huge})
    forged.content["metrics"]["secure-contributors"] = 1  # a client pretending
    arrays, _ = dp.aggregate_train(1, [forged, _reply(2, {"w": np.zeros(2, np.float32)})])
    assert arrays is not None
    # Clipped to norm 1 like any update, then divided by the 2 sampled.
    np.testing.assert_allclose(arrays["w"].numpy(), np.array([0.6, 0.8]) / clients, atol=1e-6)


def test_every_round_is_in_the_server_ledger_with_fixed_size_sampling() -> None:
    dp = _dp("server", 2, fraction=0.4)
    zero = np.zeros(10, np.float32)
    config = ConfigRecord()
    sent = dp.configure_train(1, ArrayRecord({"w": Array(zero)}), config, node_list_grid(10))
    assert len(list(sent)) == 4  # four of the ten connected clients: a sampled release
    dp.aggregate_train(1, [_reply(i, {"w": zero}) for i in range(1, 5)])
    first = dp.last_release
    assert first is not None and first.mechanism == "sampled_gaussian_fixed"
    assert first.sample_size == 4 and first.population_size == 10
    dp.aggregate_train(2, [_reply(i, {"w": zero}) for i in range(1, 5)])
    assert len(dp.ledger) == 2
    assert dp.ledger.spent_epsilon() > first.cumulative_epsilon


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"clipping_norm": -1.0}, "clipping_norm"),
        ({"mode": "local"}, "mode"),
        ({"min_replies": 0}, "min_replies"),
        ({"mode": "distributed", "dishonest_clients": 2}, "dishonest_clients"),
        ({"dishonest_clients": -1}, "dishonest_clients"),
    ],
)
def test_invalid_parameters_are_refused(kwargs: dict, fragment: str) -> None:
    base = {
        "mode": "server",
        "noise_multiplier": 1.0,
        "clipping_norm": 1.0,
        "min_replies": 2,
        "delta": 1e-5,
    }
    with pytest.raises(ValueError, match=fragment):
        CentralDP(FedAvg(), **{**base, **kwargs})


def test_full_participation_is_accounted_with_replace_one_sensitivity() -> None:
    from fedlearn.privacy import epsilon, gaussian_event

    clients = 4
    dp = _dp("server", 2)
    zero = np.zeros(10, np.float32)
    _round(dp, clients, zero, [zero] * clients)
    entry = dp.last_release
    assert entry is not None and entry.mechanism == "sampled_gaussian_fixed"
    assert entry.sample_size == entry.population_size == clients
    # dividing by the public count m = N means replace-one neighbours: sensitivity 2C
    assert entry.epsilon == pytest.approx(
        epsilon(gaussian_event(noise_multiplier=SIGMA / 2), delta=1e-5), rel=1e-6
    )


@pytest.mark.parametrize("mode", ["server", "client"])
def test_population_is_the_nodes_connected_not_the_configured_federation(mode: str) -> None:
    """3 of 10 configured clients connected: every round takes all 3, q = 1 is booked."""
    dp = _dp(mode, 2)
    zero = np.zeros(10, np.float32)
    _round(dp, 3, zero, [zero] * 3)
    entry = dp.last_release
    assert entry is not None
    assert entry.sample_size == entry.population_size == 3
    # the same ε as a full-participation round of 3: no amplification by sampling
    full = _dp(mode, 2)
    _round(full, 3, zero, [zero] * 3)
    assert full.last_release is not None
    assert entry.epsilon == pytest.approx(full.last_release.epsilon)


def test_distributed_mode_claims_no_amplification_from_the_servers_sample() -> None:
    """The server picks the sample, and the noise protects against the server."""
    zero = np.zeros(10, np.float32)
    sampled = _dp("distributed", 2, fraction=0.4)
    sent = sampled.configure_train(
        1, ArrayRecord({"w": Array(zero)}), ConfigRecord(), node_list_grid(10)
    )
    assert len(list(sent)) == 4
    sampled.aggregate_train(1, [_reply(i, {"w": zero}) for i in range(1, 5)])
    server = _dp("server", 2, fraction=0.4)
    server.configure_train(1, ArrayRecord({"w": Array(zero)}), ConfigRecord(), node_list_grid(10))
    server.aggregate_train(1, [_reply(i, {"w": zero}) for i in range(1, 5)])
    assert sampled.last_release is not None and server.last_release is not None
    assert sampled.last_release.population_size == sampled.last_release.sample_size == 4
    assert server.last_release.population_size == 10
    assert sampled.last_release.epsilon > server.last_release.epsilon


def test_noise_shares_are_sized_for_the_honest_survivors() -> None:
    """With t = 4 and f = 1, three honest shares alone carry the calibrated noise."""
    dp = _dp("distributed", 4, dishonest=1)
    config = ConfigRecord()
    dp.configure_train(
        1, ArrayRecord({"w": Array(np.zeros(2, np.float32))}), config, node_list_grid(4)
    )
    share = float(config["dp-noise-std"])
    assert share == pytest.approx(SIGMA * C / np.sqrt(3))
    rng = np.random.default_rng(7)
    zero = np.zeros(DIM, np.float32)
    honest = [
        clip_and_noise([zero], clipping_norm=C, noise_std=share, rng=rng)[0] for _ in range(3)
    ]
    cheater = zero.astype(np.float64)  # skips its share
    noise_on_sum = sum(honest) + cheater
    assert noise_on_sum.var() == pytest.approx((SIGMA * C) ** 2, rel=TOLERANCE)
