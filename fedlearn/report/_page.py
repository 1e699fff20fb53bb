"""The report page: one HTML document, styles inline, no script, every run-dir string escaped.

The page reads top to bottom as a reader asks: how did it go (the few numbers
that matter), what did it cost each holder in privacy, what happened in each
round, who contributed what, is it on chain and how do I check, and what
exactly ran. Each section has a one-paragraph caption in plain language.

Strings from the run directory (client names, reasons, addresses, config
values) are untrusted: they pass through :func:`~fedlearn.report._html.esc`
and never into a tag or attribute name; colours and classes come from this
package only. A Content-Security-Policy that allows no script and no network
load is the second line of defence. Each section is built on its own
(:func:`_guarded`): a file that breaks one section leaves the others.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from decimal import Decimal
from importlib import metadata

from fedlearn.report import _facts as facts
from fedlearn.report import _html as ui
from fedlearn.report._rundir import TOKEN_DECIMALS, RunView, integer, number, text
from fedlearn.report._style import CSS
from fedlearn.report._svg import BarItem, Rule, Series, bar_chart, line_chart

__all__ = ["render"]


def _header(view: RunView, client: str | None, made: str) -> str:
    planned = view.planned_rounds
    done = len(view.rounds)
    progress = f"{done} of {planned} rounds" if planned else f"{done} round(s)"
    detail = text(view.status.get("detail"))
    banner = {
        "completed": "",
        "running": (
            f'<p class="banner running"><strong>In progress.</strong> This page shows the '
            f"{progress} recorded so far in history.json (as of {ui.esc(made)}); write the report "
            "again for later rounds. If no server is running any more, the run stopped "
            "without recording why: continue it with <code>--resume RUN_DIR</code>.</p>"
        ),
        "failed": (
            f'<p class="banner failed" id="failure"><strong>This run failed</strong> after '
            f'{progress}: <span class="reason">{ui.esc(detail) or "no reason recorded"}</span>. '
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
            f'<p class="banner holder">Holder view: <code class="hash">{ui.esc(client)}</code> is '
            f'highlighted in every section (<a href="#holder">its record</a>).</p>'
            if found
            else f'<p class="banner unknown">Holder view: <code class="hash">{ui.esc(client)}'
            "</code> does not appear in this run's records.</p>"
        )
    return (
        f'<header><h1>Run report: <span class="run-name">{ui.esc(view.run_dir.name)}</span></h1>'
        f'<p class="meta"><span class="state state-{view.state}">{view.state}</span> · '
        f"{ui.esc(progress)} · report made {ui.esc(made)}</p>{banner}{holder}</header>"
    )


def _summary(view: RunView, client: str | None) -> str:
    stats = []
    last = next((r for r in reversed(view.rounds) if facts.accuracy(r) is not None), None)
    baseline = facts.baseline(view)
    if last is not None:
        accuracy = facts.accuracy(last)
        where = (
            "server's held-out data"
            if number(last.get("accuracy")) is not None
            else ("holders' own validation data")
        )
        note = f"after round {ui.esc(last['round'])}, on the {where}"
        if baseline is not None and accuracy is not None:
            gap = 100 * (accuracy - baseline)
            note += f"; centralized baseline {baseline:.3f} ({gap:+.1f} points)"
        stats.append(ui.stat(ui.fmt(accuracy, ".3f"), "accuracy", note))
    holders = facts.holders(view)
    spent = [max(h.epsilon.values()) for h in holders if h.epsilon]
    budget = facts.budget(view)
    central = [number(facts.as_dict(r.get("central_privacy")).get("epsilon")) for r in view.rounds]
    central_values = [c for c in central if c is not None]
    if spent:
        of = f"budget ε = {budget:g} each; " if budget is not None else ""
        stats.append(
            ui.stat(
                f"ε {max(spent):.3f}",
                "largest privacy loss of a holder",
                f"{of}δ = {ui.esc(view.setting('privacy', 'delta'))}; local DP-SGD",
            )
        )
    if central_values:
        stats.append(
            ui.stat(
                f"ε {central_values[-1]:.3f}",
                "privacy loss of the aggregate",
                "central DP (user level)",
            )
        )
    if not spent and not central_values:
        configured = facts.dp_configured(view)
        if configured:
            stats.append(
                ui.stat("ε 0", "privacy loss so far", "DP is on; no holder has released yet")
            )
        elif configured is None:
            stats.append(ui.stat("–", "privacy loss", "no holder reported a privacy loss"))
        else:
            stats.append(ui.stat("none", "differential privacy", "the run uses no DP", "warn"))
    skipped = facts.skipped(view)
    refusals = facts.refusals(view)
    planned = view.planned_rounds
    note = f"{len(skipped)} skipped, {len(refusals)} update(s) refused or set aside"
    stats.append(
        ui.stat(f"{len(view.rounds)}" + (f" / {planned}" if planned else ""), "rounds", note)
    )
    mode = text(view.setting("secure", "mode")) or next(
        (text(facts.as_dict(r.get("secure")).get("mode")) for r in view.rounds if r.get("secure")),
        "",
    )
    if mode and mode != "none":
        stats.append(
            ui.stat(ui.esc(mode), "secure aggregation", ui.esc(facts.SECURE.get(mode, "")))
        )
    else:
        stats.append(ui.stat("none", "secure aggregation", "the server sees every update", "warn"))
    if view.attested:
        rounds = [
            int(r["round"]) for r in view.rounds if facts.as_dict(r.get("attestation")).get("root")
        ]
        rounds = sorted(set(rounds) | set(view.outbox))
        confirmed = sum(1 for r in rounds if facts.chain_status(view, r)[0] == "ok")
        waiting = sum(1 for r in rounds if facts.chain_status(view, r)[0] == "wait")
        stats.append(
            ui.stat(
                f"{confirmed} / {len(rounds)}",
                "rounds confirmed on chain",
                f"{waiting} waiting in the outbox"
                if waiting
                else "every attested round (skipped rounds have nothing to attest)"
                if rounds
                else "no round attested yet",
                "warn" if waiting or not rounds else "",
            )
        )
        paid = sum(h.reward for h in holders)
        payees = sum(1 for h in holders if h.reward)
        stats.append(
            ui.stat(ui.flr(paid), "FLR earned", f"by {payees} holder(s), claimable with proofs")
        )
    if client and (me := view.holder_of(client)) is not None:
        mine = max(me.epsilon.values()) if me.epsilon else None
        stats.append(
            ui.stat(
                ui.flr(me.reward),
                "FLR earned by this holder",
                f"{len(me.contributions)} round(s) attested; ε {ui.fmt(mine, '.3f')}",
                "me",
            )
        )
    return ui.section(
        "summary",
        "The run at a glance",
        "The numbers that matter first. Each is explained in its section below.",
        f'<div class="stats">{"".join(stats)}</div>',
    )


def _accuracy_section(view: RunView) -> str:
    rounds = facts.last_rounds(view)
    skipped = facts.skipped(view)

    def series(key: str, label: str, color: str, dashed: bool = False) -> Series | None:
        points = [
            (float(r["round"]), v) for r in view.rounds if (v := number(r.get(key))) is not None
        ]
        return Series(label, points, color, dashed=dashed) if points else None

    acc = [
        s
        for s in (
            series("accuracy", "server test accuracy", facts.PALETTE[0]),
            series("federated_accuracy", "holders' validation accuracy", facts.PALETTE[1], True),
        )
        if s
    ]
    loss = [
        s
        for s in (
            series("loss", "server test loss", facts.PALETTE[0]),
            series("federated_loss", "holders' validation loss", facts.PALETTE[1], True),
            series("train_loss", "training loss", facts.PALETTE[2], True),
        )
        if s
    ]
    baseline = facts.baseline(view)
    rules = (
        [Rule(baseline, "centralized baseline", facts.BASELINE_COLOR)]
        if baseline is not None
        else []
    )
    band = [("skipped round (model unchanged)", "#e6e6e6", "band")] if skipped else []
    charts = []
    if acc or rules:
        legend = [(s.label, s.color, "dashed" if s.dashed else "line") for s in acc]
        legend += (
            [(f"centralized baseline {baseline:.3f}", facts.BASELINE_COLOR, "dashed")]
            if rules
            else []
        )
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
            + f"<figcaption>{ui.legend(legend + band)}</figcaption></figure>"
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
            + f"<figcaption>{ui.legend(legend + band)}</figcaption></figure>"
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
    return ui.section("accuracy", "Accuracy and loss", caption, body)


def _privacy_section(view: RunView, client: str | None) -> str:
    holders = [h for h in facts.holders(view) if h.epsilon]
    colors = facts.colors(view, client)
    budget = facts.budget(view)
    target = number(view.setting("privacy", "target-epsilon"))
    rules = []
    legend: list[tuple[str, str, str]] = []
    if budget is not None:
        rules.append(Rule(budget, f"each holder's budget ε = {budget:g}", facts.BUDGET_COLOR))
        legend.append((f"budget ε = {budget:g}", facts.BUDGET_COLOR, "dashed"))
    elif target is not None and target > 0 and holders:
        rules.append(Rule(target, f"planned ε for the run = {target:g}", facts.BUDGET_COLOR))
        legend.append((f"planned ε for the run = {target:g}", facts.BUDGET_COLOR, "dashed"))
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
        if (v := number(facts.as_dict(r.get("central_privacy")).get("epsilon"))) is not None
    ]
    if central:
        series.append(Series("aggregate (central DP)", central, "#333333", dashed=True, step=True))
    if not series:
        configured = facts.dp_configured(view)
        caption = {
            True: "Differential privacy is on for this run, but no holder has reported a "
            "release yet: nothing has been spent.",
            None: "No holder reported a privacy loss, and the run directory has no readable "
            "config to say whether the run uses differential privacy.",
            False: "<strong>No differential privacy in this run:</strong> holders train without "
            "DP-SGD and the server adds no noise. What the holders send reveals more about "
            "their records than a DP run would.",
        }[configured]
        return ui.section("privacy", "Privacy loss per holder", caption, "")
    legend = [
        (s.label, s.color, "dashed" if s.dashed else "line")
        for s in series
        if not s.muted or len(series) <= len(facts.PALETTE)
    ] + legend
    chart = line_chart(
        title="Privacy loss ε per holder",
        series=series,
        rounds=facts.last_rounds(view),
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
                    ui.esc(h.label),
                    ui.short(h.address),
                    str(len(h.epsilon)),
                    f"{h.epsilon[last_round]:.3f}",
                    "–" if budget is None else f"{budget - h.epsilon[last_round]:.3f}",
                ],
            )
        )
    table = ui.table(
        ["holder", "wallet", "rounds trained", "ε spent", "ε left of budget"], rows, "num"
    )
    delta = ui.esc(view.setting("privacy", "delta"))
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
    body = (
        f'<div class="charts"><figure class="chart-box">{chart}'
        f"<figcaption>{ui.legend(legend)}</figcaption></figure><div>{table}</div></div>"
    )
    return ui.section("privacy", "Privacy loss per holder", caption, body)


def _rounds_section(view: RunView) -> str:
    minimum = facts.min_updates(view)
    rows = []
    for r in view.rounds:
        secure = facts.as_dict(r.get("secure"))
        mode = text(secure.get("mode")) or "none"
        contributors = integer(secure.get("contributors"))
        dropped = len(facts.items(secure.get("dropped")))
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
                "" if facts.applied(r) else "skipped",
                [
                    ui.esc(r["round"]),
                    "applied" if facts.applied(r) else "<strong>skipped</strong>",
                    f"{ui.esc(integer(r.get('accepted')))} / {ui.esc(integer(r.get('sampled')))}",
                    ui.esc(in_sum),
                    ui.fmt(number(r.get("accuracy"))),
                    ui.fmt(number(r.get("loss"))),
                    ui.fmt(number(r.get("seconds")), ".2f"),
                    ui.size(total),
                ],
            )
        )
    table = (
        ui.table(
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
        if facts.applied(r):
            continue
        rejected = facts.items(r.get("rejected"))
        rules = sorted({facts.rule(text(v).removeprefix("client error: ")) for _, v in rejected})
        skipped_notes.append(
            f"<li>Round {ui.esc(r['round'])}: {ui.esc(integer(r.get('accepted')))} valid update(s)"
            + (f", the round rule needs {minimum}" if minimum is not None else "")
            + (
                f"; {len(rejected)} refused or set aside ({ui.esc(', '.join(rules))})"
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
    refusals = facts.refusals(view)
    refusal_html = ""
    if refusals:
        items = "".join(
            f"<li><strong>Round {rnd}</strong>, {ui.esc(facts.node_label(view, node))}: refused by "
            f"{ui.esc(by)}; rule: <em>{ui.esc(rule)}</em>. "
            f'<span class="reason">“{ui.esc(why)}”</span></li>'
            for rnd, node, by, rule, why in refusals
        )
        listing = f'<ul class="refusals">{items}</ul>'
        if len(refusals) > ui.LONG_TABLE:
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
        + ui.esc(rule)
        + "A holder refuses a round that breaks one of its own rules (its privacy budget, its "
        "secure-aggregation floor); the server sets aside replies that fail its checks. Both "
        "are listed with the rule and the reason they gave."
    )
    return ui.section(
        "rounds",
        "Rounds, secure aggregation and refusals",
        caption,
        table + skipped_html + refusal_html,
    )


def _contributions_section(view: RunView, client: str | None) -> str:
    holders = [h for h in facts.holders(view) if h.contributions]
    methods: dict[str, list[int]] = {}
    for r in view.rounds:
        method = text(facts.as_dict(r.get("attestation")).get("scoring"))
        if method:
            methods.setdefault(method, []).append(int(r["round"]))
    if not holders:
        why = (
            "No round has been attested yet."
            if view.attested
            else "This run does not score or attest contributions (attestation.enabled = false)."
        )
        return ui.section("contributions", "Contributions and rewards", ui.esc(why), "")
    rows = []
    for h in holders:
        scores = [c.score for c in h.contributions.values() if c.score is not None]
        last = h.contributions[max(h.contributions)]
        rows.append(
            (
                "me" if h.is_address(client) else "",
                [
                    ui.esc(h.label),
                    ui.short(h.address),
                    str(len(h.contributions)),
                    ui.fmt(sum(scores) / len(scores) if scores else None, ".4g"),
                    ui.fmt(last.score, ".4g"),
                    ui.flr(h.reward),
                ],
            )
        )
    total = sum(h.reward for h in holders)
    rows.append(
        ("total", ["<strong>total</strong>", "", "", "", "", f"<strong>{ui.flr(total)}</strong>"])
    )
    table = ui.table(
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
        f"<li><strong>{ui.esc(facts.ranges(rounds))}</strong>: <code>{ui.esc(method)}</code> — "
        f"{ui.esc(facts.SCORING.get(method, 'a method this report does not describe'))}</li>"
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
        f'<figure class="chart-box half">{chart}</figure>{table}'
    )
    return ui.section("contributions", "Contributions and rewards", caption, body)


def _verify_commands(view: RunView, client: str | None) -> str:
    run = shlex.quote(str(view.run_dir))
    chain = text(view.setting("attestation", "chain"))
    chain_opt = f" --chain {shlex.quote(chain)}" if chain and chain != "embedded" else ""
    who = shlex.quote(client) if client else "ADDRESS"
    return (
        f"<pre><code>fedlearn verify --run {ui.esc(run)} --client {ui.esc(who)}"
        f"{ui.esc(chain_opt)}\nfedlearn claim --run {ui.esc(run)} --keystore wallet.json"
        f"{ui.esc(chain_opt)}</code></pre>"
    )


def _attestation_section(view: RunView, client: str | None) -> str:
    if not view.attested:
        return ui.section(
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
        attestation = facts.as_dict(record.get("attestation"))
        bundle = view.bundles.get(n, {})
        outbox = view.outbox.get(n)
        root = (
            text(attestation.get("root"))
            or text(bundle.get("root"))
            or (outbox.root if outbox else "")
        )
        tx = (outbox.tx_hash if outbox else "") or text(bundle.get("tx_hash"))
        cls, status, note = facts.chain_status(view, n)
        rows.append(
            (
                f"chain-{cls}",
                [
                    str(n),
                    f'<span class="badge {cls}">{ui.esc(status)}</span>',
                    ui.code(root),
                    ui.code(tx),
                    ui.esc(note) or "–",
                ],
            )
        )
    table = ui.table(["round", "status", "Merkle root", "transaction", "note"], rows, "attest")
    deployment = view.deployment
    chain = text(view.setting("attestation", "chain")) or "embedded"
    chain_facts = [
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
    dl = "".join(f"<dt>{ui.esc(k)}</dt><dd>{ui.code(v)}</dd>" for k, v in chain_facts if v)
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
    return ui.section("attestation", "Attestation on chain", caption, body)


def _holder_section(view: RunView, client: str) -> str:
    me = view.holder_of(client)
    if me is None:
        return ui.section(
            "holder",
            "This holder's record",
            f'<code class="hash">{ui.esc(client)}</code> does not appear in this run\'s '
            "records: no attested round names this wallet. Check the address, or the run "
            "directory.",
            "",
        )
    budget = facts.budget(view)
    rounds = sorted(set(me.epsilon) | set(me.contributions))
    rows = []
    for n in rounds:
        c = me.contributions.get(n)
        leaves = view.bundles.get(n, {}).get("leaves")
        leaf = next(
            (
                facts.as_dict(leaf)
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
            + "".join(f"<div>{ui.code(p)}</div>" for p in proof)
            + "</details>"
            if proof
            else "–"
        )
        rows.append(
            (
                "",
                [
                    str(n),
                    ui.fmt(me.epsilon.get(n), ".3f"),
                    ui.fmt(c.score if c else None, ".4g"),
                    ui.esc(c.examples) if c and c.examples is not None else "–",
                    ui.flr(c.reward) if c and c.reward is not None else "–",
                    ui.code(leaf.get("leaf_hash")),
                    proof_html,
                    ui.esc(facts.chain_status(view, n)[1]) if c else "–",
                ],
            )
        )
    table = ui.table(
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
        f'{ui.esc(me.label)}, wallet <code class="hash">{ui.esc(me.address)}</code>: '
        f"ε spent {ui.fmt(spent, '.3f')}"
        + (f" of its budget {budget:g}" if budget is not None else "")
        + f", {len(me.contributions)} round(s) attested, {ui.flr(me.reward)} FLR earned. "
        "Each attested round has a leaf (this holder's record) and a Merkle proof that leads "
        "from the leaf to the round's root on chain; <code>fedlearn verify</code> checks them "
        "and <code>fedlearn claim</code> pays the rewards (each round once)."
    )
    return ui.section(
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
            f"<tr><th>{ui.esc(k)}</th><td>{ui.esc(_toml_value(v))}</td></tr>"
            for k, v in values.items()
        )
        cards.append(
            f'<div class="config-card"><h3>[{ui.esc(name)}]</h3><table>{rows}</table></div>'
        )
    summary = [(k, v) for k, v in view.summary.items() if not isinstance(v, dict | list)]
    if summary:
        rows = "".join(
            f"<tr><th>{ui.esc(k)}</th><td>{ui.esc(_toml_value(v))}</td></tr>" for k, v in summary
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
        f"{ui.esc(made)} with {ui.esc(', '.join(versions))}; the run directory does not record the "
        f"versions the run itself used. Run directory: <code>{ui.esc(view.run_dir)}</code>."
    )
    return ui.section("config", "Run configuration and versions", caption, config)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return text(value)


def _problems_section(view: RunView) -> str:
    items = "".join(f"<li>{ui.esc(p)}</li>" for p in view.problems)
    return ui.section(
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
            f'<section class="broken"><h2>{ui.esc(name)}</h2><p class="banner failed">This section '
            "could not be drawn from the run directory: "
            f"{ui.esc(type(exc).__name__)}: {ui.esc(exc)}</p>"
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
        f"<title>{ui.esc(title)}</title><style>{CSS}</style></head>"
        f"<body><nav>{nav}</nav><main>{''.join(parts)}</main>"
        "<footer>Static page written by <code>fedlearn report</code>: no script, no network; "
        "every figure comes from the run directory.</footer></body></html>\n"
    )
