"""The strategy stack: built from the config in threat-model order, layers found by protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedlearn.attestation.session import AttestationSession
from fedlearn.client_app import default_model
from fedlearn.config import RunConfig
from fedlearn.privacy.secure.modes import server_protocol
from fedlearn.server_app import server_test_set
from fedlearn.stack import RoundRecorder, build_stack
from fedlearn.strategies import StrategyWrapper, ValidatedReplies
from fedlearn.strategies.layers import ChecksReplies, RecordsRound, layers
from fedlearn.wire import EXAMPLES_KEY, SECURE_BLOBS
from tests.flower_messages import instruction


def _cfg(**sections: dict[str, Any]) -> RunConfig:
    federation = {"clients": 3, "rounds": 2, **sections.pop("federation", {})}
    return RunConfig().with_overrides(federation=federation, **sections)


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({}, "RoundRecorder > ValidatedReplies > FedAvg"),
        (
            {"privacy": {"central-dp": "server"}},
            "RoundRecorder > ValidatedReplies > CentralDP > FedAvg",
        ),
        (
            {"secure": {"mode": "secagg+"}, "privacy": {"central-dp": "distributed"}},
            "RoundRecorder > ValidatedReplies > SecureAggregation > CentralDP > FedAvg",
        ),
        (
            {"secure": {"mode": "ckks"}, "federation": {"strategy": "fedadam"}},
            "RoundRecorder > ValidatedReplies > SecureAggregation > FedAdam",
        ),
    ],
)
def test_stack_is_built_in_threat_model_order(
    sections: dict[str, Any], expected: str, tmp_path: Path
) -> None:
    cfg = _cfg(**sections)
    protocol = server_protocol(cfg) if cfg.secure.mode != "none" else None
    stack = build_stack(cfg, run_dir=tmp_path, model_fn=default_model, protocol=protocol)
    assert stack.describe() == expected
    assert stack.inner is list(layers(stack.recorder))[-1]


def test_attested_plaintext_stack_scores_each_update_and_attests_above_it(tmp_path: Path) -> None:
    cfg = _cfg(attestation={"enabled": True})
    session = AttestationSession.open(cfg.attestation, run_dir=tmp_path, rounds=2, resume=False)
    try:
        test_set = server_test_set(cfg)
        stack = build_stack(
            cfg, run_dir=tmp_path, model_fn=default_model, test_set=test_set, session=session
        )
        assert stack.describe() == (
            "RoundRecorder > ValidatedReplies > RoundAttestation > ContributionScoring > FedAvg"
        )
        validated = next(s for s in layers(stack.recorder) if isinstance(s, ValidatedReplies))
        # The attestation layer's signature check was found, not wired by hand.
        assert [type(c).__name__ for c in validated.reply_checks] == ["RoundAttestation"]
        assert validated.payload_checks == ()
    finally:
        session.close()


class _RefuseOddNodes(StrategyWrapper):
    """A researcher's own layer: a reply check and a record field, by protocol only."""

    checks_payload: ClassVar[bool] = False

    def __init__(self, strategy: FedAvg) -> None:
        self.strategy = strategy
        self.checked: list[int] = []

    def check_reply(self, msg: Message) -> str | None:
        node = msg.metadata.src_node_id
        self.checked.append(node)
        return "odd node" if node % 2 else None

    def round_record(self) -> dict[str, Any]:
        return {"secure": {"checked": sorted(self.checked)}}


class _ProtectedPayload(StrategyWrapper):
    checks_payload: ClassVar[bool] = True

    def __init__(self, strategy: FedAvg) -> None:
        self.strategy = strategy

    def check_reply(self, msg: Message) -> str | None:
        return None if SECURE_BLOBS in msg.content.array_records else "not protected"


def _reply(node: int, content: RecordDict) -> Message:
    return Message(content=content, reply_to=instruction(RecordDict(), node_id=node))


def _plain(node: int) -> Message:
    arrays = ArrayRecord({"w": Array(np.ones(2, np.float32))})
    return _reply(node, RecordDict({"arrays": arrays, "metrics": MetricRecord({EXAMPLES_KEY: 1})}))


def test_validation_runs_every_check_the_layers_below_declare() -> None:
    custom = _RefuseOddNodes(FedAvg())
    assert isinstance(custom, ChecksReplies) and isinstance(custom, RecordsRound)
    validated = ValidatedReplies(custom, min_replies=1)
    validated._expected = {"w": ((2,), "float32")}
    arrays, _ = validated.aggregate_train(1, [_plain(2), _plain(3)])
    assert arrays is not None
    assert custom.checked == [2, 3]
    assert validated.last_report.rejected == {3: "odd node"}
    recorder = RoundRecorder(validated)
    record = recorder.record(1)
    assert record.secure == {"checked": [2, 3]}  # the custom layer's own record field
    assert record.accepted == 1 and record.rejected == {"3": "odd node"}


def test_a_payload_check_replaces_the_plaintext_array_checks() -> None:
    validated = ValidatedReplies(_ProtectedPayload(FedAvg()), min_replies=1)
    validated._expected = {"w": ((2,), "float32")}
    assert validated.check_reply(_plain(2)) == "not protected"
    protected = RecordDict(
        {
            SECURE_BLOBS: ArrayRecord({"c": Array(np.zeros(4, np.uint8))}),
            "metrics": MetricRecord({EXAMPLES_KEY: 1}),
        }
    )
    # Not an "arrays" record of the model's layout, yet accepted: the payload layer vouches.
    assert validated.check_reply(_reply(2, protected)) is None
