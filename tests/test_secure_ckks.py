"""CKKS secure aggregation: real TenSEAL/SEAL crypto, real Flower messages, loopback grid.

The honest protocol (parameters, error, wire size, ceremony, checks, dropouts).
The attacks of an active server live in ``test_secure_ckks_attacks.py``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import tenseal as ts
from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord, RecordDict

from fedlearn.privacy.secure.base import (
    AggregationAbortedError,
    blob,
    blob_bytes,
    request,
    stage_of,
)
from fedlearn.privacy.secure.ckks import (
    HE_STANDARD_MAX_MODULUS_BITS,
    CkksClient,
    CkksParameters,
    CkksServer,
)
from fedlearn.privacy.secure.ckks.primitives import (
    CkksRing,
    ContextProto,
    VectorProto,
    _dyn_array_values,
    envelope_label,
    new_secret_context,
)
from fedlearn.privacy.secure.ckks.summac import SumMac
from fedlearn.privacy.secure.envelope import EnvelopeError, generate_keypair, open_envelope
from fedlearn.wire import EXAMPLES_KEY, SECURE_BLOBS, SECURE_QUERY_TYPE, CkksStage
from tests.flower_messages import reachable, serverapp_identity
from tests.loopback_grid import DropRule, LoopbackGrid

TIMEOUT = 5.0


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with serverapp_identity():
        yield


class Federation:
    """Clients behind a LoopbackGrid, a server, and the vectors each client will protect."""

    def __init__(
        self,
        nodes: list[int],
        *,
        length: int,
        seed: int = 0,
        client: Callable[[int], CkksClient] | None = None,
        server: CkksServer | None = None,
        drop: DropRule | None = None,
        node_config: Callable[[int], dict[str, Any]] | None = None,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.length = length
        # Weighted-update-like values: |v| <= 1, weight slot last in (0, 1].
        self.vectors = {n: rng.uniform(-1.0, 1.0, length) for n in nodes}
        for n in nodes:
            self.vectors[n][-1] = rng.uniform(0.05, 1.0)
        self.clients = {n: (client(n) if client else CkksClient()) for n in nodes}
        self.server = server if server is not None else CkksServer()
        self.grid = LoopbackGrid({n: self._handler(n) for n in nodes}, drop=drop)
        if node_config is not None:
            for n in nodes:
                self.grid.contexts[n].node_config.update(node_config(n))
        self.encrypt_seconds: list[float] = []

    def _handler(self, node: int) -> Callable[[Message, Context], Message]:
        def handle(msg: Message, ctx: Context) -> Message:
            client = self.clients[node]
            if msg.metadata.message_type == SECURE_QUERY_TYPE:
                return client.handle_query(msg, ctx)
            try:
                start = time.perf_counter()
                blobs = client.protect(self.vectors[node], msg, ctx)
                self.encrypt_seconds.append(time.perf_counter() - start)
            except ValueError as exc:
                return Message(Error(code=0, reason=str(exc)), reply_to=msg)
            content = RecordDict({SECURE_BLOBS: blobs, "metrics": MetricRecord({EXAMPLES_KEY: 1})})
            return Message(content, reply_to=msg)

        return handle

    def setup(self, nodes: list[int], server_round: int = 1) -> dict[int, RecordDict]:
        return self.server.setup(
            self.grid, server_round=server_round, node_ids=nodes, timeout=TIMEOUT
        )

    def train(self, records: dict[int, RecordDict], server_round: int = 1) -> list[Message]:
        msgs = [
            Message(content, dst_node_id=n, message_type="train", group_id=str(server_round))
            for n, content in records.items()
        ]
        return list(self.grid.send_and_receive(msgs, timeout=TIMEOUT))

    def aggregate(self, replies: list[Message], server_round: int = 1) -> Any:
        return self.server.aggregate(
            self.grid,
            server_round=server_round,
            replies=replies,
            length=self.length,
            timeout=TIMEOUT,
        )

    def ask(self, node: int, content: RecordDict) -> Message:
        """Send one stage request to ``node`` as the server would; its reply."""
        (reply,) = self.grid.send_and_receive([Message(content, node, SECURE_QUERY_TYPE)])
        return reply

    def stage_messages(self, stage: str) -> list[Message]:
        return [
            m
            for m in self.grid.sent
            if m.metadata.message_type == SECURE_QUERY_TYPE and stage_of(m) == stage
        ]

    def state(self, node: int) -> Any:
        return self.grid.contexts[node].state.config_records["fedlearn.secure.ckks"]

    def expected(self, nodes: list[int] | tuple[int, ...]) -> np.ndarray:
        return np.sum([self.vectors[n] for n in nodes], axis=0)


# --------------------------------------------------------------------------- parameters


def test_parameters_refuse_insecure_modulus_naming_the_limit() -> None:
    with pytest.raises(ValueError, match=r"total 280 bits.*at most 218 bits.*128-bit"):
        CkksParameters(poly_modulus_degree=8192, coeff_mod_bit_sizes=(60, 60, 60, 60, 40))
    for n, limit in HE_STANDARD_MAX_MODULUS_BITS.items():
        if n >= 2048:  # one bit over the limit, in primes of at most 60 bits each
            over = limit + 1
            full, rest = divmod(over, 60)
            sizes = (60,) * full + ((rest,) if rest else ())
            if len(sizes) == 1:
                sizes = (over - over // 2, over // 2)
            with pytest.raises(ValueError, match=f"at most {limit} bits"):
                CkksParameters(poly_modulus_degree=n, coeff_mod_bit_sizes=sizes)
    with pytest.raises(ValueError, match="poly_modulus_degree must be one of"):
        CkksParameters(poly_modulus_degree=3000)
    with pytest.raises(ValueError, match="at least two primes"):
        CkksParameters(coeff_mod_bit_sizes=(36,))
    with pytest.raises(ValueError, match="every prime needs"):
        CkksParameters(coeff_mod_bit_sizes=(36, 36, 61))


def test_parameters_refuse_bad_scale_flooding_and_floor() -> None:
    with pytest.raises(ValueError, match="scale_bits must be an int >= 20"):
        CkksParameters(scale_bits=19)
    with pytest.raises(ValueError, match=r"scale_bits=71 leaves no room for sums.*at most 70"):
        CkksParameters(scale_bits=71)
    with pytest.raises(ValueError, match="scale_bits must be an int"):
        CkksParameters(scale_bits=62.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"max_abs_value=400\.0 exceeds max_abs_sum"):
        CkksParameters(max_abs_value=400.0)
    with pytest.raises(ValueError, match=r"statistical_security must be an int >= 30.*Micciancio"):
        CkksParameters(statistical_security=20)
    with pytest.raises(ValueError, match="max_decryptions must be an int >= 1"):
        CkksParameters(max_decryptions=0)
    # Flooding for 2**60 decryptions does not fit under a 72-bit modulus: refused, not clamped.
    with pytest.raises(ValueError, match=r"flooding noise .* does not fit"):
        CkksParameters(max_decryptions=2**60)
    # The old parameters (one 36-bit data prime) cannot hold flooding at s = 40.
    with pytest.raises(ValueError, match="does not fit"):
        CkksParameters(coeff_mod_bit_sizes=(36, 36), scale_bits=28)
    with pytest.raises(ValueError, match="min_contributors must be >= 1"):
        CkksServer(min_contributors=0)
    with pytest.raises(ValueError, match="min_contributors must be >= 2 for a data holder"):
        CkksClient(min_contributors=1)
    with pytest.raises(TypeError, match="CkksParameters"):
        CkksClient(parameters={"scale_bits": 28})  # type: ignore[arg-type]


def test_flooding_is_sized_by_the_li_micciancio_schultz_sorrell_bound() -> None:
    params = CkksParameters()
    assert params.statistical_security == 40 and params.max_decryptions == 2**16
    for k in (1, 2, 10, 100):
        t = 21 * k  # SEAL's centred binomial error is at most 21 per coefficient
        assert params.ciphertext_error_bound(k) == t
        assert params.flood_coeff_std(k) == pytest.approx(math.sqrt(12 * 2**16) * 2**20 * t)
        # Per decoded value the same noise is √(N/2) larger, in units of the scale.
        assert params.flood_std(k) == pytest.approx(
            params.flood_coeff_std(k) * math.sqrt(2048) / 2**62
        )
        # Flooding is nearly all of the error, and the stated bound is 8 σ.
        assert params.noise_std(k) == pytest.approx(params.flood_std(k), rel=1e-6)
        assert params.error_bound(k) == pytest.approx(8 * params.noise_std(k))
    # More decryptions or more security bits cost noise as the bound says.
    more = CkksParameters(max_decryptions=2**18, statistical_security=42)
    assert more.flood_coeff_std(10) == pytest.approx(4.0 * params.flood_coeff_std(10))


def test_default_parameters_headroom_and_precision() -> None:
    params = CkksParameters()
    assert params.slots == 2048 and params.values_per_ciphertext == 4096
    assert params.data_bits == 72
    assert sum(params.coeff_mod_bit_sizes) <= HE_STANDARD_MAX_MODULUS_BITS[4096]
    assert params.ciphertext_count(100_000) == 25
    # 100 clients with |v| <= 1 fit; the error is what the docstring states.
    assert params.max_clients >= 100
    assert params.error_bound(10) < 2e-5 and params.error_bound(100) < 2e-4


# --------------------------------------------------------------------------- primitives


def test_ring_reads_c1_and_the_sum_mac_accepts_exactly_the_sum() -> None:
    params = CkksParameters()
    secret, _ = new_secret_context(params)
    ring = CkksRing(params, secret_context=secret)
    mac = SumMac(secret, primes=params.primes[:-1], degree=params.poly_modulus_degree)
    rng = np.random.default_rng(0)
    cts = [ring.load(ring.encrypt(rng.uniform(-1, 1, 4096))[0]) for _ in range(3)]
    c1s = [ring.c1_residues(ct) for ct in cts]
    assert c1s[0].shape == (2, 4096) and c1s[0].dtype == np.uint64
    # The fast read (SEAL's own serialization, decompressed) equals element-wise access.
    array = cts[0].dyn_array()
    assert np.array_equal(
        _dyn_array_values(array), np.array([array[i] for i in range(array.size())], np.uint64)
    )
    tags = [mac.tag(c1, pad_id=bytes([i])) for i, c1 in enumerate(c1s)]
    total = ring.add([ring.load(ring.dump(ct)) for ct in cts])
    primes = np.array(params.primes[:-1], dtype=object)[:, None]
    expected = sum(c.astype(object) for c in c1s) % primes
    assert np.array_equal(ring.c1_residues(total), expected.astype(np.uint64))
    assert mac.check(ring.c1_residues(total), tags, [b"\x00", b"\x01", b"\x02"])
    assert not mac.check(ring.c1_residues(total), tags[:2], [b"\x00", b"\x01"])
    assert not mac.check(ring.c1_residues(cts[0]), tags, [b"\x00", b"\x01", b"\x02"])
    assert not mac.check(ring.c1_residues(total), tags, [b"\x00", b"\x01", b"\x03"])
    # Another key's MAC knows nothing of these tags.
    other, _ = new_secret_context(params)
    stranger = SumMac(other, primes=params.primes[:-1], degree=params.poly_modulus_degree)
    assert not stranger.check(ring.c1_residues(total), tags, [b"\x00", b"\x01", b"\x02"])


def test_flooded_decryption_has_the_stated_spread_and_fresh_noise() -> None:
    params = CkksParameters()
    secret, _ = new_secret_context(params)
    ring = CkksRing(params, secret_context=secret)
    vector = np.random.default_rng(1).uniform(-1, 1, 4096)
    blob_ = ring.encrypt(vector)[0]
    first = ring.decrypt_flooded(ring.load(blob_), count=4096, n_clients=1)
    second = ring.decrypt_flooded(ring.load(blob_), count=4096, n_clients=1)
    # The same ciphertext decrypts to different values: fresh noise at each decryption.
    assert not np.array_equal(first, second)
    spread = float(np.std(first - second) / np.sqrt(2))
    assert 0.9 < spread / params.noise_std(1) < 1.1, spread / params.noise_std(1)
    assert np.abs(first - vector).max() <= params.error_bound(1)


# --------------------------------------------------------------------------- one big round


@pytest.fixture(scope="module")
def big_round() -> Iterator[dict[str, Any]]:
    """10 clients, 100,000 parameters each, one full round (run once for several tests)."""
    with serverapp_identity():
        nodes = list(range(1, 11))
        fed = Federation(nodes, length=100_000, seed=1)
        start = time.perf_counter()
        records = fed.setup(nodes)
        setup_s = time.perf_counter() - start
        replies = fed.train(records)
        start = time.perf_counter()
        reasons = [fed.server.check_reply(r, length=fed.length) for r in replies]
        check_s = time.perf_counter() - start
        start = time.perf_counter()
        total = fed.aggregate(replies)
        aggregate_s = time.perf_counter() - start
        yield {
            "fed": fed,
            "nodes": nodes,
            "records": records,
            "replies": replies,
            "reasons": reasons,
            "total": total,
            "times": {"setup": setup_s, "check": check_s, "aggregate": aggregate_s},
        }


def test_wire_size_at_most_12_bytes_per_parameter(big_round: dict[str, Any]) -> None:
    fed, replies = big_round["fed"], big_round["replies"]
    params = fed.server.parameters
    for reply in replies:
        blobs = reply.content.array_records[SECURE_BLOBS]
        ct_bytes = sum(len(blob_bytes(blobs[k])) for k in blobs if k.startswith("ct-"))
        signed_bytes = sum(len(blob_bytes(blobs[k])) for k in ("tags", "identity", "signature"))
        assert len([k for k in blobs if k.startswith("ct-")]) == params.ciphertext_count(100_000)
        per_param = (ct_bytes + signed_bytes) / fed.length
        assert per_param <= 12.0, per_param
    print(f"\nCKKS bytes/param (100k, ciphertexts + signed tags): {per_param:.2f}")


def test_sum_of_10_clients_within_stated_bound(big_round: dict[str, Any]) -> None:
    fed, total, nodes = big_round["fed"], big_round["total"], big_round["nodes"]
    assert big_round["reasons"] == [None] * len(nodes)
    assert total.contributors == tuple(nodes)
    assert total.dropped == {}
    assert total.vector.shape == (fed.length,) and total.vector.dtype == np.float64
    error = total.vector - fed.expected(nodes)
    bound = fed.server.parameters.error_bound(len(nodes))
    assert np.abs(error).max() <= bound, (np.abs(error).max(), bound)
    # The stated noise model is right, not just loose: the empirical spread matches it.
    ratio = float(np.std(error) / fed.server.parameters.noise_std(10))
    assert 0.9 < ratio < 1.1, ratio
    # What aggregation sees: the weighted mean update's error (sum error / total weight)
    # is far below float32 resolution of typical updates (~1e-3 · 2**-24 relative).
    weight = float(fed.expected(nodes)[-1])
    mean_error = float(np.abs(error[:-1]).max() / weight)
    assert mean_error < 1e-5
    times = big_round["times"]
    enc = float(np.mean(fed.encrypt_seconds))
    print(
        f"\nCKKS 100k x 10: max error {np.abs(error).max():.2e} (bound {bound:.2e}, std "
        f"{np.std(error):.2e}), mean-update error {mean_error:.2e}; encrypt+tag+sign/client "
        f"{enc:.3f}s, check 10 {times['check']:.3f}s, sum+verify+decrypt "
        f"{times['aggregate']:.3f}s, key ceremony {times['setup']:.3f}s"
    )


def test_server_holds_no_secret_key_and_cannot_decrypt(big_round: dict[str, Any]) -> None:
    fed = big_round["fed"]
    server = fed.server
    public = server.public_context
    assert isinstance(public, ts.Context)
    assert not public.is_private() and not public.has_secret_key()
    # Decrypting a client's ciphertext with the server's context fails.
    blobs = big_round["replies"][0].content.array_records[SECURE_BLOBS]
    vec = VectorProto()
    vec.sizes.append(fed.server.parameters.slots)
    vec.ciphertexts.append(blob_bytes(blobs["ct-0"]))
    vec.scale = fed.server.parameters.scale
    encrypted = ts.ckks_vector_from(public, vec.SerializeToString())
    with pytest.raises(ValueError, match="doesn't hold a secret_key"):
        encrypted.decrypt()
    # Nothing reachable from the server object is (or contains) the secret key.
    secret_context = fed.state(1)["secret-context"]
    proto = ContextProto()
    proto.ParseFromString(secret_context)
    secret_key = proto.private_context.secret_key
    assert len(secret_key) > 1000
    for obj in reachable(server, max_depth=20):
        if isinstance(obj, bytes | bytearray):
            assert secret_key not in obj and secret_context not in obj
        if isinstance(obj, ts.Context):
            assert not obj.is_private()
        if isinstance(obj, np.ndarray) and obj.dtype == np.uint8:
            assert secret_key[:256] not in obj.tobytes()
    assert server._ring._decryptor is None and server._ring._encryptor is None


def test_the_decryptor_never_receives_an_individual_ciphertext(big_round: dict[str, Any]) -> None:
    """The custodian holds the key: an individual ciphertext in its hands would be an update."""
    fed = big_round["fed"]
    (decrypt,) = fed.stage_messages(CkksStage.DECRYPT)
    assert decrypt.metadata.dst_node_id == fed.server.custodian == 1
    sent = {
        blob_bytes(reply.content.array_records[SECURE_BLOBS][k])
        for reply in big_round["replies"]
        for k in reply.content.array_records[SECURE_BLOBS]
        if k.startswith("ct-")
    }
    carried = decrypt.content.array_records[SECURE_BLOBS]
    assert not {blob_bytes(carried[k]) for k in carried} & sent
    assert {k for k in carried if k.startswith("sum-")} == {f"sum-{i}" for i in range(25)}


# --------------------------------------------------------------------------- key ceremony


def test_ceremony_with_5_nodes_gives_everyone_the_same_key() -> None:
    nodes = [11, 7, 23, 5, 42]
    fed = Federation(nodes, length=10)
    records = fed.setup(nodes)
    assert sorted(records) == sorted(nodes)
    fingerprint = fed.server.fingerprint
    assert fingerprint is not None
    assert sorted(fed.server.key_holders) == sorted(nodes)
    secrets_held = {fed.state(n)["secret-context"] for n in nodes}
    assert len(secrets_held) == 1
    assert {fed.state(n)["fingerprint"] for n in nodes} == {fingerprint}
    for n, content in records.items():
        assert content.config_records["secure"]["fingerprint"] == fingerprint
        assert "x25519-private" not in fed.state(n)  # registration keys are discarded
    dealer = [m.metadata.dst_node_id for m in fed.stage_messages(CkksStage.DEAL)]
    assert dealer == [5] and fed.server.custodian == 5  # the lowest registered node
    assert fed.state(5)["custodian-self"] and not fed.state(7)["custodian-self"]
    assert {fed.state(n)["custodian"] for n in nodes} == {fed.state(5)["custodian"]}

    # Envelopes the server relayed: only their recipient could open them.
    key_msgs = {m.metadata.dst_node_id: m for m in fed.stage_messages(CkksStage.KEY)}
    assert sorted(key_msgs) == [7, 11, 23, 42]
    blobs_7 = key_msgs[7].content.array_records[SECURE_BLOBS]
    envelope = blob_bytes(blobs_7["envelope"])
    ceremony = fed.server._key.ceremony_id  # type: ignore[union-attr]
    identity_7 = bytes.fromhex(next(k for k, v in _members(fed, 5).items() if v == "partition-1"))
    label = envelope_label(
        run_id=1,
        ceremony_id=ceremony,
        node_id=7,
        recipient=identity_7,
        dealer=blob_bytes(blobs_7["dealer"]),
    )
    stranger, _ = generate_keypair()
    with pytest.raises(EnvelopeError):
        open_envelope(stranger, envelope, label=label)
    # Node 11 re-registers (fresh X25519 key): node 7's envelope relayed to it is refused.
    fed.ask(11, request(CkksStage.REGISTER, **{"ceremony-id": ceremony}))
    reply = fed.ask(11, RecordDict(dict(key_msgs[7].content)))
    assert reply.has_error() and "not granted to this holder" in reply.error.reason


def _members(fed: Federation, custodian: int) -> dict[str, str]:
    import json

    return dict(json.loads(fed.state(custodian)["members"]))


def test_late_joiner_gets_the_key_from_the_custodian() -> None:
    fed = Federation([1, 2, 3, 4], length=3000, seed=3)
    fed.setup([1, 2, 3])
    fingerprint = fed.server.fingerprint
    records = fed.setup([2, 3, 4], server_round=2)
    assert sorted(records) == [2, 3, 4]
    assert fed.server.fingerprint == fingerprint
    assert fed.state(4)["secret-context"] == fed.state(1)["secret-context"]
    reshares = fed.stage_messages(CkksStage.RESHARE)
    assert len(fed.stage_messages(CkksStage.DEAL)) == 1 and len(reshares) == 1
    assert reshares[0].metadata.dst_node_id == 1  # only the custodian reshares
    # The custodian (node 1, not sampled this round) decrypts the round's sum.
    total = fed.aggregate(fed.train(records, server_round=2), server_round=2)
    assert total.contributors == (2, 3, 4)
    bound = fed.server.parameters.error_bound(3)
    assert np.abs(total.vector - fed.expected([2, 3, 4])).max() <= bound


def test_node_failing_a_ceremony_stage_is_left_out() -> None:
    def drop(node: int, msg: Message) -> bool:
        return (
            node == 3
            and msg.metadata.message_type == SECURE_QUERY_TYPE
            and stage_of(msg) == CkksStage.KEY
        )

    fed = Federation([1, 2, 3, 4], length=100, drop=drop)
    records = fed.setup([1, 2, 3, 4])
    assert sorted(records) == [1, 2, 4]
    total = fed.aggregate(fed.train(records))
    assert total.contributors == (1, 2, 4)


def test_operator_registration_list_admits_only_listed_identities() -> None:
    fed = Federation([1, 2, 3], length=10)
    fed.setup([1, 2, 3])
    members = _members(fed, 1)  # identity hex -> name
    # The operator lists two of the three holders (by fingerprint or by key): the third
    # sits the next ceremony out, whatever it registers with.
    from fedlearn.privacy.secure.identity import fingerprint

    listed = {
        name: (fingerprint(bytes.fromhex(key)) if name == "partition-0" else key)
        for key, name in members.items()
        if name != "partition-2"
    }
    fed.server = CkksServer(registered=listed)
    assert sorted(fed.setup([1, 2, 3], server_round=2)) == [1, 2]
    # The same list from the run config ([secure] ckks-holders = ["NAME=IDENTITY", ...]).
    from fedlearn.config import RunConfig
    from fedlearn.privacy.secure.modes import server_protocol

    cfg = RunConfig.from_dict(
        {"secure": {"mode": "ckks", "ckks-holders": [f"{n}={i}" for n, i in listed.items()]}}
    )
    fed.server = server_protocol(cfg)
    assert sorted(fed.setup([1, 2, 3], server_round=3)) == [1, 2]


# --------------------------------------------------------------------------- check_reply


@pytest.fixture(scope="module")
def small_round() -> Iterator[Federation]:
    with serverapp_identity():
        fed = Federation([1, 2, 3], length=5000, seed=2)
        fed.replies = fed.train(fed.setup([1, 2, 3]))  # type: ignore[attr-defined]
        yield fed


def _with_blobs(reply: Message, edit: Callable[[ArrayRecord], None]) -> Message:
    blobs = ArrayRecord(dict(reply.content.array_records[SECURE_BLOBS]))
    edit(blobs)
    content = RecordDict({SECURE_BLOBS: blobs, "metrics": MetricRecord({EXAMPLES_KEY: 1})})
    return Message(content, dst_node_id=0, message_type="train")


def test_check_reply_accepts_honest_replies(small_round: Federation) -> None:
    for reply in small_round.replies:  # type: ignore[attr-defined]
        assert small_round.server.check_reply(reply, length=5000) is None


def test_check_reply_rejects_malformed_ciphertexts(small_round: Federation) -> None:
    server, reply = small_round.server, small_round.replies[0]  # type: ignore[attr-defined]
    good = blob_bytes(reply.content.array_records[SECURE_BLOBS]["ct-1"])

    def put(key: str, data: bytes) -> Callable[[ArrayRecord], None]:
        def edit(blobs: ArrayRecord) -> None:
            blobs[key] = blob(data)

        return edit

    truncated = _with_blobs(reply, put("ct-1", good[: len(good) // 2]))
    assert "ct-1: not a ciphertext" in (server.check_reply(truncated, length=5000) or "")
    garbage = _with_blobs(reply, put("ct-1", bytes(range(256)) * 40))
    assert "ct-1: not a ciphertext" in (server.check_reply(garbage, length=5000) or "")
    bad_header = _with_blobs(reply, put("ct-1", b"\x00\x00" + good[2:]))
    assert "ct-1: not a ciphertext" in (server.check_reply(bad_header, length=5000) or "")
    huge = _with_blobs(reply, put("ct-1", good * 4))
    assert "larger than any ciphertext" in (server.check_reply(huge, length=5000) or "")
    short_tags = _with_blobs(reply, put("tags", b"\x00" * 8))
    assert "malformed signed contribution" in (server.check_reply(short_tags, length=5000) or "")


def test_check_reply_rejects_wrong_chunk_count_and_errors(small_round: Federation) -> None:
    server, reply = small_round.server, small_round.replies[0]  # type: ignore[attr-defined]
    reason = server.check_reply(reply, length=9000)
    assert reason is not None and "expected 3 ciphertext chunks" in reason

    def drop_last(blobs: ArrayRecord) -> None:
        del blobs["ct-1"]

    reason = server.check_reply(_with_blobs(reply, drop_last), length=5000)
    assert reason is not None and "expected 2 ciphertext chunks" in reason
    error = Message(Error(code=0, reason="out of budget"), reply_to=small_round.grid.sent[-1])
    assert "out of budget" in (server.check_reply(error, length=5000) or "")


def test_check_reply_rejects_other_context(small_round: Federation) -> None:
    server, reply = small_round.server, small_round.replies[0]  # type: ignore[attr-defined]
    # Other parameters: a federation at N = 8192.
    params = CkksParameters(poly_modulus_degree=8192)
    other = Federation(
        [1, 2],
        length=5000,
        client=lambda _: CkksClient(parameters=params),
        server=CkksServer(parameters=params),
    )
    other_reply = other.train(other.setup([1, 2]))[0]
    foreign = other_reply.content.array_records[SECURE_BLOBS]

    def swap_params(blobs: ArrayRecord) -> None:
        blobs["ct-0"] = foreign["ct-0"]

    reason = server.check_reply(_with_blobs(reply, swap_params), length=5000)
    assert reason is not None and "ct-0:" in reason and "parameters" in reason
    # Same parameters, another key: caught by the key tag, never summed.
    same = Federation([1, 2], length=5000)
    stranger = same.train(same.setup([1, 2]))[0]
    reason = server.check_reply(stranger, length=5000)
    assert reason is not None and "another key" in reason


def test_protect_refuses_another_key_a_second_update_and_out_of_range_vectors(
    small_round: Federation,
) -> None:
    fed = small_round
    ctx, client = fed.grid.contexts[1], fed.clients[1]
    bad = request("train", **{"ceremony-id": "x", "fingerprint": "00" * 32, "round": 9})
    with pytest.raises(ValueError, match="refusing to encrypt"):
        client.protect(fed.vectors[1], Message(bad, 1, "train"), ctx)
    again = Message(RecordDict(dict(fed.grid.sent[-1].content)), 1, "train")
    with pytest.raises(ValueError, match="already contributed for round 1"):
        client.protect(fed.vectors[1], again, ctx)
    records = fed.server.setup(fed.grid, server_round=5, node_ids=[1], timeout=TIMEOUT)
    train = Message(records[1], 1, "train")
    with pytest.raises(ValueError, match="max_abs_value"):
        client.protect(np.full(5000, 1.5), train, ctx)
    with pytest.raises(ValueError, match="non-finite"):
        client.protect(np.array([0.1, np.nan]), train, ctx)
    with pytest.raises(ValueError, match="vectors have 5000 values, not 10"):
        client.protect(np.zeros(10), train, ctx)
    with pytest.raises(ValueError, match="holds no CKKS key"):
        CkksClient().protect(fed.vectors[1], train, Federation([9], length=1).grid.contexts[9])


# --------------------------------------------------------------------------- dropouts


def test_node_dropping_after_setup_leaves_the_sum_of_the_others() -> None:
    def drop(node: int, msg: Message) -> bool:
        return node == 2 and msg.metadata.message_type == "train"

    fed = Federation([1, 2, 3, 4], length=4500, seed=4, drop=drop)
    records = fed.setup([1, 2, 3, 4])
    assert sorted(records) == [1, 2, 3, 4]
    replies = fed.train(records)
    assert sorted(r.metadata.src_node_id for r in replies) == [1, 3, 4]
    total = fed.aggregate(replies)
    assert total.contributors == (1, 3, 4)
    error = np.abs(total.vector - fed.expected([1, 3, 4])).max()
    assert error <= fed.server.parameters.error_bound(3)
    # The dropped node's vector is really absent (it would shift entries by up to 1).
    assert np.abs(total.vector - fed.expected([1, 2, 3, 4])).max() > 0.5


def test_a_silent_custodian_aborts_the_round_and_the_next_round_rekeys() -> None:
    silent = {"on": True}

    def drop(node: int, msg: Message) -> bool:
        return (
            silent["on"]
            and node == 1
            and msg.metadata.message_type == SECURE_QUERY_TYPE
            and stage_of(msg) == CkksStage.DECRYPT
        )

    fed = Federation([1, 2, 3], length=2500, seed=5, drop=drop)
    with pytest.raises(AggregationAbortedError, match=r"custodian \(node 1\) did not decrypt"):
        fed.aggregate(fed.train(fed.setup([1, 2, 3])))
    # Nobody else was asked: one decryptor per key, so no second sum of the round exists.
    assert [m.metadata.dst_node_id for m in fed.stage_messages(CkksStage.DECRYPT)] == [1]
    assert fed.server.fingerprint is None  # the key is retired
    records = fed.setup([2, 3], server_round=2)  # node 1 is gone: a new ceremony
    assert fed.server.custodian == 2 and sorted(records) == [2, 3]
    total = fed.aggregate(fed.train(records, server_round=2), server_round=2)
    assert np.abs(total.vector - fed.expected([2, 3])).max() <= fed.server.parameters.error_bound(2)


def test_the_custodian_refuses_fewer_than_its_floor_and_the_server_aborts_first() -> None:
    fed = Federation([1, 2], length=100, client=lambda _: CkksClient(min_contributors=3))
    replies = fed.train(fed.setup([1, 2]))
    with pytest.raises(AggregationAbortedError, match="requires at least 3"):
        fed.aggregate(replies)
    # The holder's floor can also come from its node config; the server cannot lower it.
    fed = Federation([1, 2], length=100, node_config=lambda _: {"min-contributors": 3})
    with pytest.raises(AggregationAbortedError, match="requires at least 3"):
        fed.aggregate(fed.train(fed.setup([1, 2])))
    # The server's own threshold aborts before anything is sent for decryption.
    fed = Federation([1, 2], length=100, server=CkksServer(min_contributors=3))
    replies = fed.train(fed.setup([1, 2]))
    with pytest.raises(AggregationAbortedError, match="2 valid CKKS replies, at least 3 needed"):
        fed.aggregate(replies)
    assert not fed.stage_messages(CkksStage.DECRYPT)


def test_several_rounds_under_one_key() -> None:
    fed = Federation([1, 2, 3], length=3000, seed=8)
    for server_round in (1, 2, 3):
        records = fed.setup([1, 2, 3], server_round=server_round)
        total = fed.aggregate(fed.train(records, server_round), server_round)
        bound = fed.server.parameters.error_bound(3)
        assert np.abs(total.vector - fed.expected([1, 2, 3])).max() <= bound
    assert len(fed.stage_messages(CkksStage.DEAL)) == 1
    assert fed.state(1)["decrypted"] == 3 and fed.state(1)["last-decrypted-round"] == 3


def test_no_native_output_on_stdout(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Log records are not native output: drop console handlers another test (the CLI's)
    # may have left on fedlearn's logger, so only what native code prints is seen.
    monkeypatch.setattr(logging.getLogger("fedlearn"), "handlers", [])
    fed = Federation([1, 2], length=9000, seed=7)  # several ciphertexts per vector
    capfd.readouterr()
    fed.aggregate(fed.train(fed.setup([1, 2])))
    out, err = capfd.readouterr()
    assert out == "" and err == ""
