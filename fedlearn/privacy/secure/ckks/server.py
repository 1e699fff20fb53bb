"""The aggregator's side of CKKS mode: ceremony relay, ciphertext checks, sum, decryption request.

The server never holds a secret key: it relays registrations, sealed
envelopes and signed grants during the key ceremony (:meth:`CkksServer.setup`),
checks and adds the contributors' ciphertexts, and asks the key's custodian to
decrypt the sum (:meth:`CkksServer.aggregate`), passing along each
contributor's signed contribution and MAC tags so the custodian can check the
sum itself. Nothing the server says is believed by a holder without a check of
its own; see :mod:`fedlearn.privacy.secure.ckks` for the threat model.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from flwr.app import Array, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from numpy.typing import NDArray

from fedlearn.config import SecureMode
from fedlearn.privacy.secure.base import (
    AggregationAbortedError,
    SecureSum,
    ServerProtocol,
    request,
)
from fedlearn.privacy.secure.ckks.parameters import (
    CkksParameters,
    parameters_and_min_contributors,
)
from fedlearn.privacy.secure.ckks.primitives import CkksRing, load_public_context
from fedlearn.privacy.secure.ckks.statements import Registration, ciphertexts_digest
from fedlearn.privacy.secure.ckks.summac import LANES
from fedlearn.privacy.secure.identity import (
    IDENTITY_BYTES,
    SIGNATURE_BYTES,
    IdentityError,
    fingerprint,
)
from fedlearn.privacy.secure.stages import (
    StageFields,
    check_node_ids,
    exchange,
    read_answers,
    read_blob,
    read_fields,
    read_protected_reply,
    read_str,
)
from fedlearn.wire import SECURE_RECORD, CkksStage

__all__ = ["CkksServer"]

log = logging.getLogger(__name__)


@dataclass
class _KeyState:
    """The server's view of the current CKKS key (no secret in it)."""

    ceremony_id: str
    fingerprint: str
    public_context: Any
    custodian: Registration
    holders: list[int] = field(default_factory=list)
    decryptions: int = 0


@dataclass
class _Loaded:
    """A checked train reply: its ciphertexts and what the custodian needs to verify it."""

    msg: Message
    ciphertexts: list[Any]
    identity: bytes
    signature: bytes
    tags: bytes
    digest: bytes


class CkksServer(ServerProtocol):
    """The aggregator's side of CKKS mode: relays the key ceremony, adds ciphertexts.

    Parameters
    ----------
    parameters : CkksParameters, optional
        Must equal the clients' parameters (default ``CkksParameters()``).
    min_contributors : int, default 2
        Fewest valid replies a round needs; with fewer the round is aborted
        before anything is decrypted (the custodian applies its own floor too).
    registered : mapping, optional
        The operator's registration list: holder name -> identity fingerprint
        (as :func:`~fedlearn.privacy.secure.identity.fingerprint` prints it) or
        identity public key (hex). Registrations of other identities are left
        out of every ceremony. Without it, every holder whose registration is
        self-signed takes part (holders then pin identities on first use).

    Examples
    --------
    >>> server = CkksServer(min_contributors=3)
    >>> records = server.setup(grid, server_round=1, node_ids=nodes, timeout=30)  # doctest: +SKIP
    >>> total = server.aggregate(grid, server_round=1, replies=replies, length=n, timeout=30)
    ... # doctest: +SKIP
    """

    mode: ClassVar[SecureMode] = "ckks"

    def __init__(
        self,
        *,
        parameters: CkksParameters | None = None,
        min_contributors: int = 2,
        registered: Mapping[str, str] | None = None,
    ) -> None:
        self._params, self._min_contributors = parameters_and_min_contributors(
            parameters, min_contributors
        )
        self._registered = dict(registered) if registered is not None else None
        self._ring = CkksRing(self._params)
        self._key: _KeyState | None = None
        self._loaded: dict[int, _Loaded] = {}
        self._round = 0

    @property
    def parameters(self) -> CkksParameters:
        """The CKKS parameters."""
        return self._params

    @property
    def public_context(self) -> Any:
        """The TenSEAL context the server holds (no secret key), or None before the ceremony."""
        return None if self._key is None else self._key.public_context

    @property
    def key_holders(self) -> tuple[int, ...]:
        """Nodes known to hold the current key."""
        return () if self._key is None else tuple(self._key.holders)

    @property
    def custodian(self) -> int | None:
        """The node that dealt the current key and alone decrypts under it."""
        return None if self._key is None else self._key.custodian.node

    @property
    def fingerprint(self) -> str | None:
        """Fingerprint of the current key (see :func:`key_fingerprint`)."""
        return None if self._key is None else self._key.fingerprint

    # -- setup -----------------------------------------------------------------------

    def setup(
        self, grid: Grid, *, server_round: int, node_ids: Sequence[int], timeout: float
    ) -> dict[int, RecordDict]:
        """Give the key to sampled nodes that lack it; train records for nodes that hold it.

        Runs the key ceremony on first use, again when the custodian cannot
        reshare to newcomers, and before the key's decryption budget runs out.
        Nodes failing a stage are left out of the round.
        """
        nodes = check_node_ids(node_ids)
        self._loaded.clear()  # ciphertexts checked in an earlier round
        self._round = server_round
        if not math.isfinite(timeout) or timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if len(nodes) > self._params.max_clients:
            raise ValueError(
                f"{len(nodes)} nodes sampled but a CKKS sum of more than "
                f"{self._params.max_clients} vectors with entries up to "
                f"{self._params.max_abs_value} can overflow: sample fewer nodes or lower "
                "CkksParameters.scale_bits / max_abs_value"
            )
        kw: dict[str, Any] = {"grid": grid, "server_round": server_round, "timeout": timeout}
        if self._key is not None and self._key.decryptions >= self._params.max_decryptions // 2:
            # Re-key in time: the custodian refuses past the budget its flooding is sized for.
            log.info("CKKS: key %s used for half its budget, new ceremony", self._key.fingerprint)
            self._key = None
        if self._key is None:
            self._ceremony(nodes, **kw)
        else:
            newcomers = [n for n in nodes if n not in self._key.holders]
            if newcomers and not self._reshare(newcomers, **kw):
                # The custodian did not answer: retire the key, make a fresh one.
                self._key = None
                self._ceremony(nodes, **kw)
        if self._key is None:
            return {}
        key = self._key
        train: dict[str, str | int] = {
            "stage": CkksStage.TRAIN,
            "ceremony-id": key.ceremony_id,
            "fingerprint": key.fingerprint,
            "round": server_round,
        }
        return {
            n: RecordDict({SECURE_RECORD: ConfigRecord(dict(train))})
            for n in nodes
            if n in key.holders
        }

    def _register(
        self, nodes: list[int], ceremony_id: str, *, grid: Grid, **kw: Any
    ) -> dict[int, Registration]:
        """Self-signed registrations of ``nodes`` (and on the operator's list, if any)."""
        replies = exchange(
            grid,
            {n: request(CkksStage.REGISTER, **{"ceremony-id": ceremony_id}) for n in nodes},
            **kw,
        )
        run_id = _run_id(grid)
        out: dict[int, Registration] = {}
        for node, (config, blobs) in read_answers(replies, CkksStage.REGISTER).items():
            with contextlib.suppress(ValueError):
                registration = Registration(
                    node=node,
                    name=read_str(config, "name"),
                    identity=read_blob(blobs, "identity"),
                    public_key=read_blob(blobs, "public-key"),
                    signature=read_blob(blobs, "signature"),
                )
                if run_id is not None:
                    registration.verify(run_id=run_id, ceremony_id=ceremony_id)
                if len(registration.signature) != SIGNATURE_BYTES:
                    raise IdentityError("malformed registration signature")
                if not self._on_the_list(registration):
                    log.warning(
                        "CKKS: node %d registers as %r %s, which is not on the operator's "
                        "registration list: left out",
                        node,
                        registration.name,
                        fingerprint(registration.identity),
                    )
                    continue
                out[node] = registration
        names = [r.name for r in out.values()]
        keys = [r.identity for r in out.values()]
        for node in sorted(out):  # one name, one identity: duplicates sit the ceremony out
            if names.count(out[node].name) > 1 or keys.count(out[node].identity) > 1:
                del out[node]
        for registration in out.values():
            log.info(
                "CKKS ceremony %s: node %d registered as %r %s",
                ceremony_id,
                registration.node,
                registration.name,
                fingerprint(registration.identity),
            )
        return out

    def _on_the_list(self, registration: Registration) -> bool:
        if self._registered is None:
            return True
        expected = self._registered.get(registration.name)
        return expected is not None and expected in (
            fingerprint(registration.identity),
            registration.identity.hex(),
        )

    @staticmethod
    def _sharing_request(
        stage: str, ceremony_id: str, recipients: list[Registration]
    ) -> RecordDict:
        blobs: dict[str, bytes] = {}
        for registration in recipients:
            blobs.update(registration.blobs())
        return request(
            stage,
            **{
                "ceremony-id": ceremony_id,
                "recipients": [r.node for r in recipients],
                "names": [r.name for r in recipients],
            },
            **blobs,
        )

    @staticmethod
    def _envelopes(
        fields: StageFields, recipients: list[Registration]
    ) -> tuple[dict[int, tuple[bytes, bytes]], list[str], bytes]:
        """Each recipient's envelope and grant, and the member list the grants cover."""
        names = fields.config.get("member-names")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("the reply lists no member names")
        refused = fields.config.get("refused", [])
        for node in refused if isinstance(refused, list) else []:
            log.error("CKKS: the dealer refused to seal the key to node %s (see its log)", node)
        envelopes = {
            r.node: (
                read_blob(fields.blobs, f"env-{r.node}"),
                read_blob(fields.blobs, f"grant-{r.node}"),
            )
            for r in recipients
            if f"env-{r.node}" in fields.blobs
        }
        return envelopes, [str(n) for n in names], read_blob(fields.blobs, "members")

    def _ceremony(self, nodes: list[int], *, grid: Grid, **kw: Any) -> None:
        ceremony_id = secrets.token_hex(16)
        registrations = self._register(nodes, ceremony_id, grid=grid, **kw)
        for dealer in sorted(registrations):
            recipients = [registrations[n] for n in sorted(registrations) if n != dealer]
            content = self._sharing_request(CkksStage.DEAL, ceremony_id, recipients)
            reply = exchange(grid, {dealer: content}, **kw).get(dealer)
            if reply is None:
                continue
            try:
                fields = read_fields(reply, CkksStage.DEAL)
                fingerprint_ = read_str(fields.config, "fingerprint")
                public = load_public_context(
                    read_blob(fields.blobs, "public-context"), self._params
                )
                sealed = self._envelopes(fields, recipients)
            except ValueError:
                continue
            self._key = _KeyState(ceremony_id, fingerprint_, public, registrations[dealer])
            self._key.holders.append(dealer)
            self._distribute(*sealed, grid=grid, **kw)
            return

    def _reshare(self, newcomers: list[int], *, grid: Grid, **kw: Any) -> bool:
        assert self._key is not None
        key = self._key
        registrations = self._register(newcomers, key.ceremony_id, grid=grid, **kw)
        recipients = [
            registrations[n]
            for n in sorted(registrations)
            if registrations[n].identity != key.custodian.identity
        ]
        if not recipients:
            return True  # nobody to give the key to; the current holders still train
        content = self._sharing_request(CkksStage.RESHARE, key.ceremony_id, recipients)
        node = key.custodian.node
        reply = exchange(grid, {node: content}, **kw).get(node)
        if reply is None:
            return False
        try:
            fields = read_fields(reply, CkksStage.RESHARE)
            if read_str(fields.config, "fingerprint") != key.fingerprint:
                raise ValueError("the custodian reports another key")
            sealed = self._envelopes(fields, recipients)
        except ValueError:
            return False
        self._distribute(*sealed, grid=grid, **kw)
        return True

    def _distribute(
        self,
        envelopes: dict[int, tuple[bytes, bytes]],
        names: list[str],
        members: bytes,
        *,
        grid: Grid,
        **kw: Any,
    ) -> None:
        assert self._key is not None
        key = self._key
        contents = {
            node: request(
                CkksStage.KEY,
                **{
                    "ceremony-id": key.ceremony_id,
                    "fingerprint": key.fingerprint,
                    "dealer-name": key.custodian.name,
                    "member-names": names,
                },
                members=members,
                envelope=envelope,
                grant=grant,
                dealer=key.custodian.identity,
            )
            for node, (envelope, grant) in envelopes.items()
        }
        answers = read_answers(exchange(grid, contents, **kw), CkksStage.KEY)
        for node, (config, _) in answers.items():
            with contextlib.suppress(ValueError):
                if read_str(config, "fingerprint") == key.fingerprint and node not in key.holders:
                    key.holders.append(node)

    # -- replies and aggregation -------------------------------------------------------

    def check_reply(self, msg: Message, *, length: int) -> str | None:
        """Why a protected train reply is unusable (``None`` if it is well formed).

        Checks the chunk count for ``length``, the key fingerprint, the signed
        contribution's shape (identity, signature, MAC tags), and that each chunk
        deserializes under the server's parameters as a fresh two-part
        ciphertext at the expected scale (catches garbage, truncation, other
        parameters and other keys' tags). Whether the signature and tags are
        right is the custodian's check: a reply that fails it makes the
        custodian refuse the round's sum.
        """
        try:
            # Kept for aggregate(): loading 100k parameters' ciphertexts twice cost ~20%.
            self._loaded[id(msg)] = self._contribution(msg, length=length)
        except ValueError as exc:
            return str(exc)
        return None

    def _contribution(self, msg: Message, *, length: int) -> _Loaded:
        count = self._params.ciphertext_count(length)
        if self._key is None:
            raise ValueError("no CKKS key has been set up")
        blobs = read_protected_reply(msg)
        signed = {"key", "tags", "identity", "signature"}
        expected = {f"ct-{i}" for i in range(count)} | signed
        if set(blobs) != expected:
            found = sorted(k for k in blobs if k not in signed)
            raise ValueError(
                f"expected {count} ciphertext chunks ct-0..ct-{count - 1}, 'key', 'tags', "
                f"'identity' and 'signature' for length {length}, got {found}"
            )
        if read_blob(blobs, "key").hex() != self._key.fingerprint:
            raise ValueError("encrypted under another key (fingerprint differs)")
        identity, signature = read_blob(blobs, "identity"), read_blob(blobs, "signature")
        tags = read_blob(blobs, "tags")
        primes = len(self._params.primes) - 1
        if (
            len(identity) != IDENTITY_BYTES
            or len(signature) != SIGNATURE_BYTES
            or len(tags) != count * primes * LANES * 8
        ):
            raise ValueError("malformed signed contribution (identity, signature or MAC tags)")
        chunks, out = [], []
        for i in range(count):
            data = read_blob(blobs, f"ct-{i}")
            try:
                out.append(self._ring.load(data))
            except ValueError as exc:
                raise ValueError(f"ct-{i}: {exc}") from exc
            chunks.append(data)
        return _Loaded(msg, out, identity, signature, tags, ciphertexts_digest(chunks))

    def aggregate(
        self,
        grid: Grid,
        *,
        server_round: int,
        replies: Sequence[Message],
        length: int,
        timeout: float,
    ) -> SecureSum:
        """Add the valid replies' ciphertexts and have the key's custodian decrypt the sum.

        The request carries the sum and each contributor's signed contribution
        (identity, signature, MAC tags, digest of its ciphertexts): the
        custodian decrypts only if they check out. :class:`AggregationAbortedError`
        if fewer than ``min_contributors`` replies are valid or the custodian does
        not decrypt; the key is then retired (a new ceremony next round).
        """
        self._params.ciphertext_count(length)
        loaded: dict[int, _Loaded] = {}
        dropped: dict[int, str] = {}
        for msg in replies:
            node = msg.metadata.src_node_id
            if node in loaded:
                dropped[node] = "more than one reply from this node"
                continue
            try:
                kept = self._loaded.pop(id(msg), None)
                loaded[node] = (
                    kept
                    if kept is not None and kept.msg is msg
                    else self._contribution(msg, length=length)
                )
            except ValueError as exc:
                dropped[node] = str(exc)
        for node in sorted(loaded):  # one identity, one contribution
            others = [n for n in loaded if n < node and loaded[n].identity == loaded[node].identity]
            if others:
                dropped[node] = f"same identity as node {others[0]}"
                del loaded[node]
        contributors = sorted(loaded)
        if len(contributors) < self._min_contributors:
            raise AggregationAbortedError(
                f"{len(contributors)} valid CKKS replies, at least {self._min_contributors} "
                f"needed (dropped: {dropped})"
            )
        assert self._key is not None
        key = self._key
        totals = [
            self._ring.add([loaded[n].ciphertexts[i] for n in contributors])
            for i in range(len(loaded[contributors[0]].ciphertexts))
        ]
        blobs: dict[str, bytes] = {f"sum-{i}": self._ring.dump(ct) for i, ct in enumerate(totals)}
        for node in contributors:
            item = loaded[node]
            blobs |= {
                f"id-{node}": item.identity,
                f"sig-{node}": item.signature,
                f"tags-{node}": item.tags,
                f"digest-{node}": item.digest,
            }
        content = request(
            CkksStage.DECRYPT,
            **{
                "ceremony-id": key.ceremony_id,
                "fingerprint": key.fingerprint,
                "round": server_round,
                "length": length,
                "contributors": contributors,
            },
            **blobs,
        )
        custodian = key.custodian.node
        key.decryptions += len(totals)
        reply = exchange(
            grid, {custodian: content}, server_round=server_round, timeout=timeout
        ).get(custodian)
        try:
            if reply is None:
                raise ValueError("no reply")
            vector = _decrypted(reply, length)
        except ValueError as exc:
            self._key = None  # a new ceremony (a new custodian) next round
            raise AggregationAbortedError(
                f"the key's custodian (node {custodian}) did not decrypt the CKKS sum: {exc}"
            ) from None
        return SecureSum(vector=vector, contributors=tuple(contributors), dropped=dropped)


def _run_id(grid: Grid) -> int | None:
    """The run id holders sign for, if the grid knows its run."""
    with contextlib.suppress(AttributeError, RuntimeError, ValueError):
        run_id = grid.run.run_id
        if isinstance(run_id, int):
            return run_id
    return None


def _decrypted(reply: Message, length: int) -> NDArray[np.float64]:
    _, blobs = read_fields(reply, CkksStage.DECRYPT)
    if "sum" not in blobs:
        raise ValueError("decryption reply has no 'sum'")
    array = blobs["sum"]
    if not isinstance(array, Array) or array.dtype != "float64" or list(array.shape) != [length]:
        raise ValueError(f"decryption reply 'sum' is not a float64 vector of length {length}")
    vector = np.asarray(array.numpy(), dtype=np.float64)
    if not np.all(np.isfinite(vector)):
        raise ValueError("decryption reply 'sum' has non-finite entries")
    return vector[:length].copy()
