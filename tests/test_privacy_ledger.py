"""Privacy ledger and budget: composition, persistence, refusal and validation."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from fedlearn.privacy.accounting import dpsgd_event, epsilon, gaussian_event
from fedlearn.privacy.ledger import (
    BudgetExceeded,
    LedgerError,
    PrivacyBudget,
    PrivacyError,
    PrivacyLedger,
    release_event,
)

DELTA = 1e-5
DPSGD: dict[str, Any] = {
    "mechanism": "dpsgd",
    "noise_multiplier": 1.1,
    "sample_rate": 0.02,
    "steps": 50,
}
# Most tests use an unsampled Gaussian release: its RDP is closed-form, so they run
# in milliseconds; the DP-SGD release (a series per RDP order) is used where it matters.
GAUSS: dict[str, Any] = {"mechanism": "gaussian", "noise_multiplier": 3.0, "steps": 2}


def _filled_ledger(k: int = 3, release: dict[str, Any] = GAUSS) -> PrivacyLedger:
    ledger = PrivacyLedger(delta=DELTA, holder="client-7")
    for rnd in range(1, k + 1):
        ledger.record(round=rnd, clipping_norm=1.0, **release)
    return ledger


# --------------------------------------------------------------------------- composition


@pytest.mark.parametrize("k", [1, 4, 10])
def test_k_identical_releases_equal_one_self_composed_event(k: int) -> None:
    ledger = _filled_ledger(k, DPSGD)
    one_event = dpsgd_event(noise_multiplier=1.1, sample_rate=0.02, steps=50 * k)
    assert ledger.spent_epsilon() == pytest.approx(epsilon(one_event, delta=DELTA), rel=1e-9)


def test_gaussian_releases_compose_like_one_event() -> None:
    ledger = PrivacyLedger(delta=DELTA)
    for rnd in range(5):
        ledger.record(round=rnd, mechanism="gaussian", noise_multiplier=4.0, clipping_norm=0.5)
    expected = epsilon(gaussian_event(noise_multiplier=4.0, steps=5), delta=DELTA)
    assert ledger.spent_epsilon() == pytest.approx(expected, rel=1e-9)


def test_entries_state_release_and_cumulative_epsilon() -> None:
    ledger = _filled_ledger(3, DPSGD)
    single = epsilon(release_event(**DPSGD), delta=DELTA)
    entries = ledger.entries
    assert [e.round for e in entries] == [1, 2, 3]
    assert all(e.epsilon == single for e in entries)
    assert entries[0].cumulative_epsilon == single
    cumulative = [e.cumulative_epsilon for e in entries]
    assert cumulative == sorted(cumulative)
    # Composition by the accountant, not by adding ε: strictly below the naive sum.
    assert cumulative[-1] < 3 * single
    first = entries[0]
    assert (first.mechanism, first.noise_multiplier, first.clipping_norm) == ("dpsgd", 1.1, 1.0)
    assert (first.sample_rate, first.steps, first.delta) == (0.02, 50, DELTA)
    assert first.event() == release_event(**DPSGD)


def test_empty_ledger_spent_nothing() -> None:
    ledger = PrivacyLedger(delta=DELTA)
    assert ledger.spent_epsilon() == 0.0
    assert len(ledger) == 0
    event = release_event(**GAUSS)
    assert ledger.epsilon_if(event) == epsilon(event, delta=DELTA)


def test_epsilon_if_does_not_change_the_ledger() -> None:
    ledger = _filled_ledger(2)
    before = ledger.spent_epsilon()
    event = release_event(**GAUSS)
    after = ledger.epsilon_if(event)
    assert after > before
    assert ledger.spent_epsilon() == before and len(ledger) == 2
    ledger.record(round=3, clipping_norm=1.0, **GAUSS)
    assert ledger.spent_epsilon() == after


def test_spent_epsilon_at_another_delta() -> None:
    ledger = _filled_ledger(2)
    assert (
        ledger.spent_epsilon(delta=1e-3) < ledger.spent_epsilon() < ledger.spent_epsilon(delta=1e-8)
    )


def test_fixed_sampling_ledger_and_relation_mixing_refused() -> None:
    ledger = PrivacyLedger(delta=DELTA, holder="server")
    entry = ledger.record(
        round=1,
        mechanism="sampled_gaussian_fixed",
        noise_multiplier=2.0,
        clipping_norm=0.1,
        population_size=100,
        sample_size=10,
    )
    assert entry.sample_rate == 0.1 and entry.population_size == 100 and entry.sample_size == 10
    with pytest.raises(ValueError, match="cannot add an event under ADD_OR_REMOVE_ONE"):
        ledger.record(round=2, clipping_norm=1.0, **DPSGD)
    assert len(ledger) == 1


def test_pld_ledger() -> None:
    ledger = PrivacyLedger(delta=DELTA, accountant="pld")
    for rnd in range(3):
        ledger.record(round=rnd, mechanism="gaussian", noise_multiplier=3.0, clipping_norm=1.0)
    rdp = epsilon(gaussian_event(noise_multiplier=3.0, steps=3), delta=DELTA)
    assert 0 < ledger.spent_epsilon() <= rdp


# --------------------------------------------------------------------------- persistence


def test_dict_round_trip_is_exact() -> None:
    ledger = _filled_ledger(4, DPSGD)
    data = ledger.to_dict()
    json.dumps(data, allow_nan=False)  # JSON-able
    again = PrivacyLedger.from_dict(json.loads(json.dumps(data)))
    assert again.spent_epsilon() == ledger.spent_epsilon()
    assert again.entries == ledger.entries
    assert again.to_dict() == data
    event = release_event(**DPSGD)
    assert again.epsilon_if(event) == ledger.epsilon_if(event)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_save_load_round_trip(tmp_path: Path, accountant: str) -> None:
    ledger = PrivacyLedger(delta=DELTA, accountant=accountant, holder="client-1")  # type: ignore[arg-type]
    ledger.record(round=1, mechanism="gaussian", noise_multiplier=5.0, clipping_norm=1.0)
    ledger.record(round=2, mechanism="gaussian", noise_multiplier=2.0, clipping_norm=1.0, steps=3)
    ledger.record(round=3, mechanism="gaussian", noise_multiplier=5.0, clipping_norm=1.0)
    path = ledger.save(tmp_path / "sub" / "ledger.json")
    loaded = PrivacyLedger.load(path)
    assert loaded.spent_epsilon() == ledger.spent_epsilon()
    assert loaded.entries == ledger.entries
    assert (loaded.holder, loaded.delta, loaded.accountant) == ("client-1", DELTA, accountant)
    assert [p.name for p in path.parent.iterdir()] == ["ledger.json"]  # no temporary left


def test_fixed_sampling_ledger_round_trip(tmp_path: Path) -> None:
    ledger = PrivacyLedger(delta=DELTA, holder="server")
    for rnd in range(2):
        ledger.record(
            round=rnd,
            mechanism="sampled_gaussian_fixed",
            noise_multiplier=1.5,
            clipping_norm=1.0,
            population_size=30,
            sample_size=7,
        )
    loaded = PrivacyLedger.load(ledger.save(tmp_path / "server.json"))
    assert loaded.spent_epsilon() == ledger.spent_epsilon()


def test_save_replaces_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ledger.json"
    _filled_ledger(1).save(path)
    original = path.read_bytes()

    def failing_fsync(fd: int) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk on fire"):
        _filled_ledger(3).save(path)
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.json"]


def _tampered(mutate: Any) -> dict[str, Any]:
    data = _filled_ledger(2).to_dict()
    mutate(data)
    return data


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["entries"][1].update(mechanism="laplace"), "unknown mechanism 'laplace'"),
        (lambda d: d["entries"][0].update(epsilon=0.01), "stored epsilon=0.01"),
        (lambda d: d["entries"][1].update(cumulative_epsilon=1.0), "stored cumulative_epsilon"),
        (lambda d: d["entries"][0].update(noise_multiplier=-1.0), "noise_multiplier must be > 0"),
        (lambda d: d["entries"][0].update(extra=1), "keys must be"),
        (lambda d: d["entries"][0].pop("steps"), "keys must be"),
        (lambda d: d["entries"][0].update(delta=1e-6), "differs from the ledger"),
        (lambda d: d.update(format="something-else"), "not a fedlearn.privacy-ledger"),
        (lambda d: d.update(version=2), "version 1"),
        (lambda d: d.update(accountant="moments"), "invalid ledger header"),
        (lambda d: d.update(delta=0.0), "invalid ledger header"),
        (lambda d: d.update(surprise=True), "ledger keys must be"),
    ],
)
def test_load_fails_closed(mutate: Any, message: str) -> None:
    with pytest.raises(LedgerError, match=message):
        PrivacyLedger.from_dict(_tampered(mutate))


def test_verify_false_recomputes_epsilon() -> None:
    data = _tampered(lambda d: d["entries"][0].update(epsilon=0.01))
    ledger = PrivacyLedger.from_dict(data, verify=False)
    assert ledger.entries[0].epsilon == epsilon(release_event(**GAUSS), delta=DELTA)


def test_load_rejects_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(LedgerError, match="not valid JSON"):
        PrivacyLedger.load(path)


# --------------------------------------------------------------------------- budget


def test_budget_refuses_exactly_when_next_release_overspends() -> None:
    ledger = _filled_ledger(3)
    event = release_event(**GAUSS)
    after_next = ledger.epsilon_if(event)
    # A budget that the next release lands exactly on allows it ...
    PrivacyBudget(epsilon=after_next, delta=DELTA).check(ledger, event)
    # ... one ulp less refuses it.
    tight = PrivacyBudget(epsilon=math.nextafter(after_next, 0.0), delta=DELTA)
    with pytest.raises(BudgetExceeded):
        tight.check(ledger, event)
    # Walking a ledger forward: releases go through until the one that overspends.
    budget = PrivacyBudget(epsilon=after_next, delta=DELTA)
    fresh = PrivacyLedger(delta=DELTA)
    allowed = 0
    while True:
        try:
            budget.check(fresh, event)
        except BudgetExceeded:
            break
        fresh.record(round=allowed, clipping_norm=1.0, **GAUSS)
        allowed += 1
    assert allowed == 4
    assert fresh.spent_epsilon() <= budget.epsilon < fresh.epsilon_if(event)


def test_budget_message_and_attributes() -> None:
    ledger = _filled_ledger(2)
    event = release_event(**GAUSS)
    spent = ledger.spent_epsilon()
    budget = PrivacyBudget(epsilon=spent * 1.01, delta=DELTA)
    with pytest.raises(BudgetExceeded) as info:
        budget.check(ledger, event)
    exc = info.value
    assert isinstance(exc, PrivacyError)
    assert exc.spent == pytest.approx(spent)
    assert exc.release == pytest.approx(epsilon(event, delta=DELTA))
    assert exc.after == pytest.approx(ledger.epsilon_if(event))
    assert exc.budget is budget
    text = str(exc)
    assert "client-7" in text and "spent ε=" in text and "this release alone ε=" in text
    assert f"budget ε={budget.epsilon:.6g}" in text and "refused" in text


def test_budget_smaller_than_one_round_refuses_the_first_release() -> None:
    event = release_event(**GAUSS)
    one_round = epsilon(event, delta=DELTA)
    budget = PrivacyBudget(epsilon=one_round / 2, delta=DELTA)
    with pytest.raises(BudgetExceeded, match="spent ε=0"):
        budget.check(PrivacyLedger(delta=DELTA), event)


def test_budget_is_checked_at_its_own_delta() -> None:
    ledger = _filled_ledger(1)
    event = release_event(**GAUSS)
    at_ledger_delta = ledger.epsilon_if(event)
    # The same ε budget at a smaller δ is harder to meet.
    PrivacyBudget(epsilon=at_ledger_delta, delta=DELTA).check(ledger, event)
    with pytest.raises(BudgetExceeded):
        PrivacyBudget(epsilon=at_ledger_delta, delta=DELTA / 100).check(ledger, event)
    assert PrivacyBudget(epsilon=10.0, delta=DELTA).remaining(ledger) == pytest.approx(
        10.0 - ledger.spent_epsilon()
    )


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("epsilon_", "delta", "message"),
    [
        (0.0, DELTA, "epsilon must be > 0"),
        (-1.0, DELTA, "epsilon must be > 0"),
        (math.inf, DELTA, "epsilon must be > 0 and finite"),
        (math.nan, DELTA, "epsilon must be > 0 and finite"),
        (1.0, 0.0, r"delta must be in \(0, 1\)"),
        (1.0, 1.0, r"delta must be in \(0, 1\)"),
        (1.0, -0.1, r"delta must be in \(0, 1\)"),
    ],
)
def test_budget_validation(epsilon_: float, delta: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PrivacyBudget(epsilon=epsilon_, delta=delta)


@pytest.mark.parametrize("delta", [0.0, 1.0, 1.5, -1e-5])
def test_ledger_delta_validation(delta: float) -> None:
    with pytest.raises(ValueError, match=r"delta must be in \(0, 1\)"):
        PrivacyLedger(delta=delta)


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"clipping_norm": 0.0}, ValueError, "clipping_norm must be > 0"),
        ({"clipping_norm": -1.0}, ValueError, "clipping_norm must be > 0"),
        ({"clipping_norm": math.inf}, ValueError, "clipping_norm must be > 0 and finite"),
        ({"noise_multiplier": 0.0}, ValueError, "noise_multiplier must be > 0"),
        ({"mechanism": "dpsgd", "sample_rate": 0.0}, ValueError, "sample_rate must be in"),
        ({"mechanism": "dpsgd"}, ValueError, "needs sample_rate"),
        ({"steps": 0}, ValueError, "steps must be >= 1"),
        ({"round": -1}, ValueError, "round must be >= 0"),
        ({"round": 1.5}, TypeError, "round must be an integer"),
        ({"mechanism": "laplace"}, LedgerError, "unknown mechanism"),
        ({"population_size": 10}, ValueError, "apply only to 'sampled_gaussian_fixed'"),
        ({"mechanism": "gaussian", "sample_rate": 0.5}, ValueError, "releases the whole data"),
    ],
)
def test_record_validation(changes: dict[str, Any], error: type[Exception], message: str) -> None:
    ledger = PrivacyLedger(delta=DELTA)
    params: dict[str, Any] = {"round": 1, "clipping_norm": 1.0, **GAUSS, **changes}
    with pytest.raises(error, match=message):
        ledger.record(**params)
    assert len(ledger) == 0 and ledger.spent_epsilon() == 0.0
