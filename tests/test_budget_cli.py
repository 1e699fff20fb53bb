"""`fedlearn budget`: what a holder has spent on its records, whatever the file is called."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import tomli_w
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from typer.testing import CliRunner

from fedlearn.cli import app
from fedlearn.client_app import default_model, make_client_app
from fedlearn.config import RunConfig
from fedlearn.data import Dataset, write_csv
from fedlearn.wire import CONFIG_KEY, PRIVACY_KEY
from tests.flower_messages import instruction

runner = CliRunner()
CFG = RunConfig.from_dict(
    {
        "federation": {"rounds": 4, "clients": 2},
        "data": {"dataset": "files", "num-features": 4, "classes": ["no", "yes"]},
        "model": {"hidden": [8]},
        "privacy": {"local-dp": True, "noise-multiplier": 1.0, "max-grad-norm": 1.0},
        "train": {"batch-size": 8},
    }
)


def _holder(tmp_path: Path) -> tuple[Path, Path, Path]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(48, 4)).astype(np.float32)
    data = write_csv(
        tmp_path / "export.csv", Dataset(x, (x[:, 1] > 0).astype(np.int64)), ("no", "yes")
    )
    config = tmp_path / "run.toml"
    config.write_text(tomli_w.dumps(CFG.to_dict()))
    return data, config, tmp_path / "ledgers"


def _round(data: Path, ledgers: Path, server_round: int) -> float:
    node = {
        "data-path": str(data),
        "ledger-dir": str(ledgers),
        "partition-id": 0,
        "allow-plaintext": True,
    }
    arrays = ArrayRecord(default_model(CFG).state_dict())
    config = ConfigRecord({CONFIG_KEY: CFG.to_json(), "server-round": server_round})
    msg = instruction(RecordDict({"arrays": arrays, "config": config}), node_id=3)
    context = Context(run_id=1, node_id=3, node_config=node, state=RecordDict(), run_config={})
    reply = make_client_app()(msg, context)
    assert not reply.has_error(), reply.error
    return float(reply.content[PRIVACY_KEY]["epsilon"])


def test_budget_shows_the_spending_of_a_copied_file_and_what_remains(tmp_path: Path) -> None:
    data, config, ledgers = _holder(tmp_path)
    _round(data, ledgers, 1)
    spent = _round(data, ledgers, 2)
    copy = tmp_path / "moved" / "same rows.csv"
    copy.parent.mkdir()
    shutil.copy(data, copy)
    args = ["budget", "--data", str(copy), "--config", str(config), "--ledger-dir", str(ledgers)]
    result = runner.invoke(app, [*args, "--epsilon-budget", "20"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert f"ε = {spent:.4f}" in result.output  # the copy is charged as the same records
    assert f"{20 - spent:.4f}" in result.output
    assert result.output.count(" 48 ") >= 2  # both rounds used all 48 records


def test_budget_of_new_data_is_zero_and_a_deleted_ledger_fails_closed(tmp_path: Path) -> None:
    data, config, ledgers = _holder(tmp_path)
    args = ["budget", "--data", str(data), "--config", str(config), "--ledger-dir", str(ledgers)]
    fresh = runner.invoke(app, args, terminal_width=200)
    assert fresh.exit_code == 0 and "ε = 0.0000" in fresh.output
    _round(data, ledgers, 1)
    (ledgers / "records.json").unlink()
    missing = runner.invoke(app, args, terminal_width=200)
    assert missing.exit_code != 0 and "is missing" in missing.output
