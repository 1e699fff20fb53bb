"""Facts the report derives from a run directory: who the holders are, what each round did.

Pure functions of a :class:`~fedlearn.report._rundir.RunView`; no HTML here.
"""

from __future__ import annotations

from fedlearn.report._rundir import Holder, RunView, integer, number, text

__all__ = [
    "BASELINE_COLOR",
    "BUDGET_COLOR",
    "MUTED",
    "PALETTE",
    "RULES",
    "SCORING",
    "SECURE",
    "applied",
    "as_dict",
    "accuracy",
    "baseline",
    "budget",
    "chain_status",
    "colors",
    "dp_configured",
    "holders",
    "items",
    "last_rounds",
    "min_updates",
    "node_label",
    "ranges",
    "refusals",
    "rule",
    "skipped",
]

PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#76b7b2",
    "#b07aa1",
    "#edc948",
    "#9c755f",
    "#ff9da7",
    "#bab0ac",
)


MUTED = "#b8b8b8"


BUDGET_COLOR = "#c0392b"


BASELINE_COLOR = "#555555"


#: Plain-language meaning of each scoring method a round record can name.
SCORING = {
    "gtg-shapley": "GTG-Shapley: Monte-Carlo Shapley values of each update's effect on the "
    "server's held-out accuracy (plaintext runs)",
    "exact-shapley": "exact Shapley values of each update's effect on the server's held-out "
    "accuracy (plaintext runs, few clients)",
    "leave-one-out": "leave-one-out: how much the server's held-out accuracy drops without "
    "each update (plaintext runs)",
    "examples": "the holder's attested, capped example count; under local DP every "
    "contributor counts once. Secure aggregation hides each update, so quality is not scored",
    "alignment (secure)": "alignment of each update with the aggregate, computed inside "
    "CrypTen's secure computation; only these scores are revealed (they sum to 1)",
}


SECURE = {
    "ckks": "CKKS homomorphic encryption: the server adds ciphertexts; the holders hold the key",
    "secagg+": "SecAgg+ masking: the server sees only the sum",
    "crypten": "CrypTen secret sharing: the compute parties reveal only the sum",
}


#: Words in a refusal or rejection reason -> the rule that refused (reasons name their rule).
RULES = (
    ("budget", "holder's privacy budget"),
    ("secagg", "secure aggregation"),
    ("ckks", "secure aggregation"),
    ("crypten", "secure aggregation"),
    ("secure", "secure aggregation"),
    ("commitment", "signed commitment (attestation)"),
    ("signature", "signed commitment (attestation)"),
    ("wallet", "signed commitment (attestation)"),
    ("nan", "reply validation"),
    ("array", "reply validation"),
    ("metric", "reply validation"),
    ("record", "reply validation"),
    ("data", "holder's data"),
    ("config", "run config"),
)


def holders(view: RunView) -> list[Holder]:
    def key(h: Holder) -> tuple[int, str, str]:
        return (int(h.name) if h.name.isdigit() and len(h.name) < 12 else 10**12, h.name, h.node)

    return sorted(view.holders.values(), key=key)


def colors(view: RunView, client: str | None) -> dict[str, str]:
    return {
        h.node: (
            PALETTE[i % len(PALETTE)]
            if not client
            else ("#d62728" if h.is_address(client) else MUTED)
        )
        for i, h in enumerate(holders(view))
    }


def accuracy(record: dict[str, object]) -> float | None:
    value = number(record.get("accuracy"))
    return value if value is not None else number(record.get("federated_accuracy"))


def applied(record: dict[str, object]) -> bool:
    return record.get("applied") is not False


def skipped(view: RunView) -> list[int]:
    return [int(r["round"]) for r in view.rounds if not applied(r)]


def baseline(view: RunView) -> float | None:
    return number(view.summary.get("centralized_accuracy"))


def budget(view: RunView) -> float | None:
    value = number(view.setting("privacy", "client-epsilon-budget"))
    return value if value is not None and value > 0 else None


def min_updates(view: RunView) -> int | None:
    return integer(view.setting("federation", "min-train-clients"))


def last_rounds(view: RunView) -> int:
    last = int(view.rounds[-1]["round"]) if view.rounds else 0
    return max(view.planned_rounds or 0, last, 1)


def rule(reason: str) -> str:
    lowered = reason.lower()
    return next((rule for word, rule in RULES if word in lowered), "–")


def refusals(view: RunView) -> list[tuple[int, str, str, str, str]]:
    """``(round, node, refused by, rule, reason)`` for every reply not used."""
    found = []
    for record in view.rounds:
        for node, reason in items(record.get("rejected")):
            why = text(reason)
            by_holder = why.startswith("client error: ")
            why = why.removeprefix("client error: ")
            found.append(
                (
                    int(record["round"]),
                    node,
                    "the holder" if by_holder else "the server's checks",
                    rule(why),
                    why,
                )
            )
    return found


def node_label(view: RunView, node: str) -> str:
    holder = view.holders.get(node)
    return f"{holder.label} (node {node})" if holder and holder.name else f"node {node}"


def items(value: object) -> list[tuple[str, object]]:
    return [(str(k), v) for k, v in value.items()] if isinstance(value, dict) else []


def as_dict(value: object) -> dict[str, object]:
    return dict(items(value))


def chain_status(view: RunView, round_: int) -> tuple[str, str, str]:
    """``(status class, status text, note)`` of a round's attestation."""
    row = view.outbox.get(round_)
    record = next((r for r in view.rounds if r.get("round") == round_), {})
    attestation = as_dict(record.get("attestation"))
    if row is not None:
        if row.status == "confirmed":
            block = f"block {row.block}" if row.block is not None else ""
            return "ok", "confirmed on chain", block
        if row.status == "conflict":
            return "bad", "conflict", row.error or "the chain holds another root for this round"
        note = f"{row.attempts or 0} attempt(s)" + (
            f"; last error: {row.error}" if row.error else ""
        )
        return "wait", f"waiting in the outbox ({row.status})", note
    if attestation.get("confirmed") is True:
        return "ok", "confirmed on chain", "as recorded at the end of the round"
    if text(attestation.get("root")):
        return "wait", "waiting in the outbox", text(attestation.get("error"))
    if not applied(record):
        return "none", "not attested", "round skipped: no update to attest"
    return "none", "not attested", text(attestation.get("error"))


def ranges(rounds: list[int]) -> str:
    parts: list[str] = []
    start = prev = rounds[0]
    for r in [*rounds[1:], None]:
        if r is not None and r == prev + 1:
            prev = r
            continue
        parts.append(f"{start}" if start == prev else f"{start}–{prev}")
        if r is not None:
            start = prev = r
    return ("round " if len(rounds) == 1 else "rounds ") + ", ".join(parts)


def dp_configured(view: RunView) -> bool | None:
    """Whether the config turns on local or central DP (None without a readable config)."""
    local = view.setting("privacy", "local-dp")
    central = view.setting("privacy", "central-dp")
    if local is None and central is None:
        return None
    return local is True or (central is not None and central != "none")
