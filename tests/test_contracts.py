"""The attestation contracts: reproducible artifacts, security properties, fuzzing, static analysis.

Everything runs on real components: the pinned solc-js compiler from npm, the in-process
py-evm chain (web3 + eth-tester) with the committed artifacts, forge's fuzzer/invariant
runner (pointed at solc-js through ``contracts/tools/solc``, offline) and Slither.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from eth_abi import encode
from eth_utils import add_0x_prefix, decode_hex, keccak, to_checksum_address
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from web3 import EthereumTesterProvider, Web3
from web3.contract import Contract
from web3.logs import DISCARD

from fedlearn.attestation.compile import (
    ARTIFACTS_DIR,
    CONTRACTS,
    SOLC_VERSION,
    build_artifacts,
    check_artifacts,
    load_artifact,
)
from fedlearn.attestation.leaves import ContributionLeaf
from fedlearn.attestation.merkle import MerkleTree

ROOT = Path(__file__).resolve().parents[1]
FORGE = ROOT / "node_modules/@foundry-rs/forge-linux-amd64/bin/forge"
SLITHER = ROOT / ".venv/tools/bin/slither"
SUPPLY = 10**30
POST_GAS_LIMIT = 60_000
CLAIM_GAS_LIMIT = 100_000

# --------------------------------------------------------------------------- leaves
# Leaves and trees are fedlearn's own (ContributionLeaf, MerkleTree), checked against
# OpenZeppelin's golden vectors in test_attestation_merkle.py: here the contracts must accept them.


@dataclass(frozen=True)
class Claim:
    run_id: bytes
    round: int
    account: str
    commitment: bytes
    score: int
    examples: int
    epsilon_micro: int
    amount: int

    @property
    def leaf(self) -> bytes:
        return ContributionLeaf(
            run_id=self.run_id,
            round=self.round,
            client=self.account,
            commitment=self.commitment,
            score=self.score,
            examples=self.examples,
            epsilon_micro=self.epsilon_micro,
            amount=self.amount,
        ).leaf_hash()

    def args(self, proof: Sequence[bytes]) -> list[Any]:
        """Arguments of ``RewardPool.claim`` (the account is ``msg.sender``)."""
        head = [self.run_id, self.round, self.commitment, self.score, self.examples]
        return [*head, self.epsilon_micro, self.amount, list(proof)]


# --------------------------------------------------------------------------- chain helpers


@dataclass
class Chain:
    w3: Web3
    ledger: Contract
    token: Contract
    pool: Contract
    admin: str
    coordinator: str
    clients: list[str]

    def send(self, fn: Any, sender: str) -> Any:
        # A call first surfaces a revert with its data; an explicit gas limit then skips
        # py-evm's slow binary-search gas estimation.
        fn.call({"from": sender})
        tx = fn.transact({"from": sender, "gas": 3_000_000})
        receipt = self.w3.eth.wait_for_transaction_receipt(tx)
        assert receipt["status"] == 1
        return receipt

    def post(self, run_id: bytes, round: int, root: bytes, aggregate: bytes = b"\xaa" * 32) -> Any:
        return self.send(
            self.ledger.functions.postRound(run_id, round, root, aggregate), self.coordinator
        )

    def claim(self, claim: Claim, proof: Sequence[bytes], sender: str | None = None) -> Any:
        return self.send(self.pool.functions.claim(*claim.args(proof)), sender or claim.account)

    def is_claimed(self, claim: Claim) -> bool:
        values = [claim.run_id, claim.round, claim.account, claim.commitment, claim.score]
        values += [claim.examples, claim.epsilon_micro, claim.amount]
        return bool(self.pool.functions.isClaimed(*values).call())

    def balance(self, account: str) -> int:
        return int(self.token.functions.balanceOf(account).call())

    def fund(self, amount: int) -> None:
        self.send(self.token.functions.transfer(self.pool.address, amount), self.admin)


def deploy_chain() -> Chain:
    w3 = Web3(EthereumTesterProvider())
    admin, coordinator, *clients = w3.eth.accounts

    def deploy(name: str, *args: Any) -> Contract:
        artifact = load_artifact(name)
        factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        tx = factory.constructor(*args).transact({"from": admin})
        address = w3.eth.wait_for_transaction_receipt(tx)["contractAddress"]
        return w3.eth.contract(address=address, abi=artifact["abi"])

    ledger = deploy("AttestationLedger", admin, coordinator)
    token = deploy("RewardToken", admin, SUPPLY)
    pool = deploy("RewardPool", token.address, ledger.address)
    return Chain(w3, ledger, token, pool, admin, coordinator, list(clients))


@pytest.fixture(scope="module")
def deployed() -> tuple[Chain, Any]:
    chain = deploy_chain()
    tester = chain.w3.provider.ethereum_tester  # type: ignore[attr-defined]
    return chain, tester.take_snapshot()


@pytest.fixture
def chain(deployed: tuple[Chain, Any]) -> Chain:
    """The deployed contracts, reset to their freshly deployed state."""
    chain, snapshot = deployed
    chain.w3.provider.ethereum_tester.revert_to_snapshot(snapshot)  # type: ignore[attr-defined]
    return chain


def error_data(artifact: str, name: str, types: Sequence[str] = (), values: Sequence[Any] = ()):
    """The revert data of custom error ``name``, after checking the ABI declares it so."""
    abi = load_artifact(artifact)["abi"]
    declared = [
        [i["type"] for i in e["inputs"]] for e in abi if e["type"] == "error" and e["name"] == name
    ]
    assert declared == [list(types)], f"{artifact} does not declare {name}({','.join(types)})"
    return keccak(text=f"{name}({','.join(types)})")[:4] + encode(list(types), list(values))


def revert_data(action: Callable[[], Any]) -> bytes:
    """Run ``action``, which must revert, and return the revert data."""
    with pytest.raises(Exception) as info:  # eth-tester's TransactionFailed or web3's errors
        action()
    exc = info.value
    data = getattr(exc, "data", None)
    if isinstance(data, str) and data.startswith("0x"):
        return decode_hex(data)
    message = str(exc.args[0]) if exc.args else str(exc)
    prefix = "execution reverted: "
    assert message.startswith(prefix), f"not a revert: {exc!r}"
    raw = ast.literal_eval(message[len(prefix) :])
    assert isinstance(raw, bytes), f"revert without data: {exc!r}"
    return raw


def make_claim(
    account: str, run_id: bytes = b"\x01" * 32, round: int = 1, amount: int = 10**18, salt: int = 0
) -> Claim:
    return Claim(
        run_id=run_id,
        round=round,
        account=account,
        commitment=keccak(f"update-{account}-{salt}".encode()),
        score=700_000 + salt,
        examples=150 + salt,
        epsilon_micro=2_500_000,
        amount=amount,
    )


def random_claims(n: int, run_id: bytes, round: int, rng: random.Random) -> list[Claim]:
    return [
        make_claim(
            to_checksum_address(rng.randbytes(20)), run_id, round, rng.randrange(10**20), salt=i
        )
        for i in range(n)
    ]


# --------------------------------------------------------------------------- (1) artifacts


def test_artifacts_reproduce_with_pinned_solcjs() -> None:
    solc_pkg = json.loads((ROOT / "node_modules/solc/package.json").read_text())
    assert SOLC_VERSION.startswith(solc_pkg["version"] + "+")
    fresh = build_artifacts()
    assert check_artifacts(fresh) == []
    for name in CONTRACTS:
        committed = load_artifact(name)
        for key in ("abi", "bytecode", "deployedBytecode", "sources", "settings", "compiler"):
            assert committed[key] == fresh[name][key], (name, key)
        assert committed["compiler"]["version"] == SOLC_VERSION
        assert len(committed["deployedBytecode"]) > 1000
        # The recorded hashes are those of the files on disk, OpenZeppelin's included.
        assert any(u.startswith("node_modules/@openzeppelin/") for u in committed["sources"])
        for unit, entry in committed["sources"].items():
            assert hashlib.sha256((ROOT / unit).read_bytes()).hexdigest() == entry["sha256"]
    assert sorted(p.stem for p in ARTIFACTS_DIR.glob("*.json")) == sorted(CONTRACTS)


def _signatures(name: str, kind: str) -> set[str]:
    return {
        f"{e['name']}({','.join(i['type'] for i in e['inputs'])})"
        for e in load_artifact(name)["abi"]
        if e["type"] == kind
    }


def test_abi_is_the_agreed_interface() -> None:
    assert {
        "postRound(bytes32,uint64,bytes32,bytes32)",
        "rootOf(bytes32,uint64)",
        "COORDINATOR_ROLE()",
    } <= _signatures("AttestationLedger", "function")
    assert _signatures("AttestationLedger", "event") >= {
        "RoundPosted(bytes32,uint64,bytes32,bytes32,address)"
    }
    assert _signatures("AttestationLedger", "error") >= {
        "RoundAlreadyPosted(bytes32,uint64)",
        "EmptyRoot()",
    }
    assert _signatures("RewardPool", "function") == {
        "claim(bytes32,uint64,bytes32,uint256,uint256,uint256,uint256,bytes32[])",
        "isClaimed(bytes32,uint64,address,bytes32,uint256,uint256,uint256,uint256)",
        "token()",
        "ledger()",
    }
    assert _signatures("RewardPool", "event") == {"Claimed(bytes32,uint64,address,uint256,uint256)"}
    assert _signatures("RewardPool", "error") >= {
        "RoundNotPosted()",
        "InvalidProof()",
        "AlreadyClaimed()",
    }
    for name in CONTRACTS:  # no payable entry point: no contract can receive ETH
        assert all(e.get("stateMutability") != "payable" for e in load_artifact(name)["abi"]), name


# --------------------------------------------------------------------------- (2) security


def test_token_metadata(chain: Chain) -> None:
    assert chain.token.functions.name().call() == "fedlearn reward"
    assert chain.token.functions.symbol().call() == "FLR"
    assert chain.token.functions.decimals().call() == 18
    assert chain.balance(chain.admin) == SUPPLY
    assert chain.pool.functions.token().call() == chain.token.address
    assert chain.pool.functions.ledger().call() == chain.ledger.address


def test_non_coordinator_cannot_post(chain: Chain) -> None:
    role = chain.ledger.functions.COORDINATOR_ROLE().call()
    assert role == keccak(text="COORDINATOR_ROLE")
    run_id, root = b"\x01" * 32, b"\x02" * 32
    for intruder in (chain.admin, chain.clients[0]):  # not even the admin
        post = chain.ledger.functions.postRound(run_id, 1, root, root)
        data = revert_data(lambda p=post, s=intruder: chain.send(p, s))
        expected = error_data(
            "AttestationLedger",
            "AccessControlUnauthorizedAccount",
            ["address", "bytes32"],
            [intruder, role],
        )
        assert data == expected
    assert chain.ledger.functions.rootOf(run_id, 1).call() == b"\x00" * 32
    # The admin can appoint a new coordinator, who can then post.
    chain.send(chain.ledger.functions.grantRole(role, chain.clients[0]), chain.admin)
    chain.send(chain.ledger.functions.postRound(run_id, 1, root, root), chain.clients[0])
    assert chain.ledger.functions.rootOf(run_id, 1).call() == root


def test_round_is_write_once_and_event_binds_aggregate(chain: Chain) -> None:
    run_id, root, aggregate = keccak(b"run"), keccak(b"root"), keccak(b"aggregate")
    assert chain.ledger.functions.rootOf(run_id, 3).call() == b"\x00" * 32
    receipt = chain.post(run_id, 3, root, aggregate)
    (event,) = chain.ledger.events.RoundPosted().process_receipt(receipt)
    assert dict(event["args"]) == {
        "runId": run_id,
        "round": 3,
        "merkleRoot": root,
        "aggregateHash": aggregate,
        "coordinator": chain.coordinator,
    }
    data = revert_data(lambda: chain.post(run_id, 3, keccak(b"other root"), aggregate))
    assert data == error_data(
        "AttestationLedger", "RoundAlreadyPosted", ["bytes32", "uint64"], [run_id, 3]
    )
    assert chain.ledger.functions.rootOf(run_id, 3).call() == root
    # Same root again is refused too; other rounds and runs are independent.
    assert revert_data(lambda: chain.post(run_id, 3, root, aggregate)) == data
    chain.post(run_id, 4, root, aggregate)
    chain.post(keccak(b"run 2"), 3, root, aggregate)
    assert revert_data(lambda: chain.post(run_id, 5, b"\x00" * 32)) == error_data(
        "AttestationLedger", "EmptyRoot"
    )
    assert chain.ledger.functions.rootOf(run_id, 5).call() == b"\x00" * 32


@dataclass
class Round:
    claims: list[Claim]
    tree: MerkleTree


def post_round(chain: Chain, accounts: Sequence[str], round: int = 1, extra: int = 5) -> Round:
    run_id = b"\x01" * 32
    claims = [make_claim(a, run_id, round, (i + 1) * 10**18, i) for i, a in enumerate(accounts)]
    claims += random_claims(extra, run_id, round, random.Random(round))
    tree = MerkleTree.from_leaf_hashes(c.leaf for c in claims)
    chain.post(run_id, round, tree.root)
    return Round(claims[: len(accounts)], tree)


def test_claim_pays_once(chain: Chain) -> None:
    rnd = post_round(chain, chain.clients[:3])
    chain.fund(10 * 10**18)
    claim = rnd.claims[1]
    receipt = chain.claim(claim, rnd.tree.proof(claim.leaf))
    (event,) = chain.pool.events.Claimed().process_receipt(receipt, errors=DISCARD)
    assert dict(event["args"]) == {
        "runId": claim.run_id,
        "round": claim.round,
        "account": claim.account,
        "amount": claim.amount,
        "score": claim.score,
    }
    assert chain.balance(claim.account) == claim.amount == 2 * 10**18
    assert chain.is_claimed(claim) and not chain.is_claimed(rnd.claims[0])
    again = revert_data(lambda: chain.claim(claim, rnd.tree.proof(claim.leaf)))
    assert again == error_data("RewardPool", "AlreadyClaimed")
    assert chain.balance(claim.account) == claim.amount
    assert chain.balance(chain.pool.address) == 8 * 10**18


def test_forged_and_tampered_proofs_fail(chain: Chain) -> None:
    rnd = post_round(chain, chain.clients[:3])
    chain.fund(10 * 10**18)
    claim = rnd.claims[0]
    proof = rnd.tree.proof(claim.leaf)
    invalid = error_data("RewardPool", "InvalidProof")
    forged_claims = [
        replace(claim, amount=claim.amount + 1),
        replace(claim, score=claim.score + 1),
        replace(claim, examples=claim.examples * 2),
        replace(claim, epsilon_micro=0),
        replace(claim, commitment=keccak(b"another update")),
    ]
    for forged in forged_claims:
        assert revert_data(lambda f=forged: chain.claim(f, proof)) == invalid
    bad_proofs = [
        [],
        proof[:-1],
        [*proof, keccak(b"x")],
        [keccak(b"forged"), *proof[1:]],
        list(reversed(proof)),
        rnd.tree.proof(rnd.claims[1].leaf),  # another leaf's proof
    ]
    for bad in bad_proofs:
        assert revert_data(lambda b=bad: chain.claim(claim, b)) == invalid
    assert chain.balance(chain.pool.address) == 10 * 10**18
    chain.claim(claim, proof)  # the genuine one still works
    assert chain.balance(claim.account) == claim.amount


def test_leaf_of_another_account_fails(chain: Chain) -> None:
    rnd = post_round(chain, chain.clients[:2])
    chain.fund(10 * 10**18)
    victim = rnd.claims[0]
    thief = chain.clients[1]  # has a leaf of its own in the same round
    proof = rnd.tree.proof(victim.leaf)
    for sender in (thief, chain.clients[5], chain.coordinator, chain.admin):
        data = revert_data(lambda s=sender: chain.claim(victim, proof, sender=s))
        assert data == error_data("RewardPool", "InvalidProof")
    assert not chain.is_claimed(victim)
    assert chain.balance(thief) == 0
    chain.claim(victim, proof)
    assert chain.balance(victim.account) == victim.amount


def test_proof_for_a_different_round_fails(chain: Chain) -> None:
    accounts = chain.clients[:2]
    first = post_round(chain, accounts, round=1)
    post_round(chain, accounts, round=2)
    chain.fund(10 * 10**18)
    claim = first.claims[0]
    proof = first.tree.proof(claim.leaf)
    # The round-1 leaf (and proof) submitted for round 2: the leaf encodes the round.
    moved = replace(claim, round=2)
    assert revert_data(lambda: chain.claim(moved, proof)) == error_data(
        "RewardPool", "InvalidProof"
    )
    unposted = replace(claim, round=3)
    assert revert_data(lambda: chain.claim(unposted, proof)) == error_data(
        "RewardPool", "RoundNotPosted"
    )
    other_run = replace(claim, run_id=b"\x02" * 32)
    assert revert_data(lambda: chain.claim(other_run, proof)) == error_data(
        "RewardPool", "RoundNotPosted"
    )
    chain.claim(claim, proof)
    assert chain.balance(claim.account) == claim.amount


def test_underfunded_claim_reverts_whole(chain: Chain) -> None:
    rnd = post_round(chain, chain.clients[:1])
    claim = rnd.claims[0]
    chain.fund(claim.amount - 1)
    data = revert_data(lambda: chain.claim(claim, rnd.tree.proof(claim.leaf)))
    assert data == error_data(
        "RewardToken",
        "ERC20InsufficientBalance",
        ["address", "uint256", "uint256"],
        [chain.pool.address, claim.amount - 1, claim.amount],
    )
    assert not chain.is_claimed(claim)  # the claimed mark was rolled back with the transfer
    chain.fund(1)
    chain.claim(claim, rnd.tree.proof(claim.leaf))
    assert chain.balance(claim.account) == claim.amount
    assert chain.balance(chain.pool.address) == 0


def test_contracts_refuse_ether(chain: Chain) -> None:
    for target in (chain.pool.address, chain.ledger.address, chain.token.address):
        revert_data(
            lambda t=target: chain.w3.eth.wait_for_transaction_receipt(
                chain.w3.eth.send_transaction({"from": chain.admin, "to": t, "value": 1})
            )
        )
        assert chain.w3.eth.get_balance(target) == 0


# --------------------------------------------------------------------------- gas


@pytest.mark.parametrize("clients", [10, 100, 1000])
def test_gas_within_targets(chain: Chain, clients: int) -> None:
    run_id = keccak(f"gas-{clients}".encode())
    claimant = chain.clients[0]
    rng = random.Random(clients)
    claims = [make_claim(claimant, run_id, 1, 10**18), *random_claims(clients - 1, run_id, 1, rng)]
    tree = MerkleTree.from_leaf_hashes(c.leaf for c in claims)
    post_gas = chain.post(run_id, 1, tree.root, keccak(b"aggregate"))["gasUsed"]
    assert post_gas <= POST_GAS_LIMIT
    chain.fund(10**18)
    proof = tree.proof(claims[0].leaf)
    assert len(proof) in {(clients - 1).bit_length() - 1, (clients - 1).bit_length()}
    claim_gas = chain.claim(claims[0], proof)["gasUsed"]  # claimant's first tokens: worst case
    assert claim_gas <= CLAIM_GAS_LIMIT, (clients, claim_gas)


def test_post_gas_is_flat(chain: Chain) -> None:
    # The root is one slot whatever the tree size: gas varies only with calldata bytes.
    gas = [chain.post(keccak(bytes([i])), 1, keccak(bytes([i, 1])))["gasUsed"] for i in range(4)]
    assert max(gas) - min(gas) <= 200


# --------------------------------------------------------------------------- (3) Hypothesis

N_OWNERS = 5


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[list[tuple[int, int]]], list[tuple[int, ...]]]:
    rounds = [
        draw(
            st.lists(
                st.tuples(st.integers(0, N_OWNERS - 1), st.integers(0, 10**21)),
                min_size=1,
                max_size=6,
            )
        )
        for _ in range(2)
    ]
    actions = draw(
        st.lists(
            st.tuples(
                st.integers(0, 1),  # round of the leaf
                st.integers(0, 5),  # leaf index (mod size)
                st.integers(0, N_OWNERS - 1),  # sender
                st.integers(0, 1),  # round the proof is submitted for
                st.booleans(),  # tamper with the amount
            ),
            min_size=1,
            max_size=8,
        )
    )
    return rounds, actions


def test_claims_invariants_hypothesis(deployed: tuple[Chain, Any]) -> None:
    chain, snapshot = deployed
    tester = chain.w3.provider.ethereum_tester  # type: ignore[attr-defined]
    owners = chain.clients[:N_OWNERS]

    @settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(scenarios())
    def run(scenario: tuple[list[list[tuple[int, int]]], list[tuple[int, ...]]]) -> None:
        tester.revert_to_snapshot(snapshot)
        spec, actions = scenario
        run_id = keccak(b"hypothesis")
        rounds: list[Round] = []
        for r, leaves in enumerate(spec):
            claims = [
                make_claim(owners[o], run_id, r, amount, salt=i)
                for i, (o, amount) in enumerate(leaves)
            ]
            tree = MerkleTree.from_leaf_hashes(c.leaf for c in claims)
            chain.post(run_id, r, tree.root)
            rounds.append(Round(claims, tree))
        by_leaf = {c.leaf: c for rnd in rounds for c in rnd.claims}
        funding = sum(c.amount for c in by_leaf.values())
        chain.fund(funding)
        paid: set[bytes] = set()
        for leaf_round, index, sender_index, submit_round, tamper in actions:
            rnd = rounds[leaf_round]
            claim = rnd.claims[index % len(rnd.claims)]
            proof = rnd.tree.proof(claim.leaf)
            submitted = replace(
                claim, round=submit_round, amount=claim.amount + (1 if tamper else 0)
            )
            sender = owners[sender_index]
            expect = (
                sender == claim.account
                and submit_round == leaf_round
                and not tamper
                and claim.leaf not in paid
            )
            before = chain.balance(sender)
            if expect:
                chain.claim(submitted, proof, sender=sender)
                paid.add(claim.leaf)
            else:
                revert_data(lambda s=submitted, p=proof, a=sender: chain.claim(s, p, sender=a))
            assert chain.balance(sender) == before + (claim.amount if expect else 0)
            total_paid = sum(by_leaf[leaf].amount for leaf in paid)
            assert chain.balance(chain.pool.address) == funding - total_paid
        # Every token paid went to a leaf's own account, once per leaf; nothing was created.
        for owner in owners:
            owed = sum(by_leaf[leaf].amount for leaf in paid if by_leaf[leaf].account == owner)
            assert chain.balance(owner) == owed
        assert chain.balance(chain.admin) == SUPPLY - funding
        for c in by_leaf.values():
            assert chain.is_claimed(c) == (c.leaf in paid)

    run()


# --------------------------------------------------------------------------- forge + Slither


def _tool_env(out: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["FOUNDRY_OUT"] = str(out / "out")
    env["FOUNDRY_CACHE_PATH"] = str(out / "cache")
    env["FOUNDRY_OFFLINE"] = "true"
    env["PATH"] = f"{FORGE.parent}{os.pathsep}{env.get('PATH', '')}"
    env["NO_COLOR"] = "1"
    # Lighter than foundry.toml's profile (the machine is shared); still > 500 handler calls.
    env["FOUNDRY_INVARIANT_RUNS"] = "16"
    return env


@pytest.fixture(scope="module")
def forge_build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    if not FORGE.is_file() or shutil.which("node") is None:
        pytest.fail("forge (npm @foundry-rs/forge) or node missing: run `make install`")
    work = tmp_path_factory.mktemp("forge")
    env = _tool_env(work)
    proc = subprocess.run(
        [str(FORGE), "build", "--build-info", "--offline"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield work / "out", env


def test_forge_compiles_same_bytecode(forge_build: tuple[Path, dict[str, str]]) -> None:
    out, _ = forge_build
    for name in CONTRACTS:
        built = json.loads((out / f"{name}.sol" / f"{name}.json").read_text())
        artifact = load_artifact(name)
        assert add_0x_prefix(built["bytecode"]["object"]) == artifact["bytecode"]
        assert add_0x_prefix(built["deployedBytecode"]["object"]) == artifact["deployedBytecode"]


def test_forge_fuzz_and_invariants(forge_build: tuple[Path, dict[str, str]]) -> None:
    _, env = forge_build
    proc = subprocess.run(
        [str(FORGE), "test", "--offline", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    results = json.loads(proc.stdout)
    outcomes = {
        f"{suite.split(':')[-1]}.{test.split('(')[0]}": (r["status"], r.get("reason"))
        for suite, body in results.items()
        for test, r in body["test_results"].items()
    }
    failed = {k: v for k, v in outcomes.items() if v[0] != "Success"}
    assert not failed, failed
    assert proc.returncode == 0, proc.stderr
    kinds = {t.split(".")[1].split("_")[0] for t in outcomes}
    assert {"testFuzz", "invariant"} <= kinds
    assert len(outcomes) >= 13


def test_slither_finds_no_high_or_medium(forge_build: tuple[Path, dict[str, str]]) -> None:
    if not SLITHER.is_file():
        pytest.fail(f"Slither is not installed at {SLITHER}: run `make install`")
    out, env = forge_build
    proc = subprocess.run(
        [
            str(SLITHER),
            ".",
            "--foundry-ignore-compile",
            "--foundry-out-directory",
            str(out),
            "--filter-paths",
            "node_modules|contracts/test",
            "--json",
            "-",
            "--json-types",
            "compilations,detectors",
            "--fail-none",  # findings are judged below, from the JSON report
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["success"], report.get("error") or proc.stderr
    # Slither really parsed our contracts (not an empty or stale build).
    units = {
        unit
        for compilation in report["results"]["compilations"]
        for cu in compilation["compilation_units"].values()
        for unit in cu["source_units"]
    }
    assert set(CONTRACTS.values()) <= units
    detectors = report["results"].get("detectors", [])
    analysed = {
        e["source_mapping"]["filename_relative"]
        for d in detectors
        for e in d["elements"]
        if "source_mapping" in e
    }
    serious = [
        f"{d['impact']} {d['check']}: {d['description'].strip()}"
        for d in detectors
        if d["impact"] in {"High", "Medium"}
    ]
    assert not serious, "\n".join(serious)
    assert all(not f.startswith("contracts/test") for f in analysed)
