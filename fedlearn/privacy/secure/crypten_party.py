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
   answers ``{"type": "opened", "failed": {node: reason}}``;
3. server -> party ``{"type": "reveal", "nodes": [...]}`` (the contributors all
   parties could open): every party checks the set is a subset of what it
   opened and has at least ``--min-contributors`` nodes (default 2), the
   parties confirm to each other over the group that they agree on (run,
   round, length, nodes), sum their shares with wrapping int64 arithmetic
   and reveal only that sum, to party 0, through CrypTen; party 0 answers
   ``{"type": "sum"}`` + the float64 sum, the others ``{"type": "revealed"}``;
4. server -> party ``{"type": "stop"}``: leave the group and exit 0 (stdin
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
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from fedlearn.privacy.secure.crypten_compat import PRECISION_BITS, decode_fixed_point
from fedlearn.privacy.secure.envelope import EnvelopeError, generate_keypair, open_envelope

__all__ = [
    "FrameError",
    "read_frame",
    "share_label",
    "write_frame",
]

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


class _Party:
    """State of one party: its key, the CrypTen group, the shares of the open round."""

    def __init__(
        self, *, run: str, rank: int, parties: int, private_key: bytes, min_contributors: int
    ) -> None:
        self.run = run
        self.min_contributors = min_contributors
        self.rank = rank
        self.parties = parties
        self._private_key = private_key
        self._round: tuple[int, int] | None = None  # (server_round, length)
        self._shares: dict[int, NDArray[np.uint64]] = {}

    def open(self, header: dict[str, Any], blobs: list[bytes]) -> dict[str, Any]:
        server_round, length = _round_fields(header)
        nodes = _node_list(header)
        if len(nodes) != len(blobs):
            raise ValueError(f"{len(nodes)} nodes but {len(blobs)} envelopes")
        if len(set(nodes)) != len(nodes):
            raise ValueError("the node list has duplicates")
        self._round, self._shares = (server_round, length), {}
        failed: dict[str, str] = {}
        for node, envelope in zip(nodes, blobs, strict=True):
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

    def reveal(self, header: dict[str, Any], crypten: Any) -> tuple[dict[str, Any], list[bytes]]:
        import torch

        problem = None
        try:
            server_round, length = _round_fields(header)
            nodes = sorted(_node_list(header))
        except ValueError as exc:  # still take part in the exchange below
            (server_round, length), nodes, problem = (-1, 0), [], str(exc)
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
        agreed = json.dumps([self.run, server_round, length, nodes, problem is None]).encode()
        digest = np.frombuffer(hashlib.sha256(agreed).digest(), dtype="<i8").astype(np.int64)
        gathered = crypten.communicator.get().all_gather(torch.from_numpy(digest))
        if any(not torch.equal(other, gathered[self.rank]) for other in gathered):
            problem = problem or "the parties disagree on the round or its contributors"
        if problem is not None:
            self._round, self._shares = None, {}
            raise ValueError(problem)
        total = np.zeros(length, dtype=np.uint64)
        for node in nodes:
            total += self._shares[node]  # uint64 addition wraps mod 2**64 by definition
        self._round, self._shares = None, {}
        local = torch.from_numpy(total.view(np.int64))
        shared = crypten.mpc.MPCTensor.from_shares(local, precision=PRECISION_BITS)
        revealed = shared.reveal(dst=0)  # only party 0 receives the sum
        if self.rank != 0:
            return {"type": "revealed", "round": server_round}, []
        vector = decode_fixed_point(revealed, precision_bits=PRECISION_BITS)
        _LOG.info("round %d: revealed the sum of %d contributors", server_round, len(nodes))
        return (
            {"type": "sum", "round": server_round, "nodes": nodes},
            [vector.astype("<f8").tobytes()],
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run one compute party until told to stop (or stdin closes)."""
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
        while True:
            try:
                header, blobs = read_frame(requests)
            except EOFError:
                _LOG.info("the server closed the channel")
                break
            kind, seq = header["type"], header.get("seq")
            if kind == "stop":
                break
            answer_blobs: list[bytes] = []
            try:
                if kind == "open":
                    answer = party.open(header, blobs)
                elif kind == "reveal":
                    answer, answer_blobs = party.reveal(header, crypten)
                else:
                    raise ValueError(f"unknown request type {kind!r}")
            except ValueError as exc:
                _LOG.warning("refused %s: %s", kind, exc)
                answer = {"type": "error", "request": kind, "reason": str(exc)}
            write_frame(channel, {**answer, "seq": seq}, answer_blobs)
    except FrameError as exc:
        _LOG.error("malformed request, stopping: %s", exc)
        return 2
    finally:
        crypten.uninit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
