"""The wire vocabulary: every record name, config key and error code that crosses the wire.

A Flower message between the ServerApp and a ClientApp is a ``RecordDict`` of
named ``ConfigRecord``/``MetricRecord``/``ArrayRecord`` entries. Every name that
one side writes and the other reads is defined here, once, so a layer never
imports a key from a sibling layer and a newcomer reads the whole protocol on
one page. Names inside a mode's stage records are the mode's own and stay in
its package; the stage *names* are here because the client mod routes on them.

Round messages (``train`` / ``evaluate``)
-----------------------------------------
server → client
    ``ConfigRecord "config"``: :data:`CONFIG_KEY` (the run config as JSON),
    :data:`SECURE_MODE_KEY`, :data:`SECURE_UNIFORM_KEY`, :data:`SECURE_MAX_EXAMPLES_KEY`,
    :data:`SECURE_SCALE_KEY` (secure rounds), :data:`DP_CLIP_KEY`, :data:`DP_NOISE_KEY`
    (central DP), :data:`ATTEST_RUN_ID_KEY`, :data:`ATTEST_CHAIN_ID_KEY`,
    :data:`ATTEST_LEDGER_KEY` (attested runs).
client → server
    ``ArrayRecord "arrays"`` (plaintext) or :data:`SECURE_BLOBS` (protected);
    ``MetricRecord "metrics"`` with :data:`EXAMPLES_KEY` (the weight Flower's
    strategies read through ``weighted_by_key``) and :data:`TRAIN_LOSS_KEY`;
    ``ConfigRecord`` :data:`PRIVACY_KEY` (the holder's ledger entry) and
    :data:`ATTESTATION_KEY` (signed commitment).

Secure-aggregation stages
-------------------------
Requests of type :data:`SECURE_QUERY_TYPE`; ``ConfigRecord`` :data:`SECURE_RECORD`
holds ``stage`` (one of :class:`CkksStage`, :class:`SecAggStage`,
:class:`CryptenStage`) and the stage's fields; bytes travel as ``uint8`` arrays
in the ``ArrayRecord`` :data:`SECURE_BLOBS`.

Errors
------
A client never raises across the process boundary: it replies
``Message(Error(code, reason))`` with a :class:`ErrorCode`. Reasons name the
rule that was broken and what to do, never private figures.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

__all__ = [
    "ATTESTATION_KEY",
    "ATTEST_CHAIN_ID_KEY",
    "ATTEST_LEDGER_KEY",
    "ATTEST_RUN_ID_KEY",
    "CONFIG_KEY",
    "DP_CLIP_KEY",
    "DP_NOISE_KEY",
    "EXAMPLES_KEY",
    "PRIVACY_KEY",
    "SECURE_BLOBS",
    "SECURE_CONTRIBUTORS_KEY",
    "SECURE_GUARD_KEY",
    "SECURE_MAX_EXAMPLES_KEY",
    "SECURE_MODE_KEY",
    "SECURE_QUERY_TYPE",
    "SECURE_RECORD",
    "SECURE_SCALE_KEY",
    "SECURE_UNIFORM_KEY",
    "TRAIN_LOSS_KEY",
    "CkksStage",
    "CryptenStage",
    "ErrorCode",
    "SecAggStage",
]

# --- round messages, server -> client -------------------------------------------------
#: The run config (JSON) inside the ConfigRecord the server sends with every round.
CONFIG_KEY = "fedlearn-run-config"
#: The secure mode of this round (``"none"`` for plaintext).
SECURE_MODE_KEY = "secure-mode"
#: Whether protected replies carry the public weight 1 instead of an example count.
SECURE_UNIFORM_KEY = "secure-uniform-weights"
#: Example counts are capped at this before they weigh an update.
SECURE_MAX_EXAMPLES_KEY = "secure-max-examples"
#: Clients divide their protected vector by this (keeps DP noise inside a mode's range).
SECURE_SCALE_KEY = "secure-value-scale"
#: Central DP: the clipping norm clients apply (client / distributed modes).
DP_CLIP_KEY = "dp-clipping-norm"
#: Central DP: the standard deviation of the client's noise share (distributed mode).
DP_NOISE_KEY = "dp-noise-std"
#: Attestation: the run id (hex) clients bind into their signed commitment.
ATTEST_RUN_ID_KEY = "attest-run-id"
#: Attestation: the id of the chain the run attests on (EIP-712 ``chainId`` of the signature).
ATTEST_CHAIN_ID_KEY = "attest-chain-id"
#: Attestation: the run's AttestationLedger address (EIP-712 ``verifyingContract``).
ATTEST_LEDGER_KEY = "attest-ledger"

# --- round messages, client -> server -------------------------------------------------
#: Example count (the weight Flower's strategies read through ``weighted_by_key``).
EXAMPLES_KEY = "num-examples"
#: Mean training loss of the round (absent under local DP: it is not noised).
TRAIN_LOSS_KEY = "train-loss"
#: ConfigRecord in which a client reports its privacy-ledger entry.
PRIVACY_KEY = "privacy"
#: ConfigRecord carrying the client's signed commitment to what it sent.
ATTESTATION_KEY = "attestation"
#: Metric of the aggregate reply: how many contributors a secure sum holds (server side).
SECURE_CONTRIBUTORS_KEY = "secure-contributors"

# --- secure-aggregation stages ---------------------------------------------------------
#: Message type of every protocol stage request (routed to ``@app.query("secure")``).
SECURE_QUERY_TYPE = "query.secure"
#: ConfigRecord that carries protocol fields (``stage`` first of all).
SECURE_RECORD = "secure"
#: ArrayRecord that carries binary blobs (uint8 arrays).
SECURE_BLOBS = "secure-blobs"
#: Client state key: the last round this node protected an update for.
SECURE_GUARD_KEY = "secure-last-round"


class _Stage(StrEnum):
    """A stage name; it prints as the string that travels (``'ckks-key'``)."""

    def __repr__(self) -> str:
        return repr(self.value)


class CkksStage(_Stage):
    """Stages of the CKKS mode (key ceremony, decryption) and its train message."""

    REGISTER = "ckks-register"
    DEAL = "ckks-deal"
    RESHARE = "ckks-reshare"
    KEY = "ckks-key"
    DECRYPT = "ckks-decrypt"
    TRAIN = "train"


class SecAggStage(_Stage):
    """Stages of the SecAgg+ mode (Bell et al. 2020)."""

    SETUP = "secagg-setup"
    SHARE_KEYS = "secagg-share-keys"
    TRAIN = "secagg-train"
    UNMASK = "secagg-unmask"


class CryptenStage(_Stage):
    """Stage of the CrypTen mode (shares go to the parties with the train reply)."""

    TRAIN = "crypten.train"


class ErrorCode(IntEnum):
    """Error codes of client replies (Flower reserves the small numbers).

    The code says which rule refused; the reason text says what to do next.
    """

    #: The run config sent by the server is invalid.
    CONFIG = 1001
    #: The holder's data file is missing, unreadable or does not match the schema.
    DATA = 1002
    #: The global model does not fit the local one.
    MODEL = 1003
    #: Local training failed.
    TRAINING = 1004
    #: The round would overspend the holder's privacy budget.
    BUDGET = 1005
    #: A secure-aggregation request was refused (malformed, replayed, below a floor).
    SECURE = 1006
    #: The reply could not be signed for attestation.
    ATTESTATION = 1007
    #: The request is below the holder's policy (secure mode, contributors, DP, party keys).
    POLICY = 1008
