"""Merkle trees (against OpenZeppelin's golden vectors), contribution leaves, signed commitments.

No chain: pure Python, and node for re-running the vector script.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from eth_abi.abi import encode
from eth_account import Account
from eth_utils import decode_hex, encode_hex, to_checksum_address
from eth_utils.crypto import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlearn.attestation.hexutil import to_bytes32
from fedlearn.attestation.leaves import (
    EPSILON_UNBOUNDED,
    LEAF_ABI_TYPES,
    Contribution,
    ContributionLeaf,
    allocate_amounts,
    commitment_of,
    epsilon_to_micro,
    round_leaves,
    run_id_from_name,
    score_to_fixed,
)
from fedlearn.attestation.merkle import MerkleTree, hash_pair, process_proof, verify_proof
from fedlearn.attestation.signing import (
    KEY_ENV,
    PASSWORD_ENV,
    SignatureError,
    SignedCommitment,
    SigningDomain,
    WalletError,
    check_signed_commitment,
    load_wallet,
    save_keystore,
    sign_commitment,
    verify_commitment,
)

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "tests/data/merkle_vectors.json"
VECTOR_SCRIPT = ROOT / "contracts/tools/merkle_vectors.mjs"
OPENZEPPELIN_MERKLE_TREE = ROOT / "node_modules/@openzeppelin/merkle-tree"

hashes = st.binary(min_size=32, max_size=32)
leaf_sets = st.lists(hashes, min_size=1, max_size=40, unique=True)


def _vector_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads(VECTORS.read_text(encoding="utf-8"))["cases"]
    return cases


# ---------------------------------------------------------------- Merkle


def test_two_leaves_hand_checked() -> None:
    a, b = keccak(b"a"), keccak(b"b")
    tree = MerkleTree.from_leaf_hashes([a, b])
    lo, hi = sorted([a, b])
    assert tree.root == keccak(lo + hi)
    assert tree.proof(a) == [b]
    assert tree.proof(b) == [a]


def test_single_leaf_is_its_own_root() -> None:
    a = keccak(b"only")
    tree = MerkleTree.from_leaf_hashes([a])
    assert tree.root == a
    assert tree.proof(a) == []
    assert verify_proof(leaf_hash=a, proof=[], root=a)


def test_three_leaves_match_openzeppelin_layout() -> None:
    # StandardMerkleTree over sorted leaves l0 < l1 < l2 stores [root, n1, l2, l1, l0]
    # (leaves reversed at the end): n1 = H(l1, l0), root = H(n1, l2).
    l0, l1, l2 = sorted(keccak(bytes([i])) for i in range(3))
    tree = MerkleTree.from_leaf_hashes([l2, l0, l1])
    n1 = hash_pair(l1, l0)
    assert tree.root == hash_pair(n1, l2)
    assert tree.proof(l0) == [l1, l2]
    assert tree.proof(l2) == [n1]


@settings(max_examples=60, deadline=None)
@given(leaf_sets, st.randoms(use_true_random=False))
def test_every_proof_verifies_and_order_does_not_matter(leaves: list[bytes], rnd: object) -> None:
    tree = MerkleTree.from_leaf_hashes(leaves)
    shuffled = list(leaves)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert MerkleTree.from_leaf_hashes(shuffled).root == tree.root
    for leaf in leaves:
        proof = tree.proof(leaf)
        assert len(proof) <= len(leaves).bit_length()
        assert verify_proof(leaf_hash=leaf, proof=proof, root=tree.root)


@settings(max_examples=60, deadline=None)
@given(leaf_sets, st.data())
def test_altered_leaf_or_proof_fails(leaves: list[bytes], data: st.DataObject) -> None:
    tree = MerkleTree.from_leaf_hashes(leaves)
    leaf = data.draw(st.sampled_from(leaves))
    proof = tree.proof(leaf)
    bit = data.draw(st.integers(0, 255))
    flipped = bytearray(leaf)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert not verify_proof(leaf_hash=bytes(flipped), proof=proof, root=tree.root)
    if proof:
        index = data.draw(st.integers(0, len(proof) - 1))
        bad = list(proof)
        altered = bytearray(bad[index])
        altered[bit // 8] ^= 1 << (bit % 8)
        bad[index] = bytes(altered)
        assert not verify_proof(leaf_hash=leaf, proof=bad, root=tree.root)
        assert not verify_proof(leaf_hash=leaf, proof=proof[:-1], root=tree.root)


def test_tree_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one leaf"):
        MerkleTree.from_leaf_hashes([])
    with pytest.raises(ValueError, match="duplicate"):
        MerkleTree.from_leaf_hashes([keccak(b"x"), keccak(b"x")])
    with pytest.raises(ValueError, match="32 bytes"):
        MerkleTree.from_leaf_hashes([b"short"])
    tree = MerkleTree.from_leaf_hashes([keccak(b"x")])
    with pytest.raises(KeyError):
        tree.proof(keccak(b"y"))
    with pytest.raises(ValueError, match="32 bytes"):
        process_proof(leaf_hash=keccak(b"x"), proof=[b"\0" * 31])


# ---------------------------------------------------------------- OpenZeppelin golden vectors
# tests/data/merkle_vectors.json is written by contracts/tools/merkle_vectors.mjs with
# OpenZeppelin's own StandardMerkleTree (npm @openzeppelin/merkle-tree, pinned in package.json).


def test_vectors_come_from_the_pinned_package_with_our_leaf_encoding() -> None:
    data = json.loads(VECTORS.read_text(encoding="utf-8"))
    package = json.loads((ROOT / "package.json").read_text(encoding="utf-8"))
    version = package["devDependencies"]["@openzeppelin/merkle-tree"]
    assert data["generator"] == f"@openzeppelin/merkle-tree@{version} StandardMerkleTree"
    assert tuple(data["leaf_encoding"]) == LEAF_ABI_TYPES
    assert {1, 2, 3, 7, 16} <= {len(case["leaves"]) for case in data["cases"]}


@pytest.mark.parametrize("case", _vector_cases(), ids=lambda case: case["name"])
def test_leaf_hashes_roots_and_proofs_equal_openzeppelins(case: dict[str, Any]) -> None:
    leaves = [ContributionLeaf.from_dict(item) for item in case["leaves"]]
    for leaf, item in zip(leaves, case["leaves"], strict=True):  # the bundles' leaf format
        assert leaf.to_dict() == item | {
            "round": int(item["round"]),
            "client": to_checksum_address(item["client"]),
        }
    leaf_hashes = [leaf.leaf_hash() for leaf in leaves]
    assert [encode_hex(h) for h in leaf_hashes] == case["leaf_hashes"]
    root = decode_hex(case["root"])
    proofs = [[decode_hex(node) for node in proof] for proof in case["proofs"]]
    for leaf_hash, proof in zip(leaf_hashes, proofs, strict=True):
        assert verify_proof(leaf_hash=leaf_hash, proof=proof, root=root)
    if len(set(leaf_hashes)) < len(leaf_hashes):
        # OpenZeppelin builds a tree over equal leaves; we refuse: they are one claim on chain.
        with pytest.raises(ValueError, match="duplicate leaf hash"):
            MerkleTree.from_leaf_hashes(leaf_hashes)
        return
    tree = MerkleTree.from_leaf_hashes(leaf_hashes)
    assert tree.root == root
    assert [tree.proof(leaf_hash) for leaf_hash in leaf_hashes] == proofs


def test_committed_vectors_are_what_openzeppelin_produces(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None or not OPENZEPPELIN_MERKLE_TREE.is_dir():
        pytest.fail("node or npm @openzeppelin/merkle-tree missing: run `make install`")
    fresh = tmp_path / "merkle_vectors.json"
    subprocess.run([node, str(VECTOR_SCRIPT), str(fresh)], cwd=ROOT, check=True, timeout=120)
    assert fresh.read_text(encoding="utf-8") == VECTORS.read_text(encoding="utf-8")


# ---------------------------------------------------------------- leaves


def _contribution(
    i: int, score: float, examples: int = 10, eps: float | None = 1.0
) -> Contribution:
    return Contribution(
        client=Account.create().address,
        commitment=commitment_of(b"update %d" % i),
        score=score,
        examples=examples,
        epsilon=eps,
    )


def test_leaf_hash_is_double_keccak_of_abi_encoding() -> None:
    client = "0x" + "ab" * 20
    leaf = ContributionLeaf(
        run_id=run_id_from_name("run"),
        round=7,
        client=client,
        commitment=commitment_of(b"payload"),
        score=1_500_000,
        examples=32,
        epsilon_micro=2_000_000,
        amount=10**18,
    )
    encoded = encode(
        ["bytes32", "uint64", "address", "bytes32", "uint256", "uint256", "uint256", "uint256"],
        [leaf.run_id, 7, client, keccak(b"payload"), 1_500_000, 32, 2_000_000, 10**18],
    )
    assert len(encoded) == 8 * 32
    assert leaf.leaf_hash() == keccak(keccak(encoded))
    assert ContributionLeaf.from_dict(json.loads(json.dumps(leaf.to_dict()))) == leaf


def test_to_bytes32_takes_bytes_or_hex_and_names_what_is_wrong() -> None:
    value = bytes(range(32))
    for form in (value, bytearray(value), encode_hex(value), encode_hex(value)[2:]):
        assert to_bytes32("root", form) == value
    assert to_bytes32("root", encode_hex(value).upper().replace("0X", "0x")) == value
    for bad_hex in ("0x" + "zz" * 32, encode_hex(value)[:-1], "ab " * 32):
        with pytest.raises(ValueError, match="root is not hex"):
            to_bytes32("root", bad_hex)
    for wrong in (value[:31], value + b"\0", encode_hex(value[:31]), "0x", 7, None, [0] * 32):
        with pytest.raises(ValueError, match="root must be 32 bytes"):
            to_bytes32("root", wrong)


def test_run_id_and_commitment_are_deterministic() -> None:
    assert run_id_from_name("a") == run_id_from_name("a") != run_id_from_name("b")
    assert commitment_of(b"xyz") == keccak(b"xyz")
    with pytest.raises(ValueError):
        run_id_from_name("")


def test_round_leaves_pro_rata_caps_and_units() -> None:
    items = [_contribution(0, 0.5, examples=50, eps=0.1234567), _contribution(1, 1.5, 10**6, None)]
    leaves = round_leaves(
        run_id=run_id_from_name("r"), round=3, contributions=items, budget=1000, max_examples=100
    )
    assert [leaf.score for leaf in leaves] == [500_000, 1_500_000]
    assert [leaf.amount for leaf in leaves] == [250, 750]
    assert [leaf.examples for leaf in leaves] == [50, 100]
    assert leaves[0].epsilon_micro == 123_457  # rounded up: never understates ε
    assert leaves[1].epsilon_micro == EPSILON_UNBOUNDED
    assert all(
        leaf.round == 3 and leaf.client == c.client for leaf, c in zip(leaves, items, strict=True)
    )


def test_round_leaves_refuses_bad_input() -> None:
    run_id = run_id_from_name("r")
    neg = [_contribution(0, -0.2), _contribution(1, 1.0)]
    with pytest.raises(ValueError, match="negative score"):
        round_leaves(run_id=run_id, round=1, contributions=neg, budget=10, max_examples=5)
    zeroed = round_leaves(
        run_id=run_id, round=1, contributions=neg, budget=10, max_examples=5, negative_scores="zero"
    )
    assert [leaf.amount for leaf in zeroed] == [0, 10]
    dup = _contribution(0, 1.0)
    with pytest.raises(ValueError, match="twice"):
        round_leaves(run_id=run_id, round=1, contributions=[dup, dup], budget=10, max_examples=5)
    with pytest.raises(ValueError, match="max_examples"):
        round_leaves(run_id=run_id, round=1, contributions=[dup], budget=10, max_examples=0)
    with pytest.raises(ValueError, match="finite"):
        _contribution(0, float("nan"))
    with pytest.raises(ValueError):
        score_to_fixed(-1.0)
    with pytest.raises(ValueError):
        epsilon_to_micro(-0.5)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(0, 10**12), min_size=1, max_size=30),
    st.integers(0, 10**30),
)
def test_amounts_never_exceed_budget_and_lose_less_than_one_unit_each(
    scores: list[int], budget: int
) -> None:
    amounts = allocate_amounts(scores, budget=budget)
    assert sum(amounts) <= budget
    if sum(scores):
        assert budget - sum(amounts) < len(scores)
        for score, amount in zip(scores, amounts, strict=True):
            assert amount * sum(scores) <= budget * score < (amount + 1) * sum(scores)
    else:
        assert amounts == [0] * len(scores)


# ---------------------------------------------------------------- signing


CHAIN_A, CHAIN_B = 31337, 1
LEDGER_X = to_checksum_address("0x" + "11" * 20)
LEDGER_Y = to_checksum_address("0x" + "22" * 20)
DOMAIN = SigningDomain(chain_id=CHAIN_A, ledger=LEDGER_X)


def test_sign_and_check_commitment() -> None:
    account = Account.create()
    run_id = run_id_from_name("run")
    payload = b"exact bytes the client sent"
    signed = SignedCommitment.create(
        account=account, domain=DOMAIN, run_id=run_id, round=4, payload=payload
    )
    again = SignedCommitment.from_dict(json.loads(json.dumps(signed.to_dict())))
    assert again == signed
    assert (
        check_signed_commitment(
            signed=again,
            domain=DOMAIN,
            run_id=run_id,
            expected_round=4,
            payload=payload,
            expected_address=account.address.lower(),
        )
        == account.address
    )
    assert (
        verify_commitment(
            domain=DOMAIN,
            run_id=run_id,
            round=4,
            commitment=keccak(payload),
            signature=signed.signature,
        )
        == account.address
    )


def test_the_signed_digest_is_eip712_with_chain_id_and_verifying_contract() -> None:
    """The digest, computed here from the EIP-712 text, is what the signature recovers from."""
    from eth_keys import keys

    account = Account.create()
    run_id, commitment = run_id_from_name("run"), keccak(b"update")
    signature = sign_commitment(
        account=account, domain=DOMAIN, run_id=run_id, round=7, commitment=commitment
    )
    domain_type = keccak(
        b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
    )
    separator = keccak(
        encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [domain_type, keccak(b"fedlearn"), keccak(b"1"), CHAIN_A, LEDGER_X],
        )
    )
    struct_type = keccak(b"UpdateCommitment(bytes32 runId,uint64 round,bytes32 commitment)")
    struct = keccak(
        encode(["bytes32", "bytes32", "uint64", "bytes32"], [struct_type, run_id, 7, commitment])
    )
    digest = keccak(b"\x19\x01" + separator + struct)
    v = signature[64] - 27 if signature[64] >= 27 else signature[64]
    recovered = keys.Signature(signature[:64] + bytes([v])).recover_public_key_from_msg_hash(digest)
    assert recovered.to_checksum_address() == account.address


def test_a_commitment_signed_for_chain_a_and_ledger_x_is_refused_elsewhere() -> None:
    """The operator replays a holder's signature into a run on another chain or ledger."""
    account = Account.create()
    run_id = run_id_from_name("run")
    payload = b"update"
    signed = SignedCommitment.create(
        account=account, domain=DOMAIN, run_id=run_id, round=1, payload=payload
    )
    check = {"run_id": run_id, "expected_round": 1, "payload": payload}
    chain_b = SigningDomain(chain_id=CHAIN_B, ledger=LEDGER_X)
    ledger_y = SigningDomain(chain_id=CHAIN_A, ledger=LEDGER_Y)
    with pytest.raises(SignatureError, match="signed for chain 31337, this run attests on chain 1"):
        check_signed_commitment(signed=signed, domain=chain_b, **check)  # type: ignore[arg-type]
    with pytest.raises(SignatureError, match=f"signed for ledger {LEDGER_X}"):
        check_signed_commitment(signed=signed, domain=ledger_y, **check)  # type: ignore[arg-type]
    # Relabelling the domain the record claims does not help: the server verifies in its own.
    for other in (chain_b, ledger_y):
        relabelled = SignedCommitment.from_dict(
            signed.to_dict() | {"chain_id": other.chain_id, "ledger": other.ledger}
        )
        with pytest.raises(SignatureError, match="does not recover"):
            check_signed_commitment(signed=relabelled, domain=other, **check)  # type: ignore[arg-type]
        assert (
            verify_commitment(
                domain=other,
                run_id=run_id,
                round=1,
                commitment=signed.commitment,
                signature=signed.signature,
            )
            != account.address
        )
    # ... and in its own domain it still checks out.
    assert check_signed_commitment(signed=signed, domain=DOMAIN, **check) == account.address  # type: ignore[arg-type]


def test_a_signing_domain_is_a_chain_id_and_a_contract_address() -> None:
    for chain_id in (0, -1, True, "1", 2**256):
        with pytest.raises(ValueError, match="chain_id"):
            SigningDomain(chain_id=chain_id, ledger=LEDGER_X)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ledger"):
        SigningDomain(chain_id=1, ledger="0x1234")
    assert SigningDomain(chain_id=1, ledger=LEDGER_X.lower()).ledger == LEDGER_X
    with pytest.raises(SignatureError, match="malformed"):
        SignedCommitment.from_dict(
            SignedCommitment.create(
                account=Account.create(), domain=DOMAIN, run_id=b"\0" * 32, round=0, payload=b""
            ).to_dict()
            | {"chain_id": "31337"}
        )


def test_replays_and_forgeries_are_rejected() -> None:
    account, other = Account.create(), Account.create()
    run_id = run_id_from_name("run")
    payload = b"update of round 3"
    old = SignedCommitment.create(
        account=account, domain=DOMAIN, run_id=run_id, round=3, payload=payload
    )
    check = {
        "domain": DOMAIN,
        "run_id": run_id,
        "payload": payload,
        "expected_address": account.address,
    }
    with pytest.raises(SignatureError, match="round 3, expected round 4"):
        check_signed_commitment(signed=old, expected_round=4, **check)  # type: ignore[arg-type]
    # relabelling the round does not help: the signature covers it
    relabelled = SignedCommitment(
        domain=DOMAIN,
        run_id=run_id,
        round=4,
        commitment=old.commitment,
        signer=account.address,
        signature=old.signature,
    )
    with pytest.raises(SignatureError, match="does not recover"):
        check_signed_commitment(signed=relabelled, expected_round=4, **check)  # type: ignore[arg-type]
    with pytest.raises(SignatureError, match="another run"):
        check_signed_commitment(
            signed=old,
            domain=DOMAIN,
            run_id=run_id_from_name("other run"),
            expected_round=3,
            payload=payload,
        )
    with pytest.raises(SignatureError, match="does not match the bytes"):
        check_signed_commitment(
            signed=old, domain=DOMAIN, run_id=run_id, expected_round=3, payload=payload + b"!"
        )
    with pytest.raises(SignatureError, match="registered address"):
        check_signed_commitment(
            signed=old,
            domain=DOMAIN,
            run_id=run_id,
            expected_round=3,
            payload=payload,
            expected_address=other.address,
        )
    # someone else's signature under this client's name
    stolen = SignedCommitment(
        domain=DOMAIN,
        run_id=run_id,
        round=3,
        commitment=old.commitment,
        signer=account.address,
        signature=sign_commitment(
            account=other, domain=DOMAIN, run_id=run_id, round=3, commitment=old.commitment
        ),
    )
    with pytest.raises(SignatureError, match="does not recover"):
        check_signed_commitment(signed=stolen, expected_round=3, **check)  # type: ignore[arg-type]
    with pytest.raises(SignatureError, match="malformed"):
        SignedCommitment.from_dict({"run_id": "zz"})


def test_load_wallet_from_keystore_and_environment(tmp_path: Path) -> None:
    account = Account.create()
    path = save_keystore(
        account=account, path=tmp_path / "wallet.json", password="pw 1", scrypt_n=2**10
    )
    assert path.stat().st_mode & 0o777 == 0o600
    assert account.key.hex() not in path.read_text()
    loaded = load_wallet(keystore=path, environ={PASSWORD_ENV: "pw 1"})
    assert loaded.address == account.address
    with pytest.raises(WalletError, match=PASSWORD_ENV):
        load_wallet(keystore=path, environ={})
    with pytest.raises(WalletError, match="cannot decrypt") as info:
        load_wallet(keystore=path, environ={PASSWORD_ENV: "wrong"})
    assert "wrong" not in str(info.value)
    with pytest.raises(FileExistsError):
        save_keystore(account=account, path=path, password="x", scrypt_n=2**10)
    from_env = load_wallet(environ={KEY_ENV: account.key.hex()})
    assert from_env.address == account.address
    with pytest.raises(WalletError, match=KEY_ENV):
        load_wallet(environ={})
    with pytest.raises(WalletError, match="not a valid"):
        load_wallet(environ={KEY_ENV: "0x1234"})
