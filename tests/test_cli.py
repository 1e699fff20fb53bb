"""The command line: clear errors and next steps, before anything starts; and the
library code behind it (the demo's plan and result, the server's TLS policy)."""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import stat
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from fedlearn.cli import app
from fedlearn.config import ConfigError, RunConfig
from fedlearn.data import Dataset, write_csv
from fedlearn.demo import DemoResult, HolderClaim, plan_demo
from fedlearn.history import History
from fedlearn.tls import (
    CA_DAYS,
    SERVER_DAYS,
    Certificates,
    make_certificates,
    server_certificates,
)

runner = CliRunner()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 4)).astype(np.float32)
    data = write_csv(
        tmp_path / "mine.csv", Dataset(x, (x[:, 0] > 0).astype(np.int64)), ("no", "yes")
    )
    cfg = RunConfig.from_dict(
        {
            "federation": {"rounds": 20, "clients": 2},
            "data": {"dataset": "files", "num-features": 4, "classes": ["no", "yes"]},
            "privacy": {"local-dp": True, "target-epsilon": 4.0},
        }
    )
    config = tmp_path / "run.toml"
    config.write_text(tomli_w.dumps(cfg.to_dict()))
    return {"data": data, "config": config}


def _client(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["client", "--superlink", "127.0.0.1:1", "--insecure", *args])
    return result.exit_code, result.output


def test_client_refuses_a_budget_smaller_than_one_round(files: dict[str, Path]) -> None:
    code, output = _client(
        "--data", str(files["data"]), "--config", str(files["config"]), "--epsilon-budget", "0.01"
    )
    assert code == 2
    assert "smaller than one round" in output and "raise --epsilon-budget" in output


def test_client_checks_its_file_against_the_run_schema(files: dict[str, Path]) -> None:
    code, output = _client(
        "--data", str(files["data"]), "--config", str(files["config"]), "--label-column", "y"
    )
    assert code == 2 and "label column 'y' not found" in output


def test_client_missing_file_and_invalid_budget(files: dict[str, Path], tmp_path: Path) -> None:
    code, output = _client("--data", str(tmp_path / "nope.csv"))
    assert code == 2 and "data file not found" in output
    code, output = _client("--data", str(files["data"]), "--epsilon-budget", "-1")
    assert code == 2 and "invalid privacy budget" in output


def test_client_needs_tls_or_an_explicit_insecure(files: dict[str, Path]) -> None:
    result = runner.invoke(
        app, ["client", "--superlink", "127.0.0.1:1", "--data", str(files["data"])]
    )
    assert result.exit_code == 2 and "--root-certificates" in result.output


def test_simulate_reports_a_bad_config_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[federation]\nrounds = 0\n")
    result = runner.invoke(app, ["simulate", "--config", str(config)])
    assert result.exit_code == 2 and "federation.rounds" in result.output


def test_demo_refuses_an_out_of_range_option_before_anything_starts(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--rounds", "0", "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and "federation.rounds" in result.output
    assert "fedlearn demo --help" in result.output
    assert not (tmp_path / "run").exists()


def test_a_demo_plan_splits_the_bundled_data_among_its_holders() -> None:
    plan = plan_demo(rounds=2, clients=3, secure="none", attest=False, dp=False)
    assert len(plan.partitions) == plan.config.federation.clients == 3
    assert plan.training_examples == sum(len(p) for p in plan.partitions) > 0
    assert not plan.config.privacy.local_dp and plan.config.secure.mode == "none"
    with pytest.raises(ConfigError, match=r"privacy\.target-epsilon"):
        plan_demo(epsilon=-1.0)


def test_a_private_demo_is_compared_with_centralized_dp_sgd() -> None:
    claim = HolderClaim(
        partition=1, address="0xab", verified_rounds=2, rounds=3, claimed=15 * 10**17, balance=0
    )
    result = DemoResult(
        history=History(),
        federated_accuracy=0.75,
        centralized_accuracy=0.9,
        centralized_dp_accuracy=0.8,
        epsilon_budget=8.0,
        max_client_epsilon=7.5,
        claims=(claim,),
    )
    assert result.baseline == 0.8 and result.gap_points == 5.0
    assert list(result.to_summary()) == [
        "centralized_accuracy",
        "epsilon_budget",
        "max_client_epsilon",
        "centralized_dp_accuracy",
        "gap_points",
        "rewards",
    ]
    assert result.to_summary()["rewards"] == [
        {
            "client": 1,
            "address": "0xab",
            "verified rounds": "2/3",
            "claimed (FLR)": 1.5,
            "balance (FLR)": 0.0,
        }
    ]
    plain = DemoResult(history=History(), federated_accuracy=0.75, centralized_accuracy=0.9)
    assert plain.baseline == 0.9 and plain.gap_points == 15.0
    assert "centralized_dp_accuracy" not in plain.to_summary()


def test_the_server_refuses_insecure_with_certificates_or_supernode_auth(tmp_path: Path) -> None:
    assert server_certificates(tmp_path, host="0.0.0.0", insecure=True) is None
    with pytest.raises(ValueError, match="--insecure cannot be combined"):
        server_certificates(tmp_path, host="0.0.0.0", insecure=True, certificates=tmp_path)
    with pytest.raises(ValueError, match="--insecure cannot be combined"):
        server_certificates(tmp_path, host="0.0.0.0", insecure=True, supernode_auth=True)
    assert not any(tmp_path.iterdir())  # nothing was created


def test_the_server_creates_a_ca_covering_its_address_and_the_given_names(
    tmp_path: Path,
) -> None:
    certs = server_certificates(tmp_path / "certs", host="10.0.0.5", tls_hosts=("fl.example.org",))
    assert certs is not None and certs.ca.is_file()
    cert = x509.load_pem_x509_certificate(certs.cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == [
        "10.0.0.5",
        "127.0.0.1",
    ]
    assert names.get_values_for_type(x509.DNSName)[:2] == ["fl.example.org", "localhost"]
    assert cert.subject.rfc4514_string() == "CN=10.0.0.5"  # the listen address comes first
    wildcard = server_certificates(tmp_path / "any", host="0.0.0.0")
    assert wildcard is not None
    cert = x509.load_pem_x509_certificate(wildcard.cert.read_bytes())
    assert "0.0.0.0" not in str(cert.extensions)  # a wildcard is not a name to reach


def test_the_server_uses_the_operators_certificates_and_names_a_missing_file(
    tmp_path: Path,
) -> None:
    made = make_certificates(tmp_path / "own")
    assert server_certificates(tmp_path / "new", host="::", certificates=tmp_path / "own") == made
    assert not (tmp_path / "new").exists()  # no CA of ours beside the operator's
    made.key.unlink()
    with pytest.raises(FileNotFoundError, match=r"server\.key"):
        server_certificates(tmp_path / "new", host="::", certificates=tmp_path / "own")


# ---------------------------------------------------------------- certificates


def _server_tls(run_dir: Path, **options: Any) -> Certificates:
    certs = server_certificates(
        run_dir / "certs", host="0.0.0.0", key_directory=run_dir / "secrets" / "tls", **options
    )
    assert certs is not None
    return certs


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _handshake(certs: Certificates, ca_file: Path) -> bytes:
    """A TLS client that trusts only ``ca_file`` connects to a server presenting ``certs``."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certs.cert, certs.key)
    client = ssl.create_default_context(cafile=str(ca_file))
    near, far = socket.socketpair()

    def serve() -> None:
        try:
            with server.wrap_socket(far, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass  # the client refused us

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(near, server_hostname="localhost") as tls:
            peer = tls.getpeercert(binary_form=True)
            tls.sendall(b"x")
    finally:
        near.close()
        far.close()
        thread.join(timeout=10)
    assert peer is not None
    return peer


def test_the_servers_keys_live_apart_from_its_certificates_and_are_private(
    tmp_path: Path,
) -> None:
    old = os.umask(0o022)
    try:
        certs = _server_tls(tmp_path)
    finally:
        os.umask(old)
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == ["ca.crt", "server.pem"]
    secrets = tmp_path / "secrets" / "tls"
    assert sorted(p.name for p in secrets.iterdir()) == ["ca.key", "server.key"]
    assert certs.key == secrets / "server.key"
    assert _mode(secrets) == 0o700
    assert _mode(secrets / "ca.key") == _mode(secrets / "server.key") == 0o600
    assert _mode(certs.ca) == _mode(certs.cert) == 0o644
    ca = x509.load_pem_x509_certificate(certs.ca.read_bytes())
    cert = x509.load_pem_x509_certificate(certs.cert.read_bytes())
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert lifetime >= dt.timedelta(days=CA_DAYS) and CA_DAYS >= 3650
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime >= dt.timedelta(days=SERVER_DAYS) and SERVER_DAYS >= 365
    assert _handshake(certs, certs.ca) == cert.public_bytes(serialization.Encoding.DER)


def test_a_restarted_server_keeps_its_ca_and_certificate(tmp_path: Path) -> None:
    first = _server_tls(tmp_path)
    before = {p: p.read_bytes() for p in (first.ca, first.cert, first.key)}
    again = _server_tls(tmp_path)
    assert again == first and {p: p.read_bytes() for p in before} == before
    with pytest.raises(ValueError, match=r"does not cover \['fl\.example\.org'\].*--renew"):
        _server_tls(tmp_path, tls_hosts=("fl.example.org",))


def test_renewal_keeps_the_ca_so_holders_old_ca_crt_verifies_the_new_certificate(
    tmp_path: Path,
) -> None:
    certs = _server_tls(tmp_path)
    holder_ca = tmp_path / "holder" / "ca.crt"  # what a data holder was given
    holder_ca.parent.mkdir()
    holder_ca.write_bytes(certs.ca.read_bytes())
    old_cert, old_key = certs.cert.read_bytes(), certs.key.read_bytes()
    old_peer = _handshake(certs, holder_ca)

    renewed = _server_tls(tmp_path, renew=True, tls_hosts=("fl.example.org",))
    assert renewed == certs
    assert certs.ca.read_bytes() == holder_ca.read_bytes()  # the CA is kept
    assert certs.cert.read_bytes() != old_cert and certs.key.read_bytes() != old_key
    new_peer = _handshake(renewed, holder_ca)  # the holder's old ca.crt verifies it
    assert new_peer != old_peer
    cert = x509.load_pem_x509_certificate(certs.cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "fl.example.org" in names.get_values_for_type(x509.DNSName)
    assert _mode(certs.key) == 0o600
    # The check is real: a client trusting another CA refuses the renewed certificate.
    stranger = make_certificates(tmp_path / "stranger")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(renewed, stranger.ca)


def test_renewal_without_the_ca_key_is_refused_and_names_the_way_out(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no federation CA"):
        _server_tls(tmp_path, renew=True)
    certs = _server_tls(tmp_path)
    (tmp_path / "secrets" / "tls" / "ca.key").unlink()
    before = certs.cert.read_bytes()
    with pytest.raises(FileNotFoundError, match=r"CA's private key .*ca\.key is missing"):
        _server_tls(tmp_path, renew=True)
    assert certs.cert.read_bytes() == before  # nothing was replaced
    with pytest.raises(ValueError, match="renews a certificate from the CA fedlearn created"):
        _server_tls(tmp_path, renew=True, certificates=tmp_path / "certs")
    with pytest.raises(ValueError, match="--insecure cannot be combined"):
        server_certificates(tmp_path, host="::", insecure=True, renew=True)


def test_a_run_made_before_secrets_gets_its_server_key_moved_out_of_certs(
    tmp_path: Path,
) -> None:
    legacy = make_certificates(tmp_path / "certs", hosts=("127.0.0.1", "localhost"))
    assert legacy.key == tmp_path / "certs" / "server.key"
    key = legacy.key.read_bytes()
    certs = _server_tls(tmp_path)
    assert not legacy.key.exists() and certs.key.read_bytes() == key
    assert certs.ca == legacy.ca and certs.cert == legacy.cert
    with pytest.raises(FileNotFoundError, match="CA's private key"):
        _server_tls(tmp_path, renew=True)  # the old layout never kept the CA key


def test_server_renew_certificates_refuses_clearly_before_anything_starts(
    files: dict[str, Path], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    base = ["server", "--config", str(files["config"]), "--run-dir", str(run_dir)]
    result = runner.invoke(app, [*base, "--renew-certificates"])
    said = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 2 and "no federation CA" in said
    _server_tls(run_dir)  # what the first `fedlearn server` created
    (run_dir / "secrets" / "tls" / "ca.key").unlink()
    result = runner.invoke(app, [*base, "--renew-certificates"])
    said = " ".join(result.output.split())
    assert result.exit_code == 2, said
    assert "CA's private key" in said and "is missing" in said
    assert not (run_dir / "superlink.db").exists()  # no SuperLink was started
