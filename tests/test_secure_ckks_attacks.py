"""An active server against CKKS mode: each attack of the threat model, refused by the holders.

The server here is the test: it sends the holders' real CkksClient whatever
it likes over the loopback grid. Three families of attacks:

* **key injection**: the server skips the deal and hands every holder a key it
  made itself (unsigned, signed by an identity of its own, or impersonating a
  known holder), swaps envelopes, or substitutes a recipient's key so that an
  honest dealer seals the real key to the server;
* **the decryption oracle**: the server asks the key's decryptor to decrypt
  twice in a round, a single client's ciphertext, crafted ciphertexts,
  replayed contributions, another length, past the key's budget, or asks a
  holder that is not the decryptor: the key-recovery attack on CKKS needs
  exactly these;
* **the floor**: fewer distinct key holders than the decryptor's floor, one
  holder counted twice, or contributions signed by identities that hold no key.

Holders that met before keep their identities and pins in identity
directories (the node config ``identity-dir``); a second run is the same
directories under a new run id.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flwr.app import Message, RecordDict
from flwr.supercore.run import Run

from fedlearn.privacy.secure.base import blob_bytes, request
from fedlearn.privacy.secure.ckks import CkksClient, CkksParameters, CkksServer
from fedlearn.privacy.secure.ckks.primitives import (
    CkksRing,
    envelope_label,
    key_fingerprint,
    new_secret_context,
)
from fedlearn.privacy.secure.ckks.statements import (
    Registration,
    ciphertexts_digest,
    contribution_statement,
    grant_statement,
    pack_members,
)
from fedlearn.privacy.secure.envelope import generate_keypair, seal
from fedlearn.privacy.secure.identity import HolderIdentity, fingerprint, pin_holders
from fedlearn.wire import SECURE_BLOBS, CkksStage
from tests.flower_messages import serverapp_identity
from tests.test_secure_ckks import Federation

NODES = [1, 2, 3]


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with serverapp_identity():
        yield


def _holders(root: Path, **extra: Any) -> Any:
    """Node configs of holders with persistent identities under ``root``."""
    return lambda n: (
        {"identity-dir": str(root / f"holder-{n}"), "holder-name": f"hospital-{n}"} | (extra)
    )


def _federation(root: Path, *, run_id: int, length: int = 100, **extra: Any) -> Federation:
    fed = Federation(NODES, length=length, node_config=_holders(root, **extra))
    fed.grid.set_run(Run.create_empty(run_id=run_id))
    for context in fed.grid.contexts.values():
        context.run_id = run_id
    return fed


def _second_run(root: Path) -> Federation:
    """The same holders in a second run: run 1 made (and pinned) the federation's key."""
    _federation(root, run_id=1).setup(NODES)
    return _federation(root, run_id=2)


def _invented(
    name: str, *, node: int, public_key: bytes, run_id: int, ceremony: str
) -> Registration:
    """A registration the server makes for an identity of its own: well formed, self-signed."""
    identity = HolderIdentity.generate(name)
    unsigned = Registration(node, name, identity.public, public_key, b"")
    signature = identity.sign(unsigned.statement(run_id=run_id, ceremony_id=ceremony))
    return Registration(node, name, identity.public, public_key, signature)


def _registered(fed: Federation, ceremony: str) -> dict[int, Registration]:
    """Register every node for ``ceremony`` (the server's first, honest step)."""
    out = {}
    for node in NODES:
        reply = fed.ask(node, request(CkksStage.REGISTER, **{"ceremony-id": ceremony}))
        blobs = reply.content.array_records[SECURE_BLOBS]
        out[node] = Registration(
            node=node,
            name=str(reply.content.config_records["secure"]["name"]),
            identity=blob_bytes(blobs["identity"]),
            public_key=blob_bytes(blobs["public-key"]),
            signature=blob_bytes(blobs["signature"]),
        )
    return out


def _injected_key(
    fed: Federation,
    registration: Registration,
    *,
    ceremony: str,
    secret: bytes,
    dealer: Any,
    signer: HolderIdentity | None = None,
    run_id: int,
) -> Message:
    """The server's own key, sealed to a holder's registered X25519 key, 'granted' by ``dealer``."""
    fingerprint_ = key_fingerprint(secret)
    label = envelope_label(
        run_id=run_id,
        ceremony_id=ceremony,
        node_id=registration.node,
        recipient=registration.identity,
        dealer=dealer.public,
    )
    envelope = seal(registration.public_key, secret, label=label)
    members = {dealer.public: dealer.name, registration.identity: registration.name}
    grant = grant_statement(
        run_id=run_id,
        ceremony_id=ceremony,
        fingerprint=fingerprint_,
        dealer_name=dealer.name,
        dealer=dealer.public,
        recipient=registration,
        envelope=envelope,
        members=members,
    )
    names, identities = pack_members(members)
    content = request(
        CkksStage.KEY,
        **{
            "ceremony-id": ceremony,
            "fingerprint": fingerprint_,
            "dealer-name": dealer.name,
            "member-names": names,
        },
        members=identities,
        envelope=envelope,
        grant=(signer or dealer).sign(grant),
        dealer=dealer.public,
    )
    return fed.ask(registration.node, content)


def _nobody_encrypts(fed: Federation) -> None:
    """No holder holds a key, so no update can be encrypted under the server's."""
    train = request(CkksStage.TRAIN, **{"ceremony-id": "x", "fingerprint": "0" * 64, "round": 1})
    for node in NODES:
        assert "secret-context" not in fed.state(node)
        with pytest.raises(ValueError, match="holds no CKKS key"):
            fed.clients[node].protect(
                fed.vectors[node],
                Message(RecordDict(dict(train)), node, "train"),
                fed.grid.contexts[node],
            )


# --------------------------------------------------------------------------- key injection


def test_key_injection_in_a_federation_that_met_before_is_refused_by_every_holder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = _federation(tmp_path, run_id=1)
    first.aggregate(first.train(first.setup(NODES)))  # run 1: honest, identities pinned
    fed = _federation(tmp_path, run_id=2)  # run 2: the same holders, a lying server
    ceremony = "injected"
    registrations = _registered(fed, ceremony)
    secret, _ = new_secret_context(CkksParameters())
    operator = HolderIdentity.generate("operator")
    impostor = HolderIdentity.generate("hospital-2")  # a known name, the server's own key
    for node, registration in registrations.items():
        # Forged: the 'grant' names a real holder as dealer but is signed by another key.
        other = registrations[node % 3 + 1]
        victim = SimpleNamespace(name=other.name, public=other.identity)
        reply = _injected_key(
            fed, registration, ceremony=ceremony, secret=secret, dealer=victim, signer=operator,
            run_id=2,
        )  # fmt: skip
        assert reply.has_error() and "not granted to this holder" in reply.error.reason
        # Signed by an identity of the server's own, under a new name: not a registered holder.
        reply = _injected_key(
            fed, registration, ceremony=ceremony, secret=secret, dealer=operator, run_id=2
        )
        assert reply.has_error() and "accepts no new holders" in reply.error.reason
        # Signed by the server's key under a known holder's name: refused loudly.
        if node != 2:
            caplog.clear()
            with caplog.at_level(logging.ERROR):
                reply = _injected_key(
                    fed, registration, ceremony=ceremony, secret=secret, dealer=impostor, run_id=2
                )
            assert reply.has_error() and "'hospital-2' presented identity" in reply.error.reason
            assert fingerprint(impostor.public) in caplog.text  # both fingerprints, logged
    _nobody_encrypts(fed)
    # The honest ceremony of run 2 still works with the same holders.
    total = fed.aggregate(fed.train(fed.setup(NODES, server_round=2), 2), 2)
    assert np.abs(total.vector - fed.expected(NODES)).max() <= 1e-4


def test_key_injection_is_refused_in_a_first_run_when_the_holders_pinned_the_list(
    tmp_path: Path,
) -> None:
    # Each holder pins the operator's registration list (fingerprints checked out of
    # band) before its first run: no trust on first use at all.
    probe = _federation(tmp_path, run_id=1)
    identities = {}
    for node in NODES:
        registration = _registered(probe, "probe")[node]
        identities[registration.name] = registration.identity
    for node in NODES:
        (tmp_path / f"holder-{node}" / "ckks-pins.json").unlink()
        pin_holders(tmp_path / f"holder-{node}" / "ckks-pins.json", identities)
    fed = _federation(tmp_path, run_id=7)
    registrations = _registered(fed, "injected")
    secret, _ = new_secret_context(CkksParameters())
    operator = HolderIdentity.generate("operator")
    for registration in registrations.values():
        reply = _injected_key(
            fed, registration, ceremony="injected", secret=secret, dealer=operator, run_id=7
        )
        assert reply.has_error() and "accepts no new holders" in reply.error.reason
    _nobody_encrypts(fed)
    assert sorted(fed.setup(NODES)) == NODES  # the registered holders still make a key


def test_first_contact_refuses_unsigned_keys_and_logs_every_identity_it_pins(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fed = _federation(tmp_path, run_id=1)
    registrations = _registered(fed, "injected")
    secret, _ = new_secret_context(CkksParameters())
    operator, other = HolderIdentity.generate("operator"), HolderIdentity.generate("x")
    for registration in registrations.values():
        reply = _injected_key(
            fed, registration, ceremony="injected", secret=secret, dealer=operator,
            signer=other, run_id=1,
        )  # fmt: skip
        assert reply.has_error() and "not granted to this holder" in reply.error.reason
    _nobody_encrypts(fed)
    # What trust on first use shows: every identity a holder pins, with its fingerprint.
    with caplog.at_level(logging.WARNING):
        fed.setup(NODES)
    for registration in registrations.values():
        assert fingerprint(registration.identity) in caplog.text
    assert "pinned new holder 'hospital-2'" in caplog.text


def test_swapped_envelopes_and_grants_are_refused(tmp_path: Path) -> None:
    fed = _federation(tmp_path, run_id=1)
    calls: list[Message] = []
    honest = fed.grid.handlers

    def hold_back_keys(node: int) -> Any:
        def handle(msg: Message, ctx: Any) -> Message:
            if (
                msg.metadata.message_type == "query.secure"
                and msg.content.config_records["secure"]["stage"] == CkksStage.KEY
            ):
                calls.append(msg)
                return Message(RecordDict(), reply_to=msg)  # recorded, not delivered
            return honest[node](msg, ctx)

        return handle

    fed.grid.handlers = {n: hold_back_keys(n) for n in NODES}
    fed.setup(NODES)
    fed.grid.handlers = honest
    keys = {m.metadata.dst_node_id: m.content.array_records[SECURE_BLOBS] for m in calls}
    config = calls[0].content.config_records["secure"]
    assert sorted(keys) == [2, 3]
    fields = {k: config[k] for k in ("ceremony-id", "fingerprint", "dealer-name", "member-names")}

    def deliver(node: int, envelope_of: int, grant_of: int) -> Message:
        content = request(
            CkksStage.KEY,
            **fields,
            envelope=blob_bytes(keys[envelope_of]["envelope"]),
            grant=blob_bytes(keys[grant_of]["grant"]),
            dealer=blob_bytes(keys[grant_of]["dealer"]),
            members=blob_bytes(keys[grant_of]["members"]),
        )
        return fed.ask(node, content)

    for envelope_of, grant_of in ((3, 3), (3, 2), (2, 3)):
        reply = deliver(2, envelope_of, grant_of)
        assert reply.has_error() and "not granted to this holder" in reply.error.reason
    assert not deliver(2, 2, 2).has_error()  # its own envelope and grant: accepted


def test_a_dealer_never_seals_the_key_to_a_substituted_recipient(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fed = _second_run(tmp_path)
    registrations = _registered(fed, "c")
    _, server_public = generate_keypair()  # the server keeps the private half

    def deal(recipient: Registration) -> str:
        """Ask node 1 to deal to node 2 (honest) and to ``recipient`` as node 3."""
        fed.ask(1, request(CkksStage.REGISTER, **{"ceremony-id": "c"}))
        content = request(
            CkksStage.DEAL,
            **{"ceremony-id": "c", "recipients": [2, 3], "names": ["hospital-2", recipient.name]},
            **registrations[2].blobs(),
            **recipient.blobs(),
        )
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            reply = fed.ask(1, content)
        blobs = reply.content.array_records[SECURE_BLOBS]
        assert list(reply.content.config_records["secure"]["refused"]) == [3]
        assert "env-3" not in blobs and "env-2" in blobs  # sealed to node 2 only
        names = list(reply.content.config_records["secure"]["member-names"])
        assert sorted(names) == ["hospital-1", "hospital-2"]  # the key's members say so
        return caplog.text

    # Node 3's identity and signature, the server's X25519 key: the signature fails.
    swapped = Registration(
        3, "hospital-3", registrations[3].identity, server_public, registrations[3].signature
    )
    assert "not signed by its identity" in deal(swapped)
    # The server's own identity under node 3's (known) name: a pin mismatch, loudly.
    invented = {"node": 3, "public_key": server_public, "run_id": 2, "ceremony": "c"}
    assert "'hospital-3' presented identity" in deal(_invented("hospital-3", **invented))
    # The server's own identity under a new name: not a registered holder.
    assert "accepts no new holders" in deal(_invented("sybil", **invented))


def test_the_custodian_never_reshares_to_an_invented_newcomer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fed = _second_run(tmp_path)
    fed.setup(NODES)
    ceremony = fed.server._key.ceremony_id  # type: ignore[union-attr]
    _, server_public = generate_keypair()
    sybil = _invented("late-joiner", node=9, public_key=server_public, run_id=2, ceremony=ceremony)
    content = request(
        CkksStage.RESHARE,
        **{"ceremony-id": ceremony, "recipients": [9], "names": ["late-joiner"]},
        **sybil.blobs(),
    )
    with caplog.at_level(logging.ERROR):
        reply = fed.ask(1, content)
    assert list(reply.content.config_records["secure"]["refused"]) == [9]
    assert "env-9" not in reply.content.array_records[SECURE_BLOBS]
    assert "accepts no new holders" in caplog.text
    # Only the custodian reshares: another holder asked to does not.
    reply = fed.ask(2, content)
    assert reply.has_error() and "not the custodian" in reply.error.reason


# --------------------------------------------------------------------------- decryption oracle


class Round:
    """One honest round's train replies, and decrypt requests the test (the server) builds."""

    def __init__(self, fed: Federation, server_round: int = 1) -> None:
        self.fed = fed
        self.round = server_round
        self.replies = {
            r.metadata.src_node_id: r.content.array_records[SECURE_BLOBS]
            for r in fed.train(fed.setup(NODES, server_round), server_round)
        }
        self.ring = CkksRing(fed.server.parameters)

    def chunks(self, node: int) -> list[bytes]:
        blobs = self.replies[node]
        return [
            blob_bytes(blobs[f"ct-{i}"]) for i in range(len([k for k in blobs if k[:3] == "ct-"]))
        ]

    def sum_of(self, nodes: list[int]) -> list[bytes]:
        per_node = [[self.ring.load(c) for c in self.chunks(n)] for n in nodes]
        return [self.ring.dump(self.ring.add(list(cts))) for cts in zip(*per_node, strict=True)]

    def request(
        self,
        *,
        contributors: list[int] | None = None,
        sums: list[bytes] | None = None,
        server_round: int | None = None,
        length: int | None = None,
        blobs_of: dict[int, int] | None = None,
        **extra: Any,
    ) -> RecordDict:
        key = self.fed.server._key
        assert key is not None
        contributors = contributors if contributors is not None else sorted(self.replies)
        blobs_of = blobs_of or {}
        sums = sums if sums is not None else self.sum_of([blobs_of.get(n, n) for n in contributors])
        blobs: dict[str, bytes] = {f"sum-{i}": s for i, s in enumerate(sums)}
        for node in contributors:
            source = self.replies[blobs_of.get(node, node)]
            blobs |= {
                f"id-{node}": blob_bytes(source["identity"]),
                f"sig-{node}": blob_bytes(source["signature"]),
                f"tags-{node}": blob_bytes(source["tags"]),
                f"digest-{node}": ciphertexts_digest(self.chunks(blobs_of.get(node, node))),
            }
        return request(
            CkksStage.DECRYPT,
            **{
                "ceremony-id": key.ceremony_id,
                "fingerprint": key.fingerprint,
                "round": self.round if server_round is None else server_round,
                "length": self.fed.length if length is None else length,
                "contributors": contributors,
            },
            **extra,
            **blobs,
        )

    def decrypt(self, content: RecordDict, node: int = 1) -> Message:
        return self.fed.ask(node, content)


def _refused(reply: Message, reason: str) -> None:
    assert reply.has_error(), "the decryptor answered"
    assert reason in reply.error.reason, reply.error.reason


def test_the_decryptor_decrypts_at_most_once_per_round() -> None:
    fed = Federation(NODES, length=5000, seed=1)
    one = Round(fed)
    reply = one.decrypt(one.request())
    assert not reply.has_error()
    vector = reply.content.array_records[SECURE_BLOBS]["sum"].numpy()
    assert np.abs(vector - fed.expected(NODES)).max() <= fed.server.parameters.error_bound(3)
    _refused(one.decrypt(one.request()), "already decrypted for round 1")
    _refused(one.decrypt(one.request(contributors=[1, 2])), "already decrypted for round 1")
    _refused(one.decrypt(one.request(server_round=0)), "already decrypted for round 1")


def test_a_single_clients_ciphertext_is_never_decrypted_as_a_sum() -> None:
    fed = Federation(NODES, length=5000, seed=2)
    one = Round(fed)
    # Node 2's ciphertexts presented as the sum of all three signed contributions.
    reply = one.decrypt(one.request(sums=one.chunks(2)))
    _refused(reply, "not the sum of the 3 listed signed contributions")
    # The attempt spent the round: no second try at it.
    _refused(one.decrypt(one.request()), "already decrypted for round 1")


def test_crafted_ciphertexts_are_refused_and_repeated_queries_release_nothing() -> None:
    """The repeated-decryption key-recovery attack: every query refused, nothing released."""
    fed = Federation(NODES, length=5000, seed=3)
    one = Round(fed)
    ring = one.ring
    doubled = [ring.dump(ring.add([ring.load(c), ring.load(c)])) for c in one.sum_of(NODES)]
    negated = []
    for chunk in one.chunks(1):
        ct = ring.load(chunk)
        ring.evaluator.negate_inplace(ct)
        negated.append(ring.dump(ct))
    # With the round's real signed contributions: the c1 half is not their sum.
    _refused(one.decrypt(one.request(sums=doubled)), "not the sum of the 3 listed")
    # The same queries, again and again, in the rounds after (averaging flooding noise
    # away needs thousands of decryptions of related ciphertexts): each one refused.
    for server_round in range(2, 202):
        crafted = (doubled, negated, one.sum_of(NODES))[server_round % 3]
        reply = one.decrypt(one.request(sums=crafted, server_round=server_round))
        _refused(reply, "no valid signed contribution for round")
    assert fed.state(1)["decrypted"] == 0  # not one ciphertext was decrypted
    assert fed.state(1)["last-decrypted-round"] == 201


def test_only_a_vector_of_the_models_length_is_decrypted() -> None:
    fed = Federation(NODES, length=5000, seed=4)
    one = Round(fed)
    _refused(one.decrypt(one.request(length=4096)), "only a vector of the model's length (5000")
    # A custodian that has not trained yet still checks the length the contributors signed.
    fed = Federation([1, 2, 3, 4], length=5000, seed=4)
    records = fed.setup([1, 2, 3, 4])
    replies = fed.train({n: records[n] for n in (2, 3, 4)})
    other = Round.__new__(Round)
    other.fed, other.round, other.ring = fed, 1, CkksRing(fed.server.parameters)
    other.replies = {r.metadata.src_node_id: r.content.array_records[SECURE_BLOBS] for r in replies}
    _refused(other.decrypt(other.request(length=4999)), "no valid signed contribution")


def test_no_holder_but_the_custodian_decrypts() -> None:
    fed = Federation(NODES, length=3000, seed=5)
    one = Round(fed)
    for node in (2, 3):
        _refused(one.decrypt(one.request(), node=node), "not the custodian of its key")
    assert not one.decrypt(one.request()).has_error()


def test_the_decryption_budget_its_flooding_is_sized_for_is_enforced() -> None:
    params = CkksParameters(max_decryptions=3)

    def federation() -> Federation:
        return Federation(
            NODES,
            length=5000,  # two ciphertexts per round
            client=lambda _: CkksClient(parameters=params),
            server=CkksServer(parameters=params),
        )

    fed = federation()
    one = Round(fed, 1)
    assert not one.decrypt(one.request()).has_error()  # 2 of the key's 3
    two = Round(fed, 2)  # the same key (the test bypassed the server's own count)
    _refused(two.decrypt(two.request()), "decryption budget (3 ciphertexts")
    # An honest server makes a new key before the custodian would refuse.
    fed = federation()
    for server_round in (1, 2, 3):
        records = fed.setup(NODES, server_round=server_round)
        fed.aggregate(fed.train(records, server_round), server_round)
    assert len(fed.stage_messages(CkksStage.DEAL)) == 3


# --------------------------------------------------------------------------- the floor


def test_fewer_than_the_floor_of_distinct_key_holders_is_refused() -> None:
    fed = Federation(NODES, length=3000, seed=6)
    one = Round(fed, 1)
    _refused(one.decrypt(one.request(contributors=[2])), "requires at least 2")
    # A floor the server names is not the holder's floor.
    lowered = one.request(contributors=[2], **{"min-contributors": 1})
    _refused(one.decrypt(lowered), "requires at least 2")
    # One holder's contribution under two node ids counts once.
    _refused(one.decrypt(one.request(contributors=[2, 9], blobs_of={9: 2})), "counted twice")
    # An identity the custodian never sealed the key to (one the server made) counts for
    # nothing, even with a well-formed signed contribution.
    two = Round(fed, 2)
    sybil = HolderIdentity.generate("sybil")
    content = two.request(contributors=[1, 2, 9], blobs_of={9: 3})
    blobs = content.array_records[SECURE_BLOBS]
    tags, digest = blob_bytes(blobs["tags-9"]), blob_bytes(blobs["digest-9"])
    key = fed.server._key
    assert key is not None
    signed = contribution_statement(
        run_id=1, ceremony_id=key.ceremony_id, fingerprint=key.fingerprint, server_round=2,
        node=9, identity=sybil.public, length=3000, digest=digest, tags=tags,
    )  # fmt: skip
    forged = request(
        CkksStage.DECRYPT,
        **{k: v for k, v in content.config_records["secure"].items() if k != "stage"},
        **{k: blob_bytes(v) for k, v in blobs.items() if k not in ("id-9", "sig-9")},
        **{"id-9": sybil.public, "sig-9": sybil.sign(signed)},
    )
    _refused(two.decrypt(forged), "does not hold this key")
    # The honest request of a fresh round is still decrypted.
    three = Round(fed, 3)
    reply = three.decrypt(three.request())
    assert not reply.has_error()
    vector = reply.content.array_records[SECURE_BLOBS]["sum"].numpy()
    assert np.abs(vector - fed.expected(NODES)).max() <= fed.server.parameters.error_bound(3)


def test_a_holder_whose_key_changed_is_refused_loudly_and_the_others_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Run 2: hospital-3 comes back with a new identity key (its identity folder was lost).
    fed = _second_run(tmp_path)
    fed.grid.contexts[3].node_config["identity-dir"] = str(tmp_path / "holder-3-new")
    with caplog.at_level(logging.ERROR):
        records = fed.setup(NODES)
    assert sorted(records) == [1, 2]  # never sealed to the changed key
    assert "'hospital-3' presented identity" in caplog.text
