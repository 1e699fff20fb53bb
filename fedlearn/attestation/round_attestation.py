"""``RoundAttestation``: score, attest and reward every round's contributions.

A strategy wrapper placed inside :class:`~fedlearn.strategies.ValidatedReplies`
(its :meth:`RoundAttestation.check_reply` runs there, so an update whose
signed commitment does not check out is never used):

1. ``configure_train`` names what clients sign for: the run id, the chain
   id and the ``AttestationLedger`` address of the run's deployment;
2. ``check_reply`` verifies each reply's EIP-712 signature over
   ``(run id, round, commitment to exactly the bytes received)`` in the
   domain of *this* deployment's chain and ledger, and pins each node to the
   first address it signed with (a node cannot switch wallets mid-run; a
   signature replayed from another round, run, chain or ledger fails);
3. ``aggregate_train`` lets the wrapped strategy aggregate, then builds one
   Merkle leaf per client whose update is in the aggregate (address,
   commitment, score, capped examples, ε spent, reward), writes the round's
   bundle with every proof to ``RUN_DIR/attestations``, puts the root and
   the aggregate's hash in the durable outbox and flushes it: one
   transaction per round, whatever the number of clients.

Who is in the aggregate and how each scored come from the layers below,
through the stack protocols of :mod:`fedlearn.strategies.layers`: a
``ReportsContributors`` layer (secure aggregation) names the contributors,
else every accepted reply is one; the first ``ScoresContributions`` layer
that scored every contributor gives the scores (contribution scoring in
plaintext runs, scores computed inside a secure mode). Where no layer can
score, the score is the client's attested example count (capped), every
contributor counting once: honest, not per-update quality (said in the record).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast

from eth_utils.crypto import keccak
from eth_utils.hexadecimal import encode_hex
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedlearn.attestation.bundle import RoundBundle
from fedlearn.attestation.chain import ChainError, Contracts
from fedlearn.attestation.client_mod import payload_bytes
from fedlearn.attestation.hexutil import to_bytes32
from fedlearn.attestation.leaves import Contribution, round_leaves
from fedlearn.attestation.outbox import Outbox, OutboxError
from fedlearn.attestation.signing import (
    SignatureError,
    SignedCommitment,
    SigningDomain,
    check_signed_commitment,
)
from fedlearn.files import write_atomically
from fedlearn.strategies.layers import (
    ReportsContributors,
    RoundScores,
    ScoresContributions,
    layers,
)
from fedlearn.strategies.wrapper import StrategyWrapper
from fedlearn.wire import (
    ATTEST_CHAIN_ID_KEY,
    ATTEST_LEDGER_KEY,
    ATTEST_RUN_ID_KEY,
    ATTESTATION_KEY,
    EXAMPLES_KEY,
    PRIVACY_KEY,
)

__all__ = ["ClientReward", "RoundAttestation", "RoundAttestationReport"]

log = logging.getLogger(__name__)


@dataclass
class ClientReward:
    """One client's attested contribution to a round."""

    address: str
    score: float
    examples: int
    epsilon: float | None
    reward: int


@dataclass
class RoundAttestationReport:
    """What the attestation layer did in one round (for the round record)."""

    scoring: str = ""
    evaluations: int = 0
    clients: dict[int, ClientReward] = field(default_factory=dict)
    root: str = ""
    aggregate_hash: str = ""
    confirmed: bool = False
    pending_rounds: int = 0
    error: str = ""

    def to_record(self) -> dict[str, Any]:
        """The round-record fields this report fills in."""
        return {
            "contributions": {
                f"node{node}": {
                    "address": c.address,
                    "score": c.score,
                    "examples": c.examples,
                    "epsilon": c.epsilon,
                    "reward": str(c.reward),  # uint256 base units: JSON numbers lose digits
                }
                for node, c in self.clients.items()
            },
            "attestation": {
                "scoring": self.scoring,
                "evaluations": self.evaluations,
                "root": self.root,
                "aggregate-hash": self.aggregate_hash,
                "confirmed": self.confirmed,
                "pending-rounds": self.pending_rounds,
                "error": self.error,
            },
        }


class RoundAttestation(StrategyWrapper):
    """Attest every round's contributions on chain through a durable outbox.

    Parameters
    ----------
    strategy : Strategy
        What aggregates the validated replies (possibly a secure-aggregation
        or contribution-scoring layer around the configured strategy; they are
        found through the stack protocols, see the module docstring).
    run_id : bytes
        The run's 32-byte id (the same after a resume).
    run_dir : Path
        Bundles go to ``run_dir/attestations``; pinned addresses too.
    outbox : Outbox
        The durable outbox (SQLite) attestations wait in until confirmed.
    contracts : Contracts
        The deployed ledger and reward pool (with the coordinator account);
        their deployment's chain id and ledger address are the signatures'
        domain.
    budget : int
        Reward token base units a round pays out, pro rata to scores.
    max_examples : int
        Cap on the example count a client is attested (and scored) with.
    flush_seconds : float, default 10.0
        How long a round waits for the chain before the run goes on.
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        run_id: bytes,
        run_dir: Path,
        outbox: Outbox,
        contracts: Contracts,
        budget: int,
        max_examples: int,
        flush_seconds: float = 10.0,
    ) -> None:
        run_id = to_bytes32("run_id", run_id)
        if budget < 0 or max_examples < 1 or flush_seconds <= 0:
            raise ValueError("budget must be >= 0, max_examples >= 1, flush_seconds > 0")
        self.strategy = strategy
        self.run_id = run_id
        self.dir = Path(run_dir) / "attestations"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.outbox = outbox
        self.contracts = contracts
        # Contracts.load/deploy checked the chain id against the chain itself.
        self.domain = SigningDomain(
            chain_id=contracts.deployment.chain_id, ledger=contracts.deployment.ledger
        )
        self.budget = budget
        self.max_examples = max_examples
        self._contributors = next(
            (s for s in layers(strategy) if isinstance(s, ReportsContributors)), None
        )
        self._scorers = [s for s in layers(strategy) if isinstance(s, ScoresContributions)]
        self.flush_seconds = flush_seconds
        self.last_report = RoundAttestationReport()
        self._addresses_file = self.dir / "addresses.json"
        self._addresses: dict[int, str] = (
            {int(k): v for k, v in json.loads(self._addresses_file.read_text()).items()}
            if self._addresses_file.exists()
            else {}
        )
        self._round = 0
        self._signed: dict[int, SignedCommitment] = {}

    #: Its reply check is about the signature, not the payload (see ``ChecksReplies``).
    checks_payload: ClassVar[bool] = False

    def round_record(self) -> dict[str, Any]:
        """Each attested client's score, examples, ε and reward; the round's root."""
        return self.last_report.to_record()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Name the run id, chain and ledger clients sign for, then delegate."""
        self._round = server_round
        self._signed = {}
        self.last_report = RoundAttestationReport()
        config[ATTEST_RUN_ID_KEY] = encode_hex(self.run_id)
        config[ATTEST_CHAIN_ID_KEY] = self.domain.chain_id
        config[ATTEST_LEDGER_KEY] = self.domain.ledger
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def check_reply(self, msg: Message) -> str | None:
        """Why a reply's signed commitment is unusable (``None`` if it checks out)."""
        if msg.has_error():
            return f"client error: {msg.error.reason}"
        record = msg.content.config_records.get(ATTESTATION_KEY)
        if record is None:
            return "no signed commitment (attested runs need one from every client)"
        node = msg.metadata.src_node_id
        try:
            signed = SignedCommitment.from_dict(dict(record))
            address = check_signed_commitment(
                signed=signed,
                domain=self.domain,
                run_id=self.run_id,
                expected_round=self._round,
                payload=payload_bytes(msg.content),
                expected_address=self._addresses.get(node),
            )
        except (SignatureError, ValueError) as exc:
            return f"signed commitment rejected: {exc}"
        epsilon = _epsilon(msg)
        if epsilon is not None and not (epsilon >= 0):  # NaN fails too
            return f"reported ε {epsilon} is not a number >= 0"
        others = [n for n, a in self._addresses.items() if a == address and n != node]
        if others:
            return f"wallet {address} already signs for node {others[0]}"
        if node not in self._addresses:
            self._addresses[node] = address
            text = json.dumps(self._addresses, indent=1).encode()
            write_atomically(self._addresses_file, text, mode=0o644)  # public, like bundles
        self._signed[node] = signed
        return None

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate, then score and attest the clients in the aggregate."""
        replies = list(replies)
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if arrays is None:
            return arrays, metrics
        report = self.last_report
        by_node = {m.metadata.src_node_id: m for m in replies}
        named = self._contributors.round_contributors() if self._contributors else None
        in_aggregate = list(by_node) if named is None else named
        contributors = [n for n in in_aggregate if n in by_node and n in self._signed]
        scores, report.scoring, report.evaluations = self._scores(contributors, by_node)
        contributions = [
            Contribution(
                client=self._addresses[node],
                commitment=self._signed[node].commitment,
                score=max(0.0, scores[node]),
                examples=_examples(by_node[node]),
                epsilon=_epsilon(by_node[node]),
            )
            for node in contributors
        ]
        if not contributions:
            report.error = "no attested client in the aggregate"
            return arrays, metrics
        try:
            leaves = round_leaves(
                run_id=self.run_id,
                round=server_round,
                contributions=contributions,
                budget=self.budget,
                max_examples=self.max_examples,
                negative_scores="zero",
            )
            aggregate_hash = keccak(payload_bytes(RecordDict({"arrays": arrays})))
            bundle = RoundBundle.build(
                leaves=leaves, aggregate_hash=aggregate_hash, budget=self.budget
            )
        except ValueError as exc:  # never stop the federation over its attestation
            report.error = f"round not attested: {exc}"
            log.error("round %d: %s", server_round, report.error)
            return arrays, metrics
        earlier = self.outbox.get(run_id=self.run_id, round=server_round)
        if earlier is not None and earlier.root != bundle.root:
            # A resumed run re-ran a round attested before the crash: the published
            # bundle must keep matching the root already in the outbox (or on chain).
            report.error = (
                f"round {server_round} was attested before the run was resumed; the "
                "re-run round keeps the earlier attestation and rewards"
            )
            log.warning("%s", report.error)
            return arrays, metrics
        try:
            self.outbox.put(
                run_id=self.run_id,
                round=server_round,
                root=bundle.root,
                aggregate_hash=aggregate_hash,
            )
        except OutboxError as exc:
            report.error = str(exc)
            log.error("round %d: attestation not queued: %s", server_round, exc)
            return arrays, metrics
        bundle.write(self.dir.parent)
        for node, leaf, contribution in zip(contributors, leaves, contributions, strict=True):
            report.clients[node] = ClientReward(
                address=leaf.client,
                score=scores[node],
                examples=leaf.examples,
                epsilon=contribution.epsilon,
                reward=leaf.amount,
            )
        report.root = encode_hex(bundle.root)
        report.aggregate_hash = encode_hex(aggregate_hash)
        try:
            result = self.outbox.flush(self.contracts, deadline=self.flush_seconds)
        except (OutboxError, ChainError) as exc:
            report.error = str(exc)
            log.error("round %d: attestation not posted: %s", server_round, exc)
        else:
            report.confirmed = (self.run_id, server_round) in result.confirmed or all(
                e.round != server_round for e in result.pending
            )
            report.pending_rounds = len(result.pending)
            if result.error:
                report.error = result.error
                log.warning(
                    "round %d: %d attestation(s) wait in the outbox: %s",
                    server_round,
                    len(result.pending),
                    result.error,
                )
        return arrays, metrics

    def _scores(
        self, contributors: list[int], by_node: dict[int, Message]
    ) -> tuple[dict[int, float], str, int]:
        for layer in self._scorers:
            scored: RoundScores | None = layer.round_scores()
            if scored is None or not contributors:
                continue
            if all(n in scored.scores for n in contributors):
                scores = {n: scored.scores[n] for n in contributors}
                return scores, scored.method, scored.evaluations
        # No per-update score: the attested, capped example count of each contributor.
        return (
            {n: float(min(_examples(by_node[n]), self.max_examples)) for n in contributors},
            "examples",
            0,
        )


def _examples(msg: Message) -> int:
    for metrics in msg.content.metric_records.values():
        if EXAMPLES_KEY in metrics:
            return max(0, int(cast(float, metrics[EXAMPLES_KEY])))
    return 0


def _epsilon(msg: Message) -> float | None:
    report = msg.content.config_records.get(PRIVACY_KEY)
    value: Any = report.get("epsilon") if report is not None else None
    return float(value) if isinstance(value, int | float) else None
