"""The report page: one HTML document, styles inline, no script, every run-dir string escaped.

The page reads top to bottom as a reader asks: how did it go (the few numbers
that matter), what did it cost each holder in privacy, what happened in each
round, who contributed what, is it on chain and how do I check, and what
exactly ran. Each section has a one-paragraph caption in plain language.

Strings from the run directory (client names, reasons, addresses, config
values) are untrusted: they pass through :func:`_e` (``html.escape`` with
quotes) and never into a tag or attribute name; colours and classes come
from this module only. A Content-Security-Policy that allows no script and
no network load is the second line of defence.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from html import escape
from importlib import metadata

from fedlearn.report._rundir import (
    TOKEN_DECIMALS,
    Holder,
    RunView,
    integer,
    number,
    text,
)
from fedlearn.report._svg import BarItem, Rule, Series, bar_chart, line_chart

__all__ = ["render"]

_PALETTE = (
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
_MUTED = "#b8b8b8"
_BUDGET = "#c0392b"
_BASELINE = "#555555"
_LONG_TABLE = 40  # rows; longer tables fold into <details>

#: Plain-language meaning of each scoring method a round record can name.
_SCORING = {
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
_SECURE = {
    "ckks": "CKKS homomorphic encryption: the server adds ciphertexts; the holders hold the key",
    "secagg+": "SecAgg+ masking: the server sees only the sum",
    "crypten": "CrypTen secret sharing: the compute parties reveal only the sum",
}
#: Words in a refusal or rejection reason -> the rule that refused (reasons name their rule).
_RULES = (
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


def _e(value: object) -> str:
    return escape(text(value), quote=True)


def _f(value: float | None, spec: str = ".4f") -> str:
    return "–" if value is None else format(value, spec)


def _flr(base_units: int) -> str:
    return f"{Decimal(base_units) / Decimal(10) ** TOKEN_DECIMALS:,.2f}"


def _bytes(count: int | None) -> str:
    if count is None:
        return "–"
    units = ((1e9, "GB"), (1e6, "MB"), (1e3, "kB"))
    scale, unit = next(((s, u) for s, u in units if count >= s), (1.0, "B"))
    return f"{count / scale:.1f} {unit}" if unit != "B" else f"{count} B"


def _code(value: object, cls: str = "hash") -> str:
    return f'<code class="{cls}">{_e(value)}</code>' if text(value) else "–"


def _short(value: object) -> str:
    """A long hex value as ``0x12ab…9f0e``; the whole value in the tooltip."""
    full = text(value)
    if not full:
        return "–"
    shown = f"{full[:6]}…{full[-4:]}" if len(full) > 14 else full
    return f'<code class="short" title="{_e(full)}">{_e(shown)}</code>'


def _table(headers: Sequence[str], rows: Iterable[tuple[str, Sequence[str]]], cls: str = "") -> str:
    """``rows`` are ``(row class, cells)``; cells are already HTML."""
    rows = list(rows)
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        f'<tr class="{c}">' + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"
        for c, cells in rows
    )
    table = f'<div class="table-wrap"><table class="{cls}"><thead><tr>{head}</tr></thead>'
    table += f"<tbody>{body}</tbody></table></div>"
    if len(rows) > _LONG_TABLE:
        return f"<details><summary>{len(rows)} rows</summary>{table}</details>"
    return table


def _legend(entries: Iterable[tuple[str, str, str]]) -> str:
    """``(label, colour, style)`` with style ``line``, ``dashed`` or ``band``."""
    items = "".join(
        f'<li><span class="key {style}" style="--c:{color}"></span>{_e(label)}</li>'
        for label, color, style in entries
    )
    return f'<ul class="legend">{items}</ul>' if items else ""


def _section(anchor: str, title: str, caption: str, body: str) -> str:
    return (
        f'<section id="{anchor}"><h2>{_e(title)}</h2>'
        f'<p class="caption">{caption}</p>{body}</section>'
    )


def _stat(value: str, label: str, note: str = "", cls: str = "") -> str:
    note_html = f'<div class="note">{note}</div>' if note else ""
    return (
        f'<div class="stat {cls}" data-stat="{_e(label)}"><div class="value">{value}</div>'
        f'<div class="label">{_e(label)}</div>{note_html}</div>'
    )


# ---------------------------------------------------------------------------- facts


def _holders(view: RunView) -> list[Holder]:
    def key(h: Holder) -> tuple[int, str, str]:
        return (int(h.name) if h.name.isdigit() and len(h.name) < 12 else 10**12, h.name, h.node)

    return sorted(view.holders.values(), key=key)


def _colors(view: RunView, client: str | None) -> dict[str, str]:
    return {
        h.node: (
            _PALETTE[i % len(_PALETTE)]
            if not client
            else ("#d62728" if h.is_address(client) else _MUTED)
        )
        for i, h in enumerate(_holders(view))
    }


def _accuracy(record: dict[str, object]) -> float | None:
    value = number(record.get("accuracy"))
    return value if value is not None else number(record.get("federated_accuracy"))


def _applied(record: dict[str, object]) -> bool:
    return record.get("applied") is not False


def _skipped(view: RunView) -> list[int]:
    return [int(r["round"]) for r in view.rounds if not _applied(r)]


def _baseline(view: RunView) -> float | None:
    return number(view.summary.get("centralized_accuracy"))


def _budget(view: RunView) -> float | None:
    value = number(view.setting("privacy", "client-epsilon-budget"))
    return value if value is not None and value > 0 else None


def _min_updates(view: RunView) -> int | None:
    return integer(view.setting("federation", "min-train-clients"))


def _last_rounds(view: RunView) -> int:
    last = int(view.rounds[-1]["round"]) if view.rounds else 0
    return max(view.planned_rounds or 0, last, 1)


def _rule(reason: str) -> str:
    lowered = reason.lower()
    return next((rule for word, rule in _RULES if word in lowered), "–")


def _refusals(view: RunView) -> list[tuple[int, str, str, str, str]]:
    """``(round, node, refused by, rule, reason)`` for every reply not used."""
    found = []
    for record in view.rounds:
        for node, reason in _mapping_items(record.get("rejected")):
            why = text(reason)
            by_holder = why.startswith("client error: ")
            why = why.removeprefix("client error: ")
            found.append(
                (
                    int(record["round"]),
                    node,
                    "the holder" if by_holder else "the server's checks",
                    _rule(why),
                    why,
                )
            )
    return found


def _node_label(view: RunView, node: str) -> str:
    holder = view.holders.get(node)
    return f"{holder.label} (node {node})" if holder and holder.name else f"node {node}"


def _mapping_items(value: object) -> list[tuple[str, object]]:
    return [(str(k), v) for k, v in value.items()] if isinstance(value, dict) else []


def _dict(value: object) -> dict[str, object]:
    return dict(_mapping_items(value))


def _chain_status(view: RunView, round_: int) -> tuple[str, str, str]:
    """``(status class, status text, note)`` of a round's attestation."""
    row = view.outbox.get(round_)
    record = next((r for r in view.rounds if r.get("round") == round_), {})
    attestation = _dict(record.get("attestation"))
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
    if not _applied(record):
        return "none", "not attested", "round skipped: no update to attest"
    return "none", "not attested", text(attestation.get("error"))


# ---------------------------------------------------------------------------- sections


def _header(view: RunView, client: str | None, made: str) -> str:
    planned = view.planned_rounds
    done = len(view.rounds)
    progress = f"{done} of {planned} rounds" if planned else f"{done} round(s)"
    detail = text(view.status.get("detail"))
    banner = {
        "completed": "",
        "running": (
            f'<p class="banner running"><strong>In progress.</strong> This page shows the '
            f"{progress} recorded so far in history.json (as of {_e(made)}); write the report "
            "again for later rounds. If no server is running any more, the run stopped "
            "without recording why: continue it with <code>--resume RUN_DIR</code>.</p>"
        ),
        "failed": (
            f'<p class="banner failed" id="failure"><strong>This run failed</strong> after '
            f'{progress}: <span class="reason">{_e(detail) or "no reason recorded"}</span>. '
            "See logs/server.log in the run directory; rounds recorded before the failure "
            "are shown below.</p>"
        ),
        "unknown": (
            '<p class="banner unknown"><strong>No status.</strong> The run directory has no '
            "readable status.json: the run has not started, or the directory is not a "
            "complete fedlearn run. What it holds is shown below.</p>"
        ),
    }[view.state]
    holder = ""
    if client:
        found = view.holder_of(client)
        holder = (
            f'<p class="banner holder">Holder view: <code class="hash">{_e(client)}</code> is '
            f'highlighted in every section (<a href="#holder">its record</a>).</p>'
            if found
            else f'<p class="banner unknown">Holder view: <code class="hash">{_e(client)}</code> '
            "does not appear in this run's records.</p>"
        )
    return (
        f'<header><h1>Run report: <span class="run-name">{_e(view.run_dir.name)}</span></h1>'
        f'<p class="meta"><span class="state state-{view.state}">{view.state}</span> · '
        f"{_e(progress)} · report made {_e(made)}</p>{banner}{holder}</header>"
    )


def _summary(view: RunView, client: str | None) -> str:
    stats = []
    last = next((r for r in reversed(view.rounds) if _accuracy(r) is not None), None)
    baseline = _baseline(view)
    if last is not None:
        accuracy = _accuracy(last)
        where = (
            "server's held-out data"
            if number(last.get("accuracy")) is not None
            else ("holders' own validation data")
        )
        note = f"after round {_e(last['round'])}, on the {where}"
        if baseline is not None and accuracy is not None:
            gap = 100 * (accuracy - baseline)
            note += f"; centralized baseline {baseline:.3f} ({gap:+.1f} points)"
        stats.append(_stat(_f(accuracy, ".3f"), "accuracy", note))
    holders = _holders(view)
    spent = [max(h.epsilon.values()) for h in holders if h.epsilon]
    budget = _budget(view)
    central = [number(_dict(r.get("central_privacy")).get("epsilon")) for r in view.rounds]
    central_values = [c for c in central if c is not None]
    if spent:
        of = f"budget ε = {budget:g} each; " if budget is not None else ""
        stats.append(
            _stat(
                f"ε {max(spent):.3f}",
                "largest privacy loss of a holder",
                f"{of}δ = {_e(view.setting('privacy', 'delta'))}; local DP-SGD",
            )
        )
    if central_values:
        stats.append(
            _stat(
                f"ε {central_values[-1]:.3f}",
                "privacy loss of the aggregate",
                "central DP (user level)",
            )
        )
    if not spent and not central_values:
        stats.append(
            _stat("none", "differential privacy", "no holder reported a privacy loss", "warn")
        )
    skipped = _skipped(view)
    refusals = _refusals(view)
    planned = view.planned_rounds
    note = f"{len(skipped)} skipped, {len(refusals)} update(s) refused or set aside"
    stats.append(
        _stat(f"{len(view.rounds)}" + (f" / {planned}" if planned else ""), "rounds", note)
    )
    mode = text(view.setting("secure", "mode")) or next(
        (text(_dict(r.get("secure")).get("mode")) for r in view.rounds if r.get("secure")), ""
    )
    if mode and mode != "none":
        stats.append(_stat(_e(mode), "secure aggregation", _e(_SECURE.get(mode, ""))))
    else:
        stats.append(_stat("none", "secure aggregation", "the server sees every update", "warn"))
    if view.attested:
        rounds = [int(r["round"]) for r in view.rounds if _dict(r.get("attestation")).get("root")]
        rounds = sorted(set(rounds) | set(view.outbox))
        confirmed = sum(1 for r in rounds if _chain_status(view, r)[0] == "ok")
        waiting = sum(1 for r in rounds if _chain_status(view, r)[0] == "wait")
        stats.append(
            _stat(
                f"{confirmed} / {len(rounds)}",
                "rounds confirmed on chain",
                f"{waiting} waiting in the outbox"
                if waiting
                else "every attested round (skipped rounds have nothing to attest)",
                "warn" if waiting else "",
            )
        )
        paid = sum(h.reward for h in holders)
        payees = sum(1 for h in holders if h.reward)
        stats.append(
            _stat(_flr(paid), "FLR earned", f"by {payees} holder(s), claimable with proofs")
        )
    if client and (me := view.holder_of(client)) is not None:
        mine = max(me.epsilon.values()) if me.epsilon else None
        stats.append(
            _stat(
                _flr(me.reward),
                "FLR earned by this holder",
                f"{len(me.contributions)} round(s) attested; ε {_f(mine, '.3f')}",
                "me",
            )
        )
    return _section(
        "summary",
        "The run at a glance",
        "The numbers that matter first. Each is explained in its section below.",
        f'<div class="stats">{"".join(stats)}</div>',
    )


def _accuracy_section(view: RunView) -> str:
    rounds = _last_rounds(view)
    skipped = _skipped(view)

    def series(key: str, label: str, color: str, dashed: bool = False) -> Series | None:
        points = [
            (float(r["round"]), v) for r in view.rounds if (v := number(r.get(key))) is not None
        ]
        return Series(label, points, color, dashed=dashed) if points else None

    acc = [
        s
        for s in (
            series("accuracy", "server test accuracy", _PALETTE[0]),
            series("federated_accuracy", "holders' validation accuracy", _PALETTE[1], True),
        )
        if s
    ]
    loss = [
        s
        for s in (
            series("loss", "server test loss", _PALETTE[0]),
            series("federated_loss", "holders' validation loss", _PALETTE[1], True),
            series("train_loss", "training loss", _PALETTE[2], True),
        )
        if s
    ]
    baseline = _baseline(view)
    rules = [Rule(baseline, "centralized baseline", _BASELINE)] if baseline is not None else []
    band = [("skipped round (model unchanged)", "#e6e6e6", "band")] if skipped else []
    charts = []
    if acc or rules:
        legend = [(s.label, s.color, "dashed" if s.dashed else "line") for s in acc]
        legend += [(f"centralized baseline {baseline:.3f}", _BASELINE, "dashed")] if rules else []
        charts.append(
            '<figure class="chart-box">'
            + line_chart(
                title="Accuracy per round",
                series=acc,
                rounds=rounds,
                y_label="accuracy",
                y_range=(0.0, 1.0),
                rules=rules,
                skipped=skipped,
            )
            + f"<figcaption>{_legend(legend + band)}</figcaption></figure>"
        )
    if loss:
        legend = [(s.label, s.color, "dashed" if s.dashed else "line") for s in loss]
        charts.append(
            '<figure class="chart-box">'
            + line_chart(
                title="Loss per round",
                series=loss,
                rounds=rounds,
                y_label="loss",
                skipped=skipped,
            )
            + f"<figcaption>{_legend(legend + band)}</figcaption></figure>"
        )
    if not charts:
        body = '<p class="empty">No round has been recorded yet.</p>'
    else:
        body = f'<div class="charts">{"".join(charts)}</div>'
    caption = (
        "How good the global model is after each round: accuracy (higher is better, axis "
        "from 0 to 1) and loss (lower is better), measured by the server on held-out test "
        "data that no holder trained on. "
    )
    if baseline is not None:
        caption += (
            f"The grey dashed line is the centralized baseline ({baseline:.3f}): the same "
            "model trained on all holders' data pooled in one place, measured in the same run"
            + (
                " (the demo trains it with DP-SGD at the holders' ε)"
                if view.setting("privacy", "local-dp") is True
                else ""
            )
            + ". The distance to it is the cost of keeping the data where it is. "
        )
    else:
        caption += "No centralized baseline was measured for this run. "
    if skipped:
        caption += "Grey bands mark skipped rounds, in which the model did not change."
    return _section("accuracy", "Accuracy and loss", caption, body)


def _privacy_section(view: RunView, client: str | None) -> str:
    holders = [h for h in _holders(view) if h.epsilon]
    colors = _colors(view, client)
    budget = _budget(view)
    target = number(view.setting("privacy", "target-epsilon"))
    rules = []
    legend: list[tuple[str, str, str]] = []
    if budget is not None:
        rules.append(Rule(budget, f"each holder's budget ε = {budget:g}", _BUDGET))
        legend.append((f"budget ε = {budget:g}", _BUDGET, "dashed"))
    elif target is not None and target > 0 and holders:
        rules.append(Rule(target, f"planned ε for the run = {target:g}", _BUDGET))
        legend.append((f"planned ε for the run = {target:g}", _BUDGET, "dashed"))
    series = [
        Series(
            h.label,
            [(float(r), e) for r, e in sorted(h.epsilon.items())],
            colors[h.node],
            step=True,
            emphasis=h.is_address(client),
            muted=bool(client) and not h.is_address(client),
        )
        for h in holders
    ]
    central = [
        (float(r["round"]), v)
        for r in view.rounds
        if (v := number(_dict(r.get("central_privacy")).get("epsilon"))) is not None
    ]
    if central:
        series.append(Series("aggregate (central DP)", central, "#333333", dashed=True, step=True))
    if not series:
        return _section(
            "privacy",
            "Privacy loss per holder",
            "<strong>No differential privacy in this run:</strong> no holder reported a privacy "
            "loss and the server added no noise. What the holders sent reveals more about their "
            "records than a DP run would.",
            "",
        )
    legend = [
        (s.label, s.color, "dashed" if s.dashed else "line")
        for s in series
        if not s.muted or len(series) <= len(_PALETTE)
    ] + legend
    chart = line_chart(
        title="Privacy loss ε per holder",
        series=series,
        rounds=_last_rounds(view),
        y_label="ε spent (cumulative)",
        rules=rules,
    )
    rows = []
    for h in holders:
        last_round = max(h.epsilon)
        rows.append(
            (
                "me" if h.is_address(client) else "",
                [
                    _e(h.label),
                    _short(h.address),
                    str(len(h.epsilon)),
                    f"{h.epsilon[last_round]:.3f}",
                    "–" if budget is None else f"{budget - h.epsilon[last_round]:.3f}",
                ],
            )
        )
    table = _table(
        ["holder", "wallet", "rounds trained", "ε spent", "ε left of budget"], rows, "num"
    )
    delta = _e(view.setting("privacy", "delta"))
    caption = (
        f"Each holder's cumulative privacy loss ε (at δ = {delta}) after each round it trained "
        "in, as its own privacy ledger reported it. Lower is more private; ε grows with every "
        "round a holder takes part in. "
    )
    if budget is not None:
        caption += (
            f"A holder refuses any round that would take it above its budget (red line, "
            f"ε = {budget:g}: the run's client-epsilon-budget, which simulated holders enforce; "
            "real holders enforce their own, which the server does not see). "
        )
    else:
        caption += (
            "The config sets no budget for holders (real holders enforce their own, which the "
            "server does not see); the red line is the ε the run planned to spend. "
        )
    caption += "A flat stretch means the holder released nothing in those rounds."
    if central:
        caption += " The black dashed line is the aggregate's ε under central DP."
    body = f'<figure class="chart-box wide">{chart}<figcaption>{_legend(legend)}</figcaption>'
    return _section("privacy", "Privacy loss per holder", caption, body + f"</figure>{table}")


def _rounds_section(view: RunView) -> str:
    minimum = _min_updates(view)
    rows = []
    for r in view.rounds:
        secure = _dict(r.get("secure"))
        mode = text(secure.get("mode")) or "none"
        contributors = integer(secure.get("contributors"))
        dropped = len(_mapping_items(secure.get("dropped")))
        aborted = text(secure.get("aborted"))
        in_sum = f"{mode} ({contributors} in the sum)" if contributors is not None else mode
        if dropped:
            in_sum += f", {dropped} dropped"
        if aborted:
            in_sum += f"; aborted: {aborted}"
        sent = integer(r.get("bytes_sent"))
        received = integer(r.get("bytes_received"))
        total = None if sent is None and received is None else (sent or 0) + (received or 0)
        rows.append(
            (
                "" if _applied(r) else "skipped",
                [
                    _e(r["round"]),
                    "applied" if _applied(r) else "<strong>skipped</strong>",
                    f"{_e(integer(r.get('accepted')))} / {_e(integer(r.get('sampled')))}",
                    _e(in_sum),
                    _f(number(r.get("accuracy"))),
                    _f(number(r.get("loss"))),
                    _f(number(r.get("seconds")), ".2f"),
                    _bytes(total),
                ],
            )
        )
    table = (
        _table(
            [
                "round",
                "model",
                "updates used / asked",
                "secure aggregation",
                "accuracy",
                "loss",
                "seconds",
                "bytes on the wire",
            ],
            rows,
            "num rounds",
        )
        if rows
        else '<p class="empty">No round has been recorded yet.</p>'
    )
    skipped_notes = []
    for r in view.rounds:
        if _applied(r):
            continue
        rejected = _mapping_items(r.get("rejected"))
        rules = sorted({_rule(text(v).removeprefix("client error: ")) for _, v in rejected})
        skipped_notes.append(
            f"<li>Round {_e(r['round'])}: {_e(integer(r.get('accepted')))} valid update(s)"
            + (f", the round rule needs {minimum}" if minimum is not None else "")
            + (
                f"; {len(rejected)} refused or set aside ({_e(', '.join(rules))})"
                if rejected
                else ""
            )
            + "</li>"
        )
    skipped_html = (
        f'<h3>Skipped rounds</h3><ul class="skipped-list">{"".join(skipped_notes)}</ul>'
        if skipped_notes
        else ""
    )
    refusals = _refusals(view)
    refusal_html = ""
    if refusals:
        items = "".join(
            f"<li><strong>Round {rnd}</strong>, {_e(_node_label(view, node))}: refused by "
            f"{_e(by)}; rule: <em>{_e(rule)}</em>. "
            f'<span class="reason">“{_e(why)}”</span></li>'
            for rnd, node, by, rule, why in refusals
        )
        listing = f'<ul class="refusals">{items}</ul>'
        if len(refusals) > _LONG_TABLE:
            listing = f"<details><summary>{len(refusals)} refusals</summary>{listing}</details>"
        refusal_html = "<h3>Refusals and updates set aside</h3>" + listing
    rule = (
        f"A round needs at least {minimum} valid updates (min-train-clients); with fewer it "
        "is skipped and the global model stays as it was. "
        if minimum is not None
        else ""
    )
    caption = (
        "What happened in each round: how many holders were asked to train and how many "
        "updates went into the model, and under which secure aggregation (how many updates "
        "were inside the secure sum, so that the server never saw one alone). "
        + _e(rule)
        + "A holder refuses a round that breaks one of its own rules (its privacy budget, its "
        "secure-aggregation floor); the server sets aside replies that fail its checks. Both "
        "are listed with the rule and the reason they gave."
    )
    return _section(
        "rounds",
        "Rounds, secure aggregation and refusals",
        caption,
        table + skipped_html + refusal_html,
    )


def _contributions_section(view: RunView, client: str | None) -> str:
    holders = [h for h in _holders(view) if h.contributions]
    methods: dict[str, list[int]] = {}
    for r in view.rounds:
        method = text(_dict(r.get("attestation")).get("scoring"))
        if method:
            methods.setdefault(method, []).append(int(r["round"]))
    if not holders:
        why = (
            "No round has been attested yet."
            if view.attested
            else "This run does not score or attest contributions (attestation.enabled = false)."
        )
        return _section("contributions", "Contributions and rewards", _e(why), "")
    rows = []
    for h in holders:
        scores = [c.score for c in h.contributions.values() if c.score is not None]
        last = h.contributions[max(h.contributions)]
        rows.append(
            (
                "me" if h.is_address(client) else "",
                [
                    _e(h.label),
                    _short(h.address),
                    str(len(h.contributions)),
                    _f(sum(scores) / len(scores) if scores else None, ".4g"),
                    _f(last.score, ".4g"),
                    _flr(h.reward),
                ],
            )
        )
    total = sum(h.reward for h in holders)
    rows.append(
        ("total", ["<strong>total</strong>", "", "", "", "", f"<strong>{_flr(total)}</strong>"])
    )
    table = _table(
        ["holder", "wallet", "rounds scored", "mean score", "last score", "reward (FLR)"],
        rows,
        "num contributions",
    )
    chart = bar_chart(
        title="Reward per holder (FLR)",
        items=[
            BarItem(
                h.label,
                float(Decimal(h.reward) / Decimal(10) ** TOKEN_DECIMALS),
                emphasis=h.is_address(client),
            )
            for h in holders
        ],
        unit="FLR earned over the run",
    )
    method_items = "".join(
        f"<li><strong>{_e(_ranges(rounds))}</strong>: <code>{_e(method)}</code> — "
        f"{_e(_SCORING.get(method, 'a method this report does not describe'))}</li>"
        for method, rounds in methods.items()
    )
    caption = (
        "Who contributed what. Each round, every holder whose update went into the model gets "
        "a score; the round's reward budget is split in proportion to the scores (rounded "
        "down), and each holder claims its share on chain with a Merkle proof. The method "
        "that scored each round is named below; where a secure mode hides each update, the "
        "score is an honest count, not a made-up quality measure."
    )
    body = (
        f'<ul class="methods">{method_items}</ul>'
        f'<figure class="chart-box bars-box">{chart}</figure>{table}'
    )
    return _section("contributions", "Contributions and rewards", caption, body)


def _ranges(rounds: list[int]) -> str:
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


def _verify_commands(view: RunView, client: str | None) -> str:
    run = shlex.quote(str(view.run_dir))
    chain = text(view.setting("attestation", "chain"))
    chain_opt = f" --chain {shlex.quote(chain)}" if chain and chain != "embedded" else ""
    who = shlex.quote(client) if client else "ADDRESS"
    return (
        f"<pre><code>fedlearn verify --run {_e(run)} --client {_e(who)}{_e(chain_opt)}\n"
        f"fedlearn claim --run {_e(run)} --keystore wallet.json{_e(chain_opt)}</code></pre>"
    )


def _attestation_section(view: RunView, client: str | None) -> str:
    if not view.attested:
        return _section(
            "attestation",
            "Attestation on chain",
            "This run was not attested (attestation.enabled = false): nothing about it is on "
            "chain and no holder can prove or claim a contribution.",
            "",
        )
    numbers = sorted({int(r["round"]) for r in view.rounds} | set(view.outbox) | set(view.bundles))
    rows = []
    for n in numbers:
        record = next((r for r in view.rounds if r.get("round") == n), {})
        attestation = _dict(record.get("attestation"))
        bundle = view.bundles.get(n, {})
        outbox = view.outbox.get(n)
        root = (
            text(attestation.get("root"))
            or text(bundle.get("root"))
            or (outbox.root if outbox else "")
        )
        tx = (outbox.tx_hash if outbox else "") or text(bundle.get("tx_hash"))
        cls, status, note = _chain_status(view, n)
        rows.append(
            (
                f"chain-{cls}",
                [
                    str(n),
                    f'<span class="badge {cls}">{_e(status)}</span>',
                    _code(root),
                    _code(tx),
                    _e(note) or "–",
                ],
            )
        )
    table = _table(["round", "status", "Merkle root", "transaction", "note"], rows, "attest")
    deployment = view.deployment
    chain = text(view.setting("attestation", "chain")) or "embedded"
    facts = [
        (
            "chain",
            "embedded (in-process EVM journaled in RUN_DIR/chain)"
            if chain == "embedded"
            else chain,
        ),
        ("chain id", text(deployment.get("chain_id"))),
        ("run id", view.run_id),
        ("attestation ledger", text(deployment.get("ledger"))),
        ("reward pool", text(deployment.get("pool"))),
        ("reward token (FLR)", text(deployment.get("token"))),
        ("coordinator", text(deployment.get("coordinator"))),
    ]
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_code(v)}</dd>" for k, v in facts if v)
    caption = (
        "After each round a Merkle tree of every contributor's record (wallet, a signed "
        "commitment to the update it sent, score, examples, ε, reward) is built and its root "
        "is posted on chain in one transaction. <em>Confirmed</em>: the chain's ledger holds "
        "this root for this run and round (as the run's outbox last checked). <em>Waiting</em>: "
        "the attestation is safe in the run's outbox and will be posted when the chain is "
        "reachable (<code>fedlearn attest --run RUN_DIR</code>). Anyone can check a holder's "
        "records against the roots on chain, trusting only the chain:"
    )
    body = _verify_commands(view, client) + table + f'<dl class="facts">{dl}</dl>'
    return _section("attestation", "Attestation on chain", caption, body)


def _holder_section(view: RunView, client: str) -> str:
    me = view.holder_of(client)
    if me is None:
        return _section(
            "holder",
            "This holder's record",
            f'<code class="hash">{_e(client)}</code> does not appear in this run\'s records: no '
            "attested round names this wallet. Check the address, or the run directory.",
            "",
        )
    budget = _budget(view)
    rounds = sorted(set(me.epsilon) | set(me.contributions))
    rows = []
    for n in rounds:
        c = me.contributions.get(n)
        leaves = view.bundles.get(n, {}).get("leaves")
        leaf = next(
            (
                _dict(leaf)
                for leaf in (leaves if isinstance(leaves, list) else [])
                if isinstance(leaf, dict) and me.is_address(text(leaf.get("client")))
            ),
            {},
        )
        raw_proof = leaf.get("proof")
        proof = [text(p) for p in raw_proof] if isinstance(raw_proof, list) else []
        proof_html = (
            "<details><summary>"
            + f"{len(proof)} hash(es)</summary>"
            + "".join(f"<div>{_code(p)}</div>" for p in proof)
            + "</details>"
            if proof
            else "–"
        )
        rows.append(
            (
                "",
                [
                    str(n),
                    _f(me.epsilon.get(n), ".3f"),
                    _f(c.score if c else None, ".4g"),
                    _e(c.examples) if c and c.examples is not None else "–",
                    _flr(c.reward) if c and c.reward is not None else "–",
                    _code(leaf.get("leaf_hash")),
                    proof_html,
                    _e(_chain_status(view, n)[1]) if c else "–",
                ],
            )
        )
    table = _table(
        [
            "round",
            "ε after the round",
            "score",
            "examples",
            "reward (FLR)",
            "leaf hash",
            "Merkle proof",
            "root on chain",
        ],
        rows,
        "num holder",
    )
    spent = max(me.epsilon.values()) if me.epsilon else None
    caption = (
        f'{_e(me.label)}, wallet <code class="hash">{_e(me.address)}</code>: '
        f"ε spent {_f(spent, '.3f')}"
        + (f" of its budget {budget:g}" if budget is not None else "")
        + f", {len(me.contributions)} round(s) attested, {_flr(me.reward)} FLR earned. "
        "Each attested round has a leaf (this holder's record) and a Merkle proof that leads "
        "from the leaf to the round's root on chain; <code>fedlearn verify</code> checks them "
        "and <code>fedlearn claim</code> pays the rewards (each round once)."
    )
    return _section(
        "holder", "This holder's record", caption, _verify_commands(view, client) + table
    )


def _config_section(view: RunView, made: str) -> str:
    versions = []
    for dist, name in (("fedlearn", "fedlearn"), ("flwr", "Flower")):
        try:
            versions.append(f"{name} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    cards = []
    for name, values in view.config.items():
        rows = "".join(
            f"<tr><th>{_e(k)}</th><td>{_e(_toml_value(v))}</td></tr>" for k, v in values.items()
        )
        cards.append(f'<div class="config-card"><h3>[{_e(name)}]</h3><table>{rows}</table></div>')
    summary = [(k, v) for k, v in view.summary.items() if not isinstance(v, dict | list)]
    if summary:
        rows = "".join(
            f"<tr><th>{_e(k)}</th><td>{_e(_toml_value(v))}</td></tr>" for k, v in summary
        )
        cards.append(
            f'<div class="config-card"><h3>history summary</h3><table>{rows}</table></div>'
        )
    config = (
        f'<div class="config">{"".join(cards)}</div>'
        if cards
        else '<p class="empty">No readable config.toml in the run directory.</p>'
    )
    caption = (
        f"Exactly what ran: the validated config the run saved (config.toml). Report made "
        f"{_e(made)} with {_e(', '.join(versions))}; the run directory does not record the "
        f"versions the run itself used. Run directory: <code>{_e(view.run_dir)}</code>."
    )
    return _section("config", "Run configuration and versions", caption, config)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return text(value)


def _problems_section(view: RunView) -> str:
    items = "".join(f"<li>{_e(p)}</li>" for p in view.problems)
    return _section(
        "problems",
        "What could not be read",
        "Parts of the run directory were missing or damaged; the sections above show "
        "everything else.",
        f"<ul>{items}</ul>",
    )


def _guarded(name: str, build: Callable[[], str]) -> str:
    """A section, or a note saying it could not be drawn (the rest of the page still is)."""
    try:
        return build()
    except Exception as exc:  # untrusted input must never cost the whole page
        return (
            f'<section class="broken"><h2>{_e(name)}</h2><p class="banner failed">This section '
            f"could not be drawn from the run directory: {_e(type(exc).__name__)}: {_e(exc)}</p>"
            "</section>"
        )


def render(view: RunView, *, client: str | None = None) -> str:
    """The whole page for ``view`` (never raises on the view's contents)."""
    made = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    client = client.strip() if client and client.strip() else None
    parts = [
        _guarded("Run", lambda: _header(view, client, made)),
        _guarded("The run at a glance", lambda: _summary(view, client)),
    ]
    if client:
        parts.append(_guarded("This holder's record", lambda: _holder_section(view, client)))
    parts += [
        _guarded("Accuracy and loss", lambda: _accuracy_section(view)),
        _guarded("Privacy loss per holder", lambda: _privacy_section(view, client)),
        _guarded("Rounds", lambda: _rounds_section(view)),
        _guarded("Contributions and rewards", lambda: _contributions_section(view, client)),
        _guarded("Attestation on chain", lambda: _attestation_section(view, client)),
        _guarded("Run configuration and versions", lambda: _config_section(view, made)),
    ]
    if view.problems:
        parts.append(_guarded("What could not be read", lambda: _problems_section(view)))
    nav = "".join(
        f'<a href="#{a}">{t}</a>'
        for a, t in (
            ("summary", "Summary"),
            *((("holder", "Holder"),) if client else ()),
            ("accuracy", "Accuracy"),
            ("privacy", "Privacy"),
            ("rounds", "Rounds"),
            ("contributions", "Rewards"),
            ("attestation", "Chain"),
            ("config", "Config"),
        )
    )
    title = f"fedlearn run report: {view.run_dir.name}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">"
        '<link rel="icon" href="data:,">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body><nav>{nav}</nav><main>{''.join(parts)}</main>"
        "<footer>Static page written by <code>fedlearn report</code>: no script, no network; "
        "every figure comes from the run directory.</footer></body></html>\n"
    )


_CSS = """
:root{--ink:#1d1d1f;--muted:#5f6368;--line:#dadce0;--ok:#1e7b34;--wait:#a15c00;--bad:#b3261e;
--me:#fff1c9;font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
color:var(--ink);background:#fff;line-height:1.45}
*{box-sizing:border-box}
body{margin:0}
nav{position:sticky;top:0;z-index:1;background:#f8f9fa;border-bottom:1px solid var(--line);
padding:.4rem 1rem;display:flex;flex-wrap:wrap;gap:.2rem 1rem;font-size:.9rem}
nav a{color:var(--ink);text-decoration:none}
nav a:hover{text-decoration:underline}
main{max-width:1100px;margin:0 auto;padding:0 1rem 2rem}
header h1{font-size:1.5rem;margin:1.2rem 0 .2rem;overflow-wrap:anywhere}
.meta{color:var(--muted);margin:.2rem 0 .6rem}
.state{font-weight:600;text-transform:uppercase;font-size:.8rem;letter-spacing:.04em}
.state-completed{color:var(--ok)}.state-running{color:var(--wait)}.state-failed{color:var(--bad)}
.banner{padding:.6rem .8rem;border-left:4px solid var(--muted);background:#f6f6f6;
overflow-wrap:anywhere}
.banner.failed{border-color:var(--bad);background:#fdecea}
.banner.running{border-color:var(--wait);background:#fff4e0}
.banner.holder{border-color:#d6a100;background:var(--me)}
section{margin-top:2rem}
h2{font-size:1.2rem;margin:0 0 .3rem;border-bottom:1px solid var(--line);padding-bottom:.2rem}
h3{font-size:1rem;margin:1.2rem 0 .4rem}
.caption{color:var(--muted);max-width:52rem;margin:.2rem 0 .8rem}
.stats{display:grid;grid-template-columns:repeat(auto-fill,minmax(160px,1fr));gap:.8rem}
.stat{border:1px solid var(--line);border-radius:6px;padding:.6rem .7rem;min-width:0}
.stat .value{font-size:1.45rem;font-weight:650;font-variant-numeric:tabular-nums;
overflow-wrap:anywhere}
.stat .label{font-weight:600;font-size:.85rem}
.stat .note{color:var(--muted);font-size:.8rem;overflow-wrap:anywhere}
.stat.warn .value{color:var(--bad)}
.stat.me{background:var(--me)}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,420px),1fr));
gap:1rem;align-items:start}
figure{margin:0;min-width:0}
.chart-box.wide,.bars-box{max-width:680px}
code.short{white-space:nowrap}
.refusals li{margin:.25rem 0}
svg.chart{width:100%;height:auto;display:block;font-family:inherit}
svg .tick{font-size:13px;fill:#444}
svg .axis-label{font-size:13px;fill:#333}
svg .grid{stroke:#ececec;stroke-width:1}
svg .axis{stroke:#888;stroke-width:1}
svg .skipped{fill:#e6e6e6}
svg .rule{stroke-width:1.5;stroke-dasharray:5 4}
svg .line polyline{stroke-width:2}
svg .line.dashed polyline{stroke-dasharray:6 4}
svg .line.emphasis polyline{stroke-width:3.5}
svg .line.muted{opacity:.6}
svg .bar rect{fill:#4e79a7}
svg .bar.emphasis rect{fill:#d62728}
svg .value{font-size:13px;fill:#222}
.legend{list-style:none;padding:0;margin:.3rem 0 0;display:flex;flex-wrap:wrap;gap:.2rem .9rem;
font-size:.82rem;color:var(--muted)}
.legend li{display:flex;align-items:center;gap:.35rem;overflow-wrap:anywhere}
.key{display:inline-block;width:18px;height:0;border-top:3px solid var(--c);flex:none}
.key.dashed{border-top-style:dashed}
.key.band{height:10px;border:0;background:var(--c)}
.table-wrap{overflow-x:auto;max-width:100%;margin:.5rem 0}
table{border-collapse:collapse;font-size:.88rem}
th,td{padding:.3rem .55rem;border-bottom:1px solid var(--line);text-align:left;
vertical-align:top}
thead th{background:#f8f9fa;white-space:nowrap}
table.num td{font-variant-numeric:tabular-nums}
tr.me td{background:var(--me);font-weight:600}
tr.skipped td{background:#f3f3f3}
tr.total td{border-top:2px solid var(--ink)}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.82em}
code.hash{overflow-wrap:anywhere;word-break:break-all}
td code.hash{display:inline-block;max-width:24ch}
pre{background:#f6f8fa;padding:.6rem .8rem;border-radius:6px;white-space:pre-wrap;
overflow-wrap:anywhere;margin:.4rem 0 .8rem}
.badge{font-weight:600;white-space:nowrap}
.badge.ok{color:var(--ok)}.badge.wait{color:var(--wait)}.badge.bad{color:var(--bad)}
.badge.none{color:var(--muted)}
.reason{overflow-wrap:anywhere}
td .reason{display:inline-block;min-width:18ch;max-width:60ch}
.facts{display:grid;grid-template-columns:max-content 1fr;gap:.2rem .8rem;font-size:.88rem}
.facts dt{font-weight:600}.facts dd{margin:0;min-width:0}
.config{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,280px),1fr));
gap:.8rem}
.config-card{border:1px solid var(--line);border-radius:6px;padding:.2rem .6rem .5rem;
min-width:0;overflow-x:auto}
.config-card h3{margin:.4rem 0}
.config-card th{font-weight:500;color:var(--muted)}
.config-card td{overflow-wrap:anywhere}
.methods{padding-left:1.2rem}
.empty{color:var(--muted);font-style:italic}
footer{max-width:1100px;margin:0 auto;padding:1rem;color:var(--muted);font-size:.8rem;
border-top:1px solid var(--line)}
@media (max-width:520px){main{padding:0 .6rem 2rem}header h1{font-size:1.25rem}
.stat .value{font-size:1.2rem}.facts{grid-template-columns:1fr}}
"""
