"""The command line: clear errors and next steps, before anything starts; and the
library code behind it (the demo's plan and result, the server's TLS policy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tomli_w
from cryptography import x509
from typer.testing import CliRunner

from fedlearn.cli import app
from fedlearn.config import ConfigError, RunConfig
from fedlearn.data import Dataset, write_csv
from fedlearn.demo import DemoResult, HolderClaim, plan_demo
from fedlearn.history import History
from fedlearn.tls import make_certificates, server_certificates

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
