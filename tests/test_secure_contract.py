"""The contract every secure-aggregation mode passes (one abstract test class).

Each mode's real server and client sides run their real stages over the
in-process :class:`~fedlearn.loopback.LoopbackGrid`: the revealed sum equals
the plaintext sum within the mode's stated error; nothing the server object
holds is a client's secret or an individual update; a client that vanishes
after set-up is left out and the others' sum is still exact; malformed
protected replies are rejected with a reason. Mode-specific properties live in
``test_secure_<mode>.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict

from fedlearn.loopback import LoopbackGrid
from fedlearn.privacy.secure.base import (
    ClientProtocol,
    SecureSum,
    ServerProtocol,
    blob,
)
from fedlearn.wire import EXAMPLES_KEY, SECURE_BLOBS, SECURE_QUERY_TYPE
from tests.flower_messages import reachable, serverapp_identity

NODES = (11, 12, 13, 14, 15)
LENGTH = 2_000
TIMEOUT = 60.0


def _state_secrets(context: Context) -> list[bytes]:
    """Byte values of at least 16 bytes a client keeps in its node state."""
    out = []
    for record in context.state.array_records.values():
        out += [a.numpy().tobytes() for a in record.values() if a.numpy().size >= 16]
    for record in context.state.config_records.values():
        out += [v for v in record.values() if isinstance(v, bytes) and len(v) >= 16]
    return out


class SecureModeContract:
    """Subclasses name a mode; the tests are the same for every mode."""

    #: Largest |revealed − plaintext| per coordinate for sums of len(NODES) vectors.
    tolerance: ClassVar[float]
    #: Whether clients keep secrets (keys, seeds) in their node state while they protect.
    keeps_secrets: ClassVar[bool] = True

    def make_server(self) -> ServerProtocol:
        raise NotImplementedError

    def make_client(self) -> ClientProtocol:
        raise NotImplementedError

    # ------------------------------------------------------------------ harness

    @pytest.fixture
    def server(self) -> Iterator[ServerProtocol]:
        server = self.make_server()
        try:
            yield server
        finally:
            server.close()

    @pytest.fixture
    def vectors(self) -> dict[int, np.ndarray]:
        rng = np.random.default_rng(7)
        out = {}
        for node in NODES:
            vector = rng.uniform(-0.5, 0.5, LENGTH)
            vector[-1] = rng.uniform(0.05, 0.3)  # the weight slot
            out[node] = vector
        return out

    def _round(
        self,
        server: ServerProtocol,
        vectors: dict[int, np.ndarray],
        *,
        vanish: frozenset[int] = frozenset(),
        garbage: frozenset[int] = frozenset(),
    ) -> tuple[SecureSum, list[Message], list[bytes]]:
        clients = {node: self.make_client() for node in vectors}
        secrets: list[bytes] = []  # what the clients hold in their node state as they protect

        def handler(node: int) -> Any:
            def handle(msg: Message, context: Context) -> Message:
                if msg.metadata.message_type == SECURE_QUERY_TYPE:
                    return clients[node].handle_query(msg, context)
                protected = clients[node].protect(vectors[node], msg, context)
                secrets.extend(_state_secrets(context))
                if node in garbage:
                    protected = ArrayRecord({k: blob(b"\x00garbage") for k in protected})
                metrics = MetricRecord({EXAMPLES_KEY: 1})
                return Message(
                    RecordDict({SECURE_BLOBS: protected, "metrics": metrics}), reply_to=msg
                )

            return handle

        def drop(node: int, msg: Message) -> bool:
            return node in vanish and msg.metadata.message_type == "train"

        grid = LoopbackGrid({node: handler(node) for node in vectors}, drop=drop)
        with serverapp_identity():
            ready = server.setup(grid, server_round=1, node_ids=list(vectors), timeout=TIMEOUT)
            train = [
                Message(
                    RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(3))}), **records}),
                    dst_node_id=node,
                    message_type="train",
                    group_id="1",
                )
                for node, records in ready.items()
            ]
            replies = list(grid.send_and_receive(train, timeout=TIMEOUT))
            usable = [m for m in replies if server.check_reply(m, length=LENGTH) is None]
            total = server.aggregate(
                grid, server_round=1, replies=usable, length=LENGTH, timeout=TIMEOUT
            )
        return total, replies, secrets

    # ------------------------------------------------------------------ the contract

    def test_revealed_sum_equals_the_plaintext_sum(
        self, server: ServerProtocol, vectors: dict[int, np.ndarray]
    ) -> None:
        total, _, _ = self._round(server, vectors)
        assert total.contributors == NODES
        expected = np.sum(list(vectors.values()), axis=0)
        assert total.vector.shape == (LENGTH,)
        assert np.max(np.abs(total.vector - expected)) <= self.tolerance

    def test_server_holds_no_client_secret_and_no_individual_update(
        self, server: ServerProtocol, vectors: dict[int, np.ndarray]
    ) -> None:
        _, _, secrets = self._round(server, vectors)
        held = list(reachable(server))
        assert bool(secrets) == self.keeps_secrets
        held_bytes = [bytes(v) for v in held if isinstance(v, bytes | bytearray) and len(v) >= 16]
        for secret in secrets:
            assert not any(secret in value for value in held_bytes)
        for value in held:
            if isinstance(value, np.ndarray) and value.shape == (LENGTH,):
                for vector in vectors.values():
                    assert not np.allclose(value, vector, atol=self.tolerance)

    def test_a_client_that_vanishes_after_setup_is_left_out(
        self, server: ServerProtocol, vectors: dict[int, np.ndarray]
    ) -> None:
        total, _, _ = self._round(server, vectors, vanish=frozenset({NODES[1]}))
        assert NODES[1] not in total.contributors
        expected = np.sum([v for n, v in vectors.items() if n != NODES[1]], axis=0)
        assert np.max(np.abs(total.vector - expected)) <= self.tolerance

    def test_malformed_protected_updates_are_rejected_with_a_reason(
        self, server: ServerProtocol, vectors: dict[int, np.ndarray]
    ) -> None:
        total, replies, _ = self._round(server, vectors, garbage=frozenset({NODES[2]}))
        bad = next(m for m in replies if m.metadata.src_node_id == NODES[2])
        reason = server.check_reply(bad, length=LENGTH)
        assert isinstance(reason, str) and reason
        assert NODES[2] not in total.contributors
        expected = np.sum([v for n, v in vectors.items() if n != NODES[2]], axis=0)
        assert np.max(np.abs(total.vector - expected)) <= self.tolerance


class TestCkks(SecureModeContract):
    tolerance = 4 * 5.7e-5  # CKKSParameters.error_bound(5) × the decryptor's noise flooding

    def make_server(self) -> ServerProtocol:
        from fedlearn.privacy.secure.ckks import CkksServer

        return CkksServer(min_contributors=2)

    def make_client(self) -> ClientProtocol:
        from fedlearn.privacy.secure.ckks import CkksClient

        return CkksClient()


class TestSecAggPlus(SecureModeContract):
    tolerance = 5 * 2 * 8.0 / 2**22  # n·Δ with stochastic rounding

    def make_server(self) -> ServerProtocol:
        from fedlearn.privacy.secure.secaggplus import SecAggPlusServer

        return SecAggPlusServer(num_shares=5, reconstruction_threshold=3)

    def make_client(self) -> ClientProtocol:
        from fedlearn.privacy.secure.secaggplus import SecAggPlusClient

        return SecAggPlusClient()


class TestCrypten(SecureModeContract):
    tolerance = 5 * 2.0**-17  # n × half a step of 16-bit fixed point
    keeps_secrets = False  # a client's only secret is its update, sealed share by share

    def make_server(self) -> ServerProtocol:
        from fedlearn.privacy.secure.crypten_mode import CryptenServer

        return CryptenServer(parties=2)

    def make_client(self) -> ClientProtocol:
        from fedlearn.privacy.secure.crypten_mode import CryptenClient

        return CryptenClient()
