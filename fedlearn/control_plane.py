"""The federation's public port: a Fleet-only front before a loopback SuperLink.

Why a front. Flower 1.41's SuperLink serves the Fleet API (``/v1/fleet/*``,
SuperNodes), the Control API (``/v1/control/*``, ``flwr ls|stop|run``,
``flwr supernode register``) and the Runtime API (``/v1/runtime/*``, what a
ServerApp uses to send instructions and pull every holder's replies) from one
FastAPI app on one port (``flwr.superlink.main.create_app``);
``--control-api-address`` and ``--fleet-api-address`` only log a deprecation
warning (``flwr.superlink.cli.flower_superlink``). Control-plane
authentication is ``NoOpControlAuthnPlugin`` unless ``FLWR_OIDC_ENABLED=1``
*and* Flower Enterprise (``flwr.ee``) provides an OIDC plugin
(``flwr.superlink.config_loader.load_control_authn_plugin``): the open-source
wheel has no way to plug in another authenticator. Even OIDC would not close
the Runtime API, whose only check (``SuperExecAuthDependency`` on
``acquire-task``) is switched off in subprocess isolation. So whoever reaches
the port with the (public) CA certificate could list, stop and submit runs,
register node keys, or acquire a run's ServerApp task and read the replies.

The mechanism. The SuperLink listens on ``127.0.0.1`` only, on a private
port, with a certificate for ``127.0.0.1`` from a CA of its own; the
ServerApp's SuperExec reaches it there. The federation's address is served by
:class:`FleetFront`, which terminates TLS with the federation's certificate
and forwards exactly:

- ``POST`` to the Fleet API's own paths (read from Flower's Fleet router, so
  an upgrade keeps the list right) and ``GET /health``: what a SuperNode uses;
- ``POST`` to the Control API's paths only with ``Authorization: Bearer
  TOKEN``, TOKEN being the operator's credential (256 random bits; the front
  keeps only its SHA-256 and compares in constant time, and strips the header
  before forwarding). The credential is written where Flower's own CLI reads
  it, ``FLWR_HOME/credentials.yaml`` as an access token for the connection's
  address, so ``flwr ls``/``stop``/``run`` from the operator's ``FLWR_HOME``
  authenticate with Flower's own client code;
- nothing else: the Runtime API, ``/docs`` and any other path (matched on the
  raw request path, so ``..`` or percent-encoding cannot reach one) get 404.

What holds. A party holding only ``ca.crt`` cannot list, stop or submit runs,
cannot register or list nodes through the Control API, and cannot reach the
Runtime API. The Fleet API stays open, as it must: with ``--supernode-auth``
only keys the operator registered can join (Flower refuses Fleet
self-registration); without it anyone with ``ca.crt`` can join as a SuperNode
and receive the instructions the ServerApp sends to every node, so use
``--supernode-auth`` whenever membership matters. Not covered: processes on
the server host itself can reach the loopback SuperLink (the host is the
operator's, and holds the TLS key anyway); with ``--insecure`` the credential
travels in the clear like everything else.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import logging
import secrets
import ssl
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from fedlearn.tls import Certificates, make_certificates

__all__ = [
    "Decision",
    "FleetFront",
    "Loopback",
    "decide",
    "front_command",
    "loopback_superlink",
    "store_operator_credential",
    "token_digest",
]

log = logging.getLogger("fedlearn.control_plane")  # also when run with -m

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

HEALTH_PATH = "/health"
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "authorization",
    }
)


def _router_paths(module: str) -> frozenset[str]:
    """The POST paths of one of Flower's SuperLink routers (the installed version's)."""
    from importlib import import_module

    router = import_module(module).router
    return frozenset(route.path for route in router.routes)


def fleet_paths() -> frozenset[str]:
    """Paths of the Fleet API (what SuperNodes call)."""
    paths = _router_paths("flwr.superlink.routers.fleet.router")
    assert all(p.startswith("/v1/fleet/") for p in paths), paths
    return paths


def control_paths() -> frozenset[str]:
    """Paths of the Control API (what ``flwr`` calls)."""
    paths = _router_paths("flwr.superlink.routers.control.router")
    assert all(p.startswith("/v1/control/") for p in paths), paths
    return paths


def token_digest(token: str) -> str:
    """SHA-256 (hex) of an operator credential: all the front keeps of it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def store_operator_credential(flwr_home: Path, address: str) -> str:
    """Create the operator's credential and store it where ``flwr`` reads it.

    Flower's CLI sends ``Authorization: Bearer ACCESS_TOKEN`` with every
    Control API call when ``FLWR_HOME/credentials.yaml`` holds an account
    token for the connection's address; the file is written 0600 (Flower's
    ``FileCredentialStore`` replaces it with a private temporary file).

    Returns
    -------
    str
        The token (keep only :func:`token_digest` of it anywhere else).
    """
    from flwr.cli.constant import (
        ACCESS_TOKEN_STORE_KEY,
        AUTHN_TYPE_STORE_KEY,
        REFRESH_TOKEN_STORE_KEY,
    )
    from flwr.common.constant import AuthnType
    from flwr.supercore.credential_store.file_credential_store import FileCredentialStore

    flwr_home.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    store = FileCredentialStore(flwr_home / "credentials.yaml")
    store.set(AUTHN_TYPE_STORE_KEY % address, str(AuthnType.OIDC).encode("utf-8"))
    store.set(ACCESS_TOKEN_STORE_KEY % address, token.encode("utf-8"))
    # The CLI insists on a refresh token; the front never honours a refresh.
    store.set(REFRESH_TOKEN_STORE_KEY % address, b"none")
    return token


@dataclass(frozen=True)
class Loopback:
    """Where the SuperLink itself listens: 127.0.0.1 on a private port."""

    port: int
    certificates: Certificates | None

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"


def loopback_superlink(directory: Path, *, port: int, tls: bool) -> Loopback:
    """A loopback listener for the SuperLink, with its own CA for ``127.0.0.1``.

    The federation's certificate need not name ``127.0.0.1``; this one names
    nothing else, so it is useless off this host.
    """
    if not tls:
        return Loopback(port=port, certificates=None)
    return Loopback(
        port=port,
        certificates=make_certificates(directory, hosts=("127.0.0.1",), days=365),
    )


@dataclass(frozen=True)
class Decision:
    """What the front does with one request."""

    forward: bool
    status: int = 200
    reason: str = ""


def decide(
    method: str,
    raw_path: str,
    authorization: str | None,
    *,
    operator_digest: str | None,
    fleet: frozenset[str],
    control: frozenset[str],
) -> Decision:
    """Forward Fleet calls and health checks; Control calls only with the operator's token.

    ``raw_path`` is the path exactly as sent (no decoding, no dot-segment
    removal), so only the listed paths match.
    """
    if method == "GET" and raw_path == HEALTH_PATH:
        return Decision(True)
    if method == "POST" and raw_path in fleet:
        return Decision(True)
    if method == "POST" and raw_path in control:
        if operator_digest is None:
            return Decision(False, 403, "the Control API is not served on this port")
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return Decision(False, 401, "the Control API needs the operator's credential")
        if not hmac.compare_digest(token_digest(token.strip()), operator_digest):
            return Decision(False, 401, "the Control API needs the operator's credential")
        return Decision(True)
    return Decision(False, 404, "not found")


class FleetFront:
    """ASGI app: the federation's port, forwarding only what :func:`decide` allows.

    Parameters
    ----------
    upstream : str
        The loopback SuperLink, ``127.0.0.1:PORT``.
    upstream_ca : Path or None
        The loopback CA (``None``: plain HTTP on loopback, only with ``--insecure``).
    operator_digest : str or None
        :func:`token_digest` of the operator's credential; ``None`` closes the
        Control API entirely.
    """

    def __init__(
        self, *, upstream: str, upstream_ca: Path | None, operator_digest: str | None
    ) -> None:
        self._base = f"{'https' if upstream_ca else 'http'}://{upstream}"
        self._verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(upstream_ca)) if upstream_ca else False
        )
        self._digest = operator_digest
        self._fleet = fleet_paths()
        self._control = control_paths()
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                verify=self._verify,
                timeout=httpx.Timeout(connect=10.0, read=None, write=120.0, pool=None),
                follow_redirects=False,
            )
        return self._client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        raw = scope.get("raw_path") or scope["path"].encode("utf-8")
        raw_path = raw.decode("latin-1")
        headers = [(k.decode("latin-1").lower(), v) for k, v in scope["headers"]]
        authorization = next(
            (v.decode("latin-1") for k, v in headers if k == "authorization"), None
        )
        decision = decide(
            scope["method"],
            raw_path,
            authorization,
            operator_digest=self._digest,
            fleet=self._fleet,
            control=self._control,
        )
        if not decision.forward:
            client = scope.get("client") or ("?", 0)
            log.warning(
                "refused %s %r from %s: %s",
                scope["method"],
                raw_path[:200],
                client[0],
                decision.reason,
            )
            await _reply(send, decision.status, decision.reason)
            return
        body = await _read_body(receive)
        forwarded = [(k, v) for k, v in headers if k not in _HOP_BY_HOP and k != "content-length"]
        request = self._http().build_request(
            scope["method"], self._base + raw_path, headers=forwarded, content=body
        )
        try:
            response = await self._http().send(request, stream=True)
        except httpx.HTTPError as exc:
            log.error("SuperLink unreachable on loopback: %s", exc)
            await _reply(send, 502, "the SuperLink is not reachable")
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (k, v)
                        for k, v in response.headers.raw
                        if k.decode("latin-1").lower() not in _HOP_BY_HOP
                    ],
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._http()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._client is not None:
                    await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _reply(send: Send, status: int, reason: str) -> None:
    import json

    body = json.dumps({"detail": reason}).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def front_command(
    *,
    host: str,
    port: int,
    certificates: Certificates | None,
    loopback: Loopback,
    operator_digest: str,
) -> list[str]:
    """The command line of the front (``python -m fedlearn.control_plane``)."""
    cmd = [
        sys.executable,
        "-m",
        "fedlearn.control_plane",
        "--host",
        host,
        "--port",
        str(port),
        "--upstream",
        loopback.address,
        "--operator-token-sha256",
        operator_digest,
    ]
    if certificates is not None:
        cmd += ["--certfile", str(certificates.cert), "--keyfile", str(certificates.key)]
    if loopback.certificates is not None:
        cmd += ["--upstream-ca", str(loopback.certificates.ca)]
    return cmd


def main(argv: list[str] | None = None) -> None:
    """Run the front until terminated."""
    import uvicorn

    parser = argparse.ArgumentParser(description="fedlearn's Fleet-only front of a SuperLink")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--upstream-ca")
    parser.add_argument("--operator-token-sha256", required=True)
    args = parser.parse_args(argv)
    if bool(args.certfile) != bool(args.keyfile):
        parser.error("--certfile and --keyfile go together")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    app = FleetFront(
        upstream=args.upstream,
        upstream_ca=Path(args.upstream_ca) if args.upstream_ca else None,
        operator_digest=args.operator_token_sha256,
    )
    log.info(
        "serving the Fleet API on %s:%d (Control API: operator's credential only) for the "
        "SuperLink on %s",
        args.host,
        args.port,
        args.upstream,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        ssl_certfile=args.certfile,
        ssl_keyfile=args.keyfile,
        proxy_headers=False,
        server_header=False,
        access_log=False,
        log_level="warning",
        workers=1,
    )


if __name__ == "__main__":
    main()
