"""The ``crypten`` secure-aggregation mode: additive shares summed by compute parties.

Each client encodes its vector in fixed point (CrypTen's 16 fractional bits,
rounded to nearest; values in the ring of int64 with wrapping arithmetic),
splits it into ``M`` additive shares (``M - 1`` drawn uniformly from
``os.urandom``, the last one making the sum come out right) and seals share
``i`` to compute party ``i``'s X25519 public key, under a label that binds the
run, the round, the client's node id and the party index. The server relays
the envelopes; each party (a separate process, see
:mod:`fedlearn.privacy.secure.crypten_party`) opens its envelopes, adds the
shares, and the parties reveal only the sum through CrypTen
(``MPCTensor.from_shares(...).reveal``).

Contribution scores
-------------------
After the sum ``s`` the parties score every contributor inside MPC (on by
default, ``CryptenServer(score=False)`` turns it off): the sum is revealed
to every party (it is public anyway), each party multiplies its share of
each contributor's vector with a fixed-point encoding ``s~`` of ``s`` (both
without the weight slot) in the ring, and the parties reveal only those
``n`` ring elements, to party 0, which divides them by ``<s, s~>``:
``score_k = <x_k, s~> / <s, s~>`` (in :attr:`SecureSum.scores`, keyed by node
id; they add up to 1). No update is revealed, only one scalar per
contributor, and the server cannot choose the vector the updates are
projected on: each party uses the sum it revealed itself. The parties drop
the shares once scored (or at the next request, if the server does not ask
for scores right after the sum).

* **Precision.** ``s~ = s`` exactly (16 fractional bits, products at scale
  2**32) while ``<s, s> <= 2**20`` (``|s| <= 1024``); for a larger sum ``s~``
  keeps ``p < 16`` fractional bits (rounded to nearest), the most that keep
  ``<S, S~> < 2**52`` (``S``, ``S~``: ``s``, ``s~`` as ring integers), so
  that every product with ``|score_k| <= 2**10`` is exact (see
  :func:`~fedlearn.privacy.secure.crypten_party.score_plan`). The parties
  compute ``<x~_k, s~> / <s, s~>`` exactly up to float64 rounding, ``x~_k``
  being the encoding of ``x_k`` (within ``2**-17`` per value); so with
  ``r_k = <x_k, s> / <s, s>``,
  ``|score_k - r_k| <= (2**-17 |s~|_1 + 2**-(p+1) (|x_k|_1 + |r_k| |s|_1)) / <s, s~>``:
  ``2**-17 |s|_1 / <s, s>`` at ``p = 16``. The scores add up to 1 up to
  float64 rounding.
* **Not scored** (empty scores, a logged reason, the round goes on): a zero
  sum, a sum with ``<s, s> >= 2**36`` (``|s| >= 2**18``: not even integer
  resolution would be exact), products that do not add up to ``<S, S~>`` (a
  wrap), a party that fails or refuses while scoring (for a pool this
  server started, the next :meth:`CryptenServer.setup` replaces broken
  parties).
* **Limits.** A product wraps mod 2**64 only for ``|score_k| > 2**10``,
  which takes contributors whose vectors cancel in the sum; a single wrap is
  detected by the check above, wraps that cancel exactly are not. Such a
  coalition can shift score among its members without any wrap anyway:
  scores measure alignment with the sum, they do not authenticate updates.

Who runs the parties
--------------------
* **Deployment** (``fedlearn server``, any grid but an in-process one): each
  party is run by its own operator, ``fedlearn party`` (its own process, key
  directory and address; :mod:`~fedlearn.privacy.secure.crypten_service`),
  and the run config lists them: ``[secure] crypten-party-endpoints`` and
  ``crypten-party-keys`` (the public keys the parties print at start). The
  server attaches to them (``CryptenServer(endpoints=..., public_keys=...)``),
  refuses a party announcing another key, and never starts parties of its
  own there: :meth:`CryptenServer.setup` refuses them on a deployment's grid.
  Clients then sign every envelope with their identity key
  (:mod:`~fedlearn.privacy.secure.identity`) over (run, round, node, party,
  envelope digest); a party opens only envelopes a holder in its registry
  (``--holders``) signed, one per holder per round.
* **Simulation** (Flower's Simulation Engine, notebooks,
  :class:`~fedlearn.loopback.LoopbackGrid`): without endpoints the server
  starts ``M`` local party processes itself (one operator holds every key:
  fine for measuring and teaching, not a deployment's trust model) and
  clients do not sign.

Trust model
-----------
* **Non-colluding parties.** Any ``M - 1`` shares of a client's vector are
  independent and uniformly distributed over the int64 ring, whatever the
  vector: a party, or any coalition of fewer than ``M`` parties, learns
  nothing about an individual update. Only the sum over the agreed
  contributors is revealed (to party 0, which hands it to the server; to
  every party when scoring) and, when scoring, one score per contributor
  (to party 0, which hands them to the server).
* **The server** is honest-but-curious: it holds the parties' public keys and
  sealed envelopes, never a private key or a share in the clear. It chooses
  the contributor set (one reveal per round, one scoring of the same set
  right after it: then the parties forget the shares), so it could ask for
  the sum of a single client: the parties
  refuse sums of fewer than ``min_contributors`` (default 2). They also
  check among themselves that they reveal the same set for the same round,
  and envelopes cannot be replayed into another run, round, node or party
  (the label binds all four).
* **Collusion.** All ``M`` parties together reconstruct every client's
  update from their shares; with ``M = 2`` that is just two operators
  colluding (or the server plus both parties), so choose ``M`` and the
  operators such that a coalition of all of them is implausible. The server
  plus up to ``M - 1`` parties, following the protocol, learn those parties'
  shares (uniformly random) and the sum, nothing more about one client, as
  long as the sum has another honest contributor. A server that fakes
  clients (Sybils) can still isolate one real client, as in every sum-only
  secure aggregation. Clients take the parties' public
  keys from the server's train message: an *active* server that substituted
  its own keys would read every share, so a deployment that does not trust
  the server to relay keys faithfully must pin them
  (``CryptenClient(party_keys=...)``).
* **CrypTen's model** is semi-honest: parties follow the protocol. Its default
  trusted first party (which deals Beaver triples for multiplications) plays
  no role here: a sum of shares needs no multiplication. A party that
  deviates can withhold the sum (the round aborts) or corrupt it (not
  detected: no MAC on shares), but its view stays uniformly random shares.
* **Clients** are not trusted either: a client that sends an unopenable or
  wrong-length share is left out of the round (every party drops it), but
  a client that shares a wrong vector is not detected here (that is a job
  for robust aggregation and contribution scoring).
* **Range.** Each client's values must satisfy ``|v| <= 2**36``. Shares add
  in the ring of integers mod 2**64 and the sum is decoded as a signed
  int64, so it is right while ``|sum| < 2**47``: always for up to 2**10
  clients. Per value the encoding error is at most 2**-17, so the
  sum of ``n`` clients is within ``n * 2**-17`` of the plaintext sum.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.serverapp import Grid
from numpy.typing import NDArray

from fedlearn.config import SecureMode
from fedlearn.privacy.secure.base import (
    AggregationAbortedError,
    ClientProtocol,
    SecureSum,
    ServerProtocol,
    blob,
    request,
    stage_of,
)
from fedlearn.privacy.secure.crypten_compat import PRECISION_BITS
from fedlearn.privacy.secure.crypten_party import share_label, share_statement
from fedlearn.privacy.secure.crypten_pool import PartyError, PartyPool, check_count, check_seconds
from fedlearn.privacy.secure.envelope import ENVELOPE_OVERHEAD, PUBLIC_KEY_BYTES, seal
from fedlearn.privacy.secure.identity import IDENTITY_BYTES, SIGNATURE_BYTES, node_identity
from fedlearn.privacy.secure.stages import (
    check_node_ids,
    read_blob,
    read_fields,
    read_int,
    read_protected_reply,
    read_str,
    refusal,
)
from fedlearn.wire import CryptenStage

__all__ = ["MAX_ABS", "CryptenClient", "CryptenServer", "PartyPool", "announced_party_keys"]

#: Largest absolute value a client may share (see the module's "Range").
MAX_ABS = float(2**36)
_KEY_BLOB = "party-key-{}"
_SHARE_BLOB = "share-{}"
#: The holder's Ed25519 identity key and its signature on each share envelope.
_HOLDER_BLOB = "holder-key"
_SIGNATURE_BLOB = "share-signature-{}"
#: Scoring may outlast the round's deadline by this much (it takes milliseconds).
_SCORE_GRACE = 10.0
_LOG = logging.getLogger(__name__)


class CryptenServer(ServerProtocol):
    """Aggregator side of the ``crypten`` mode; relays sealed shares to the parties.

    Parameters
    ----------
    parties : int or PartyPool, default 2
        Number of compute parties to start (``>= 2``), or a running
        :class:`PartyPool` to use (not closed by :meth:`close`). Parties this
        server starts itself run only under an in-process grid (Flower's
        Simulation Engine, :class:`~fedlearn.loopback.LoopbackGrid`): their
        keys would all be the server operator's, so :meth:`setup` refuses them
        on any other grid (a deployment); they start at the first use.
    endpoints : sequence of str, optional
        ``HOST:PORT`` of compute parties run by their own operators
        (``fedlearn party``, :mod:`~fedlearn.privacy.secure.crypten_service`):
        the server attaches to them instead of starting parties (``parties``
        is then their number) and sends each the holders' signatures with
        their envelopes.
    public_keys : sequence of bytes, optional
        The X25519 public keys of the parties at ``endpoints`` (as published
        by their operators); a party announcing another key is refused.
    start_timeout : float, default 120.0
        Seconds to wait for started parties to become ready.
    log_dir : str or Path, optional
        Directory for the logs of parties this object starts.
    min_contributors : int, optional
        Smallest sum the parties it starts will reveal (default 2); for a
        given pool it must match the pool's.
    score : bool, default True
        Have the parties compute each contributor's alignment score inside
        MPC after the sum (see the module's "Contribution scores").

    Attributes
    ----------
    last_score_bits : int or None
        Fractional bits of ``s~`` in the last aggregation (``None`` if not scored).
    last_score_seconds : float
        Wall time of the last scoring exchange with the parties.
    last_scoring_error : str
        Why the last aggregation has no scores ("" when it has them, or
        scoring is off).

    Notes
    -----
    If an exchange with the parties fails (a party died or hung), the round
    aborts and, for a pool this server started, the next :meth:`setup` starts
    fresh parties (with new keys). If only scoring fails, the round keeps
    its sum, without scores.

    Examples
    --------
    >>> server = CryptenServer(parties=3)  # doctest: +SKIP
    >>> records = server.setup(grid, server_round=1, node_ids=[1, 2], timeout=30)  # doctest: +SKIP
    >>> server.close()  # doctest: +SKIP
    """

    mode: ClassVar[SecureMode] = "crypten"

    def __init__(
        self,
        *,
        parties: int | PartyPool = 2,
        start_timeout: float = 120.0,
        log_dir: str | Path | None = None,
        min_contributors: int | None = None,
        score: bool = True,
        endpoints: Sequence[str] = (),
        public_keys: Sequence[bytes] = (),
    ) -> None:
        if not isinstance(score, bool):
            raise ValueError(f"score must be a bool, got {score!r}")
        self.score = score
        self.last_score_bits: int | None = None
        self.last_score_seconds = 0.0
        self.last_scoring_error = ""
        self._start_timeout = check_seconds("start_timeout", start_timeout)
        self._log_dir = log_dir
        if min_contributors is not None:
            check_count("min_contributors", min_contributors, 1)
        if isinstance(parties, PartyPool):
            if not parties.healthy():
                raise ValueError(f"the given PartyPool is not usable: {parties.broken}")
            if min_contributors not in (None, parties.min_contributors):
                raise ValueError(
                    f"min_contributors={min_contributors} but the given pool's parties reveal "
                    f"sums of at least {parties.min_contributors}"
                )
            self._given: PartyPool | None = parties
            self._pool: PartyPool | None = parties
            self._count = parties.parties
            self._min_contributors = parties.min_contributors
        else:
            self._given = self._pool = None
            self._count = len(endpoints) if endpoints else check_count("parties", parties, 2)
            self._min_contributors = 2 if min_contributors is None else min_contributors
        self._endpoints = tuple(endpoints)
        self._public_keys = tuple(public_keys)
        if self._endpoints:
            if self._given is not None:
                raise ValueError("give either a PartyPool or endpoints, not both")
            if len(self._public_keys) != len(self._endpoints) or len(self._endpoints) < 2:
                raise ValueError(
                    "endpoints needs >= 2 parties and public_keys one X25519 key per endpoint"
                )
        elif self._public_keys:
            raise ValueError("public_keys are the keys of the parties at endpoints")
        self._closed = False

    @property
    def pool(self) -> PartyPool:
        """The compute parties in use (started or attached at the first use)."""
        if self._pool is None:
            self._ensure_pool()
        assert self._pool is not None
        return self._pool

    @property
    def parties(self) -> int:
        """Number of compute parties ``M``."""
        return self._count

    @property
    def attached(self) -> bool:
        """Whether the parties are run by their own operators (``fedlearn party``)."""
        return bool(self._endpoints) or (self._given is not None and self._given.attached)

    def _ensure_pool(self) -> None:
        if self._closed:
            raise AggregationAbortedError("the CrypTen server was closed")
        if self._pool is not None and self._pool.healthy():
            return
        if self._given is not None:
            reason = self._given.unusable_reason
            raise AggregationAbortedError(f"the CrypTen parties are unusable: {reason}")
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        try:
            self._pool = PartyPool(
                parties=self._count,
                start_timeout=self._start_timeout,
                log_dir=self._log_dir,
                min_contributors=self._min_contributors,
                endpoints=self._endpoints,
                public_keys=self._public_keys,
            )
        except RuntimeError as exc:
            what = "reach" if self._endpoints else "start"
            raise AggregationAbortedError(f"could not {what} the CrypTen parties: {exc}") from exc

    def setup(
        self, grid: Grid, *, server_round: int, node_ids: Sequence[int], timeout: float
    ) -> dict[int, RecordDict]:
        """Give every node the parties' public keys and the round's label fields."""
        check_count("server_round", server_round, 0)
        check_seconds("timeout", timeout)
        nodes = check_node_ids(node_ids)
        if not self.attached and not _in_process(grid):
            raise AggregationAbortedError(
                f"the server starts CrypTen parties itself only in simulation; on "
                f"{type(grid).__name__} (a deployment) list the parties run by their own "
                "operators: [secure] crypten-party-endpoints and crypten-party-keys "
                "(see `fedlearn party`)"
            )
        self._ensure_pool()  # replaces broken parties this server started
        pool = self.pool
        keys = {_KEY_BLOB.format(i): key for i, key in enumerate(pool.public_keys)}
        return {
            node: request(
                CryptenStage.TRAIN,
                run=pool.run,
                round=server_round,
                parties=self.parties,
                # Parties run by their own operators open only holder-signed envelopes;
                # a server that says False gets nothing opened by them.
                signed=self.attached,
                **keys,
            )
            for node in nodes
        }

    def check_reply(self, msg: Message, *, length: int) -> str | None:
        """Why a train reply is unusable: errors, missing/extra/mis-sized envelopes."""
        check_count("length", length, 1)
        try:
            record = read_protected_reply(msg)
        except ValueError as exc:
            return str(exc)
        expected = {_SHARE_BLOB.format(i) for i in range(self.parties)}
        signed = {_HOLDER_BLOB, *(_SIGNATURE_BLOB.format(i) for i in range(self.parties))}
        unknown = sorted(set(record) - expected - signed)
        if unknown:
            return f"shares for unknown parties {unknown} (this run has {self.parties} parties)"
        missing = sorted(expected - set(record))
        if missing:
            return f"missing shares {missing}"
        size = 8 * length + ENVELOPE_OVERHEAD
        for name in sorted(expected):
            try:
                data = read_blob(record, name)
            except ValueError as exc:
                return str(exc)
            if len(data) != size:
                return f"{name} has {len(data)} bytes, expected {size} for {length} values"
        if self.attached:
            # Parties run by their own operators open only holder-signed envelopes.
            missing = sorted(signed - set(record))
            if missing:
                return f"missing the holder's key or signatures {missing}"
            sizes = {_HOLDER_BLOB: IDENTITY_BYTES} | {
                _SIGNATURE_BLOB.format(i): SIGNATURE_BYTES for i in range(self.parties)
            }
            for name, expected_size in sorted(sizes.items()):
                try:
                    data = read_blob(record, name)
                except ValueError as exc:
                    return str(exc)
                if len(data) != expected_size:
                    return f"{name} has {len(data)} bytes, expected {expected_size}"
        return None

    def aggregate(
        self,
        grid: Grid,
        *,
        server_round: int,
        replies: Sequence[Message],
        length: int,
        timeout: float,
    ) -> SecureSum:
        """Have the parties open the replies' shares, agree on contributors, reveal the sum."""
        check_count("server_round", server_round, 0)
        check_count("length", length, 1)
        deadline = time.monotonic() + check_seconds("timeout", timeout)
        self.last_score_bits, self.last_score_seconds, self.last_scoring_error = None, 0.0, ""
        if self._closed:
            raise AggregationAbortedError("the CrypTen server was closed")
        pool = self._pool
        if pool is None or not pool.healthy():
            reason = "not started" if pool is None else pool.unusable_reason
            raise AggregationAbortedError(f"the CrypTen parties are unusable: {reason}")
        signed = self.attached
        dropped: dict[int, str] = {}
        envelopes: dict[int, list[bytes]] = {}
        holders: dict[int, bytes] = {}
        signatures: dict[int, list[bytes]] = {}
        seen: set[int] = set()
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            if node in seen:
                dropped[node] = "sent more than one reply this round"
                envelopes.pop(node, None)
                continue
            seen.add(node)
            problem = self.check_reply(msg, length=length)
            if problem is not None:
                dropped[node] = problem
                continue
            record = read_protected_reply(msg)
            envelopes[node] = [
                read_blob(record, _SHARE_BLOB.format(i)) for i in range(self.parties)
            ]
            if signed:
                holders[node] = read_blob(record, _HOLDER_BLOB)
                signatures[node] = [
                    read_blob(record, _SIGNATURE_BLOB.format(i)) for i in range(self.parties)
                ]
        nodes = sorted(envelopes)
        if not nodes:
            raise AggregationAbortedError(f"no usable reply to aggregate (dropped: {dropped})")
        base = {"round": server_round, "length": length, "nodes": nodes}
        opening: dict[str, Any] = {"type": "open", **base}
        if signed:
            opening["holders"] = [holders[n].hex() for n in nodes]
        try:
            opened = pool.exchange(
                [
                    (
                        opening,
                        [envelopes[n][i] for n in nodes]
                        + ([signatures[n][i] for n in nodes] if signed else []),
                    )
                    for i in range(self.parties)
                ],
                expect=["opened"],
                deadline=deadline,
            )
            for index, (header, _) in enumerate(opened):
                failed = header.get("failed")
                if not isinstance(failed, dict):
                    raise PartyError(f"CrypTen party {index} sent a bad 'opened' answer")
                for node_text, why in failed.items():
                    node = int(node_text)
                    if node not in envelopes:
                        raise PartyError(f"CrypTen party {index} reported unknown node {node}")
                    dropped.setdefault(node, f"party {index} cannot use its share: {why}")
            contributors = [n for n in nodes if n not in dropped]
            if len(contributors) < pool.min_contributors:
                raise AggregationAbortedError(
                    f"{len(contributors)} contributors left after the parties opened the shares, "
                    f"the parties reveal sums of at least {pool.min_contributors} "
                    f"(dropped: {dropped})"
                )
            revealed = pool.exchange(
                [({"type": "reveal", **base, "nodes": contributors, "score": self.score}, [])]
                * self.parties,
                expect=["sum", "revealed"],
                deadline=deadline,
            )
        except PartyError as exc:
            raise AggregationAbortedError(f"round {server_round} aborted: {exc}") from exc
        header, blobs = revealed[0]
        if (
            header["type"] != "sum"
            or header.get("nodes") != contributors
            or len(blobs) != 1
            or len(blobs[0]) != 8 * length
        ):
            pool.broken = "party 0 returned a malformed sum"
            raise AggregationAbortedError(f"round {server_round} aborted: {pool.broken}")
        vector = np.frombuffer(blobs[0], dtype="<f8").astype(np.float64)
        scores: dict[int, float] = {}
        if self.score:
            started = time.monotonic()
            try:
                scores = self._scores(
                    {**base, "nodes": contributors},
                    max(deadline, started + _SCORE_GRACE),
                )
            except PartyError as exc:
                self.last_scoring_error = f"the parties could not score: {exc}"
            self.last_score_seconds = time.monotonic() - started
            if self.last_scoring_error:
                _LOG.warning(
                    "round %d: no contribution scores: %s", server_round, self.last_scoring_error
                )
        return SecureSum(
            vector=vector, contributors=tuple(contributors), dropped=dropped, scores=scores
        )

    def _scores(self, base: dict[str, Any], deadline: float) -> dict[int, float]:
        """Ask the parties to score the contributors just summed (``{}`` with a reason if not)."""
        assert self._pool is not None
        answers = self._pool.exchange(
            [({"type": "score", **base}, [])] * self.parties,
            expect=["scores", "scored", "unscored"],
            deadline=deadline,
        )
        header, blobs = answers[0]
        nodes: list[int] = base["nodes"]
        if header["type"] == "unscored":
            self.last_scoring_error = str(header.get("reason"))
            return {}
        bits = header.get("bits")
        if (
            header["type"] != "scores"
            or header.get("nodes") != nodes
            or len(blobs) != 1
            or len(blobs[0]) != 8 * len(nodes)
            or isinstance(bits, bool)
            or not isinstance(bits, int)
        ):
            self.last_scoring_error = f"party 0 returned malformed scores ({header})"
            return {}
        values = np.frombuffer(blobs[0], dtype="<f8")
        if not np.all(np.isfinite(values)):
            self.last_scoring_error = "party 0 returned scores that are not finite"
            return {}
        self.last_score_bits = bits
        return {node: float(v) for node, v in zip(nodes, values, strict=True)}

    def close(self) -> None:
        """Stop the parties this server started (by PID, bounded waits); detach from others."""
        self._closed = True
        if self._given is None and self._pool is not None:
            self._pool.close()


class CryptenClient(ClientProtocol):
    """Data-holder side of the ``crypten`` mode: share, seal, reply.

    Parameters
    ----------
    party_keys : sequence of bytes, optional
        The compute parties' X25519 public keys, pinned out of band: the client
        then refuses a train message announcing other keys. Without it the
        client trusts the server to relay the parties' keys faithfully.

    Examples
    --------
    >>> client = CryptenClient()
    >>> # in the client mod: reply.content[SECURE_BLOBS] = client.protect(vector, msg, context)
    """

    mode: ClassVar[SecureMode] = "crypten"

    def __init__(self, *, party_keys: Sequence[bytes] | None = None) -> None:
        if party_keys is not None:
            keys = list(party_keys)
            if len(keys) < 2 or not all(
                isinstance(k, bytes) and len(k) == PUBLIC_KEY_BYTES for k in keys
            ):
                raise ValueError("party_keys must be >= 2 X25519 public keys of 32 bytes each")
            self._pinned: tuple[bytes, ...] | None = tuple(keys)
        else:
            self._pinned = None

    def handle_query(self, msg: Message, context: Context) -> Message:
        """Answer every stage request with an error: this mode has no client-side stage."""
        try:
            stage: str = stage_of(msg)
        except ValueError as exc:
            stage = f"<none: {exc}>"
        return refusal(msg, f"the crypten mode has no client-side stage; got stage {stage!r}")

    def protect(self, vector: NDArray[np.float64], msg: Message, context: Context) -> ArrayRecord:
        """Split ``vector`` into one sealed additive share per compute party.

        Raises
        ------
        ValueError
            The train message lacks this mode's records, or ``vector`` is not a
            finite 1-d float64 array with ``|v| <= MAX_ABS``.
        """
        values = _checked_vector(vector)
        run, server_round, keys, signed = _train_fields(msg)
        if self._pinned is not None and tuple(keys) != self._pinned:
            raise ValueError("the train message announces party keys other than the pinned ones")
        parties = len(keys)
        scaled = np.rint(values * float(1 << PRECISION_BITS)).astype(np.int64)
        # uint64 arithmetic wraps mod 2**64: the additive-sharing ring of CrypTen's int64.
        last = scaled.view(np.uint64).copy()
        shares = []
        for _ in range(parties - 1):
            share = np.frombuffer(os.urandom(8 * values.size), dtype=np.uint64)
            last -= share
            shares.append(share)
        shares.append(last)
        identity = node_identity(context)[0] if signed else None
        record = ArrayRecord()
        if identity is not None:
            record[_HOLDER_BLOB] = blob(identity.public)
        for index, (key, share) in enumerate(zip(keys, shares, strict=True)):
            label = share_label(
                run=run,
                server_round=server_round,
                node_id=int(context.node_id),
                party=index,
                parties=parties,
            )
            envelope = seal(key, share.astype("<u8").tobytes(), label=label)
            record[_SHARE_BLOB.format(index)] = blob(envelope)
            if identity is None:
                continue
            # Parties run by their own operators open only envelopes a registered
            # holder signed for this run, round, node and party (crypten_service).
            statement = share_statement(
                run=run,
                server_round=server_round,
                node_id=int(context.node_id),
                party=index,
                parties=parties,
                envelope=envelope,
            )
            record[_SIGNATURE_BLOB.format(index)] = blob(identity.sign(statement))
        return record


def _in_process(grid: Grid) -> bool:
    """Whether ``grid`` runs the federation in this process (simulation, not a deployment)."""
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    from fedlearn.loopback import LoopbackGrid

    return isinstance(grid, InMemoryGrid | LoopbackGrid)


def _checked_vector(vector: Any) -> NDArray[np.float64]:
    if not isinstance(vector, np.ndarray) or vector.dtype != np.float64 or vector.ndim != 1:
        raise ValueError(
            f"vector must be a 1-d float64 ndarray, got {type(vector).__name__} "
            f"{getattr(vector, 'dtype', '')} {getattr(vector, 'shape', '')}"
        )
    if vector.size == 0:
        raise ValueError("vector must not be empty")
    if not np.all(np.isfinite(vector)):
        raise ValueError("vector has NaN or infinite values")
    largest = float(np.max(np.abs(vector)))
    if largest > MAX_ABS:
        # The reason reaches the server: the rule only; the figure stays in the holder's log.
        _LOG.warning("CrypTen: this node's update has |value| = %.3g > MAX_ABS", largest)
        raise ValueError("vector has a value beyond MAX_ABS = 2**36 (the fixed-point range)")
    return vector


def announced_party_keys(msg: Message) -> list[bytes]:
    """The parties' public keys a CrypTen train message announces, in party order.

    What a holder compares with the keys it pinned. The contributor set of the
    sum is chosen by the parties when they open the shares, after the client
    replied: a client cannot check its size, the parties' ``min_contributors``
    floor applies.
    """
    return _train_fields(msg)[2]


def _train_fields(msg: Message) -> tuple[str, int, list[bytes], bool]:
    """The run token, the round, the parties' public keys and whether to sign the shares."""
    config, record = read_fields(msg, CryptenStage.TRAIN)
    signed = config.get("signed", False)
    if not isinstance(signed, bool):
        raise ValueError(f"field 'signed' must be a bool, got {signed!r}")
    run = read_str(config, "run")
    server_round = read_int(config, "round", minimum=0)
    parties = read_int(config, "parties", minimum=2)
    keys = []
    for index in range(parties):
        key = read_blob(record, _KEY_BLOB.format(index))
        if len(key) != PUBLIC_KEY_BYTES:
            raise ValueError(
                f"{_KEY_BLOB.format(index)} has {len(key)} bytes, an X25519 key has "
                f"{PUBLIC_KEY_BYTES}"
            )
        keys.append(key)
    if len(set(keys)) != parties:
        raise ValueError("two compute parties have the same public key")
    return run, server_round, keys, signed
