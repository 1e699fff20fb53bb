"""Chains, contracts and bundles: the embedded py-evm chain (with restarts) and a real anvil."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

from fedlearn.attestation.bundle import (
    RoundBundle,
    VerificationError,
    bundle_path,
    claim_rewards,
    verify_bundles,
    verify_client,
)
from fedlearn.attestation.chain import (
    ChainError,
    ChainUnavailableError,
    ContractRevertError,
    Contracts,
    EmbeddedChain,
    RpcChain,
)
from fedlearn.attestation.leaves import Contribution, commitment_of, round_leaves, run_id_from_name
from fedlearn.processes import free_port
from tests.anvil import Anvil

SUPPLY = 10**24
BUDGET = 10**21


def _round(
    run_name: str, round_: int, clients: list[LocalAccount], scores: list[float]
) -> RoundBundle:
    run_id = run_id_from_name(run_name)
    contributions = [
        Contribution(
            client=account.address,
            commitment=commitment_of(b"reply %d of %s" % (round_, account.address.encode())),
            score=score,
            examples=100 + i,
            epsilon=0.5 * round_,
        )
        for i, (account, score) in enumerate(zip(clients, scores, strict=True))
    ]
    leaves = round_leaves(
        run_id=run_id, round=round_, contributions=contributions, budget=BUDGET, max_examples=1000
    )
    return RoundBundle.build(
        leaves=leaves,
        aggregate_hash=keccak(b"aggregate %d" % round_),
        budget=BUDGET,
        run_name=run_name,
    )


def _post(contracts: Contracts, bundle: RoundBundle) -> bytes:
    return contracts.post_round(
        run_id=bundle.run_id,
        round=bundle.round,
        root=bundle.root,
        aggregate_hash=bundle.aggregate_hash,
    )


# ---------------------------------------------------------------- embedded chain


def test_embedded_chain_contracts_rewards_and_restart(tmp_path: Path) -> None:
    state, run_dir = tmp_path / "chain", tmp_path / "run"
    coordinator = Account.create()
    clients = [Account.create() for _ in range(5)]  # odd count: unbalanced tree
    chain = EmbeddedChain(state_dir=state)
    contracts = Contracts.deploy(
        chain=chain,
        coordinator=coordinator,
        token_supply=SUPPLY,
        path=run_dir / "deployment.json",
    )
    assert contracts.token_balance(contracts.deployment.pool) == SUPPLY
    bundles = [_round("embedded", r, clients, [1.0, 2.0, 3.0, 0.25, 0.75]) for r in (1, 2)]
    for bundle in bundles:
        bundle.write(run_dir)
        _post(contracts, bundle)
    assert contracts.root_of(run_id=bundles[0].run_id, round=1) == bundles[0].root

    # write-once, non-empty, coordinator only: reverts decoded to the contracts' error names
    with pytest.raises(ContractRevertError) as info:
        _post(contracts, bundles[0])
    assert info.value.error == "RoundAlreadyPosted"
    assert info.value.arguments == (bundles[0].run_id, 1)
    with pytest.raises(ContractRevertError, match="EmptyRoot"):
        contracts.post_round(
            run_id=bundles[0].run_id, round=9, root=bytes(32), aggregate_hash=bytes(32)
        )
    intruder = Contracts(chain=chain, deployment=contracts.deployment, coordinator=clients[0])
    chain.ensure_gas(clients[0].address)
    with pytest.raises(ContractRevertError, match="AccessControlUnauthorizedAccount"):
        intruder.post_round(
            run_id=bundles[0].run_id, round=9, root=b"\1" * 32, aggregate_hash=bytes(32)
        )

    # every client of a 5-leaf round can claim with its proof: the tree is OpenZeppelin's
    for account in clients:
        leaf = bundles[0].leaf_of(account.address)
        assert leaf is not None
        contracts.claim(account=account, leaf=leaf, proof=bundles[0].tree().proof(leaf.leaf_hash()))
        assert contracts.token_balance(account.address) == leaf.amount
        assert contracts.is_claimed(leaf=leaf)
    assert sum(leaf.amount for leaf in bundles[0].leaves) <= BUDGET
    with pytest.raises(ContractRevertError) as info:
        leaf = bundles[0].leaves[0]
        contracts.claim(
            account=clients[0], leaf=leaf, proof=bundles[0].tree().proof(leaf.leaf_hash())
        )
    assert info.value.error == "AlreadyClaimed"
    balances = {a.address: contracts.token_balance(a.address) for a in clients}
    chain.close()

    # restart: the journal replays; roots, balances, claims survive
    reopened = EmbeddedChain(state_dir=state)
    assert reopened.replayed > 0
    with pytest.raises(ChainError, match="in use"):
        EmbeddedChain(state_dir=state)
    again = Contracts.load(
        chain=reopened, path=run_dir / "deployment.json", coordinator=coordinator
    )
    assert again.root_of(run_id=bundles[1].run_id, round=2) == bundles[1].root
    assert {a.address: again.token_balance(a.address) for a in clients} == balances
    assert [(e.round, e.merkle_root) for e in again.round_posted_events()] == [
        (1, bundles[0].root),
        (2, bundles[1].root),
    ]
    _post(again, _round("embedded", 3, clients[:2], [1.0, 1.0]))
    reopened.close()

    # a torn last line (crash while appending) is dropped; a corrupt line is an error
    journal = state / "transactions.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    journal.write_text("".join(lines) + '{"tx_hash": "0x12')
    with EmbeddedChain(state_dir=state) as third:
        assert third.replayed == len(lines)
        assert Contracts.load(chain=third, path=run_dir / "deployment.json").root_of(
            run_id=bundles[0].run_id, round=3
        ) != bytes(32)
    journal.write_text("".join(lines[:2]) + "not json\n" + "".join(lines[2:]))
    with pytest.raises(ChainError, match="corrupt"):
        EmbeddedChain(state_dir=state)


def test_bundles_verify_tamper_and_claim(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    coordinator = Account.create()
    clients = [Account.create() for _ in range(3)]
    with EmbeddedChain(state_dir=tmp_path / "chain") as chain:
        contracts = Contracts.deploy(chain=chain, coordinator=coordinator, token_supply=SUPPLY)
        bundles = [_round("bundles", r, clients, [3.0, 1.0, float(r)]) for r in (1, 2, 3)]
        for bundle in bundles:
            bundle.write(run_dir)
        for bundle in bundles[:2]:
            _post(contracts, bundle)
        me = clients[2]

        # round 3 is published but not posted yet: named as such
        report = verify_bundles(run_dir=run_dir, address=me.address, contracts=contracts)
        assert report.verified == [1, 2]
        assert set(report.failures) == {3} and "no root posted" in report.failures[3]
        _post(contracts, bundles[2])
        assert verify_client(run_dir=run_dir, address=me.address, contracts=contracts) == [1, 2, 3]
        stranger = Account.create().address
        assert verify_client(run_dir=run_dir, address=stranger, contracts=contracts) == []

        # a changed score (with or without a fixed-up leaf hash) fails, naming round 2
        path = bundle_path(run_dir, 2)
        original = path.read_text()
        data = json.loads(original)
        mine = next(x for x in data["leaves"] if x["client"] == me.address)
        mine["score"] = str(int(mine["score"]) * 10)
        path.write_text(json.dumps(data))
        with pytest.raises(VerificationError, match="round 2: the leaf's fields") as info:
            verify_client(run_dir=run_dir, address=me.address, contracts=contracts)
        assert info.value.report.verified == [1, 3]
        del mine["leaf_hash"]
        path.write_text(json.dumps(data))
        with pytest.raises(VerificationError, match=r"round 2: the proof .* on-chain root"):
            verify_client(run_dir=run_dir, address=me.address, contracts=contracts)
        # a tampered bundle is not claimed; the others are
        claimed = claim_rewards(run_dir=run_dir, account=me, contracts=contracts)
        assert set(claimed.claimed) == {1, 3} and set(claimed.failures) == {2}
        path.write_text(original)

        # claiming pays exactly the attested amounts; a second claim is refused cleanly
        expected = {b.round: b.leaf_of(me.address).amount for b in bundles}  # type: ignore[union-attr]
        claimed = claim_rewards(run_dir=run_dir, account=me, contracts=contracts)
        assert claimed.amounts == {2: expected[2]} and claimed.skipped == [1, 3]
        assert contracts.token_balance(me.address) == sum(expected.values())
        second = claim_rewards(run_dir=run_dir, account=me, contracts=contracts)
        assert second.claimed == {} and second.skipped == [1, 2, 3] and second.total == 0
        assert contracts.token_balance(me.address) == sum(expected.values())

        # someone else's leaf cannot be claimed: the pool binds the leaf to msg.sender
        leaf = bundles[0].leaf_of(clients[0].address)
        assert leaf is not None
        thief = Account.create()
        stolen = replace(leaf, client=thief.address)
        with pytest.raises(ContractRevertError, match="InvalidProof"):
            contracts.claim(
                account=thief, leaf=stolen, proof=bundles[0].tree().proof(leaf.leaf_hash())
            )


# ---------------------------------------------------------------- JSON-RPC (anvil)


def test_rpc_chain_against_anvil(anvil: Anvil, tmp_path: Path) -> None:
    chain = RpcChain(url=anvil.url, dev_faucet=True)
    coordinator = Account.create()
    contracts = Contracts.deploy(
        chain=chain, coordinator=coordinator, token_supply=SUPPLY, path=tmp_path / "d.json"
    )
    clients = [Account.create() for _ in range(2)]
    bundle = _round("anvil", 1, clients, [1.0, 3.0])
    tx_hash = _post(contracts, bundle)
    assert contracts.transaction_status(tx_hash) == "success"
    assert contracts.root_of(run_id=bundle.run_id, round=1) == bundle.root
    events = contracts.round_posted_events(run_id=bundle.run_id)
    assert [(e.round, e.merkle_root, e.coordinator) for e in events] == [
        (1, bundle.root, coordinator.address)
    ]
    with pytest.raises(ContractRevertError) as info:
        _post(contracts, bundle)
    assert info.value.error == "RoundAlreadyPosted"
    leaf = bundle.leaf_of(clients[1].address)
    assert leaf is not None
    with pytest.raises(ContractRevertError, match="RoundNotPosted"):
        other = _round("anvil", 2, clients, [1.0, 3.0]).leaf_of(clients[1].address)
        assert other is not None
        contracts.claim(account=clients[1], leaf=other, proof=[])
    contracts.claim(account=clients[1], leaf=leaf, proof=bundle.tree().proof(leaf.leaf_hash()))
    assert contracts.token_balance(clients[1].address) == leaf.amount == BUDGET * 3 // 4
    with pytest.raises(ChainError, match="fund it first"):
        RpcChain(url=anvil.url).ensure_gas(Account.create().address)
    reloaded = Contracts.load(chain=RpcChain(url=anvil.url), path=tmp_path / "d.json")
    assert reloaded.is_claimed(leaf=leaf)


def test_unreachable_chain_is_a_clear_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ChainUnavailableError, match=f"cannot reach the chain at {url}"):
        RpcChain(url=url, timeout=2)
    with pytest.raises(ValueError, match="http"):
        RpcChain(url="127.0.0.1:8545")
