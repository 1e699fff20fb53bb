"""Local DP-SGD: the noise actually added, unsupported layers, the holder's budget."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from torch import nn

from fedlearn.client_app import default_model, make_client_app
from fedlearn.config import RunConfig, TrainConfig
from fedlearn.data import Dataset, load_file, schema_for, write_csv
from fedlearn.privacy import UnsupportedLayerError, check_dp_compatible, release_event
from fedlearn.privacy.holder import HolderPrivacy, LedgerMissingError
from fedlearn.privacy.local_dp import DPSGDPlan, plan_dp_sgd, train_dp_sgd
from fedlearn.privacy.noise import GaussianSampler
from fedlearn.privacy.records import RecordLedger, record_fingerprints
from fedlearn.wire import CONFIG_KEY, EXAMPLES_KEY, PRIVACY_KEY, ErrorCode
from tests.flower_messages import instruction


@pytest.mark.parametrize(
    "generator",
    [
        lambda: torch.Generator().manual_seed(3),
        lambda: GaussianSampler(bytes(range(32))),
        lambda: GaussianSampler(),
    ],
    ids=["seeded torch generator", "keyed sampler", "unkeyed sampler"],
)
def test_dp_sgd_adds_the_calibrated_noise_when_gradients_are_zero(
    generator: Callable[[], GaussianSampler | torch.Generator],
) -> None:
    # x = 0 and no bias: every per-example gradient of W is exactly zero, so
    # W moves only by the Gaussian noise: ΔW = -lr * Σ_t N(0, (σC)²) / B.
    d, k, n = 400, 25, 200
    model = nn.Sequential(nn.Linear(d, k, bias=False))
    before = model[0].weight.detach().clone()
    data = Dataset(np.zeros((n, d), np.float32), np.arange(n, dtype=np.int64) % k)
    train = TrainConfig(local_epochs=1, batch_size=20, learning_rate=0.5, momentum=0.0)
    plan = DPSGDPlan(sample_rate=0.1, steps=10, noise_multiplier=1.7, max_grad_norm=0.8)
    train_dp_sgd(model, data, train, plan=plan, generator=generator())
    delta = (model[0].weight.detach() - before).double().numpy().ravel()
    expected = (
        train.learning_rate**2
        * plan.steps
        * (plan.noise_multiplier * plan.max_grad_norm) ** 2
        / 20**2
    )
    # sample variance of 10,000 draws: relative std 1.4%; 6% is > 4 std
    assert delta.var() == pytest.approx(expected, rel=0.06)
    assert abs(delta.mean()) < 5 * np.sqrt(expected / delta.size)


def _trained(generator: GaussianSampler | torch.Generator, steps: int = 6) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    rng = np.random.default_rng(0)
    data = Dataset(rng.normal(size=(40, 4)).astype(np.float32), rng.integers(0, 2, 40))
    plan = DPSGDPlan(sample_rate=0.1, steps=steps, noise_multiplier=1.0, max_grad_norm=1.0)
    train_dp_sgd(model, data, TrainConfig(batch_size=4), plan=plan, generator=generator)
    # Opacus' wrapper is gone: no hooks, no per-example attributes left on the model.
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    return [p.detach().clone() for p in model.parameters()]


def test_a_release_key_reproduces_the_update_and_another_key_does_not() -> None:
    key = bytes(range(32))
    first, again = _trained(GaussianSampler(key)), _trained(GaussianSampler(key))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    other = _trained(GaussianSampler(bytes(32)))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    seeded = [_trained(torch.Generator().manual_seed(5)) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*seeded, strict=True))


def test_empty_poisson_batches_take_noise_only_steps() -> None:
    # q = 1e-9 on 40 examples: every batch is empty (but with probability 1e-7),
    # and each step still adds the noise, as in Opacus' own data loader.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 2))
    start = [p.detach().clone() for p in model.parameters()]
    data = Dataset(np.ones((40, 4), np.float32), np.zeros(40, np.int64))
    plan = DPSGDPlan(sample_rate=1e-9, steps=3, noise_multiplier=1.0, max_grad_norm=1.0)
    loss = train_dp_sgd(
        model, data, TrainConfig(batch_size=1), plan=plan, generator=GaussianSampler(bytes(32))
    )
    assert math.isnan(loss)  # no example was seen
    moved = [p.detach() for p in model.parameters()]
    assert all(
        torch.isfinite(p).all() and not torch.equal(a, p) for a, p in zip(start, moved, strict=True)
    )


def test_batchnorm_is_refused_with_what_to_use_instead() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    with pytest.raises(UnsupportedLayerError, match="GroupNorm/LayerNorm"):
        check_dp_compatible(model)
    check_dp_compatible(nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2)))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"noise_multiplier": 0.0}, "noise multiplier"),
        ({"max_grad_norm": 0.0}, "clipping norm"),
        ({"num_examples": 0}, "at least one example"),
    ],
)
def test_dp_sgd_parameters_are_validated(kwargs: dict, fragment: str) -> None:
    base = {
        "num_examples": 10,
        "train": TrainConfig(),
        "noise_multiplier": 1.0,
        "max_grad_norm": 1.0,
    }
    with pytest.raises(ValueError, match=fragment):
        plan_dp_sgd(**{**base, **kwargs})


# --------------------------------------------------------------------------- the holder's budget

CFG = RunConfig.from_dict(
    {
        "federation": {"rounds": 10, "clients": 2},
        "data": {"dataset": "files", "num-features": 4, "classes": ["no", "yes"]},
        "model": {"hidden": [8]},
        "privacy": {"local-dp": True, "noise-multiplier": 1.0, "max-grad-norm": 1.0},
        "train": {"batch-size": 8},
    }
)


@pytest.fixture
def holder(tmp_path: Path) -> dict:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    path = write_csv(
        tmp_path / "holder.csv", Dataset(x, (x[:, 0] > 0).astype(np.int64)), ("no", "yes")
    )
    return {
        "data-path": str(path),
        "ledger-dir": str(tmp_path / "ledgers"),
        "partition-id": 0,
        "allow-plaintext": True,  # the rounds here are plaintext DP-SGD rounds
    }


def _train(node: dict, server_round: int, arrays: ArrayRecord, cfg: RunConfig = CFG):
    config = ConfigRecord({CONFIG_KEY: cfg.to_json(), "server-round": server_round})
    msg = instruction(RecordDict({"arrays": arrays, "config": config}), node_id=5)
    context = Context(run_id=1, node_id=5, node_config=node, state=RecordDict(), run_config={})
    return make_client_app()(msg, context)


def _ledger(node: dict) -> RecordLedger:
    return HolderPrivacy.open(node["ledger-dir"], delta=1e-5).ledger


def _records(node: dict) -> frozenset[str]:
    return record_fingerprints(load_file(node["data-path"], schema_for(CFG.data)))


def test_client_refuses_exactly_the_round_that_would_overspend(holder: dict) -> None:
    arrays = ArrayRecord(default_model(CFG).state_dict())
    first = _train(holder, 1, arrays)
    assert not first.has_error(), first.error
    per_round = first.content[PRIVACY_KEY]["round-epsilon"]
    (entry,) = _ledger(holder).releases  # the plan stays on the holder: read it from its ledger
    event = release_event(
        mechanism="dpsgd",
        noise_multiplier=entry.noise_multiplier,
        steps=entry.steps,
        sample_rate=entry.sample_rate,
    )
    budget = _ledger(holder).spent_if(_records(holder), event) + 1e-9  # room for two rounds
    node = {**holder, "epsilon-budget": budget}
    assert not _train(node, 2, arrays).has_error()
    refused = _train(node, 3, arrays)
    assert refused.has_error() and refused.error.code == ErrorCode.BUDGET
    assert "privacy budget" in refused.error.reason
    assert not re.search(r"\d\.\d", refused.error.reason)  # the rule, never the holder's ε
    ledger = _ledger(holder)
    assert len(ledger.releases) == 2 and ledger.spent(_records(holder)) <= budget
    assert ledger.releases[0].round_epsilon == pytest.approx(per_round)


def test_budget_smaller_than_one_round_is_refused_before_training(holder: dict) -> None:
    reply = _train(
        {**holder, "epsilon-budget": 1e-3}, 1, ArrayRecord(default_model(CFG).state_dict())
    )
    assert reply.error.code == ErrorCode.BUDGET
    assert "smaller than one round" in reply.error.reason
    assert not _ledger(holder).releases  # nothing was released


def test_a_repeated_request_gets_the_identical_update_and_is_accounted_once(holder: dict) -> None:
    arrays = ArrayRecord(default_model(CFG).state_dict())
    first = _train(holder, 1, arrays)
    again = _train(holder, 1, arrays)
    for key in first.content["arrays"]:
        np.testing.assert_array_equal(
            first.content["arrays"][key].numpy(), again.content["arrays"][key].numpy()
        )
    assert len(_ledger(holder).releases) == 1
    other_model = ArrayRecord(
        default_model(CFG).state_dict()
    )  # a different global model: a new release
    _train(holder, 1, other_model)
    assert len(_ledger(holder).releases) == 2


def test_the_ledger_persists_across_runs_on_the_same_data(holder: dict) -> None:
    arrays = ArrayRecord(default_model(CFG).state_dict())
    _train(holder, 1, arrays)
    other_run = CFG.with_overrides(federation={"seed": 7})
    _train(holder, 1, arrays, other_run)
    ledger = _ledger(holder)
    assert len(ledger.releases) == 2
    assert ledger.spent(_records(holder)) > ledger.releases[0].epsilon


# --------------------------------------------------------------------------- records, not files


def _spent_after_one_round(node: dict, path: Path) -> float:
    """Train one round on ``path`` under ``node``'s ledger; the ε the holder reports."""
    reply = _train(
        {**node, "data-path": str(path)}, 1, ArrayRecord(default_model(CFG).state_dict())
    )
    assert not reply.has_error(), reply.error
    return float(reply.content[PRIVACY_KEY]["epsilon"])


def _rows(path: Path) -> list[str]:
    header, *rows = path.read_text().splitlines()
    return [header, *rows]


def test_a_copied_renamed_or_reexported_file_is_charged_as_the_same_records(
    holder: dict, tmp_path: Path
) -> None:
    original = Path(holder["data-path"])
    once = _spent_after_one_round(holder, original)
    header, *rows = _rows(original)
    copy = tmp_path / "elsewhere" / "renamed export.csv"
    copy.parent.mkdir()
    reordered = list(reversed(rows))
    # Shuffled rows and other number formatting: the same float32 values.
    reformatted = [
        ",".join(f"{float(v):.9e}" if i < 4 else v for i, v in enumerate(row.split(",")))
        for row in reordered
    ]
    copy.write_text("\n".join([header, *reformatted]) + "\n")
    twice = _spent_after_one_round(holder, copy)  # a new release on the same records
    assert twice > once
    assert _ledger(holder).spent(_records({**holder, "data-path": str(copy)})) == pytest.approx(
        twice
    )


def test_appended_rows_inherit_the_old_rows_spending_and_an_edited_row_is_fresh(
    holder: dict, tmp_path: Path
) -> None:
    original = Path(holder["data-path"])
    once = _spent_after_one_round(holder, original)
    header, *rows = _rows(original)
    appended = tmp_path / "appended.csv"
    appended.write_text("\n".join([header, *rows, "9.5,9.5,9.5,9.5,yes"]) + "\n")
    node = {**holder, "data-path": str(appended)}
    ledger = _ledger(holder)
    new_row = _records(node) - _records(holder)
    assert len(new_row) == 1
    assert ledger.spent(_records(node)) == pytest.approx(once)  # the old rows' spending
    assert ledger.spent(new_row) == 0.0
    edited = tmp_path / "edited.csv"
    first = rows[0].split(",")
    first[0] = "123.25"
    edited.write_text("\n".join([header, ",".join(first), *rows[1:]]) + "\n")
    edited_records = _records({**holder, "data-path": str(edited)})
    assert len(edited_records - _records(holder)) == 1
    # A budget that fits exactly one round: the appended and the edited file are
    # both refused (their old rows spent it), a file of only new rows is not.
    budget = {"epsilon-budget": once + 1e-9}
    for path in (appended, edited):
        reply = _train(
            {**holder, **budget, "data-path": str(path)},
            2,
            ArrayRecord(default_model(CFG).state_dict()),
        )
        assert reply.has_error() and reply.error.code == ErrorCode.BUDGET
    fresh = tmp_path / "fresh.csv"
    # As many rows as the original (the same plan, so the same ε per round), all new.
    new_rows = [f"{i}.5,1,2,3,{'yes' if i % 2 else 'no'}" for i in range(len(rows))]
    fresh.write_text("\n".join([header, *new_rows]) + "\n")
    assert _spent_after_one_round({**holder, **budget}, fresh) == pytest.approx(once)


def test_a_deleted_ledger_fails_closed_and_says_how_to_recover(holder: dict) -> None:
    _spent_after_one_round(holder, Path(holder["data-path"]))
    (Path(holder["ledger-dir"]) / "records.json").unlink()
    reply = _train(holder, 2, ArrayRecord(default_model(CFG).state_dict()))
    assert reply.has_error() and reply.error.code == ErrorCode.BUDGET
    assert "ledger is missing" in reply.error.reason
    with pytest.raises(LedgerMissingError, match="Restore the ledger"):
        HolderPrivacy.open(holder["ledger-dir"], delta=1e-5)


def test_under_local_dp_the_reply_does_not_reveal_the_record_count(holder: dict) -> None:
    reply = _train(holder, 1, ArrayRecord(default_model(CFG).state_dict()))
    report = dict(reply.content[PRIVACY_KEY])
    assert set(report) == {"client", "epsilon", "round-epsilon", "delta"}


def test_facade_refuses_an_unsupported_model_eagerly() -> None:
    from fedlearn import Federation

    cfg = RunConfig().with_overrides(privacy={"local_dp": True})
    with pytest.raises(UnsupportedLayerError, match="BatchNorm"):
        Federation(
            config=cfg,
            model=lambda: nn.Sequential(nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Linear(8, 10)),
        )


def test_a_holder_with_a_budget_refuses_a_run_without_local_dp(holder: dict) -> None:
    plain = CFG.with_overrides(privacy={"local_dp": False})
    reply = _train(
        {**holder, "epsilon-budget": 5.0}, 1, ArrayRecord(default_model(plain).state_dict()), plain
    )
    assert reply.has_error() and reply.error.code == ErrorCode.BUDGET
    assert "only joins runs with local DP" in reply.error.reason


def test_under_local_dp_replies_carry_no_unnoised_statistics(holder: dict) -> None:
    arrays = ArrayRecord(default_model(CFG).state_dict())
    reply = _train(holder, 1, arrays)
    metrics = reply.content["metrics"]
    assert dict(metrics) == {EXAMPLES_KEY: 1}  # no loss, no record count
    config = ConfigRecord({CONFIG_KEY: CFG.to_json(), "server-round": 1})
    msg = instruction(
        RecordDict({"arrays": arrays, "config": config}), node_id=5, message_type="evaluate"
    )
    context = Context(run_id=1, node_id=5, node_config=holder, state=RecordDict(), run_config={})
    refused = make_client_app()(msg, context)
    assert refused.has_error() and "evaluation is refused under local DP" in refused.error.reason


def test_client_mode_mod_clips_the_update_the_client_sends(holder: dict) -> None:
    cfg = CFG.with_overrides(privacy={"local_dp": False})
    arrays = ArrayRecord(default_model(cfg).state_dict())
    config = ConfigRecord({CONFIG_KEY: cfg.to_json(), "server-round": 1, "dp-clipping-norm": 0.01})
    msg = instruction(RecordDict({"arrays": arrays, "config": config}), node_id=5)
    context = Context(run_id=1, node_id=5, node_config=holder, state=RecordDict(), run_config={})
    reply = make_client_app()(msg, context)
    assert not reply.has_error(), reply.error
    update = [reply.content["arrays"][k].numpy() - arrays[k].numpy() for k in arrays]
    norm = float(np.sqrt(sum(float((u.astype(np.float64) ** 2).sum()) for u in update)))
    assert 0.0099 < norm <= 0.01 * (1 + 1e-4)  # training moved it further; the mod clipped it
