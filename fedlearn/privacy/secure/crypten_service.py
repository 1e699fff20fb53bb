"""A CrypTen compute party run by its own operator: ``fedlearn party``.

In a deployment the ``crypten`` mode's guarantee rests on compute parties that
do not collude, so neither the server operator nor any one party operator may
hold two parties' keys. Each party therefore runs as its own process, started
by its own operator:

* **Its own key.** The party's X25519 key lives in ``--key-dir`` (a 0700
  directory; ``party-x25519.key``, 32 raw bytes created 0600 atomically) and
  persists across restarts. At start the party prints its public key (hex, what
  ``[secure] crypten-party-keys`` lists) and the key's fingerprint; operators
  compare those out of band. The private key never leaves the process.
* **Its own address.** It listens on ``--listen HOST:PORT`` for the server's
  channel, and joins the other parties' gloo group at ``--rendezvous
  tcp://HOST:PORT`` as ``--rank`` of ``--world-size``.
* **Its own rules.** ``--run`` names the one run it serves (bound into every
  envelope label and holder signature: envelopes from another run do not
  open), ``--holders FILE`` lists the registered holders' Ed25519 identity keys
  (``{"name": "hex public key"}``, the registration list the operator
  publishes, :mod:`fedlearn.privacy.secure.identity`): the party opens a share
  only inside an envelope signed by a registered holder for this run, round,
  node, party and envelope, at most one per holder per round. It reveals only
  sums of at least ``--min-contributors`` distinct holders, one sum per round.

The server's channel is the framed protocol of
:mod:`fedlearn.privacy.secure.crypten_party` over TCP, one server connection
at a time. It is deliberately not authenticated: nothing a party sends on it
is secret (``hello`` carries public facts, the answer to ``reveal`` is the
public sum and scores), the shares' confidentiality comes from the envelopes,
their origin from the holders' signatures, and the party's refusals (too few
holders, a second sum in a round) hold whoever connects. A stranger who
reaches the port can at worst occupy it (denial of service): bind it to an
address only the server reaches. The gloo traffic among parties is CrypTen's
own and carries only shares and revealed values; put it on a private network
between the parties.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedlearn.files import create_atomically, private_directory
from fedlearn.privacy.secure.crypten_party import FrameError, _Party, _serve, write_frame

__all__ = ["KEY_FILE", "load_holders", "party_fingerprint", "party_key", "serve"]

#: The party's X25519 private key inside ``--key-dir``.
KEY_FILE = "party-x25519.key"
_LOG = logging.getLogger("fedlearn.crypten_party")


def party_fingerprint(public: bytes) -> str:
    """A party key's fingerprint for people to compare: ``x25519:`` and 160 bits in hex."""
    digest = hashlib.sha256(b"fedlearn/crypten-party-key/v1\x00" + public).hexdigest()[:40]
    return "x25519:" + " ".join(digest[i : i + 4] for i in range(0, 40, 4))


def party_key(key_dir: Path) -> tuple[bytes, bytes]:
    """The party's ``(private, public)`` X25519 key, created on first use in ``key_dir``."""
    private_directory(key_dir)
    path = key_dir / KEY_FILE
    create_atomically(path, X25519PrivateKey.generate().private_bytes_raw())
    if path.stat().st_mode & 0o077:
        raise SystemExit(f"{path} is readable by others: refusing to use it")
    private = path.read_bytes()
    if len(private) != 32:
        raise SystemExit(f"{path} does not hold a 32-byte X25519 key")
    public = (
        X25519PrivateKey.from_private_bytes(private)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )
    return private, public


def load_holders(path: Path) -> frozenset[bytes]:
    """Registered holders' Ed25519 keys from ``{"name": "hex public key", ...}``."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"cannot read the holder registry {path}: {exc}") from None
    if not isinstance(raw, dict) or not raw:
        raise SystemExit(f"{path} must be a non-empty JSON object name -> hex Ed25519 key")
    keys = set()
    for name, value in raw.items():
        try:
            key = bytes.fromhex(value)
        except (TypeError, ValueError):
            key = b""
        if len(key) != 32:
            raise SystemExit(f"{path}: holder {name!r} has no 32-byte hex Ed25519 key")
        keys.add(key)
    if len(keys) != len(raw):
        raise SystemExit(f"{path}: two holders share one key")
    return frozenset(keys)


def _address(text: str, what: str) -> tuple[str, int]:
    host, _, port = text.removeprefix("tcp://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(f"{what} must be HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def serve(argv: Sequence[str] | None = None) -> int:
    """Run one compute party until it is terminated (SIGTERM/SIGINT)."""
    parser = argparse.ArgumentParser(prog="fedlearn party", description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--rendezvous", required=True, help="tcp://HOST:PORT (rank 0 listens)")
    parser.add_argument("--listen", required=True, help="HOST:PORT for the server's channel")
    parser.add_argument("--key-dir", type=Path, required=True)
    parser.add_argument("--run", required=True, help="the one run this party serves")
    parser.add_argument("--holders", type=Path, required=True, help="registered holders (JSON)")
    parser.add_argument("--min-contributors", type=int, default=2)
    args = parser.parse_args(argv)
    if args.world_size < 2 or not 0 <= args.rank < args.world_size:
        parser.error("need --world-size >= 2 and 0 <= --rank < --world-size")
    if args.min_contributors < 2:
        parser.error("--min-contributors must be >= 2 (a sum of one is one holder's update)")
    if not args.run or len(args.run) > 200:
        parser.error("--run must be a non-empty name of at most 200 characters")
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format=f"%(asctime)s party {args.rank}: %(message)s",
    )
    holders = load_holders(args.holders)
    private, public = party_key(args.key_dir)
    host, port = _address(args.listen, "--listen")
    rendezvous_host, _ = _address(args.rendezvous, "--rendezvous")
    listener = socket.create_server(
        (host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET
    )
    print(f"party {args.rank} public key: {public.hex()}", flush=True)
    print(f"party {args.rank} fingerprint: {party_fingerprint(public)}", flush=True)
    print(f"party {args.rank} registered holders: {len(holders)}", flush=True)
    os.environ.update(
        WORLD_SIZE=str(args.world_size),
        RANK=str(args.rank),
        RENDEZVOUS=args.rendezvous,
        DISTRIBUTED_BACKEND="gloo",
        MASTER_ADDR=rendezvous_host,
    )
    if rendezvous_host in ("127.0.0.1", "localhost") and Path("/sys/class/net/lo").exists():
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")

    from fedlearn.privacy.secure.crypten_compat import import_crypten

    crypten = import_crypten()
    import torch

    torch.set_num_threads(1)
    crypten.init()
    party = _Party(
        run=args.run,
        rank=args.rank,
        parties=args.world_size,
        private_key=private,
        min_contributors=args.min_contributors,
        holders=holders,
    )
    print(f"party {args.rank} ready on {host}:{listener.getsockname()[1]}", flush=True)
    hello = {
        "type": "hello",
        "party": args.rank,
        "parties": args.world_size,
        "run": args.run,
        "min_contributors": args.min_contributors,
    }
    try:
        while True:
            connection, peer = listener.accept()
            _LOG.info("server connected from %s", peer)
            with connection, contextlib.suppress(OSError):
                reader, writer = connection.makefile("rb"), connection.makefile("wb")
                write_frame(writer, hello, [public])
                write_frame(writer, {"type": "ready", "party": args.rank})
                try:
                    _serve(party, crypten, reader, writer)
                except FrameError as exc:
                    _LOG.error("malformed request, closing the connection: %s", exc)
                reader.close()
                writer.close()
    except KeyboardInterrupt:
        return 0
    finally:
        listener.close()
        crypten.uninit()


if __name__ == "__main__":
    sys.exit(serve())
