"""The durable outbox: written before sending, exactly once on chain, survives node loss."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from eth_account import Account
from eth_utils.crypto import keccak

from fedlearn.attestation.chain import Contracts, EmbeddedChain, RpcChain
from fedlearn.attestation.leaves import run_id_from_name
from fedlearn.attestation.outbox import AttestationConflictError, Outbox, OutboxError
from tests.anvil import ANVIL, Anvil

RUN = run_id_from_name("outbox test")


def _root(round_: int) -> bytes:
    return keccak(b"root %d" % round_)


def _agg(round_: int) -> bytes:
    return keccak(b"aggregate %d" % round_)


def _put(box: Outbox, round_: int, run_id: bytes = RUN) -> bool:
    return box.put(run_id=run_id, round=round_, root=_root(round_), aggregate_hash=_agg(round_))


def test_put_is_durable_idempotent_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with Outbox(path=path) as box:
        assert _put(box, 2) and _put(box, 1)
        assert not _put(box, 1)
        with pytest.raises(OutboxError, match="refusing to replace"):
            box.put(run_id=RUN, round=1, root=_root(9), aggregate_hash=_agg(1))
        with pytest.raises(ValueError, match="zero"):
            box.put(run_id=RUN, round=3, root=bytes(32), aggregate_hash=_agg(3))
        with pytest.raises(ValueError, match="round"):
            box.put(run_id=RUN, round=-1, root=_root(1), aggregate_hash=_agg(1))
    with Outbox(path=path) as reopened:  # a new process sees the same entries
        assert [(e.round, e.status, e.root) for e in reopened.pending()] == [
            (1, "pending", _root(1)),
            (2, "pending", _root(2)),
        ]


def test_embedded_flush_exactly_once_and_conflicts(tmp_path: Path) -> None:
    with (
        EmbeddedChain(state_dir=tmp_path / "chain") as chain,
        Outbox(path=tmp_path / "o.db") as box,
    ):
        contracts = Contracts.deploy(chain=chain, coordinator=Account.create(), token_supply=10**20)
        for r in (1, 2):
            _put(box, r)
        result = box.flush(contracts, deadline=30)
        assert result.complete and [r for _, r in result.confirmed] == [1, 2]
        assert all(e.tx_hash and e.block_number for e in box.entries(status="confirmed"))
        assert box.flush(contracts, deadline=5).confirmed == []  # nothing re-sent

        # crash after sending, before the outbox recorded anything: no second post
        _put(box, 3)
        contracts.post_round(run_id=RUN, round=3, root=_root(3), aggregate_hash=_agg(3))
        assert box.flush(contracts, deadline=30).complete
        assert len(contracts.round_posted_events(run_id=RUN, round=3)) == 1

        # a different root on chain is reported and kept, never dropped
        _put(box, 4)
        contracts.post_round(run_id=RUN, round=4, root=_root(40), aggregate_hash=_agg(4))
        _put(box, 5)
        with pytest.raises(AttestationConflictError, match="round 4"):
            box.flush(contracts, deadline=30)
        assert [(e.round, e.status) for e in box.pending()] == [(4, "conflict")]
        assert contracts.root_of(run_id=RUN, round=5) == _root(5)  # later rounds still went out


def test_outbox_survives_anvil_loss_and_process_restart(tmp_path: Path) -> None:
    assert ANVIL.exists(), f"anvil is missing at {ANVIL}: run `make install`"
    node = Anvil(tmp_path, state=tmp_path / "anvil-state.json")
    box_path = tmp_path / "outbox.sqlite"
    coordinator = Account.create()
    try:
        node.start()
        chain = RpcChain(url=node.url, dev_faucet=True, timeout=2)
        contracts = Contracts.deploy(
            chain=chain, coordinator=coordinator, token_supply=10**20, path=tmp_path / "d.json"
        )
        box = Outbox(path=box_path)
        for r in (1, 2):
            _put(box, r)
        assert box.flush(contracts, deadline=30).complete

        # orderly node restart: anvil dumps its state on SIGTERM and loads it again
        node.stop()
        node.start()
        contracts = Contracts.load(chain=chain, path=tmp_path / "d.json", coordinator=coordinator)
        assert contracts.root_of(run_id=RUN, round=2) == _root(2)

        # round 3 is confirmed, then the node is SIGKILLed: anvil loses what it had not dumped
        _put(box, 3)
        assert box.flush(contracts, deadline=30).complete
        os.kill(node.proc.pid, signal.SIGKILL)  # type: ignore[attr-defined]
        node.proc.wait(timeout=10)  # type: ignore[attr-defined]

        # while it is down: new rounds are accepted, flushing gives up at its deadline, keeps them
        for r in (4, 5):
            _put(box, r)
        result = box.flush(contracts, deadline=1.0, initial_backoff=0.05)
        assert not result.complete
        assert result.error is not None and node.url in result.error
        assert [(e.round, e.status) for e in result.pending] == [(4, "pending"), (5, "pending")]
        box.close()

        # the coordinator process restarts too: reopen the outbox from its file
        box = Outbox(path=box_path)
        assert [e.round for e in box.pending()] == [4, 5]
        node.start()  # same port, same state file (as of the last orderly shutdown)
        result = box.flush(contracts, deadline=60)
        assert result.complete, result.error
        assert box.pending() == []
        for r in range(1, 6):
            assert contracts.root_of(run_id=RUN, round=r) == _root(r)
        events = contracts.round_posted_events(run_id=RUN)
        assert sorted(e.round for e in events) == [1, 2, 3, 4, 5]  # each exactly once
        assert all(e.merkle_root == _root(e.round) for e in events)
        # round 3 died with the node's undumped state: the outbox noticed and posted it again
        # (same nonce and fees: the re-signed transaction even has the same hash)
        assert box.get(run_id=RUN, round=3).attempts == 2  # type: ignore[union-attr]
        box.close()
    finally:
        node.stop()
