"""CrypTen compute parties run by their own operators (``fedlearn party``), end to end.

The test plays two party operators: it starts two ``fedlearn party`` processes
(each with its own key directory, its own loopback address, a shared gloo
rendezvous and the published holder registry), reads their public keys from
what they print, and runs rounds of an in-process federation whose server
attaches to them (:class:`~fedlearn.loopback.LoopbackGrid`, real
``CryptenClient`` sealing and signing). The parties are stopped by PID.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from fedlearn.config import ConfigError, SecureConfig
from fedlearn.loopback import LoopbackGrid
from fedlearn.privacy.secure.base import AggregationAbortedError, SecureSum
from fedlearn.privacy.secure.crypten_compat import PRECISION_BITS
from fedlearn.privacy.secure.crypten_mode import CryptenClient, CryptenServer
from fedlearn.privacy.secure.identity import node_identity
from fedlearn.processes import free_port
from fedlearn.wire import EXAMPLES_KEY, SECURE_BLOBS
from tests.flower_messages import serverapp_identity

pytestmark = pytest.mark.timeout(300)

LENGTH = 500
REGISTERED = (11, 12, 13)  # nodes whose holders the parties' registry lists
STRANGER = 14  # signs with an identity the registry does not list
TWIN = 15  # signs with node 11's identity (one holder posing as two nodes)
_READY = re.compile(r"party (\d) ready on")
_KEY = re.compile(r"party (\d) public key: ([0-9a-f]{64})")


def _identity_dirs(root: Path) -> dict[int, Path]:
    dirs = {node: root / f"holder-{node}" for node in (*REGISTERED, STRANGER)}
    dirs[TWIN] = dirs[REGISTERED[0]]
    return dirs


def _grid(handler: Any, nodes: list[int], dirs: dict[int, Path]) -> LoopbackGrid:
    grid = LoopbackGrid(dict.fromkeys(nodes, handler))
    for node in nodes:
        grid.contexts[node].node_config["identity-dir"] = str(dirs[node])
    return grid


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def operators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two ``fedlearn party`` processes; the registry lists the REGISTERED holders only."""
    root = tmp_path_factory.mktemp("crypten-operators")
    dirs = _identity_dirs(root)
    registry = {}
    for node in (*REGISTERED, STRANGER):
        context = LoopbackGrid({node: lambda m, c: m}).contexts[node]
        context.node_config["identity-dir"] = str(dirs[node])
        identity, _ = node_identity(context)  # creates the holder's key
        if node in REGISTERED:
            registry[f"hospital-{node}"] = identity.public.hex()
    holders = root / "holders.json"
    holders.write_text(json.dumps(registry))
    rendezvous = f"tcp://127.0.0.1:{free_port()}"
    endpoints = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    fedlearn = str(Path(sys.executable).parent / "fedlearn")
    procs, logs = [], []
    started = time.monotonic()
    try:
        for rank, endpoint in enumerate(endpoints):
            log = root / f"party-{rank}.log"
            logs.append(log)
            with log.open("wb") as output:
                procs.append(
                    subprocess.Popen(
                        [
                            fedlearn,
                            "party",
                            f"--rank={rank}",
                            "--world-size=2",
                            f"--rendezvous={rendezvous}",
                            f"--listen={endpoint}",
                            f"--key-dir={root / f'party-{rank}-keys'}",
                            "--run=test-run-1",
                            f"--holders={holders}",
                        ],
                        env=env,
                        stdout=output,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        keys: dict[int, bytes] = {}
        deadline = time.monotonic() + 120
        while True:
            texts = [log.read_text(errors="replace") for log in logs]
            ready = {int(m) for t in texts for m in _READY.findall(t)}
            keys = {int(r): bytes.fromhex(k) for t in texts for r, k in _KEY.findall(t)}
            if ready == {0, 1}:
                break
            dead = [p.returncode for p in procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(
                    f"parties did not start (exit codes {dead}):\n" + "\n".join(texts)
                )
            time.sleep(0.2)
        print(f"two fedlearn party processes ready in {time.monotonic() - started:.1f} s")
        yield {
            "endpoints": endpoints,
            "keys": [keys[0], keys[1]],
            "dirs": dirs,
            "root": root,
            "procs": procs,
        }
    finally:
        _stop(procs)


def _round(
    server: CryptenServer,
    vectors: dict[int, np.ndarray],
    dirs: dict[int, Path],
    *,
    server_round: int,
) -> SecureSum:
    client = CryptenClient()

    def handler(msg: Message, context: Context) -> Message:
        record: ArrayRecord = client.protect(vectors[int(context.node_id)], msg, context)
        content = RecordDict({SECURE_BLOBS: record, "metrics": MetricRecord({EXAMPLES_KEY: 1})})
        return Message(content, reply_to=msg)

    nodes = sorted(vectors)
    grid = _grid(handler, nodes, dirs)
    with serverapp_identity():
        records = server.setup(grid, server_round=server_round, node_ids=nodes, timeout=10)
        messages = [grid.create_message(records[n], "train", n, str(server_round)) for n in nodes]
        replies = list(grid.send_and_receive(messages))
    return server.aggregate(
        grid, server_round=server_round, replies=replies, length=LENGTH, timeout=60
    )


def _vectors(nodes: tuple[int, ...], seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.normal(0.0, 3.0, LENGTH) for n in nodes}


def _assert_sum_of(
    result: SecureSum, vectors: dict[int, np.ndarray], nodes: tuple[int, ...]
) -> None:
    assert result.contributors == tuple(sorted(nodes))
    expected = np.sum([vectors[n] for n in nodes], axis=0)
    # each value is encoded within 2**-(PRECISION_BITS + 1): the fixed-point floor
    tolerance = len(nodes) * 2.0 ** -(PRECISION_BITS + 1) + 1e-12
    assert np.max(np.abs(result.vector - expected)) <= tolerance


def test_independent_parties_reveal_the_sum_and_refuse_unregistered_holders(
    operators: dict[str, Any],
) -> None:
    t0 = time.monotonic()
    server = CryptenServer(endpoints=operators["endpoints"], public_keys=operators["keys"])
    try:
        assert server.attached and server.pool.run == "test-run-1"
        vectors = _vectors(REGISTERED, seed=1)
        result = _round(server, vectors, operators["dirs"], server_round=1)
        _assert_sum_of(result, vectors, REGISTERED)
        assert result.dropped == {}
        assert set(result.scores) == set(REGISTERED)

        # A holder the registry does not list, and a registered holder posing as a
        # second node: every party refuses those envelopes, the rest is summed.
        vectors = _vectors((*REGISTERED, STRANGER, TWIN), seed=2)
        result = _round(server, vectors, operators["dirs"], server_round=2)
        _assert_sum_of(result, vectors, REGISTERED)
        assert "not signed by a registered holder" in result.dropped[STRANGER]
        assert "already contributed a share this round" in result.dropped[TWIN]
    finally:
        server.close()
    # the parties keep running for their operators after the server leaves
    assert all(p.poll() is None for p in operators["procs"])
    print(f"two attached rounds in {time.monotonic() - t0:.1f} s")


def test_a_party_refuses_a_forged_signature_and_a_second_sum_of_a_round(
    operators: dict[str, Any],
) -> None:
    server = CryptenServer(endpoints=operators["endpoints"], public_keys=operators["keys"])
    try:
        vectors = _vectors(REGISTERED, seed=3)
        nodes = sorted(vectors)
        client = CryptenClient()

        def handler(msg: Message, context: Context) -> Message:
            record = client.protect(vectors[int(context.node_id)], msg, context)
            if int(context.node_id) == nodes[0]:
                # a relay that swaps in another envelope keeps the holder's signature
                # on the original: the signature no longer covers what is delivered
                record["share-0"], record["share-1"] = record["share-1"], record["share-0"]
            content = RecordDict({SECURE_BLOBS: record, "metrics": MetricRecord({EXAMPLES_KEY: 1})})
            return Message(content, reply_to=msg)

        grid = _grid(handler, nodes, operators["dirs"])
        with serverapp_identity():
            records = server.setup(grid, server_round=3, node_ids=nodes, timeout=10)
            messages = [grid.create_message(records[n], "train", n, "3") for n in nodes]
            replies = list(grid.send_and_receive(messages))
        result = server.aggregate(grid, server_round=3, replies=replies, length=LENGTH, timeout=60)
        assert "signature does not match" in result.dropped[nodes[0]]
        _assert_sum_of(result, vectors, tuple(nodes[1:]))
        # the parties already revealed round 3's sum: a second one is refused
        with pytest.raises(AggregationAbortedError, match="one sum per round"):
            _round(server, vectors, operators["dirs"], server_round=3)
    finally:
        server.close()


def test_a_party_announcing_another_key_is_refused(operators: dict[str, Any]) -> None:
    keys = list(reversed(operators["keys"]))
    server = CryptenServer(endpoints=operators["endpoints"], public_keys=keys, start_timeout=30)
    try:
        with pytest.raises(AggregationAbortedError, match="other than the configured one"):
            server.pool  # noqa: B018
    finally:
        server.close()


def test_the_server_starts_no_parties_of_its_own_in_a_deployment() -> None:
    server = CryptenServer(parties=2)
    deployment_grid: Any = object()  # any grid but an in-process one
    with pytest.raises(AggregationAbortedError, match="only in simulation"):
        server.setup(deployment_grid, server_round=1, node_ids=[1, 2], timeout=10)
    assert server._pool is None  # nothing was started
    server.close()


def test_config_lists_one_key_per_party_endpoint() -> None:
    key = "ab" * 32
    cfg = SecureConfig(
        mode="crypten",
        crypten_party_endpoints=("127.0.0.1:9001", "127.0.0.1:9002"),
        crypten_party_keys=(key, "cd" * 32),
    )
    assert len(cfg.crypten_party_endpoints) == cfg.crypten_parties
    with pytest.raises(ConfigError, match="crypten-party-keys"):
        SecureConfig(crypten_party_endpoints=("127.0.0.1:9001", "h:2"), crypten_party_keys=(key,))
    with pytest.raises(ConfigError, match="crypten-party-keys"):
        SecureConfig(crypten_party_endpoints=("a:1", "b:2"), crypten_party_keys=(key, key))
    with pytest.raises(ConfigError, match="crypten-party-endpoints"):
        SecureConfig(crypten_party_endpoints=("nohost", "b:2"), crypten_party_keys=(key, key))
    with pytest.raises(ConfigError, match="crypten-parties"):
        SecureConfig(
            crypten_parties=3,
            crypten_party_endpoints=("a:1", "b:2"),
            crypten_party_keys=(key, "cd" * 32),
        )


def test_run_config_endpoints_make_the_server_attach(operators: dict[str, Any]) -> None:
    from fedlearn.config import RunConfig
    from fedlearn.privacy.secure.modes import server_protocol

    secure = SecureConfig(
        mode="crypten",
        crypten_party_endpoints=tuple(operators["endpoints"]),
        crypten_party_keys=tuple(k.hex() for k in operators["keys"]),
    )
    server = server_protocol(RunConfig(secure=secure))
    try:
        assert isinstance(server, CryptenServer) and server.attached
        assert server.pool.public_keys == tuple(operators["keys"])
        assert server.pool.pids == ()  # nothing started by the server
    finally:
        server.close()


def test_a_party_key_is_private_and_survives_a_restart(tmp_path: Path) -> None:
    from fedlearn.privacy.secure.crypten_service import KEY_FILE, party_key

    first = party_key(tmp_path / "keys")
    assert party_key(tmp_path / "keys") == first
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "keys" / KEY_FILE).stat().st_mode & 0o777 == 0o600
    (tmp_path / "keys" / KEY_FILE).chmod(0o644)
    with pytest.raises(SystemExit, match="readable by others"):
        party_key(tmp_path / "keys")


def test_fedlearn_party_refuses_a_floor_of_one(tmp_path: Path) -> None:
    from fedlearn.privacy.secure.crypten_service import serve

    holders = tmp_path / "holders.json"
    holders.write_text(json.dumps({"a": "00" * 32}))
    with pytest.raises(SystemExit):
        serve(
            [
                "--rank=0",
                "--world-size=2",
                "--rendezvous=tcp://127.0.0.1:1",
                "--listen=127.0.0.1:1",
                f"--key-dir={tmp_path / 'k'}",
                "--run=r",
                f"--holders={holders}",
                "--min-contributors=1",
            ]
        )
