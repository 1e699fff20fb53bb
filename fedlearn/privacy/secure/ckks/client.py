"""A data holder's side of CKKS mode: the authenticated key ceremony, encryption, decryption.

Every request is untrusted: the holder checks each stage against what it can
verify itself (signatures by identities it has pinned, its own state, its own
floor) and refuses with an error reply naming the rule otherwise. Stage by
stage (see :mod:`fedlearn.privacy.secure.ckks`):

``ckks-register``
    make an X25519 key pair for the ceremony; reply it with the holder's name
    and identity, signed by the identity.
``ckks-deal``
    check every listed recipient's signed registration (and its identity
    against the pins), make the key, seal it to each recipient and sign a
    grant per envelope. The dealer becomes the key's *custodian*: the only
    holder that reshares or decrypts under it.
``ckks-reshare``
    the custodian seals its key to newly registered holders, as in a deal.
``ckks-key``
    accept a key only in an envelope that opens with this holder's ceremony
    key, under a grant signed by a pinned holder's identity for exactly this
    run, ceremony, recipient and envelope.
``train``
    encrypt, tag each ciphertext's ``c1`` with the sum MAC (:mod:`.summac`)
    and sign the contribution; once per round.
``ckks-decrypt``
    (custodian only) at most once per round, only a vector of the model's
    length, within the key's decryption budget, only if at least this
    holder's floor of distinct key holders signed contributions whose MAC
    tags add up to the ``c1`` of the ciphertext to decrypt; then flood and
    decrypt.

The node's CKKS secrets (its ceremony key while a ceremony runs, then the
serialized secret context) live in one ConfigRecord of ``context.state``; its
identity and pins in :mod:`fedlearn.privacy.secure.identity`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import ClassVar, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from numpy.typing import NDArray

from fedlearn.config import SecureMode
from fedlearn.privacy.secure.base import ClientProtocol, blob, request, stage_of
from fedlearn.privacy.secure.ckks.parameters import (
    CkksParameters,
    parameters_and_min_contributors,
)
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
    pad_id,
    unpack_members,
)
from fedlearn.privacy.secure.ckks.summac import SumMac, tags_from_bytes, tags_to_bytes
from fedlearn.privacy.secure.envelope import generate_keypair, open_envelope, seal
from fedlearn.privacy.secure.identity import (
    HolderIdentity,
    IdentityError,
    IdentityPins,
    fingerprint,
    node_identity,
    save_node_pins,
    verify,
)
from fedlearn.privacy.secure.stages import (
    read_blob,
    read_fields,
    read_int,
    read_node_ids,
    read_str,
    refusal,
)
from fedlearn.wire import SECURE_BLOBS, SECURE_RECORD, CkksStage

__all__ = ["CkksClient"]

log = logging.getLogger(__name__)

#: Where a node keeps its CKKS secrets in ``context.state`` (a ConfigRecord).
_STATE = "fedlearn.secure.ckks"
#: Node-config key raising the holder's floor of contributors in a sum it decrypts.
_FLOOR_KEY = "min-contributors"
#: The smallest sum any holder decrypts, whatever it is configured with.
_ABSOLUTE_FLOOR = 2


class CkksClient(ClientProtocol):
    """A data holder's side of CKKS mode: key ceremony, encryption, decryption of sums.

    Parameters
    ----------
    parameters : CkksParameters, optional
        Must equal the server's (default ``CkksParameters()``); a key made
        under other parameters is refused.
    min_contributors : int, default 2
        The holder's floor: as the key's decryptor it refuses a sum of fewer
        distinct key holders' signed contributions. At least 2; the node config
        ``min-contributors`` can raise it, nothing the server sends lowers it.

    Examples
    --------
    >>> client = CkksClient(min_contributors=3)
    >>> reply = client.handle_query(msg, context)  # doctest: +SKIP
    >>> blobs = client.protect(vector, train_msg, context)  # doctest: +SKIP
    """

    mode: ClassVar[SecureMode] = "ckks"

    def __init__(
        self, *, parameters: CkksParameters | None = None, min_contributors: int = 2
    ) -> None:
        self._params, floor = parameters_and_min_contributors(parameters, min_contributors)
        if floor < _ABSOLUTE_FLOOR:
            raise ValueError(
                f"min_contributors must be >= {_ABSOLUTE_FLOOR} for a data holder: a "
                f"decrypted 'sum' of one contribution is that holder's update, got {floor}"
            )
        self._min_contributors = floor

    def handle_query(self, msg: Message, context: Context) -> Message:
        """Answer a CKKS stage request; refusals are error replies naming the rule."""
        handlers: dict[str, Callable[[Message, Context], RecordDict]] = {
            CkksStage.REGISTER: self._register,
            CkksStage.DEAL: self._deal,
            CkksStage.RESHARE: self._reshare,
            CkksStage.KEY: self._receive_key,
            CkksStage.DECRYPT: self._decrypt,
        }
        try:
            stage = stage_of(msg)
            if stage not in handlers:
                raise ValueError(f"unknown CKKS stage {stage!r}")
            content = handlers[stage](msg, context)
        except (ValueError, RuntimeError, TypeError) as exc:
            return refusal(msg, f"CKKS: {exc}")
        return Message(content, reply_to=msg)

    # -- node state ----------------------------------------------------------------------

    @staticmethod
    def _state(context: Context) -> ConfigRecord:
        if _STATE not in context.state.config_records:
            context.state[_STATE] = ConfigRecord()
        return context.state.config_records[_STATE]

    def _held_key(self, context: Context) -> tuple[str, str, bytes]:
        state = self._state(context)
        secret = state.get("secret-context")
        if not isinstance(secret, bytes):
            raise ValueError("this node holds no CKKS key")
        return str(state["ceremony-id"]), str(state["fingerprint"]), secret

    def _floor(self, context: Context) -> int:
        configured = context.node_config.get(_FLOOR_KEY)
        numeric = isinstance(configured, int) and not isinstance(configured, bool)
        extra = int(cast(int, configured)) if numeric else 0
        return max(_ABSOLUTE_FLOOR, self._min_contributors, extra)

    def _ring(self, secret: bytes) -> tuple[CkksRing, SumMac]:
        ring = CkksRing(self._params, secret_context=secret)
        mac = SumMac(
            secret,
            primes=self._params.primes[:-1],
            degree=self._params.poly_modulus_degree,
        )
        return ring, mac

    # -- the key ceremony ------------------------------------------------------------------

    def _register(self, msg: Message, context: Context) -> RecordDict:
        config, _ = read_fields(msg, CkksStage.REGISTER)
        ceremony_id = read_str(config, "ceremony-id")
        identity, pins = node_identity(context)
        pins.check(identity.name, identity.public)  # this holder's own name, own key
        save_node_pins(context, pins)
        private, public = generate_keypair()
        registration = Registration(
            node=context.node_id,
            name=identity.name,
            identity=identity.public,
            public_key=public,
            signature=b"",
        )
        signature = identity.sign(
            registration.statement(run_id=context.run_id, ceremony_id=ceremony_id)
        )
        state = self._state(context)
        state["x25519-private"] = private
        state["x25519-public"] = public.hex()
        state["registered-for"] = ceremony_id
        # Printed where a real holder sees it: the fingerprint the operator's list must show.
        log.log(
            logging.WARNING if pins.path is not None else logging.DEBUG,
            "CKKS: this holder is %r with identity %s (key ceremony %s)",
            identity.name,
            identity.fingerprint,
            ceremony_id,
        )
        return request(
            CkksStage.REGISTER,
            name=identity.name,
            **{"public-key": public, "identity": identity.public, "signature": signature},
        )

    def _recipients(
        self,
        config: ConfigRecord,
        blobs: ArrayRecord,
        context: Context,
        *,
        ceremony_id: str,
        identity: HolderIdentity,
        pins: IdentityPins,
    ) -> tuple[list[Registration], list[int]]:
        """The recipients to seal to, and the listed nodes refused.

        A recipient whose registration is not self-signed for this run and
        ceremony, or whose identity the pins refuse (a known name with another
        key, a new holder outside trust on first use), never gets the key; the
        others do. The refusal is logged at ERROR and named in the reply.
        """
        nodes = read_node_ids(config, "recipients")
        names = config.get("names")
        if not isinstance(names, list) or len(names) != len(nodes):
            raise ValueError("field 'names' must list one holder name per recipient")
        recipients = []
        for node, name in zip(nodes, names, strict=True):
            if not isinstance(name, str) or not name:
                raise ValueError(f"recipient {node}: holder names are non-empty strings")
            registration = Registration.read(blobs, node=node, name=name)
            if node == context.node_id or registration.identity == identity.public:
                raise ValueError("asked to seal the key to this node itself")
            recipients.append(registration)
        if len({r.identity for r in recipients}) != len(recipients):
            raise IdentityError("one identity is listed as several recipients")
        if len({r.name for r in recipients}) != len(recipients):
            raise IdentityError("one holder name is listed for several recipients")
        accepted, refused = [], []
        for registration in recipients:
            try:
                registration.verify(run_id=context.run_id, ceremony_id=ceremony_id)
                pins.check(registration.name, registration.identity)
            except IdentityError as exc:
                log.error("CKKS: the key is not sealed to node %d: %s", registration.node, exc)
                refused.append(registration.node)
                continue
            accepted.append(registration)
        return accepted, refused

    def _seal_and_grant(
        self,
        context: Context,
        *,
        ceremony_id: str,
        fingerprint_: str,
        secret: bytes,
        identity: HolderIdentity,
        recipients: list[Registration],
        members: dict[bytes, str],
    ) -> dict[str, bytes]:
        """Envelopes and grants for ``recipients``, and the member list the grants cover."""
        out = {"members": pack_members(members)[1]}
        for recipient in recipients:
            label = envelope_label(
                run_id=context.run_id,
                ceremony_id=ceremony_id,
                node_id=recipient.node,
                recipient=recipient.identity,
                dealer=identity.public,
            )
            envelope = seal(recipient.public_key, secret, label=label)
            grant = grant_statement(
                run_id=context.run_id,
                ceremony_id=ceremony_id,
                fingerprint=fingerprint_,
                dealer_name=identity.name,
                dealer=identity.public,
                recipient=recipient,
                envelope=envelope,
                members=members,
            )
            out[f"env-{recipient.node}"] = envelope
            out[f"grant-{recipient.node}"] = identity.sign(grant)
        return out

    def _share(
        self,
        msg: Message,
        context: Context,
        *,
        ceremony_id: str,
        key: tuple[str, bytes],
        members: dict[bytes, str],
        **fields: bytes,
    ) -> tuple[RecordDict, dict[bytes, str]]:
        """Seal ``key`` (fingerprint, secret) to the verified recipients: the reply, the members."""
        config, blobs = read_fields(msg, stage_of(msg))
        fingerprint_, secret = key
        identity, pins = node_identity(context)
        recipients, refused = self._recipients(
            config, blobs, context, ceremony_id=ceremony_id, identity=identity, pins=pins
        )
        members = dict(members)
        for registration in recipients:
            if members.get(registration.identity, registration.name) != registration.name:
                raise IdentityError(f"{registration.name!r} is a member under another name")
            members[registration.identity] = registration.name
        envelopes = self._seal_and_grant(
            context,
            ceremony_id=ceremony_id,
            fingerprint_=fingerprint_,
            secret=secret,
            identity=identity,
            recipients=recipients,
            members=members,
        )
        save_node_pins(context, pins)
        log.info(
            "CKKS: key %s of ceremony %s sealed to %s",
            fingerprint_[:16],
            ceremony_id,
            ", ".join(f"{r.name!r} {fingerprint(r.identity)}" for r in recipients) or "nobody",
        )
        reply = request(
            stage_of(msg),
            fingerprint=fingerprint_,
            refused=refused,
            **{"member-names": pack_members(members)[0]},
            **fields,
            **envelopes,
        )
        return reply, members

    def _deal(self, msg: Message, context: Context) -> RecordDict:
        config, _ = read_fields(msg, CkksStage.DEAL)
        ceremony_id = read_str(config, "ceremony-id")
        if self._state(context).get("registered-for") != ceremony_id:
            raise ValueError(f"this node did not register for ceremony {ceremony_id}")
        identity, _ = node_identity(context)
        secret, public_context = new_secret_context(self._params)
        fingerprint_ = key_fingerprint(secret)
        reply, members = self._share(
            msg,
            context,
            ceremony_id=ceremony_id,
            key=(fingerprint_, secret),
            members={identity.public: identity.name},
            **{"public-context": public_context},
        )
        self._keep(
            context,
            ceremony_id=ceremony_id,
            fingerprint_=fingerprint_,
            secret=secret,
            custodian=identity.public,
            custodian_name=identity.name,
        )
        state = self._state(context)
        state["members"] = json.dumps({k.hex(): n for k, n in members.items()})
        state["last-decrypted-round"] = -1
        state["decrypted"] = 0
        return reply

    def _custodian(self, context: Context, ceremony_id: str) -> tuple[str, bytes, ConfigRecord]:
        held_ceremony, fingerprint_, secret = self._held_key(context)
        if ceremony_id != held_ceremony:
            raise ValueError(f"this node holds the key of ceremony {held_ceremony}, not that one")
        state = self._state(context)
        if not bool(state.get("custodian-self", False)):
            raise ValueError(
                "this node is not the custodian of its key (only the holder that dealt a key "
                "reshares or decrypts under it)"
            )
        return fingerprint_, secret, state

    def _reshare(self, msg: Message, context: Context) -> RecordDict:
        config, _ = read_fields(msg, CkksStage.RESHARE)
        ceremony_id = read_str(config, "ceremony-id")
        fingerprint_, secret, state = self._custodian(context, ceremony_id)
        current = {bytes.fromhex(k): n for k, n in json.loads(str(state["members"])).items()}
        reply, members = self._share(
            msg, context, ceremony_id=ceremony_id, key=(fingerprint_, secret), members=current
        )
        state["members"] = json.dumps({k.hex(): n for k, n in members.items()})
        return reply

    def _receive_key(self, msg: Message, context: Context) -> RecordDict:
        config, blobs = read_fields(msg, CkksStage.KEY)
        ceremony_id = read_str(config, "ceremony-id")
        expected = read_str(config, "fingerprint")
        dealer_name = read_str(config, "dealer-name")
        state = self._state(context)
        private, public = state.get("x25519-private"), state.get("x25519-public")
        if state.get("registered-for") != ceremony_id or not isinstance(private, bytes):
            raise ValueError(f"this node did not register for ceremony {ceremony_id}")
        identity, pins = node_identity(context)
        dealer = read_blob(blobs, "dealer")
        envelope = read_blob(blobs, "envelope")
        if dealer == identity.public:
            raise IdentityError("the key claims to be dealt by this holder's own identity")
        members = unpack_members(config.get("member-names"), read_blob(blobs, "members"))
        if members.get(dealer) != dealer_name or members.get(identity.public) != identity.name:
            raise IdentityError("the key's member list must name its dealer and this holder")
        me = Registration(
            node=context.node_id,
            name=identity.name,
            identity=identity.public,
            public_key=bytes.fromhex(str(public)),
            signature=b"",
        )
        grant = grant_statement(
            run_id=context.run_id,
            ceremony_id=ceremony_id,
            fingerprint=expected,
            dealer_name=dealer_name,
            dealer=dealer,
            recipient=me,
            envelope=envelope,
            members=members,
        )
        try:
            verify(dealer, grant, read_blob(blobs, "grant"))
        except IdentityError:
            raise IdentityError(
                "the key is not granted to this holder by the identity that claims to deal "
                "it (no valid dealer signature over this run, ceremony, recipient and envelope)"
            ) from None
        # The dealer, and everyone the key is shared with, must be holders this node believes.
        for member, name in members.items():
            pins.check(name, member)
        label = envelope_label(
            run_id=context.run_id,
            ceremony_id=ceremony_id,
            node_id=context.node_id,
            recipient=identity.public,
            dealer=dealer,
        )
        # EnvelopeError is a ValueError: the reply names why the envelope does not open.
        secret = open_envelope(private, envelope, label=label)
        CkksRing(self._params, secret_context=secret)  # parameters and key load, or ValueError
        fingerprint_ = key_fingerprint(secret)
        if fingerprint_ != expected:
            raise ValueError("the key in the envelope does not match the granted fingerprint")
        self._keep(
            context,
            ceremony_id=ceremony_id,
            fingerprint_=fingerprint_,
            secret=secret,
            custodian=dealer,
            custodian_name=dealer_name,
        )
        save_node_pins(context, pins)
        log.info(
            "CKKS: holder %r accepted key %s of ceremony %s from custodian %r %s",
            identity.name,
            fingerprint_[:16],
            ceremony_id,
            dealer_name,
            fingerprint(dealer),
        )
        return request(CkksStage.KEY, fingerprint=fingerprint_)

    def _keep(
        self,
        context: Context,
        *,
        ceremony_id: str,
        fingerprint_: str,
        secret: bytes,
        custodian: bytes,
        custodian_name: str,
    ) -> None:
        state = self._state(context)
        for stale in (
            "x25519-private",
            "x25519-public",
            "registered-for",
            "members",
            "last-decrypted-round",
            "decrypted",
        ):
            if stale in state:
                del state[stale]
        identity, _ = node_identity(context)
        state["ceremony-id"] = ceremony_id
        state["fingerprint"] = fingerprint_
        state["secret-context"] = secret
        state["custodian"] = custodian.hex()
        state["custodian-name"] = custodian_name
        state["custodian-self"] = custodian == identity.public

    # -- training ----------------------------------------------------------------------------

    def protect(self, vector: NDArray[np.float64], msg: Message, context: Context) -> ArrayRecord:
        """Encrypt ``vector`` under the key the train message names, tag and sign it.

        Returns the :data:`SECURE_BLOBS` record: ``ct-0 … ct-{k-1}`` (seeded
        symmetric CKKS ciphertexts, N values each), ``key`` (the key's
        fingerprint), ``tags`` (sum-MAC tags of each ``c1``), ``identity`` and
        ``signature`` (the holder's signed contribution). ``ValueError`` if the
        message names another key, the node holds none, it already contributed
        in this round, or the vector is not a finite 1-d vector with entries up
        to ``max_abs_value``.
        """
        config, _ = read_fields(msg, CkksStage.TRAIN)
        ceremony_id, fingerprint_, secret = self._held_key(context)
        if config.get("fingerprint") != fingerprint_ or config.get("ceremony-id") != ceremony_id:
            raise ValueError(
                f"the train message asks for key {config.get('fingerprint')!r}, this node holds "
                f"{fingerprint_!r}: refusing to encrypt"
            )
        server_round = read_int(config, "round", minimum=0)
        run_config = msg.content.config_records.get("config")
        if run_config is not None and run_config.get("server-round", server_round) != server_round:
            raise ValueError("the train message names two different rounds: refused")
        state = self._state(context)
        last = int(cast(int, state.get("last-contributed-round", -1)))
        if server_round <= last:
            raise ValueError(
                f"already contributed for round {last}: one update per round (a second one "
                "would let two sums of a round be differenced)"
            )
        values = np.asarray(vector)
        if values.ndim != 1 or values.size == 0 or not np.issubdtype(values.dtype, np.number):
            raise ValueError(f"expected a non-empty 1-d numeric vector, got shape {values.shape}")
        values = values.astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise ValueError("the vector has non-finite entries")
        largest = float(np.max(np.abs(values)))
        if largest > self._params.max_abs_value:
            raise ValueError(
                f"an entry is larger than max_abs_value = {self._params.max_abs_value}: the "
                "encrypted sum could overflow; clip or rescale the update"
            )
        recorded = state.get("vector-length")
        if isinstance(recorded, int) and recorded != values.size:
            raise ValueError(f"this node's vectors have {recorded} values, not {values.size}")
        identity, _ = node_identity(context)
        ring, mac = self._ring(secret)
        chunks = ring.encrypt(values)
        tags = np.stack(
            [
                mac.tag(
                    ring.c1_residues(ring.load(chunk)),
                    pad_id=pad_id(
                        run_id=context.run_id,
                        ceremony_id=ceremony_id,
                        server_round=server_round,
                        identity=identity.public,
                        chunk=i,
                    ),
                )
                for i, chunk in enumerate(chunks)
            ]
        )
        tag_bytes = tags_to_bytes(tags)
        signature = identity.sign(
            contribution_statement(
                run_id=context.run_id,
                ceremony_id=ceremony_id,
                fingerprint=fingerprint_,
                server_round=server_round,
                node=context.node_id,
                identity=identity.public,
                length=int(values.size),
                digest=ciphertexts_digest(chunks),
                tags=tag_bytes,
            )
        )
        state["last-contributed-round"] = server_round
        state["vector-length"] = int(values.size)
        record = ArrayRecord({f"ct-{i}": blob(ct) for i, ct in enumerate(chunks)})
        record["key"] = blob(bytes.fromhex(fingerprint_))
        record["tags"] = blob(tag_bytes)
        record["identity"] = blob(identity.public)
        record["signature"] = blob(signature)
        return record

    # -- decryption ----------------------------------------------------------------------------

    def _decrypt(self, msg: Message, context: Context) -> RecordDict:
        config, blobs = read_fields(msg, CkksStage.DECRYPT)
        ceremony_id = read_str(config, "ceremony-id")
        fingerprint_, secret, state = self._custodian(context, ceremony_id)
        if read_str(config, "fingerprint") != fingerprint_:
            raise ValueError("the sum is under another key (fingerprint differs)")
        server_round = read_int(config, "round", minimum=0)
        last = int(cast(int, state.get("last-decrypted-round", -1)))
        if server_round <= last:
            raise ValueError(
                f"already decrypted for round {last}: at most one decryption per round, in "
                "increasing rounds"
            )
        length = read_int(config, "length", minimum=1)
        recorded = state.get("vector-length")
        if isinstance(recorded, int) and recorded != length:
            raise ValueError(
                f"only a vector of the model's length ({recorded} values) is decrypted, "
                f"not {length}"
            )
        count = self._params.ciphertext_count(length)
        used = int(cast(int, state.get("decrypted", 0)))
        if used + count > self._params.max_decryptions:
            raise ValueError(
                f"this key's decryption budget ({self._params.max_decryptions} ciphertexts, "
                "the number its noise flooding is sized for) would be exceeded: a new key "
                "ceremony is needed"
            )
        contributors = read_node_ids(config, "contributors")
        floor = self._floor(context)
        if len(contributors) < floor:
            raise ValueError(
                f"refusing to decrypt a sum of {len(contributors)} contributor(s): this holder "
                f"requires at least {floor}"
            )
        expected = {f"sum-{i}" for i in range(count)} | {
            f"{kind}-{n}" for n in contributors for kind in ("id", "sig", "tags", "digest")
        }
        if set(blobs) != expected:
            raise ValueError(
                f"expected the {count} chunks sum-0..sum-{count - 1} and each contributor's "
                "id, sig, tags and digest, nothing else"
            )
        # From here this round is spent, whatever the outcome: one attempt per round.
        state["last-decrypted-round"] = server_round
        members: dict[str, str] = json.loads(str(state["members"]))
        identities, tags = self._verified_contributions(
            blobs,
            context,
            contributors=contributors,
            members=members,
            ceremony_id=ceremony_id,
            fingerprint_=fingerprint_,
            server_round=server_round,
            length=length,
            count=count,
        )
        ring, mac = self._ring(secret)
        sums = [ring.load(read_blob(blobs, f"sum-{i}")) for i in range(count)]
        for i, ct in enumerate(sums):
            pads = [
                pad_id(
                    run_id=context.run_id,
                    ceremony_id=ceremony_id,
                    server_round=server_round,
                    identity=key,
                    chunk=i,
                )
                for key in identities
            ]
            if not mac.check(ring.c1_residues(ct), [t[i] for t in tags], pads):
                message = (
                    f"round {server_round}: the ciphertext to decrypt is not the sum of the "
                    f"{len(contributors)} listed signed contributions (chunk {i}): refused"
                )
                log.error("CKKS: %s", message)
                raise ValueError(message)
        state["decrypted"] = used + count
        per = self._params.values_per_ciphertext
        parts = [
            ring.decrypt_flooded(ct, count=min(per, length - i * per), n_clients=len(contributors))
            for i, ct in enumerate(sums)
        ]
        return RecordDict(
            {
                SECURE_RECORD: ConfigRecord({"stage": CkksStage.DECRYPT}),
                SECURE_BLOBS: ArrayRecord({"sum": Array(np.concatenate(parts))}),
            }
        )

    def _verified_contributions(
        self,
        blobs: ArrayRecord,
        context: Context,
        *,
        contributors: list[int],
        members: dict[str, str],
        ceremony_id: str,
        fingerprint_: str,
        server_round: int,
        length: int,
        count: int,
    ) -> tuple[list[bytes], list[NDArray[np.uint64]]]:
        """Each contributor's identity and tags, once its signed contribution checks out."""
        identities: list[bytes] = []
        tags: list[NDArray[np.uint64]] = []
        primes = len(self._params.primes) - 1
        for node in contributors:
            key = read_blob(blobs, f"id-{node}")
            if key.hex() not in members:
                raise IdentityError(
                    f"node {node}: identity {fingerprint(key) if len(key) == 32 else '?'} does "
                    "not hold this key (only holders the custodian sealed it to contribute)"
                )
            if key in identities:
                raise IdentityError(f"node {node}: holder {members[key.hex()]!r} counted twice")
            digest, tag_bytes = read_blob(blobs, f"digest-{node}"), read_blob(blobs, f"tags-{node}")
            signed = contribution_statement(
                run_id=context.run_id,
                ceremony_id=ceremony_id,
                fingerprint=fingerprint_,
                server_round=server_round,
                node=node,
                identity=key,
                length=length,
                digest=digest,
                tags=tag_bytes,
            )
            try:
                verify(key, signed, read_blob(blobs, f"sig-{node}"))
            except IdentityError:
                raise IdentityError(
                    f"node {node} ({members[key.hex()]!r}): no valid signed contribution for "
                    f"round {server_round} of length {length}"
                ) from None
            identities.append(key)
            tags.append(tags_from_bytes(tag_bytes, chunks=count, primes=primes))
        return identities, tags
