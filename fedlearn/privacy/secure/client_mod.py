"""The data holder's side of secure aggregation: a client mod and a query handler.

``secure_aggregation_mod`` sits outermost on the ClientApp's train handler:
the handler (and any DP mod inside it) trains and returns the model; the mod
turns it into the protected vector ``[w·(θ_k − θ), w]`` and replies only the
mode's protected form of it. The plaintext update never leaves the mod.
``handle_secure_query`` answers the modes' stage requests (key ceremony,
SecAgg+ key sharing and unmasking, CKKS decryption of an aggregate).
"""

from __future__ import annotations

import logging
from typing import Any, cast

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from fedlearn.privacy.policy import (
    HolderPolicy,
    PolicyError,
    check_floor,
    check_query_mode,
    policy_error,
)
from fedlearn.privacy.secure.base import stage_of
from fedlearn.privacy.secure.modes import client_protocol
from fedlearn.privacy.secure.packing import client_vector, example_weight
from fedlearn.privacy.secure.stages import read_fields, read_node_ids
from fedlearn.wire import (
    EXAMPLES_KEY,
    SECURE_BLOBS,
    SECURE_GUARD_KEY,
    SECURE_MAX_EXAMPLES_KEY,
    SECURE_MODE_KEY,
    SECURE_SCALE_KEY,
    SECURE_UNIFORM_KEY,
    CkksStage,
    ErrorCode,
)

__all__ = ["handle_secure_query", "secure_aggregation_mod"]

log = logging.getLogger(__name__)


#: Stage-name prefix of each mode's requests.
_PREFIXES = {"ckks-": "ckks", "secagg-": "secagg+", "crypten-": "crypten"}


def _error(msg: Message, reason: str) -> Message:
    return Message(Error(code=ErrorCode.SECURE, reason=reason), reply_to=msg)


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Client mod: reply the protected update instead of the trained model.

    Acts only on train messages whose config names a secure mode; anything
    else passes through unchanged.
    """
    config = msg.content.config_records.get("config")
    mode = str(config.get(SECURE_MODE_KEY, "none")) if config is not None else "none"
    if mode == "none":
        return call_next(msg, context)
    assert config is not None
    server_round = int(cast(int, config.get("server-round", 0)))
    guard = context.state.config_records.get(SECURE_GUARD_KEY)
    last = int(cast(int, guard["last-round"])) if guard is not None else -1
    if server_round <= last:
        # A second protected update for a round would let sums be differenced, and
        # fresh distributed-DP noise be averaged away.
        return _error(msg, f"already sent a protected update for round {last}")
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    try:
        protocol = client_protocol(mode)
        sent = {k: a.numpy() for k, a in msg.content.array_records["arrays"].items()}
        trained = {k: a.numpy() for k, a in reply.content.array_records["arrays"].items()}
        metrics = reply.content.metric_records["metrics"]
        if bool(config.get(SECURE_UNIFORM_KEY, False)):
            weight = 1.0
        else:
            cap = int(cast(int, config.get(SECURE_MAX_EXAMPLES_KEY, 1000)))
            weight = example_weight(float(cast(float, metrics[EXAMPLES_KEY])), max_examples=cap)
        scale = float(cast(float, config.get(SECURE_SCALE_KEY, 1.0)))
        if not scale >= 1:
            raise ValueError(f"value scale {scale} must be >= 1")
        vector = client_vector(trained=trained, sent=sent, weight=weight) / scale
        protected = protocol.protect(vector, msg, context)
    except PolicyError as exc:
        return policy_error(msg, exc)
    except (KeyError, ValueError, RuntimeError) as exc:
        log.warning("secure aggregation (%s) refused this round: %s", mode, exc)
        return _error(msg, f"cannot protect the update ({mode}): {exc}")
    context.state[SECURE_GUARD_KEY] = ConfigRecord({"last-round": server_round})
    content: dict[str, Any] = {SECURE_BLOBS: protected}
    if bool(config.get(SECURE_UNIFORM_KEY, False)):
        # Under DP the count and the loss are un-noised statistics of the records:
        # only the public weight of 1 leaves, as the protected vector says.
        content["metrics"] = MetricRecord({EXAMPLES_KEY: 1})
    else:
        content.update(reply.content.metric_records)
    content.update(reply.content.config_records)  # e.g. the privacy-ledger report
    return Message(RecordDict(content), reply_to=msg)


def handle_secure_query(msg: Message, context: Context, *, simulated: bool = False) -> Message:
    """Answer a secure-aggregation stage request (``query.secure`` messages).

    The holder's policy (:mod:`fedlearn.privacy.policy`, engine defaults per
    ``simulated``) is checked first: the stage's mode must be one the holder
    accepts and the run's pinned mode, and a CKKS decryption must be of a sum
    of at least the holder's floor of contributors.
    """
    try:
        stage = stage_of(msg)
    except ValueError as exc:
        return _error(msg, str(exc))
    mode = next((m for prefix, m in _PREFIXES.items() if stage.startswith(prefix)), None)
    if mode is None:
        return _error(msg, f"unknown secure-aggregation stage {stage!r}")
    try:
        policy = HolderPolicy.from_node_config(context.node_config, simulated=simulated)
    except ValueError as exc:
        log.error("the holder's policy is invalid: %s", exc)
        return policy_error(
            msg, PolicyError("policy", "this holder's policy is invalid; nothing is answered")
        )
    try:
        check_query_mode(mode, context, policy)
        if stage == CkksStage.DECRYPT:
            # The CKKS decryptor checks its floor again on the signed contributions.
            config, _ = read_fields(msg)
            contributors = read_node_ids(config, "contributors")
            check_floor(len(contributors), context, what="the CKKS decryption", policy=policy)
    except PolicyError as exc:
        return policy_error(msg, exc)
    except ValueError as exc:
        return _error(msg, f"{stage} refused: {exc}")
    try:
        return client_protocol(mode).handle_query(msg, context)
    except PolicyError as exc:
        return policy_error(msg, exc)
    except (KeyError, ValueError, RuntimeError) as exc:
        return _error(msg, f"{stage} failed: {exc}")
