"""A CrypTen compute party: ``python -m fedlearn.privacy.secure.crypten_party --run TOKEN``.

One party of the ``crypten`` secure-aggregation mode (the trust model is in
:mod:`fedlearn.privacy.secure.crypten_mode`). It reads CrypTen's usual
environment (``WORLD_SIZE``, ``RANK``, ``RENDEZVOUS=tcp://127.0.0.1:PORT``,
``DISTRIBUTED_BACKEND=gloo``) and joins the other parties' torch.distributed
group; CrypTen's own traffic between parties is CrypTen's business.

Server <-> party channel: the party's stdin (requests) and stdout (replies),
carrying frames that are never unpickled: a 4-byte big-endian header length,
a UTF-8 JSON object, then the raw bytes of the blobs whose sizes the header's
``"blobs"`` list gives. Logs go to stderr; file descriptor 1 is pointed at
stderr once the protocol has its own copy, so nothing (native code included)
can corrupt the channel.

Conversation (``round`` and ``length`` are in every request; each answer
echoes the request's ``seq`` number):

1. party -> server ``{"type": "hello", "party": i, "parties": M}`` + its X25519
   public key (generated at start; the private key never leaves the process),
   then ``{"type": "ready"}`` once the CrypTen group is joined;
2. server -> party ``{"type": "open", "nodes": [...]}`` + one envelope per node:
   the party opens each (label bound to run, round, node, party index, party
   count), checks it holds ``length`` int64 values and keeps the share; it
   answers ``{"type": "opened", "failed": {node: reason}}``. A party with a
   holder registry (``fedlearn party --holders``,
   :mod:`fedlearn.privacy.secure.crypten_service`) also needs ``"holders"``
   (each node's Ed25519 identity key, hex) and, after the envelopes, one
   signature per node over :func:`share_statement`: it opens an envelope only
   if its signer is registered, the signature covers this run, round, node,
   party and the envelope's bytes, and the signer has no other envelope in the
   request (one share per holder per round);
3. server -> party ``{"type": "reveal", "nodes": [...], "score": bool}`` (the
   contributors all parties could open): every party checks the set is a
   subset of what it opened and has at least ``--min-contributors`` nodes
   (default 2), the parties confirm to each other over the group that they
   agree on (run, round, length, nodes, score), sum their shares with
   wrapping int64 arithmetic and reveal only that sum through CrypTen: to
   party 0 alone, or to every party when ``score`` is true (the sum is public:
   the server learns it and the model it updates goes to every client).
   Party 0 answers ``{"type": "sum"}`` + the float64 sum, the others
   ``{"type": "revealed"}``. Without ``score`` the parties drop every share
   now; with it they keep the contributors' shares and the revealed sum
   until the next request;
4. server -> party ``{"type": "score", "nodes": [...]}`` (only right after a
   reveal with ``score``, for exactly its contributors; any other request
   drops what the reveal kept): each party computes, with the sum ``s`` it
   revealed itself (the server cannot substitute another vector), the local
   dot product of its share of every contributor's vector with a
   fixed-point encoding of ``s`` (both without the weight slot, see
   :func:`score_plan`), the parties reveal only those ``n`` ring elements, to
   party 0, and drop the shares. Party 0 answers ``{"type": "scores",
   "nodes": [...], "bits": p}`` + ``n`` float64 scores ``<x_k, s~> / <s, s~>``
   (``s~`` is ``s`` at ``p`` fractional bits; ``p = 16``, i.e. ``s~ = s``,
   unless ``s`` is large), the others ``{"type": "scored"}``; every party
   answers ``{"type": "unscored", "reason": ...}`` instead when the sum
   cannot be scored (zero, or too large for the ring), and party 0 does when
   its consistency check fails (a dot product wrapped around);
5. server -> party ``{"type": "stop"}``: leave the group and exit 0 (stdin
   closing does the same).

A request the party cannot serve gets ``{"type": "error", "reason": ...}``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from fedlearn.privacy.secure.crypten_compat import PRECISION_BITS, decode_fixed_point
from fedlearn.privacy.secure.envelope import EnvelopeError, generate_keypair, open_envelope

__all__ = [
    "MIN_SCORE_BITS",
    "SCORE_HEADROOM_BITS",
    "FrameError",
    "ScorePlan",
    "local_dot",
    "read_frame",
    "score_plan",
    "share_label",
    "share_statement",
    "write_frame",
]

#: Scores ``|<x_k, s~> / <s, s~>|`` up to ``2**SCORE_HEADROOM_BITS`` never wrap the ring.
SCORE_HEADROOM_BITS = 10
#: Fewest fractional bits ``s`` is scored at (integer resolution); a larger sum is not scored.
MIN_SCORE_BITS = 0

#: Largest JSON header accepted (a reply listing why thousands of nodes failed fits).
_MAX_HEADER = 4 << 20
#: Largest total of blob bytes in one frame (8 GiB: a billion int64 values).
_MAX_BLOBS = 8 << 30
_LENGTH = struct.Struct(">I")
_LOG = logging.getLogger("fedlearn.crypten_party")


class FrameError(ValueError):
    """A frame on the server <-> party channel is malformed or truncated."""


def share_label(*, run: str, server_round: int, node_id: int, party: int, parties: int) -> bytes:
    """The envelope label binding one share to its run, round, sender and recipient."""
    return (
        f"fedlearn/crypten-share/v1|run={run}|round={server_round}|node={node_id}"
        f"|party={party}|of={parties}"
    ).encode()


def share_statement(
    *, run: str, server_round: int, node_id: int, party: int, parties: int, envelope: bytes
) -> bytes:
    """What a holder signs for one share envelope (Ed25519, its identity key).

    Binds the envelope's bytes (by SHA-256) to the run, round, sending node and
    receiving party: a party with a holder registry opens only envelopes a
    registered holder signed for exactly this place, one per holder per round.
    """
    from fedlearn.privacy.secure.identity import statement

    return statement(
        "crypten-share",
        run=run,
        round=server_round,
        node=node_id,
        party=party,
        parties=parties,
        envelope=hashlib.sha256(envelope).digest(),
    )


def write_frame(stream: IO[bytes], header: dict[str, Any], blobs: Sequence[bytes] = ()) -> None:
    """Write one frame (header + blobs) and flush."""
    header = {**header, "blobs": [len(b) for b in blobs]}
    data = json.dumps(header, separators=(",", ":")).encode()
    if len(data) > _MAX_HEADER:
        raise FrameError(f"frame header of {len(data)} bytes exceeds {_MAX_HEADER}")
    stream.write(_LENGTH.pack(len(data)))
    stream.write(data)
    for item in blobs:
        stream.write(item)
    stream.flush()


def _read_exact(stream: IO[bytes], size: int) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            raise EOFError(f"stream closed with {remaining} of {size} bytes missing")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(stream: IO[bytes]) -> tuple[dict[str, Any], list[bytes]]:
    """Read one frame; ``EOFError`` at a clean end of stream, :class:`FrameError` if malformed."""
    prefix = stream.read(_LENGTH.size)
    if not prefix:
        raise EOFError("stream closed")
    if len(prefix) < _LENGTH.size:
        prefix += _read_exact(stream, _LENGTH.size - len(prefix))
    (size,) = _LENGTH.unpack(prefix)
    if size > _MAX_HEADER:
        raise FrameError(f"frame header of {size} bytes exceeds {_MAX_HEADER}")
    try:
        header = json.loads(_read_exact(stream, size).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FrameError(f"frame header is not JSON: {exc}") from exc
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise FrameError("frame header must be a JSON object with a string 'type'")
    sizes = header.pop("blobs", [])
    if not isinstance(sizes, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in sizes
    ):
        raise FrameError("frame header 'blobs' must be a list of non-negative ints")
    if sum(sizes) > _MAX_BLOBS:
        raise FrameError(f"frame carries {sum(sizes)} blob bytes, more than {_MAX_BLOBS}")
    return header, [_read_exact(stream, s) for s in sizes]


@dataclass(frozen=True)
class ScorePlan:
    """How a revealed sum ``s`` is encoded for scoring (the same on every party).

    Attributes
    ----------
    bits : int
        Fractional bits of ``s~``, the encoding of ``s`` the shares are
        multiplied with: ``PRECISION_BITS`` (``s~ = s`` exactly) unless that
        would leave too little headroom in the ring, then fewer (rounded to
        nearest), never below :data:`MIN_SCORE_BITS`.
    weights : ndarray of int64
        ``round(s * 2**bits)``, without the weight slot.
    norm : int
        ``<S, weights>`` exactly, where ``S = s * 2**16`` is the revealed ring
        sum (without the weight slot): the sum over contributors of the dot
        products the parties reveal, at scale ``2**(16 + bits)``. It is below
        ``2**(62 - SCORE_HEADROOM_BITS)``, so every dot product whose score
        has magnitude up to ``2**SCORE_HEADROOM_BITS`` fits in int64.
    """

    bits: int
    weights: NDArray[np.int64]
    norm: int


def _round_shift(values: NDArray[np.int64], shift: int) -> NDArray[np.int64]:
    """``round(values / 2**shift)`` (halves up) without overflowing int64."""
    if shift == 0:
        return values.copy()
    floor = np.right_shift(values, shift)  # arithmetic shift: floor division
    remainder = np.bitwise_and(values, (1 << shift) - 1)  # values mod 2**shift, >= 0
    rounded: NDArray[np.int64] = floor + (remainder >= (1 << (shift - 1))).astype(np.int64)
    return rounded


def score_plan(total: NDArray[np.int64]) -> ScorePlan | str:
    """Choose the encoding of the revealed sum for scoring, or say why it cannot be scored.

    Parameters
    ----------
    total : ndarray of int64
        The revealed ring sum ``S = round-sum of 2**16 * x_k`` without the
        weight slot.

    Returns
    -------
    ScorePlan or str
        The plan with the most fractional bits (at most 16) whose ``norm``
        stays below ``2**(62 - SCORE_HEADROOM_BITS)``; a reason when ``s`` is
        empty, zero, or so large that even :data:`MIN_SCORE_BITS` overflows
        (``<s, s> >= 2**(46 - SCORE_HEADROOM_BITS - MIN_SCORE_BITS)``, i.e.
        ``|s| >= 2**18`` with the defaults).

    Notes
    -----
    A contributor's dot product ``<X_k, weights>`` is exact (no wrap mod
    2**64) while ``|score_k| <= 2**SCORE_HEADROOM_BITS``; larger magnitudes
    need contributors whose vectors cancel each other in the sum.
    """
    if total.dtype != np.int64 or total.ndim != 1:
        raise TypeError("total must be a 1-d int64 array")
    if total.size == 0:
        return "the vector has no value besides the weight slot: nothing to score"
    if not total.any():
        return "the revealed sum is zero: <x_k, s> / <s, s> is undefined"
    as_float = total.astype(np.float64)
    limit = 2.0 ** (62 - SCORE_HEADROOM_BITS)
    for bits in range(PRECISION_BITS, MIN_SCORE_BITS - 1, -1):
        weights = _round_shift(total, PRECISION_BITS - bits)
        approx = float(np.dot(as_float, weights.astype(np.float64)))
        if approx > limit:
            continue
        # below 2**62 (up to float error), so the wrapping uint64 sum is the exact value
        wrapped = np.sum(total.view(np.uint64) * weights.view(np.uint64), dtype=np.uint64)
        norm = int(wrapped) - (1 << 64) if int(wrapped) >= 1 << 63 else int(wrapped)
        if norm <= 0:  # cannot happen: rounding keeps signs, and S != 0 at 16 bits
            return f"<s, s~> = {norm} at {bits} fractional bits is not positive"
        return ScorePlan(bits=bits, weights=weights, norm=norm)
    squared = float(np.dot(as_float, as_float)) / 2.0 ** (2 * PRECISION_BITS)
    return (
        f"the revealed sum is too large to score: <s, s> = {squared:.4g}, even at "
        f"{MIN_SCORE_BITS} fractional bits the dot products could wrap the 64-bit ring "
        f"(scores are computed while <s, s> < 2**{46 - SCORE_HEADROOM_BITS - MIN_SCORE_BITS})"
    )


def local_dot(share: NDArray[np.uint64], weights: NDArray[np.int64]) -> int:
    """``<share, weights>`` in the ring of integers mod 2**64, as a signed int64 value.

    Summed over the parties, these are ``<X_k, weights> mod 2**64`` for the
    vector ``X_k`` the shares add up to (uint64 multiply and sum wrap).
    """
    if share.shape != weights.shape:
        raise ValueError(f"share of shape {share.shape} but weights of shape {weights.shape}")
    wrapped = int(np.sum(share * weights.view(np.uint64), dtype=np.uint64))
    return wrapped - (1 << 64) if wrapped >= 1 << 63 else wrapped


@dataclass
class _Revealed:
    """What a reveal with scoring keeps until the score request: the sum and the shares."""

    server_round: int
    length: int
    nodes: list[int]
    total: NDArray[np.int64]  # the revealed ring sum, weight slot included
    shares: dict[int, NDArray[np.uint64]]


class _Party:
    """State of one party: its key, the CrypTen group, the shares of the open round."""

    def __init__(
        self,
        *,
        run: str,
        rank: int,
        parties: int,
        private_key: bytes,
        min_contributors: int,
        holders: frozenset[bytes] | None = None,
    ) -> None:
        self.run = run
        #: Registered holders' Ed25519 keys; ``None``: envelopes need no signature
        #: (parties the server starts itself, in simulation only).
        self.holders = holders
        self.min_contributors = min_contributors
        self.rank = rank
        self.parties = parties
        self._private_key = private_key
        self._round: tuple[int, int] | None = None  # (server_round, length)
        self._shares: dict[int, NDArray[np.uint64]] = {}
        self._revealed: _Revealed | None = None  # kept by a reveal with scoring
        # One sum per round: two sums of the same round over different contributor
        # sets would give the server the difference, one client's update.
        self._last_revealed = -1

    def forget_revealed(self) -> None:
        """Drop what a reveal kept for scoring (any request but ``score`` does)."""
        self._revealed = None

    def open(self, header: dict[str, Any], blobs: list[bytes]) -> dict[str, Any]:
        server_round, length = _round_fields(header)
        nodes = _node_list(header)
        signers: list[bytes | None] = [None] * len(nodes)
        signatures: list[bytes | None] = [None] * len(nodes)
        if self.holders is not None:
            signers = list(_holder_list(header, len(nodes)))
            if len(blobs) != 2 * len(nodes):
                raise ValueError(
                    f"{len(nodes)} nodes but {len(blobs)} blobs (an envelope and its holder's "
                    "signature per node)"
                )
            blobs, signatures = blobs[: len(nodes)], list(blobs[len(nodes) :])
        if len(nodes) != len(blobs):
            raise ValueError(f"{len(nodes)} nodes but {len(blobs)} envelopes")
        if len(set(nodes)) != len(nodes):
            raise ValueError("the node list has duplicates")
        if server_round <= self._last_revealed:
            raise ValueError(
                f"round {server_round} is not after round {self._last_revealed}, whose sum "
                "this party revealed: a party reveals one sum per round"
            )
        self._round, self._shares = (server_round, length), {}
        failed: dict[str, str] = {}
        contributed: set[bytes] = set()
        for node, envelope, signer, signature in zip(
            nodes, blobs, signers, signatures, strict=True
        ):
            if self.holders is not None:
                problem = self._check_signature(
                    server_round, node, envelope, signer, signature, contributed
                )
                if problem is not None:
                    _LOG.warning(
                        "round %d: refused node %d's share: %s", server_round, node, problem
                    )
                    failed[str(node)] = problem
                    continue
            label = share_label(
                run=self.run,
                server_round=server_round,
                node_id=node,
                party=self.rank,
                parties=self.parties,
            )
            try:
                plain = open_envelope(self._private_key, envelope, label=label)
            except EnvelopeError as exc:
                failed[str(node)] = str(exc)
                continue
            if len(plain) != 8 * length:
                failed[str(node)] = (
                    f"share holds {len(plain)} bytes, expected {8 * length} ({length} int64)"
                )
                continue
            self._shares[node] = np.frombuffer(plain, dtype="<u8").astype(np.uint64)
        _LOG.info("round %d: opened %d of %d shares", server_round, len(self._shares), len(nodes))
        return {"type": "opened", "round": server_round, "failed": failed}

    def _check_signature(
        self,
        server_round: int,
        node: int,
        envelope: bytes,
        signer: bytes | None,
        signature: bytes | None,
        contributed: set[bytes],
    ) -> str | None:
        """Why a share envelope is not a registered holder's, signed for here and now."""
        from fedlearn.privacy.secure.identity import IdentityError, verify

        assert self.holders is not None and signer is not None and signature is not None
        if signer not in self.holders:
            return "the envelope is not signed by a registered holder"
        if signer in contributed:
            return "this holder already contributed a share this round"
        message = share_statement(
            run=self.run,
            server_round=server_round,
            node_id=node,
            party=self.rank,
            parties=self.parties,
            envelope=envelope,
        )
        try:
            verify(signer, message, signature)
        except IdentityError:
            return "the holder's signature does not match this run, round, node, party and envelope"
        contributed.add(signer)
        return None

    def reveal(self, header: dict[str, Any], crypten: Any) -> tuple[dict[str, Any], list[bytes]]:
        import torch

        problem = None
        score = header.get("score", False)
        try:
            server_round, length = _round_fields(header)
            nodes = sorted(_node_list(header))
            if not isinstance(score, bool):
                raise ValueError(f"request field 'score' must be a bool, got {score!r}")
        except ValueError as exc:  # still take part in the exchange below
            (server_round, length), nodes, score, problem = (-1, 0), [], False, str(exc)
        if problem is not None:
            pass
        elif self._round != (server_round, length):
            problem = f"no open round {server_round} of length {length}"
        elif len(nodes) < self.min_contributors:
            problem = (
                f"{len(nodes)} contributors; this party reveals sums of at least "
                f"{self.min_contributors} (a smaller sum would expose individual updates)"
            )
        elif missing := [n for n in nodes if n not in self._shares]:
            problem = f"party {self.rank} holds no valid share of nodes {missing}"
        # Every party takes part in this exchange, so all refuse together or none does.
        agreed = [self.run, server_round, length, nodes, score, problem is None]
        if not self._agree(crypten, agreed):
            problem = problem or "the parties disagree on the round or its contributors"
        if problem is not None:
            self._round, self._shares = None, {}
            raise ValueError(problem)
        total = np.zeros(length, dtype=np.uint64)
        for node in nodes:
            total += self._shares[node]  # uint64 addition wraps mod 2**64 by definition
        kept = {node: self._shares[node] for node in nodes} if score else {}
        self._round, self._shares = None, {}
        self._last_revealed = server_round
        local = torch.from_numpy(total.view(np.int64))
        shared = crypten.mpc.MPCTensor.from_shares(local, precision=PRECISION_BITS)
        # Only party 0 receives the sum, unless every party needs it to score.
        revealed = shared.reveal(dst=None if score else 0)
        if score:
            self._revealed = _Revealed(
                server_round=server_round,
                length=length,
                nodes=nodes,
                total=revealed.numpy().astype(np.int64, copy=True),
                shares=kept,
            )
        if self.rank != 0:
            return {"type": "revealed", "round": server_round}, []
        vector = decode_fixed_point(revealed, precision_bits=PRECISION_BITS)
        _LOG.info("round %d: revealed the sum of %d contributors", server_round, len(nodes))
        return (
            {"type": "sum", "round": server_round, "nodes": nodes},
            [vector.astype("<f8").tobytes()],
        )

    def _agree(self, crypten: Any, fields: list[Any]) -> bool:
        """Whether every party passed the same ``fields`` (a collective: all must call it)."""
        import torch

        agreed = json.dumps(fields).encode()
        digest = np.frombuffer(hashlib.sha256(agreed).digest(), dtype="<i8").astype(np.int64)
        gathered = crypten.communicator.get().all_gather(torch.from_numpy(digest))
        return all(torch.equal(other, gathered[self.rank]) for other in gathered)

    def score(self, header: dict[str, Any], crypten: Any) -> tuple[dict[str, Any], list[bytes]]:
        """Reveal to party 0 only each contributor's dot product with the revealed sum."""
        import torch

        revealed, self._revealed = self._revealed, None  # one scoring per reveal, whatever happens
        problem = None
        plan: ScorePlan | str = "not planned"
        try:
            server_round, length = _round_fields(header)
            nodes = sorted(_node_list(header))
        except ValueError as exc:  # still take part in the exchange below
            (server_round, length), nodes, problem = (-1, 0), [], str(exc)
        if problem is not None:
            pass
        elif revealed is None or (revealed.server_round, revealed.length, revealed.nodes) != (
            server_round,
            length,
            nodes,
        ):
            problem = (
                f"no sum of round {server_round} (length {length}) over nodes {nodes} was "
                "just revealed with scoring"
            )
        else:
            # Deterministic in the revealed sum, which every party holds: the same everywhere.
            plan = score_plan(revealed.total[: length - 1])
        outcome = plan.bits if isinstance(plan, ScorePlan) else plan
        if not self._agree(crypten, [self.run, server_round, length, nodes, outcome, problem]):
            problem = problem or "the parties disagree on the round, its contributors or the plan"
        if problem is not None:
            raise ValueError(problem)
        assert revealed is not None
        if isinstance(plan, str):
            _LOG.warning("round %d: not scoring: %s", server_round, plan)
            return {"type": "unscored", "round": server_round, "reason": plan}, []
        dots = np.array(
            [local_dot(revealed.shares[node][: length - 1], plan.weights) for node in nodes],
            dtype=np.int64,
        )
        revealed.shares.clear()  # the shares are no longer needed: drop them before revealing
        shared = crypten.mpc.MPCTensor.from_shares(torch.from_numpy(dots), precision=0)
        opened = shared.reveal(dst=0)  # only party 0 receives the n dot products
        if self.rank != 0:
            return {"type": "scored", "round": server_round}, []
        products = opened.numpy().astype(np.int64)
        # The products add up to plan.norm mod 2**64 whatever happens; as integers they do
        # only if no contributor's product wrapped around (or wraps cancel out exactly).
        if sum(int(v) for v in products) != plan.norm:
            reason = (
                "the dot products do not add up to <s, s~>: some wrapped around the 64-bit "
                f"ring (a |score| above 2**{SCORE_HEADROOM_BITS}: contributors cancel out)"
            )
            _LOG.warning("round %d: not scoring: %s", server_round, reason)
            return {"type": "unscored", "round": server_round, "reason": reason}, []
        scores = products.astype(np.float64) / float(plan.norm)
        _LOG.info(
            "round %d: scored %d contributors at %d fractional bits",
            server_round,
            len(nodes),
            plan.bits,
        )
        return (
            {"type": "scores", "round": server_round, "nodes": nodes, "bits": plan.bits},
            [scores.astype("<f8").tobytes()],
        )


def _round_fields(header: dict[str, Any]) -> tuple[int, int]:
    server_round, length = header.get("round"), header.get("length")
    for name, value in (("round", server_round), ("length", length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"request field {name!r} must be a non-negative int, got {value!r}")
    assert isinstance(server_round, int) and isinstance(length, int)
    if length == 0:
        raise ValueError("request field 'length' must be positive")
    return server_round, length


def _holder_list(header: dict[str, Any], count: int) -> list[bytes]:
    holders = header.get("holders")
    if not isinstance(holders, list) or len(holders) != count:
        raise ValueError("request field 'holders' must list one holder key per node")
    try:
        keys = [bytes.fromhex(h) for h in holders]
    except (TypeError, ValueError):
        raise ValueError("request field 'holders' must hold hex Ed25519 public keys") from None
    if not all(len(k) == 32 for k in keys):
        raise ValueError("request field 'holders' must hold 32-byte Ed25519 public keys")
    return keys


def _node_list(header: dict[str, Any]) -> list[int]:
    nodes = header.get("nodes")
    if not isinstance(nodes, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) for n in nodes
    ):
        raise ValueError("request field 'nodes' must be a list of ints")
    return list(nodes)


def _environment_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None or not value.isdigit():
        raise SystemExit(f"environment variable {name} must be a non-negative int, got {value!r}")
    return int(value)


def _serve(party: _Party, crypten: Any, requests: IO[bytes], channel: IO[bytes]) -> None:
    """Answer one server's requests until ``stop`` or the end of its stream.

    Raises :class:`FrameError` on a malformed request (the channel is then unusable).
    """
    while True:
        try:
            header, blobs = read_frame(requests)
        except EOFError:
            _LOG.info("the server closed the channel")
            return
        kind, seq = header["type"], header.get("seq")
        if kind == "stop":
            return
        answer_blobs: list[bytes] = []
        if kind != "score":
            party.forget_revealed()
        try:
            if kind == "open":
                answer = party.open(header, blobs)
            elif kind == "reveal":
                answer, answer_blobs = party.reveal(header, crypten)
            elif kind == "score":
                answer, answer_blobs = party.score(header, crypten)
            else:
                raise ValueError(f"unknown request type {kind!r}")
        except ValueError as exc:
            _LOG.warning("refused %s: %s", kind, exc)
            answer = {"type": "error", "request": kind, "reason": str(exc)}
        write_frame(channel, {**answer, "seq": seq}, answer_blobs)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one compute party the server started, until told to stop (or stdin closes)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run token bound into envelope labels")
    parser.add_argument(
        "--min-contributors",
        type=int,
        default=2,
        help="refuse to reveal a sum of fewer clients (default 2)",
    )
    args = parser.parse_args(argv)
    if args.min_contributors < 1:
        parser.error("--min-contributors must be >= 1")
    # Keep a private copy of stdout for frames; send fd 1 (stray prints) to stderr.
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = os.fdopen(os.dup(0), "rb")

    rank, parties = _environment_int("RANK"), _environment_int("WORLD_SIZE")
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format=f"%(asctime)s party {rank}: %(message)s"
    )
    for name in ("RENDEZVOUS", "DISTRIBUTED_BACKEND"):
        if name not in os.environ:
            raise SystemExit(f"environment variable {name} must be set (CrypTen reads it)")
    if parties < 2 or rank >= parties:
        raise SystemExit(f"need WORLD_SIZE >= 2 and RANK < WORLD_SIZE, got {parties}, {rank}")
    private_key, public_key = generate_keypair()
    write_frame(channel, {"type": "hello", "party": rank, "parties": parties}, [public_key])

    from fedlearn.privacy.secure.crypten_compat import import_crypten

    crypten = import_crypten()
    import torch

    torch.set_num_threads(1)  # summing is memory-bound; parties share the host's cores
    crypten.init()
    _LOG.info("joined the group of %d", parties)
    write_frame(channel, {"type": "ready", "party": rank})
    party = _Party(
        run=args.run,
        rank=rank,
        parties=parties,
        private_key=private_key,
        min_contributors=args.min_contributors,
    )
    try:
        _serve(party, crypten, requests, channel)
    except FrameError as exc:
        _LOG.error("malformed request, stopping: %s", exc)
        return 2
    finally:
        crypten.uninit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
