"""SecAgg+ on the Message API: real crypto, real Flower messages, an in-process grid.

Each test drives :class:`SecAggPlusServer` against :class:`SecAggPlusClient`
objects through :class:`LoopbackGrid` exactly as the strategy wrapper and the
client mod do: ``setup`` → train messages (``protect``) → ``check_reply`` →
``aggregate``. The guarantees checked: the revealed vector is the survivors'
sum (exactly the dequantized integer sum; within the stated bound of the float
sum) whatever single stage 30 % of the nodes drop at; beyond the threshold the
round aborts with a reason; unsafe requests and bad parameters are refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)

from fedlearn.loopback import DropRule, LoopbackGrid
from fedlearn.privacy.secure.base import (
    AggregationAbortedError,
    SecureSum,
    request,
    stage_of,
)
from fedlearn.privacy.secure.secaggplus import SecAggPlusClient, SecAggPlusServer
from fedlearn.privacy.secure.secaggplus.primitives import neighbours
from fedlearn.wire import EXAMPLES_KEY, SECURE_BLOBS, SECURE_QUERY_TYPE, SecAggStage
from tests.flower_messages import instruction, reachable, serverapp_identity

ROUND = 3
TIMEOUT = 30.0
# Node ids as a SuperLink draws them: random 64-bit, some above 2**63.
NODE_IDS = [int(x) for x in np.random.default_rng(7).integers(1, 2**64 - 1, 20, dtype=np.uint64)]
# Six nodes spaced three apart in the sorted ring: every neighbourhood of 5
# (or 7) loses at most 2 (or 3) nodes, so a threshold of 3 (or 4) holds.
SPACED = [sorted(NODE_IDS)[i] for i in (1, 4, 7, 10, 13, 16)]


# --------------------------------------------------------------------------- harness


def stage_drop(stage: str, nodes: Iterable[int]) -> DropRule:
    """``nodes`` stop answering from ``stage`` on (the train message counts as a stage)."""
    order = [SecAggStage.SETUP, SecAggStage.SHARE_KEYS, SecAggStage.TRAIN, SecAggStage.UNMASK]
    gone = set(nodes)

    def drop(node: int, msg: Message) -> bool:
        current = SecAggStage.TRAIN if msg.metadata.message_type == "train" else stage_of(msg)
        return node in gone and order.index(current) >= order.index(stage)

    return drop


class Federation:
    """Clients behind a loopback grid, each with one fixed vector to protect."""

    def __init__(
        self,
        vectors: dict[int, np.ndarray],
        *,
        drop: DropRule | None = None,
        train_reply: Callable[[int, Message, Context], Message] | None = None,
    ) -> None:
        self.vectors = vectors
        self.clients = {n: SecAggPlusClient() for n in vectors}
        self.train_reply = train_reply
        self.grid = LoopbackGrid({n: self._handler(n) for n in vectors}, drop=drop)

    def _handler(self, node: int) -> Callable[[Message, Context], Message]:
        def handle(msg: Message, ctx: Context) -> Message:
            if msg.metadata.message_type == SECURE_QUERY_TYPE:
                return self.clients[node].handle_query(msg, ctx)
            if self.train_reply is not None:
                return self.train_reply(node, msg, ctx)
            protected = self.clients[node].protect(self.vectors[node], msg, ctx)
            return Message(
                RecordDict({SECURE_BLOBS: protected, "metrics": MetricRecord({EXAMPLES_KEY: 1})}),
                reply_to=msg,
            )

        return handle

    def train(self, server: SecAggPlusServer, server_round: int = ROUND) -> list[Message]:
        """Setup, then the train messages with the setup records merged in."""
        records = server.setup(
            self.grid, server_round=server_round, node_ids=sorted(self.vectors), timeout=TIMEOUT
        )
        messages = []
        for node, extra in records.items():
            content = RecordDict({"config": ConfigRecord({"server-round": server_round})})
            for name, record in extra.items():
                content[name] = record
            messages.append(Message(content, node, "train", group_id=str(server_round)))
        return list(self.grid.send_and_receive(messages, timeout=TIMEOUT))

    def run(self, server: SecAggPlusServer, server_round: int = ROUND) -> SecureSum:
        with serverapp_identity():
            replies = self.train(server, server_round)
            length = len(next(iter(self.vectors.values())))
            return server.aggregate(
                self.grid,
                server_round=server_round,
                replies=replies,
                length=length,
                timeout=TIMEOUT,
            )

    def sent_stages(self) -> list[str]:
        return [stage_of(m) for m in self.grid.sent if m.metadata.message_type == SECURE_QUERY_TYPE]


def make_vectors(
    node_ids: Sequence[int], length: int, *, clip: float = 8.0, seed: int = 0
) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.uniform(-clip, clip, length) for n in node_ids}


def plaintext_sum(vectors: dict[int, np.ndarray], nodes: Iterable[int]) -> np.ndarray:
    return np.sum([vectors[n] for n in sorted(nodes)], axis=0)


# --------------------------------------------------------------------------- correctness


def test_no_dropout_sum_within_bound_and_model_changes() -> None:
    vectors = make_vectors(NODE_IDS[:10], 64)
    server = SecAggPlusServer(num_shares=5, reconstruction_threshold=3)
    result = Federation(vectors).run(server)
    assert result.contributors == tuple(sorted(vectors))
    assert result.dropped == {}
    expected = plaintext_sum(vectors, vectors)
    bound = server.error_bound(num_contributors=10)
    assert bound < 1e-4
    assert np.max(np.abs(result.vector - expected)) <= bound
    assert np.max(np.abs(result.vector)) > 1.0  # a real sum, not zeros


@pytest.mark.parametrize(
    "stage",
    [
        SecAggStage.SETUP,  # never answer setup
        SecAggStage.SHARE_KEYS,  # answered setup, gone before sharing keys (Flower 1.41: KeyError)
        SecAggStage.TRAIN,  # shared keys, never send a masked vector
        SecAggStage.UNMASK,  # sent a masked vector, gone before unmasking
    ],
)
def test_twenty_clients_six_drop_at_one_stage(stage: str) -> None:
    vectors = make_vectors(NODE_IDS, 40, seed=1)
    server = SecAggPlusServer(num_shares=5, reconstruction_threshold=3, min_survivors=10)
    fed = Federation(vectors, drop=stage_drop(stage, SPACED))
    result = fed.run(server)
    # Nodes that dropped in unmasking already sent their vector: they are in the sum.
    survivors = set(NODE_IDS) if stage == SecAggStage.UNMASK else set(NODE_IDS) - set(SPACED)
    assert result.contributors == tuple(sorted(survivors))
    expected = plaintext_sum(vectors, survivors)
    assert np.max(np.abs(result.vector - expected)) <= server.error_bound(
        num_contributors=len(survivors)
    )
    # The sum of *all* twenty would be a different vector: the dropped are really out.
    if stage != SecAggStage.UNMASK:
        assert np.max(np.abs(result.vector - plaintext_sum(vectors, NODE_IDS))) > 1.0


def test_error_replies_instead_of_masked_vectors_are_left_out() -> None:
    vectors = make_vectors(NODE_IDS, 40, seed=5)
    for node in SPACED:
        vectors[node][7] = 8.5  # out of range: these clients refuse to protect

    def mod_like(node: int, msg: Message, ctx: Context) -> Message:
        try:
            protected = fed.clients[node].protect(vectors[node], msg, ctx)
        except ValueError as exc:  # what the client mod does
            return Message(Error(code=2, reason=str(exc)), reply_to=msg)
        return Message(RecordDict({SECURE_BLOBS: protected}), reply_to=msg)

    server = SecAggPlusServer(num_shares=5, reconstruction_threshold=3)
    fed = Federation(vectors, train_reply=mod_like)
    result = fed.run(server)
    survivors = sorted(set(NODE_IDS) - set(SPACED))
    assert result.contributors == tuple(survivors)
    assert set(result.dropped) == set(SPACED)
    for why in result.dropped.values():  # the rule, never the update's own figure
        assert "exceeds clipping_range 8" in why and "8.5" not in why
    gap = np.max(np.abs(result.vector - plaintext_sum(vectors, survivors)))
    assert gap <= server.error_bound(num_contributors=len(survivors))


def test_nearest_rounding_equals_dequantized_integer_sum_exactly() -> None:
    c, q = 2.0, 2**20
    vectors = make_vectors(NODE_IDS[:12], 200, clip=c, seed=2)
    vectors[NODE_IDS[0]][:2] = [c, -c]  # both ends of the range
    dropped = NODE_IDS[3:5]
    server = SecAggPlusServer(
        num_shares=5,
        reconstruction_threshold=3,
        clipping_range=c,
        quantization_range=q,
        modulus_range=2**40,
        stochastic_rounding=False,
    )
    result = Federation(vectors, drop=stage_drop(SecAggStage.TRAIN, dropped)).run(server)
    survivors = sorted(set(vectors) - set(dropped))
    assert result.contributors == tuple(survivors)
    # Independent restatement of the spec: q_i = rint((x + c) Q / 2c), sum, dequantize.
    integers = sum(np.rint((vectors[n] + c) * (q / (2 * c))).astype(np.int64) for n in survivors)
    delta = 2 * c / q
    exact = np.asarray(integers, dtype=np.uint64).astype(np.float64) * delta - len(survivors) * c
    np.testing.assert_array_equal(result.vector, exact)
    gap = np.max(np.abs(result.vector - plaintext_sum(vectors, survivors)))
    assert gap <= server.error_bound(num_contributors=len(survivors))
    assert server.error_bound(num_contributors=len(survivors)) <= len(survivors) * delta / 2 * 1.01


def test_stochastic_rounding_is_unbiased() -> None:
    # 0.3 quantization steps: nearest rounding would always give 0, stochastic 0.3 on average.
    c, q = 1.0, 2**10
    delta = 2 * c / q
    nodes = NODE_IDS[:4]
    vectors = {n: np.full(5000, -c + 0.3 * delta) for n in nodes}
    server = SecAggPlusServer(
        num_shares=3, reconstruction_threshold=2, clipping_range=c, quantization_range=q
    )
    result = Federation(vectors).run(server)
    mean = float(np.mean(result.vector - plaintext_sum(vectors, nodes))) / delta
    assert abs(mean) < 0.05  # 20000 Bernoulli(0.3) draws: sd of the mean ~ 0.003 per node


def test_neighbourhoods_symmetric_deterministic_and_sized() -> None:
    rng = np.random.default_rng(3)
    for n, k in [(20, 5), (7, 7), (4, 5), (30, 9), (3, 3)]:
        ids = [int(x) for x in rng.choice(10**12, n, replace=False)]
        hoods = {i: neighbours(ids, i, num_shares=k) for i in ids}
        assert hoods == {i: neighbours(list(reversed(ids)), i, num_shares=k) for i in ids}
        for i, hood in hoods.items():
            assert i in hood and len(hood) == min(k, n)
            assert all(i in hoods[j] for j in hood)


# --------------------------------------------------------------------------- beyond the threshold


def test_too_many_dropped_before_unmasking_aborts_without_revealing() -> None:
    ring = sorted(NODE_IDS)
    victims = ring[2:5] + ring[6:9]  # around ring[5]: 2 of its 4 neighbours gone
    vectors = make_vectors(NODE_IDS, 8)
    server = SecAggPlusServer(num_shares=5, reconstruction_threshold=4, min_survivors=5)
    fed = Federation(vectors, drop=stage_drop(SecAggStage.TRAIN, victims))
    with pytest.raises(AggregationAbortedError, match=r"has only \d shares.*threshold is 4"):
        fed.run(server)
    assert SecAggStage.UNMASK not in fed.sent_stages()  # nobody was asked to reveal anything


def test_too_many_dropped_during_unmasking_aborts() -> None:
    ring = sorted(NODE_IDS)
    vectors = make_vectors(NODE_IDS, 8)
    server = SecAggPlusServer(num_shares=5, reconstruction_threshold=3, min_survivors=5)
    fed = Federation(vectors, drop=stage_drop(SecAggStage.UNMASK, ring[:12]))
    with pytest.raises(AggregationAbortedError, match=r"after unmasking.*threshold is 3"):
        fed.run(server)


def test_too_few_answer_setup_aborts() -> None:
    vectors = make_vectors(NODE_IDS[:10], 8)
    server = SecAggPlusServer(num_shares=5, reconstruction_threshold=3, min_survivors=6)
    fed = Federation(vectors, drop=stage_drop(SecAggStage.SETUP, NODE_IDS[:5]))
    with pytest.raises(AggregationAbortedError, match=r"only 5 nodes answered secagg-setup"):
        fed.run(server)


def test_too_few_masked_vectors_aborts() -> None:
    vectors = make_vectors(NODE_IDS[:5], 8)
    server = SecAggPlusServer(num_shares=5, reconstruction_threshold=3)
    fed = Federation(vectors, drop=stage_drop(SecAggStage.TRAIN, NODE_IDS[:3]))
    with pytest.raises(AggregationAbortedError, match=r"only 2 masked vectors"):
        fed.run(server)


def test_aggregate_without_setup_aborts() -> None:
    server = SecAggPlusServer()
    with pytest.raises(AggregationAbortedError, match="never set up"):
        server.aggregate(LoopbackGrid({}), server_round=1, replies=[], length=3, timeout=1.0)


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_shares": 4, "reconstruction_threshold": 3}, "must be odd"),
        ({"num_shares": 6, "reconstruction_threshold": 4}, "must be odd"),
        ({"num_shares": 1, "reconstruction_threshold": 1}, ">= 3"),
        ({"num_shares": 5.0, "reconstruction_threshold": 3}, "num_shares must be an integer"),
        ({"num_shares": 5, "reconstruction_threshold": 2}, "num_shares/2 < threshold"),
        ({"num_shares": 5, "reconstruction_threshold": 6}, "num_shares/2 < threshold"),
        ({"num_shares": 5, "reconstruction_threshold": True}, "must be an integer"),
        ({"clipping_range": 0.0}, "clipping_range"),
        ({"clipping_range": float("inf")}, "clipping_range"),
        ({"clipping_range": float("nan")}, "clipping_range"),
        ({"quantization_range": 1}, "quantization_range"),
        ({"quantization_range": 2.5}, "quantization_range"),
        ({"modulus_range": 3 * 2**20}, "power of two"),
        ({"modulus_range": 2**80}, r"\[2\*\*8, 2\*\*64\]"),
        ({"quantization_range": 2**22, "modulus_range": 2**22}, "at least 2 \\* quantization"),
        ({"min_survivors": 1}, "min_survivors"),
        ({"quantization_range": 2**30, "modulus_range": 2**32, "min_survivors": 5}, "exceeds"),
        ({"stochastic_rounding": 1}, "stochastic_rounding"),
    ],
)
def test_bad_parameters_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SecAggPlusServer(**kwargs)


def test_setup_refuses_more_nodes_than_the_modulus_holds() -> None:
    server = SecAggPlusServer(quantization_range=2**29, modulus_range=2**32)  # at most 7
    vectors = make_vectors(NODE_IDS[:9], 4)
    with pytest.raises(ValueError, match="at most 7 fit"):
        Federation(vectors).run(server)


def test_client_refuses_unsafe_setup_parameters() -> None:
    ctx = LoopbackGrid({1: lambda m, c: m}).contexts[1]
    client = SecAggPlusClient()
    fields = {
        "round": 1,
        "num-shares": 4,
        "threshold": 3,
        "clipping-range": 8.0,
        "quantization-range": 2**22,
        "modulus-bits": 32,
        "stochastic-rounding": True,
    }
    with serverapp_identity():
        reply = client.handle_query(
            Message(request(SecAggStage.SETUP, **fields), 1, SECURE_QUERY_TYPE), ctx
        )
        assert reply.has_error() and "must be odd" in reply.error.reason
        fields.update({"num-shares": 5, "threshold": 2})
        reply = client.handle_query(
            Message(request(SecAggStage.SETUP, **fields), 1, SECURE_QUERY_TYPE), ctx
        )
        assert reply.has_error() and "threshold" in reply.error.reason


# --------------------------------------------------------------------------- client refusals


def _masked_federation(
    num: int = 7, length: int = 16
) -> tuple[Federation, SecAggPlusServer, list[Message]]:
    vectors = make_vectors(NODE_IDS[:num], length)
    server = SecAggPlusServer(num_shares=5, reconstruction_threshold=3)
    fed = Federation(vectors)
    with serverapp_identity():
        replies = fed.train(server)
    return fed, server, replies


def _unmask(fed: Federation, node: int, active: list[int], dead: list[int]) -> Message:
    msg = Message(
        request(SecAggStage.UNMASK, round=ROUND, active=active, dead=dead), node, SECURE_QUERY_TYPE
    )
    return fed.clients[node].handle_query(msg, fed.grid.contexts[node])


def test_client_refuses_node_both_active_and_dead() -> None:
    fed, _, _ = _masked_federation()
    node = sorted(fed.vectors)[3]
    hood = list(neighbours(sorted(fed.vectors), node, num_shares=5))
    other = next(j for j in hood if j != node)
    with serverapp_identity():
        reply = _unmask(fed, node, active=hood, dead=[other])
        assert reply.has_error()
        assert "both active and dead" in reply.error.reason and str(other) in reply.error.reason
        # It revealed nothing and still answers a consistent request once...
        ok = _unmask(fed, node, active=[j for j in hood if j != other], dead=[other])
        assert not ok.has_error()
        assert set(ok.content.array_records[SECURE_BLOBS]) == {
            f"b-{j}" for j in hood if j != other
        } | {f"sk-{other}"}
        # ... and only once: a second request (now asking for the other secret) is refused.
        again = _unmask(fed, node, active=hood, dead=[])
        assert again.has_error() and "stage" in again.error.reason


def test_client_refuses_unknown_node_and_itself_dead() -> None:
    fed, _, _ = _masked_federation()
    ring = sorted(fed.vectors)
    node = ring[0]
    hood = list(neighbours(ring, node, num_shares=5))
    stranger = next(j for j in ring if j not in hood)
    with serverapp_identity():
        reply = _unmask(fed, node, active=hood, dead=[stranger])
        assert reply.has_error() and str(stranger) in reply.error.reason
        assert "not neighbours" in reply.error.reason
        reply = _unmask(fed, node, active=[j for j in hood if j != node], dead=[node])
        assert reply.has_error() and "listed as dead" in reply.error.reason
        reply = _unmask(fed, node, active=hood[:2], dead=[])
        assert reply.has_error() and "reconstruction_threshold" in reply.error.reason


def test_client_refuses_out_of_range_and_non_finite_vectors() -> None:
    vectors = make_vectors(NODE_IDS[:5], 10)
    vectors[NODE_IDS[2]][4] = 9.5
    fed = Federation(vectors)
    with serverapp_identity(), pytest.raises(ValueError, match=r"exceeds clipping_range 8"):
        fed.run(SecAggPlusServer())
    vectors = make_vectors(NODE_IDS[:5], 10)
    vectors[NODE_IDS[1]][0] = np.nan
    with serverapp_identity(), pytest.raises(ValueError, match="non-finite"):
        Federation(vectors).run(SecAggPlusServer())


def test_client_masks_one_vector_per_round() -> None:
    captured: list[Message] = []

    def capture(node: int, msg: Message, ctx: Context) -> Message:
        captured.append(msg)
        protected = fed.clients[node].protect(fed.vectors[node], msg, ctx)
        return Message(RecordDict({SECURE_BLOBS: protected}), reply_to=msg)

    vectors = make_vectors(NODE_IDS[:5], 10)
    fed = Federation(vectors, train_reply=capture)
    with serverapp_identity():
        fed.train(SecAggPlusServer())
        node = captured[0].metadata.dst_node_id
        with pytest.raises(ValueError, match="stage"):
            fed.clients[node].protect(vectors[node] * 0, captured[0], fed.grid.contexts[node])
        # And a fresh setup for the same round is refused too.
        msg = Message(
            request(SecAggStage.SETUP, round=ROUND, **SecAggPlusServer()._params.fields()),
            node,
            SECURE_QUERY_TYPE,
        )
        reply = fed.clients[node].handle_query(msg, fed.grid.contexts[node])
        assert reply.has_error() and "already" in reply.error.reason


# --------------------------------------------------------------------------- check_reply


def test_check_reply_reasons_and_bad_reply_left_out() -> None:
    length = 16
    fed, server, replies = _masked_federation(num=8, length=length)
    by_node = {r.metadata.src_node_id: r for r in replies}
    assert all(server.check_reply(r, length=length) is None for r in replies)
    nodes = sorted(by_node)
    assert "shape (15,)" in str(server.check_reply(by_node[nodes[0]], length=length - 1))

    def train_message(node: int) -> Message:
        sent = fed.grid.sent
        return next(
            m for m in sent if m.metadata.message_type == "train" and m.metadata.dst_node_id == node
        )

    def with_blob(reply: Message, array: Array) -> Message:
        original = train_message(reply.metadata.src_node_id)
        return Message(
            RecordDict({SECURE_BLOBS: ArrayRecord({"masked": array})}), reply_to=original
        )

    wrong_len = with_blob(by_node[nodes[1]], Array(np.zeros(length + 1, dtype=np.uint32)))
    assert "shape" in str(server.check_reply(wrong_len, length=length))
    floats = with_blob(by_node[nodes[1]], Array(np.zeros(length)))
    assert "uint32" in str(server.check_reply(floats, length=length))
    garbage = Array(dtype="uint32", shape=(length,), stype="numpy.ndarray", data=b"\x93NUMPY junk")
    reason = server.check_reply(with_blob(by_node[nodes[1]], garbage), length=length)
    assert reason is not None and "decode" in reason
    empty = Message(RecordDict(), reply_to=train_message(nodes[2]))
    assert "no masked vector" in str(server.check_reply(empty, length=length))

    # The garbage reply's node is left out (its masks removed), the rest is summed.
    bad = nodes[1]
    replies = [r for r in replies if r.metadata.src_node_id != bad]
    replies.append(with_blob(by_node[bad], garbage))
    with serverapp_identity():
        result = server.aggregate(
            fed.grid, server_round=ROUND, replies=replies, length=length, timeout=TIMEOUT
        )
    assert bad in result.dropped and "decode" in result.dropped[bad]
    survivors = [n for n in nodes if n != bad]
    assert result.contributors == tuple(survivors)
    gap = np.max(np.abs(result.vector - plaintext_sum(fed.vectors, survivors)))
    assert gap <= server.error_bound(num_contributors=len(survivors))


def test_check_reply_values_beyond_modulus() -> None:
    server = SecAggPlusServer(modulus_range=2**40)  # travels as uint64
    train = instruction(RecordDict(), node_id=NODE_IDS[0])
    masked = ArrayRecord({"masked": Array(np.full(4, 2**41, np.uint64))})
    reply = Message(RecordDict({SECURE_BLOBS: masked}), reply_to=train)
    assert "modulus_range" in str(server.check_reply(reply, length=4))
    masked = ArrayRecord({"masked": Array(np.full(4, 2**40 - 1, np.uint64))})
    assert (
        server.check_reply(Message(RecordDict({SECURE_BLOBS: masked}), reply_to=train), length=4)
        is None
    )


# --------------------------------------------------------------------------- privacy


def test_masked_vector_unrelated_to_plaintext_and_server_holds_no_private_key() -> None:
    length = 20_000
    nodes = NODE_IDS[:6]
    rng = np.random.default_rng(4)
    vectors = {n: rng.uniform(-8, 8, length) for n in nodes}
    # Make one client's vector highly structured: a ramp correlated with itself.
    vectors[nodes[0]] = np.linspace(-8, 8, length)
    server = SecAggPlusServer(num_shares=3, reconstruction_threshold=2)
    masked: dict[int, np.ndarray] = {}

    secrets: dict[int, list[bytes]] = {}

    def take_secrets(node: int, ctx: Context) -> None:
        state = ctx.state.config_records["secaggplus"]
        keys = [state[k] for k in ("sk1", "sk2", "seed", "own-b-share", "own-sk-share")]
        assert all(isinstance(k, bytes) for k in keys)
        sk1 = serialization.load_pem_private_key(keys[0], password=None)
        assert isinstance(sk1, ec.EllipticCurvePrivateKey)
        keys.append(sk1.private_numbers().private_value.to_bytes(48, "big"))
        secrets[node] = keys

    def capture(node: int, msg: Message, ctx: Context) -> Message:
        take_secrets(node, ctx)
        protected = fed.clients[node].protect(fed.vectors[node], msg, ctx)
        masked[node] = protected["masked"].numpy()
        return Message(RecordDict({SECURE_BLOBS: protected}), reply_to=msg)

    fed = Federation(vectors, train_reply=capture, drop=stage_drop(SecAggStage.TRAIN, nodes[3:4]))
    with serverapp_identity():
        replies = fed.train(server)
        take_secrets(nodes[3], fed.grid.contexts[nodes[3]])  # the node that dropped
        assert_holds_no_secret(server, secrets)  # between setup and aggregation
        result = server.aggregate(
            fed.grid, server_round=ROUND, replies=replies, length=length, timeout=TIMEOUT
        )
    assert len(secrets) == len(nodes)
    assert result.contributors == tuple(sorted(set(nodes) - {nodes[3]}))
    bound = server.error_bound(num_contributors=len(result.contributors))
    assert np.max(np.abs(result.vector - plaintext_sum(vectors, result.contributors))) <= bound

    limit = 5 / np.sqrt(length)  # five standard errors of a correlation under independence
    for node, values in masked.items():
        corr = np.corrcoef(values.astype(np.float64), vectors[node])[0, 1]
        assert abs(corr) < limit, (node, corr)
        # Uniform over [0, 2**32): mean 2**31, sd of the mean 2**32 / sqrt(12 n).
        assert abs(values.mean() - 2**31) < 5 * 2**32 / np.sqrt(12 * length)

    assert_holds_no_secret(server, secrets)  # and after


def assert_holds_no_secret(server: SecAggPlusServer, secrets: dict[int, list[bytes]]) -> None:
    """No private key object, PEM private key, key scalar, seed or own share in the server."""
    held = list(reachable(server))
    assert any(isinstance(obj, bytes) and b"PUBLIC KEY" in obj for obj in held) or not (
        server._rounds
    )
    for obj in held:
        assert not isinstance(obj, ec.EllipticCurvePrivateKey)
        if isinstance(obj, bytes | str):
            text = obj.encode() if isinstance(obj, str) else obj
            assert b"PRIVATE KEY" not in text
            assert not any(secret in text for keys in secrets.values() for secret in keys)


# --------------------------------------------------------------------------- performance


def test_ten_clients_hundred_thousand_params_timing(record_property: Any) -> None:
    length = 100_000
    vectors = make_vectors(NODE_IDS[:10], length, clip=1.0)
    server = SecAggPlusServer(num_shares=5, reconstruction_threshold=3, clipping_range=1.0)
    fed = Federation(vectors, drop=stage_drop(SecAggStage.TRAIN, NODE_IDS[:1]))
    start = time.perf_counter()
    result = fed.run(server)
    elapsed = time.perf_counter() - start
    record_property("secaggplus_10x100k_seconds", round(elapsed, 3))
    print(f"\nSecAgg+ 10 clients x 100k params (1 dropped): {elapsed:.2f} s")
    survivors = NODE_IDS[1:10]
    gap = np.max(np.abs(result.vector - plaintext_sum(vectors, survivors)))
    assert gap <= server.error_bound(num_contributors=9)
    assert elapsed < 30.0
