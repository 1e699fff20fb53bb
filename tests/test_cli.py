"""The command line: clear errors and next steps, before anything starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tomli_w
from typer.testing import CliRunner

from fedlearn.cli import app
from fedlearn.config import RunConfig
from fedlearn.data import Dataset, write_csv

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
