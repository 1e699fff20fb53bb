"""The CrypTen mode with real compute-party processes over gloo and real envelopes.

Guarantees checked: the revealed vector is the sum of the contributors'
fixed-point encodings (so within ``n * 2**-17`` of the plaintext sum); one
share alone is statistically independent of the vector; clients whose shares
a party cannot use are dropped by every party while the others are summed
exactly; a dead or hung party aborts the round, and close() leaves no process.

Contribution scores computed inside MPC: each equals the fixed-point value
``<X_k, S~> / <S, S~>`` (integers, recomputed here exactly) up to float64
rounding, hence the plaintext ``<x_k, s> / <s, s>`` within the bound the mode
documents; they add up to 1; only contributors are scored; the parties send
the server nothing but the sum and the n scores; a failed scoring keeps the
round's sum.
"""

from __future__ import annotations

import io
import os
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import psutil
import pytest
from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord, RecordDict

from fedlearn.loopback import LoopbackGrid, node_context
from fedlearn.privacy.secure.base import (
    AggregationAbortedError,
    SecureSum,
    blob,
    blob_bytes,
    request,
)
from fedlearn.privacy.secure.crypten_compat import PRECISION_BITS
from fedlearn.privacy.secure.crypten_mode import (
    MAX_ABS,
    CryptenClient,
    CryptenServer,
    PartyPool,
)
from fedlearn.privacy.secure.crypten_party import (
    MIN_SCORE_BITS,
    SCORE_HEADROOM_BITS,
    FrameError,
    ScorePlan,
    local_dot,
    read_frame,
    score_plan,
    share_label,
    write_frame,
)
from fedlearn.privacy.secure.crypten_pool import PartyError, _Channel
from fedlearn.privacy.secure.envelope import generate_keypair, open_envelope
from fedlearn.wire import EXAMPLES_KEY, SECURE_BLOBS, CryptenStage
from tests.flower_messages import instruction, serverapp_identity

SCALE = float(1 << PRECISION_BITS)
LENGTH = 2_000
#: Rewrites a client's reply record: ``(record, train message, context) -> record``.
Tamper = Callable[[ArrayRecord, Message, Context], ArrayRecord]


def _vectors(n: int, *, seed: int, length: int = LENGTH) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for node in range(1, n + 1):
        vector = rng.normal(scale=50.0, size=length)
        vector[:10] = rng.uniform(-1e4, 1e4, size=10)  # large and negative values too
        vector[-1] = float(node)  # the weight slot
        out[node] = vector
    return out


def _exact_sum(vectors: list[np.ndarray]) -> np.ndarray:
    """Sum of the fixed-point encodings, decoded: what the parties must reveal, bit for bit."""
    encoded = sum(np.rint(v * SCALE).astype(np.int64) for v in vectors)
    return np.asarray(encoded, dtype=np.float64) / SCALE


def _assert_is_sum(result: SecureSum, vectors: dict[int, np.ndarray]) -> None:
    assert result.contributors == tuple(sorted(vectors))
    chosen = [vectors[n] for n in result.contributors]
    np.testing.assert_array_equal(result.vector, _exact_sum(chosen))
    error = np.max(np.abs(result.vector - np.sum(chosen, axis=0)))
    assert error <= len(chosen) * 2.0**-17, error


def _ring_dot(a: np.ndarray, b: np.ndarray) -> int:
    """Exact integer dot product of two int64 vectors (no wrap)."""
    return int(np.dot(a.astype(object), b.astype(object)))


def _assert_scores(result: SecureSum, vectors: dict[int, np.ndarray], bits: int | None) -> None:
    """The scores are <X_k, S~> / <S, S~> exactly (up to float64) and near the plaintext."""
    assert bits is not None and MIN_SCORE_BITS <= bits <= PRECISION_BITS
    assert set(result.scores) == set(result.contributors)
    total = np.rint(result.vector * SCALE).astype(np.int64)[:-1]  # S: the revealed ring sum
    shift = PRECISION_BITS - bits
    # s~ = round(s * 2**bits), halves up, recomputed independently of the parties' code
    half = (1 << shift) >> 1
    weights = np.array([(int(v) + half) >> shift for v in total], dtype=np.int64)
    norm = _ring_dot(total, weights)
    assert 0 < norm < 2 ** (62 - SCORE_HEADROOM_BITS)
    s = result.vector[:-1]
    s_tilde = weights / 2.0**bits
    inner = float(np.dot(s, s_tilde))  # <s, s~>
    for node, score in result.scores.items():
        x = vectors[node][:-1]
        product = _ring_dot(np.rint(x * SCALE).astype(np.int64), weights)
        exact = product / norm  # what the parties compute, before float64 rounding
        assert abs(score - exact) <= 1e-14 * max(1.0, abs(exact)), (node, score, exact)
        # the documented bound against the plaintext <x_k, s> / <s, s>
        plain = float(np.dot(x, s) / np.dot(s, s))
        half_step = 2.0 ** -(bits + 1) if bits < PRECISION_BITS else 0.0
        bound = (
            2.0**-17 * np.abs(s_tilde).sum()
            + half_step * (np.abs(x).sum() + abs(plain) * np.abs(s).sum())
        ) / inner
        assert abs(score - plain) <= bound + 1e-12, (node, score, plain, bound)
    assert abs(sum(result.scores.values()) - 1.0) <= 1e-12 * max(
        1.0, max(abs(v) for v in result.scores.values())
    )


def _round(
    server: CryptenServer,
    vectors: dict[int, np.ndarray],
    *,
    server_round: int,
    tamper: dict[int, Tamper] | None = None,
    errors: frozenset[int] = frozenset(),
    timeout: float = 60.0,
    before_aggregate: Callable[[], None] | None = None,
) -> SecureSum:
    client = CryptenClient()
    tamper = tamper or {}

    def handler(msg: Message, context: Context) -> Message:
        node = int(context.node_id)
        if node in errors:
            return Message(Error(code=500, reason="training failed"), reply_to=msg)
        record = client.protect(vectors[node], msg, context)
        if node in tamper:
            record = tamper[node](record, msg, context)
        content = RecordDict({SECURE_BLOBS: record, "metrics": MetricRecord({EXAMPLES_KEY: 1})})
        return Message(content, reply_to=msg)

    grid = LoopbackGrid(dict.fromkeys(vectors, handler))
    length = len(next(iter(vectors.values())))
    with serverapp_identity():
        records = server.setup(grid, server_round=server_round, node_ids=list(vectors), timeout=10)
        assert sorted(records) == sorted(vectors)
        messages = [grid.create_message(records[n], "train", n, str(server_round)) for n in vectors]
        replies = list(grid.send_and_receive(messages))
    if before_aggregate is not None:
        before_aggregate()
    return server.aggregate(
        grid, server_round=server_round, replies=replies, length=length, timeout=timeout
    )


def _gone(pids: tuple[int, ...]) -> bool:
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


@pytest.fixture(scope="module")
def parties(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An M=3 pool and an M=2 server owning its pool (killed last), started concurrently."""
    logs = tmp_path_factory.mktemp("crypten-parties")
    started: dict[str, Any] = {}
    failures: list[BaseException] = []

    def start(name: str, make: Callable[[], Any]) -> None:
        try:
            started[name] = make()
        except BaseException as exc:  # reported below, after every thread ended
            failures.append(exc)

    t0 = time.monotonic()
    makers: dict[str, Callable[[], Any]] = {
        "m2": lambda: CryptenServer(parties=2, log_dir=logs / "m2"),
        "m3": lambda: PartyPool(parties=3, log_dir=logs / "m3"),
    }
    threads = [threading.Thread(target=start, args=item) for item in makers.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    started["startup_seconds"] = time.monotonic() - t0
    pools = [v.pool if isinstance(v, CryptenServer) else v for v in started.values()]
    pids = [p for pool in pools if isinstance(pool, PartyPool) for p in pool.pids]
    print(f"parties started in {started['startup_seconds']:.1f} s")
    try:
        if failures:
            raise failures[0]
        yield started
    finally:
        for value in started.values():
            if isinstance(value, (PartyPool, CryptenServer)):
                value.close()
        assert _gone(tuple(pids))


@pytest.mark.parametrize("m", [2, 3])
def test_sum_of_ten_clients_is_the_plaintext_sum(parties: dict[str, Any], m: int) -> None:
    shared = parties[f"m{m}"]
    server = shared if isinstance(shared, CryptenServer) else CryptenServer(parties=shared)
    vectors = _vectors(10, seed=m)
    result = _round(server, vectors, server_round=1)
    _assert_is_sum(result, vectors)
    assert result.dropped == {}
    # |s| is about 3e4 here: s~ keeps fewer than 16 fractional bits
    assert server.last_scoring_error == ""
    assert server.last_score_bits is not None and server.last_score_bits < PRECISION_BITS
    _assert_scores(result, vectors, server.last_score_bits)
    # the pool serves the next round (fresh labels, fresh shares)
    _assert_is_sum(_round(server, vectors, server_round=2), vectors)
    if server is not shared:
        server.close()  # not the owner: the pool keeps running
        assert shared.healthy()


def _flip_byte(name: str) -> Tamper:
    def tamper(record: ArrayRecord, msg: Message, context: Context) -> ArrayRecord:
        data = bytearray(blob_bytes(record[name]))
        data[-5] ^= 0x01
        record[name] = blob(bytes(data))
        return record

    return tamper


def _as_node(other: int, vectors: dict[int, np.ndarray]) -> Tamper:
    """Reply with envelopes labelled for another node (a replay of someone's shares)."""

    def tamper(record: ArrayRecord, msg: Message, context: Context) -> ArrayRecord:
        return CryptenClient().protect(vectors[other], msg, node_context(other))

    return tamper


def _sealed_to_stranger(record: ArrayRecord, msg: Message, context: Context) -> ArrayRecord:
    _, stranger = generate_keypair()
    content = RecordDict(
        {
            name: (
                ArrayRecord({**dict(rec), "party-key-0": blob(stranger)})
                if name == SECURE_BLOBS
                else rec
            )
            for name, rec in msg.content.items()
        }
    )
    with serverapp_identity():
        forged = instruction(content, node_id=int(context.node_id))
    return CryptenClient().protect(np.ones(LENGTH), forged, context)


def _wrong_length(record: ArrayRecord, msg: Message, context: Context) -> ArrayRecord:
    return CryptenClient().protect(np.ones(LENGTH + 1), msg, context)


def _extra_party(record: ArrayRecord, msg: Message, context: Context) -> ArrayRecord:
    record["share-3"] = record["share-0"]
    return record


def test_bad_clients_are_dropped_and_the_rest_summed(parties: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        CryptenServer(parties=parties["m3"], min_contributors=5)
    server = CryptenServer(parties=parties["m3"])
    vectors = _vectors(10, seed=5)
    tamper: dict[int, Tamper] = {
        2: _as_node(1, vectors),
        3: _flip_byte("share-1"),
        4: _wrong_length,
        5: _sealed_to_stranger,
        6: _extra_party,
    }
    result = _round(server, vectors, server_round=3, tamper=tamper, errors=frozenset({7}))
    assert set(result.dropped) == {2, 3, 4, 5, 6, 7}
    assert "party 0 cannot use its share" in result.dropped[2]  # label names node 1
    assert "party 1 cannot use its share" in result.dropped[3]
    assert "bytes, expected" in result.dropped[4]
    assert "party 0 cannot use its share" in result.dropped[5]
    assert "unknown parties ['share-3']" in result.dropped[6]
    assert "error" in result.dropped[7]
    _assert_is_sum(result, {n: vectors[n] for n in (1, 8, 9, 10)})
    assert set(result.scores) == {1, 8, 9, 10}  # dropped and failed clients get no score
    _assert_scores(result, vectors, server.last_score_bits)


def test_parties_refuse_a_sum_of_one_client(parties: dict[str, Any]) -> None:
    server: CryptenServer = parties["m2"]
    pool = server.pool
    vectors = _vectors(3, seed=9)
    errors = frozenset({2, 3})
    with pytest.raises(AggregationAbortedError, match="at least 2"):
        _round(server, vectors, server_round=4, errors=errors)
    # The parties enforce it themselves, whatever the server asks.
    client = CryptenClient()
    envelopes: list[list[bytes]] = [[], []]
    with serverapp_identity():
        setup = server.setup(LoopbackGrid({}), server_round=5, node_ids=[1, 2], timeout=5)
    for node in (1, 2):
        msg = instruction(setup[node], node_id=node)
        record = client.protect(vectors[node], msg, node_context(node))
        for i in range(2):
            envelopes[i].append(blob_bytes(record[f"share-{i}"]))
    base = {"round": 5, "length": LENGTH, "nodes": [1, 2]}
    deadline = time.monotonic() + 30
    pool.exchange(
        [({"type": "open", **base}, envelopes[i]) for i in range(2)],
        expect=["opened"],
        deadline=deadline,
    )
    with pytest.raises(PartyError, match="reveals sums of at least 2"):
        pool.exchange(
            [({"type": "reveal", **base, "nodes": [1]}, [])] * 2,
            expect=["sum", "revealed"],
            deadline=deadline,
        )
    assert pool.healthy()  # a refusal keeps the parties in step
    _assert_is_sum(_round(server, vectors, server_round=6), vectors)


def test_one_share_alone_is_uniform_and_independent_of_the_vector() -> None:
    length, parties = 20_000, 3
    keys = [generate_keypair() for _ in range(parties)]
    content = request(
        CryptenStage.TRAIN,
        run="r",
        round=1,
        parties=parties,
        **{f"party-key-{i}": pub for i, (_, pub) in enumerate(keys)},
    )
    with serverapp_identity():
        msg = instruction(content, node_id=5)
    vector = np.linspace(-100.0, 100.0, length)  # strongly structured plaintext
    encoded = np.rint(vector * SCALE).astype(np.int64).view(np.uint64)
    record = CryptenClient().protect(vector, msg, node_context(5))
    shares = []
    for i, (private, _) in enumerate(keys):
        label = share_label(run="r", server_round=1, node_id=5, party=i, parties=parties)
        plain = open_envelope(private, blob_bytes(record[f"share-{i}"]), label=label)
        shares.append(np.frombuffer(plain, dtype="<u8"))
    np.testing.assert_array_equal(sum(shares, np.zeros(length, np.uint64)), encoded)
    sigma = np.sqrt(1 / 12 / length)
    for share in shares:
        unit = share.astype(np.float64) / 2.0**64
        assert abs(unit.mean() - 0.5) < 6 * sigma
        assert abs(unit.var() - 1 / 12) < 0.01
        assert abs(np.corrcoef(unit, vector)[0, 1]) < 6 / np.sqrt(length)
        assert np.mean(share == encoded) < 1e-3
        counts = np.bincount(np.frombuffer(share.tobytes(), np.uint8), minlength=256)
        expected = 8 * length / 256
        chi2 = float(np.sum((counts - expected) ** 2 / expected))
        assert chi2 < 255 + 6 * np.sqrt(2 * 255), chi2  # 255 degrees of freedom
    again = CryptenClient().protect(vector, msg, node_context(5))
    assert blob_bytes(again["share-0"]) != blob_bytes(record["share-0"])


def _update_like(n: int, *, seed: int, length: int = LENGTH) -> dict[int, np.ndarray]:
    """Small, mostly aligned updates (as weighted model deltas are): |s| < 1024, s~ = s."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(scale=0.01, size=length)
    out = {}
    for node in range(1, n + 1):
        vector = direction + rng.normal(scale=0.01, size=length)
        vector[-1] = rng.uniform(0.1, 1.0)
        out[node] = vector
    return out


class _FrameLog:
    """Records every frame the server receives from a party (monkeypatched receive)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.frames: list[tuple[int, dict[str, Any], list[bytes]]] = []
        original = _Channel.receive

        def receive(
            channel: _Channel, deadline: float, expect: Any, seq: int | None
        ) -> tuple[dict[str, Any], list[bytes]]:
            header, blobs = original(channel, deadline, expect, seq)
            self.frames.append((channel.index, header, blobs))
            return header, blobs

        monkeypatch.setattr(_Channel, "receive", receive)


def test_scores_of_a_negated_update_and_what_the_parties_send(
    parties: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    server: CryptenServer = parties["m2"]
    vectors = _update_like(6, seed=21)
    weight = vectors[6][-1]
    vectors[6] = -np.mean([vectors[n] for n in range(1, 6)], axis=0)  # against the others
    vectors[6][-1] = weight
    log = _FrameLog(monkeypatch)
    result = _round(server, vectors, server_round=7)
    _assert_is_sum(result, vectors)
    assert server.last_score_bits == PRECISION_BITS  # |s| is small: s~ = s exactly
    _assert_scores(result, vectors, PRECISION_BITS)
    assert result.scores[6] < -0.1
    assert all(result.scores[n] > 0.1 for n in range(1, 6))
    # All the parties told the server: the sum and the six scores, nothing else.
    n, allowed = len(vectors), {"type", "round", "seq", "nodes", "failed", "bits"}
    kinds = {(index, header["type"]) for index, header, _ in log.frames}
    assert kinds == {(0, "opened"), (1, "opened"), (0, "sum"), (1, "revealed")} | {
        (0, "scores"),
        (1, "scored"),
    }
    sent = 0
    for index, header, blobs in log.frames:
        assert set(header) <= allowed, header
        assert header.get("failed", {}) == {}
        assert header.get("nodes", list(result.contributors)) == list(result.contributors)
        if index != 0 or header["type"] == "opened":
            assert blobs == []
        elif header["type"] == "sum":
            assert [len(b) for b in blobs] == [8 * LENGTH]
            np.testing.assert_array_equal(np.frombuffer(blobs[0], "<f8"), result.vector)
        else:
            assert header == {
                "type": "scores",
                "round": 7,
                "nodes": [1, 2, 3, 4, 5, 6],
                "bits": PRECISION_BITS,
                "seq": header["seq"],
            }
            assert [len(b) for b in blobs] == [8 * n]
            assert np.frombuffer(blobs[0], "<f8").tolist() == [
                result.scores[k] for k in range(1, 7)
            ]
        sent += sum(len(b) for b in blobs)
    assert sent == 8 * LENGTH + 8 * n
    # without scoring the parties send the sum only (and keep nothing)
    log.frames.clear()
    quiet = CryptenServer(parties=server.pool, score=False)
    unscored = _round(quiet, vectors, server_round=8)
    _assert_is_sum(unscored, vectors)
    assert unscored.scores == {} and quiet.last_scoring_error == ""
    assert sum(len(b) for _, _, blobs in log.frames for b in blobs) == 8 * LENGTH
    assert {h["type"] for _, h, _ in log.frames} == {"opened", "sum", "revealed"}


def test_a_sum_that_cannot_be_scored_keeps_the_round(parties: dict[str, Any]) -> None:
    server = CryptenServer(parties=parties["m3"])
    rng = np.random.default_rng(4)
    huge = {n: np.full(LENGTH, 1e4) + rng.normal(size=LENGTH) for n in range(1, 11)}
    result = _round(server, huge, server_round=9)  # <s, s> = 2000 * 1e10 > 2**36
    _assert_is_sum(result, huge)
    assert result.scores == {} and server.last_score_bits is None
    assert "too large to score" in server.last_scoring_error
    cancelling = {1: huge[1].copy(), 2: -huge[1]}
    cancelling[2][-1] = 1.0  # the sum is zero but for the weight slot
    result = _round(server, cancelling, server_round=10)
    _assert_is_sum(result, cancelling)
    assert result.scores == {} and "sum is zero" in server.last_scoring_error
    # s = (1, 0, ...): <X_1, S> = 2**31 * 2**32 = 2**63 wraps, <X_2, S> does not (score -2**31 + 1)
    wrapping = {1: np.zeros(LENGTH), 2: np.zeros(LENGTH)}
    wrapping[1][0], wrapping[2][0] = 2.0**31, 1.0 - 2.0**31
    wrapping[1][-1] = wrapping[2][-1] = 0.5
    result = _round(server, wrapping, server_round=11)
    _assert_is_sum(result, wrapping)
    assert result.scores == {} and "wrapped around" in server.last_scoring_error
    assert server.pool.healthy()
    vectors = _update_like(3, seed=2)
    result = _round(server, vectors, server_round=12)
    _assert_scores(result, vectors, server.last_score_bits)


def test_parties_score_only_the_sum_just_revealed(parties: dict[str, Any]) -> None:
    server: CryptenServer = parties["m2"]
    pool = server.pool
    vectors = _update_like(3, seed=8)
    client = CryptenClient()
    deadline = time.monotonic() + 60

    def envelopes(server_round: int) -> list[list[bytes]]:
        out: list[list[bytes]] = [[], []]
        with serverapp_identity():
            setup = server.setup(
                LoopbackGrid({}), server_round=server_round, node_ids=[1, 2, 3], timeout=5
            )
        for node in (1, 2, 3):
            msg = instruction(setup[node], node_id=node)
            record = client.protect(vectors[node], msg, node_context(node))
            for i in range(2):
                out[i].append(blob_bytes(record[f"share-{i}"]))
        return out

    def exchange(kind: str, expect: list[str], server_round: int, **fields: Any) -> list[Any]:
        base = {"round": server_round, "length": LENGTH, "nodes": [1, 2, 3]}
        sealed = envelopes(server_round) if kind == "open" else [[], []]
        return pool.exchange(
            [({"type": kind, **base, **fields}, sealed[i]) for i in range(2)],
            expect=expect,
            deadline=deadline,
        )

    # a score request with no reveal before it, or after a reveal without scoring
    exchange("open", ["opened"], 12)
    with pytest.raises(PartyError, match="just revealed with scoring"):
        exchange("score", ["scores", "scored"], 12)
    exchange("open", ["opened"], 12)
    exchange("reveal", ["sum", "revealed"], 12, score=False)
    with pytest.raises(PartyError, match="just revealed with scoring"):
        exchange("score", ["scores", "scored"], 12)
    # one sum per round: the round just revealed cannot be opened again
    with pytest.raises(PartyError, match="reveals one sum per round"):
        exchange("open", ["opened"], 12)
    # the server asks for the scores of a subset (or a superset) of the contributors
    for server_round, nodes in ((13, [1, 2]), (14, [1, 2, 3, 4])):
        exchange("open", ["opened"], server_round)
        exchange("reveal", ["sum", "revealed"], server_round, score=True)
        with pytest.raises(PartyError, match="just revealed with scoring"):
            exchange("score", ["scores", "scored"], server_round, nodes=nodes)
        # that attempt dropped the shares: no second chance
        with pytest.raises(PartyError, match="just revealed with scoring"):
            exchange("score", ["scores", "scored"], server_round)
    # another request in between drops them too
    exchange("open", ["opened"], 15)
    exchange("reveal", ["sum", "revealed"], 15, score=True)
    exchange("open", ["opened"], 16)
    with pytest.raises(PartyError, match="just revealed with scoring"):
        exchange("score", ["scores", "scored"], 15)
    # once and in order, it works
    exchange("reveal", ["sum", "revealed"], 16, score=True)
    answers = exchange("score", ["scores", "scored"], 16)
    assert answers[0][0]["type"] == "scores" and answers[1] == (
        {"type": "scored", "round": 16, "seq": answers[1][0]["seq"]},
        [],
    )
    with pytest.raises(PartyError, match="just revealed with scoring"):
        exchange("score", ["scores", "scored"], 16)
    assert pool.healthy()  # refusals keep the parties in step


def test_scoring_time_for_ten_clients_of_100k_values(parties: dict[str, Any]) -> None:
    """The extra time of scoring, M = 2 (printed; run with -s to see it)."""
    pool = parties["m2"].pool
    length = 100_001
    vectors = _update_like(10, seed=3, length=length)
    aggregate: dict[bool, list[float]] = {False: [], True: []}
    exchange: list[float] = []
    for repeat in range(3):
        for score in (False, True):
            server = CryptenServer(parties=pool, score=score)
            started: list[float] = []

            def mark(started: list[float] = started) -> None:
                started.append(time.perf_counter())

            result = _round(
                server, vectors, server_round=20 + 2 * repeat + score, before_aggregate=mark
            )
            aggregate[score].append(time.perf_counter() - started[0])
            if score:
                _assert_scores(result, vectors, server.last_score_bits)
                exchange.append(server.last_score_seconds)
    plain, scored = float(np.median(aggregate[False])), float(np.median(aggregate[True]))
    print(
        f"10 clients x {length - 1} values, M=2: aggregate() {plain * 1e3:.0f} ms without "
        f"scoring, {scored * 1e3:.0f} ms with (+{(scored - plain) * 1e3:.0f} ms); "
        f"the score exchange itself {float(np.median(exchange)) * 1e3:.1f} ms"
    )
    assert float(np.median(exchange)) < 5.0


def test_killed_or_hung_party_aborts_and_close_leaves_nothing(parties: dict[str, Any]) -> None:
    server: CryptenServer = parties["m2"]
    vectors = _vectors(4, seed=13)
    first = server.pool.pids
    with pytest.raises(AggregationAbortedError, match="party 1"):
        _round(
            server,
            vectors,
            server_round=1,
            before_aggregate=lambda: os.kill(first[1], signal.SIGKILL),
        )
    # an owned pool is replaced by fresh parties at the next setup
    _assert_is_sum(_round(server, vectors, server_round=2), vectors)
    # a party that dies while scoring costs the scores, not the round's sum
    dying = server.pool.pids
    original = server._scores

    def kill_then_score(base: dict[str, Any], deadline: float) -> dict[int, float]:
        os.kill(dying[1], signal.SIGKILL)
        return original(base, deadline)

    server._scores = kill_then_score  # type: ignore[method-assign]
    try:
        result = _round(server, vectors, server_round=3)
    finally:
        del server._scores
    _assert_is_sum(result, vectors)
    assert result.scores == {} and "party 1" in server.last_scoring_error
    assert not server.pool.healthy()
    _assert_scores(_round(server, vectors, server_round=4), vectors, server.last_score_bits)
    assert _gone(dying)
    second = server.pool.pids
    assert set(second).isdisjoint(first) and _gone(first)
    with pytest.raises(AggregationAbortedError, match=r"did not (answer|read the request) in time"):
        _round(
            server,
            vectors,
            server_round=5,
            timeout=3.0,
            before_aggregate=lambda: os.kill(second[0], signal.SIGSTOP),
        )
    closing = time.monotonic()
    server.close()
    print(f"close() with one hung party took {time.monotonic() - closing:.1f} s")
    assert _gone(second)
    with pytest.raises(AggregationAbortedError, match="closed"):
        _round(server, vectors, server_round=6)


# --- no parties needed below -------------------------------------------------------------


def _train_message(parties: int = 2) -> tuple[Message, list[tuple[bytes, bytes]]]:
    keys = [generate_keypair() for _ in range(parties)]
    content = request(
        CryptenStage.TRAIN,
        run="r",
        round=1,
        parties=parties,
        **{f"party-key-{i}": pub for i, (_, pub) in enumerate(keys)},
    )
    with serverapp_identity():
        return instruction(content, node_id=3), keys


@pytest.mark.parametrize(
    ("vector", "reason"),
    [
        (np.array([1.0, np.nan]), "NaN or infinite"),
        (np.array([1.0, np.inf]), "NaN or infinite"),
        (np.array([1, 2]), "float64"),
        (np.zeros((2, 2)), "1-d"),
        (np.zeros(0), "empty"),
        (np.array([MAX_ABS * 2]), "MAX_ABS"),
        ([1.0, 2.0], "ndarray"),
    ],
)
def test_protect_rejects_bad_vectors(vector: Any, reason: str) -> None:
    msg, _ = _train_message()
    with pytest.raises(ValueError, match=reason):
        CryptenClient().protect(vector, msg, node_context(3))


def test_protect_rejects_bad_train_messages() -> None:
    with serverapp_identity():
        other = instruction(request("ckks.train"), node_id=3)
        no_keys = instruction(request(CryptenStage.TRAIN, run="r", round=1, parties=2), node_id=3)
    with pytest.raises(ValueError, match=r"expected a 'crypten\.train'"):
        CryptenClient().protect(np.ones(3), other, node_context(3))
    with pytest.raises(ValueError, match="party-key-0"):
        CryptenClient().protect(np.ones(3), no_keys, node_context(3))
    msg, keys = _train_message()
    pinned = CryptenClient(party_keys=[generate_keypair()[1], keys[1][1]])
    with pytest.raises(ValueError, match="pinned"):
        pinned.protect(np.ones(3), msg, node_context(3))
    assert CryptenClient(party_keys=[k[1] for k in keys]).protect(np.ones(3), msg, node_context(3))


def test_handle_query_answers_with_an_error() -> None:
    msg, _ = _train_message()
    reply = CryptenClient().handle_query(msg, node_context(3))
    assert reply.has_error() and "no client-side stage" in str(reply.error.reason)


def test_constructors_validate_eagerly() -> None:
    with pytest.raises(ValueError, match="parties must be an int >= 2"):
        CryptenServer(parties=1)
    with pytest.raises(ValueError, match="start_timeout"):
        PartyPool(parties=2, start_timeout=0)
    with pytest.raises(ValueError, match="min_contributors"):
        CryptenServer(parties=2, min_contributors=0)
    with pytest.raises(ValueError, match="party_keys"):
        CryptenClient(party_keys=[b"x" * 32])


def test_frames_round_trip_and_reject_garbage() -> None:
    stream = io.BytesIO()
    write_frame(stream, {"type": "open", "nodes": [1, 2]}, [b"ab", b"", b"c" * 1000])
    stream.seek(0)
    header, blobs = read_frame(stream)
    assert header == {"type": "open", "nodes": [1, 2]} and blobs == [b"ab", b"", b"c" * 1000]
    with pytest.raises(EOFError):
        read_frame(stream)

    def framed(header: bytes) -> bytes:
        return struct.pack(">I", len(header)) + header

    for garbage, reason in [
        (framed(b"abc"), "not JSON"),
        (framed(b"[]"), "JSON object"),
        (b"\xff\xff\xff\xff", "exceeds"),
        (framed(b'{"type":"x","blobs":[-1]}'), "non-negative"),
        (framed(b'{"type":"x","blobs":[1e20]}'), "non-negative"),
    ]:
        with pytest.raises(FrameError, match=reason):
            read_frame(io.BytesIO(garbage))
    with pytest.raises(EOFError, match="missing"):
        read_frame(io.BytesIO(framed(b'{"type":"x","blobs":[10]}') + b"abc"))


def test_local_dots_add_up_to_the_ring_dot_product() -> None:
    rng = np.random.default_rng(17)
    length, parties = 5_000, 3
    for scale in (1.0, 1e3, 1e9):  # the last one wraps the ring: still right mod 2**64
        values = np.rint(rng.normal(scale=scale * SCALE, size=length)).astype(np.int64)
        weights = rng.integers(-(2**40), 2**40, size=length, dtype=np.int64)
        shares = [np.frombuffer(os.urandom(8 * length), np.uint64) for _ in range(parties - 1)]
        shares.append(values.view(np.uint64) - sum(shares, np.zeros(length, np.uint64)))
        total = sum(local_dot(share, weights) for share in shares)
        exact = _ring_dot(values, weights)
        assert (total - exact) % 2**64 == 0
        assert all(-(2**63) <= local_dot(share, weights) < 2**63 for share in shares)
    with pytest.raises(ValueError, match="shape"):
        local_dot(np.zeros(3, np.uint64), np.zeros(4, np.int64))


def test_score_plan_keeps_16_bits_until_the_ring_needs_fewer() -> None:
    rng = np.random.default_rng(23)
    small = np.rint(rng.normal(scale=0.5, size=10_000) * SCALE).astype(np.int64)
    plan = score_plan(small)
    assert isinstance(plan, ScorePlan) and plan.bits == PRECISION_BITS
    np.testing.assert_array_equal(plan.weights, small)
    assert plan.norm == _ring_dot(small, small)
    previous = PRECISION_BITS
    for scale in (20.0, 300.0, 2e3):  # |s| from about 2e3 to 2e5
        total = np.rint(rng.normal(scale=scale, size=10_000) * SCALE).astype(np.int64)
        plan = score_plan(total)
        assert isinstance(plan, ScorePlan), plan
        assert MIN_SCORE_BITS <= plan.bits < previous
        previous = plan.bits
        half = (1 << (PRECISION_BITS - plan.bits)) >> 1
        expected = [(int(v) + half) >> (PRECISION_BITS - plan.bits) for v in total]
        assert plan.weights.tolist() == expected  # round to nearest, halves up
        assert plan.norm == _ring_dot(total, plan.weights)
        assert plan.norm < 2 ** (62 - SCORE_HEADROOM_BITS)
        # one bit more would not have fitted
        finer = np.rint(total / 2.0 ** (PRECISION_BITS - plan.bits - 1))
        assert float(np.dot(total.astype(float), finer)) > 2.0 ** (62 - SCORE_HEADROOM_BITS)
    # halves, negative ones too, round up (towards +infinity): s~ keeps 6 bits here
    ties = [k << 9 for k in range(-3, 4)]  # k / 2 at 6 bits (a shift by 10)
    plan = score_plan(np.array([(1 << 30) - (1 << 20)] * 4 + ties, dtype=np.int64))
    assert isinstance(plan, ScorePlan) and plan.bits == 6
    assert plan.weights.tolist()[4:] == [-1, -1, 0, 0, 1, 1, 2]
    for total, reason in [
        (np.zeros(0, np.int64), "nothing to score"),
        (np.zeros(5, np.int64), "sum is zero"),
        (np.full(10, 2**18 * 2**16, np.int64), "too large to score"),
    ]:
        assert reason in str(score_plan(total))
    with pytest.raises(TypeError):
        score_plan(np.zeros(3))  # type: ignore[arg-type]
