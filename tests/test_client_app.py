"""The ClientApp, invoked with real Flower messages: bad input becomes error replies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedlearn.client_app import default_model, make_client_app
from fedlearn.config import RunConfig
from fedlearn.data import Dataset, write_csv
from fedlearn.wire import CONFIG_KEY, EXAMPLES_KEY, ErrorCode
from tests.flower_messages import instruction

CFG = RunConfig.from_dict(
    {
        "federation": {"rounds": 1, "clients": 2},
        "data": {"dataset": "files", "num-features": 4, "classes": ["no", "yes"]},
        "model": {"hidden": [8]},
    }
)


def train_message(cfg: RunConfig = CFG, arrays: ArrayRecord | None = None) -> Message:
    if arrays is None:
        arrays = ArrayRecord(default_model(cfg).state_dict())
    config = ConfigRecord({CONFIG_KEY: cfg.to_json(), "server-round": 1})
    return instruction(RecordDict({"arrays": arrays, "config": config}), node_id=5)


def context(**node_config: object) -> Context:
    # These holders opted in to plaintext rounds (tests/test_holder_policy.py: the default refuses).
    node_config = {"allow-plaintext": True, **node_config}
    return Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config={})


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    return write_csv(tmp_path / "holder.csv", Dataset(x, y), ("no", "yes"))


def test_trains_on_own_csv_and_returns_update_of_the_same_layout(csv_file: Path) -> None:
    request = train_message()
    reply = make_client_app()(request, context(**{"data-path": str(csv_file)}))
    assert not reply.has_error(), reply.error
    sent = request.content["arrays"]
    returned = reply.content["arrays"]
    assert returned.keys() == sent.keys()
    assert all(returned[k].shape == sent[k].shape for k in sent)
    assert any(not np.array_equal(returned[k].numpy(), sent[k].numpy()) for k in sent)
    holdout = round(40 * CFG.data.validation_fraction)
    assert reply.content["metrics"][EXAMPLES_KEY] == 40 - holdout


def _data_refusal(reply: Any, caplog: pytest.LogCaptureFixture, detail: str) -> None:
    """The server learns the rule; the holder's own log has the detail (path, row, value)."""
    assert reply.has_error() and reply.error.code == ErrorCode.DATA
    assert reply.error.reason.startswith("data:") and detail not in reply.error.reason
    assert detail in caplog.text


def test_missing_data_file_is_an_error_reply_naming_the_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reply = make_client_app()(train_message(), context(**{"data-path": str(tmp_path / "x.csv")}))
    _data_refusal(reply, caplog, "x.csv")
    assert "data file not found" in caplog.text


def test_wrong_label_column_is_reported_before_training(
    csv_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = context(**{"data-path": str(csv_file), "label-column": "outcome"})
    reply = make_client_app()(train_message(), node)
    _data_refusal(reply, caplog, "label column 'outcome' not found")


def test_labels_outside_declared_classes(csv_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = CFG.with_overrides(data={"classes": ["a", "b"]})
    reply = make_client_app()(train_message(cfg), context(**{"data-path": str(csv_file)}))
    _data_refusal(reply, caplog, "not one of the declared classes")


def test_global_model_of_another_shape_is_refused(csv_file: Path) -> None:
    wrong = ArrayRecord({"0.weight": Array(np.zeros((3, 3), np.float32))})
    reply = make_client_app()(train_message(arrays=wrong), context(**{"data-path": str(csv_file)}))
    assert reply.error.code == ErrorCode.MODEL


def test_message_without_run_config_is_refused(csv_file: Path) -> None:
    arrays = ArrayRecord(default_model(CFG).state_dict())
    bare = instruction(
        RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})}), node_id=5
    )
    reply = make_client_app()(bare, context(**{"data-path": str(csv_file)}))
    assert reply.error.code == ErrorCode.CONFIG


def test_same_round_and_seed_give_the_same_update(csv_file: Path) -> None:
    node = context(**{"data-path": str(csv_file), "partition-id": 3})
    arrays = ArrayRecord(default_model(CFG).state_dict())
    first = make_client_app()(train_message(arrays=arrays), node).content["arrays"]
    second = make_client_app()(train_message(arrays=arrays), node).content["arrays"]
    for key in first:
        torch.testing.assert_close(first[key].numpy(), second[key].numpy(), rtol=0, atol=0)
