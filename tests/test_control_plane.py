"""The front's rule (fedlearn.control_plane.decide) and the operator's credential,
without processes (the end-to-end attack is in test_e2e_trust)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from fedlearn.control_plane import (
    control_paths,
    decide,
    fleet_paths,
    store_operator_credential,
    token_digest,
)

FLEET = fleet_paths()
CONTROL = control_paths()
TOKEN = "operator-secret"
DIGEST = token_digest(TOKEN)


def rule(method: str, path: str, authorization: str | None = None) -> tuple[bool, int]:
    decision = decide(
        method, path, authorization, operator_digest=DIGEST, fleet=FLEET, control=CONTROL
    )
    return decision.forward, decision.status


def test_the_paths_are_flowers_own() -> None:
    assert "/v1/fleet/pull-messages" in FLEET
    assert "/v1/fleet/register-node" in FLEET
    assert {"/v1/control/start-run", "/v1/control/stop-run", "/v1/control/list-runs"} <= CONTROL
    assert "/v1/control/register-node" in CONTROL
    assert not any(p.startswith("/v1/runtime") for p in FLEET | CONTROL)


@pytest.mark.parametrize("path", sorted(FLEET))
def test_supernodes_reach_every_fleet_path(path: str) -> None:
    assert rule("POST", path) == (True, 200)


def test_health_is_open_and_only_by_get() -> None:
    assert rule("GET", "/health") == (True, 200)
    assert rule("POST", "/health")[0] is False


@pytest.mark.parametrize("path", sorted(CONTROL))
def test_control_paths_need_the_operators_token(path: str) -> None:
    assert rule("POST", path) == (False, 401)
    assert rule("POST", path, "Bearer wrong") == (False, 401)
    assert rule("POST", path, f"Basic {TOKEN}") == (False, 401)
    assert rule("POST", path, "Bearer ") == (False, 401)
    assert rule("POST", path, f"Bearer {TOKEN}") == (True, 200)
    assert rule("POST", path, f"bearer {TOKEN}") == (True, 200)


def test_without_a_credential_the_control_api_is_closed_to_everyone() -> None:
    decision = decide(
        "POST",
        "/v1/control/list-runs",
        f"Bearer {TOKEN}",
        operator_digest=None,
        fleet=FLEET,
        control=CONTROL,
    )
    assert (decision.forward, decision.status) == (False, 403)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/runtime/acquire-task",
        "/v1/runtime/pull-messages",
        "/v1/runtime/push-messages",
        "/docs",
        "/openapi.json",
        "/v1/fleet/../control/list-runs",
        "/v1/fleet/%2e%2e/control/list-runs",
        "/v1/fleet/pull-messages/",
        "//v1/fleet/pull-messages",
        "/v1/fleet/pull-messages?x=1",
        "/V1/fleet/pull-messages",
    ],
)
def test_everything_else_is_not_found_even_for_the_operator(path: str) -> None:
    assert rule("POST", path, f"Bearer {TOKEN}") == (False, 404)
    assert rule("GET", path) == (False, 404)


def test_fleet_paths_only_by_post() -> None:
    assert rule("GET", "/v1/fleet/pull-messages") == (False, 404)


def test_the_credential_is_where_flowers_cli_reads_it_and_private(tmp_path: Path) -> None:
    from flwr.cli.constant import ACCESS_TOKEN_STORE_KEY, AUTHN_TYPE_STORE_KEY
    from flwr.supercore.credential_store.file_credential_store import FileCredentialStore

    home = tmp_path / "flwr"
    token = store_operator_credential(home, "127.0.0.1:9092")
    assert len(token) >= 40
    store = FileCredentialStore(home / "credentials.yaml")
    assert store.get(AUTHN_TYPE_STORE_KEY % "127.0.0.1:9092") == b"oidc"
    assert store.get(ACCESS_TOKEN_STORE_KEY % "127.0.0.1:9092") == token.encode()
    assert stat.S_IMODE(os.stat(home / "credentials.yaml").st_mode) == 0o600
    assert yaml.safe_load((home / "credentials.yaml").read_text())  # Flower's format
    assert store_operator_credential(home, "127.0.0.1:9092") != token  # fresh per start
