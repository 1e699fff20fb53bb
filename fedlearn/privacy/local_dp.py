"""Record-level local DP: DP-SGD on the client through Opacus.

Every step samples a Poisson batch (each example independently with
probability ``q = batch_size / n``), clips each example's gradient to
``max_grad_norm`` and adds Gaussian noise of standard deviation
``noise_multiplier * max_grad_norm`` to the sum: the mechanism that
``dp_accounting``'s ``PoissonSampledDpEvent(q, GaussianDpEvent(σ))`` describes,
composed over the steps.

Batches are drawn by indexing tensors directly (no ``DataLoader``: on small
models its per-example collation costs more than the training). Opacus'
``GradSampleModule`` and ``DPOptimizer`` do the per-sample clipping and the
noise. Opacus' ``secure_mode`` needs torchcsprng, which has no build for
current torch, so the noise comes from a ``torch.Generator`` whose seed the
caller derives from a secret (see :mod:`fedlearn.privacy.holder`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import nn

from fedlearn.config import AccountantName, TrainConfig
from fedlearn.data import Dataset

__all__ = [
    "DPSGDPlan",
    "UnsupportedLayerError",
    "check_dp_compatible",
    "plan_dp_sgd",
    "train_dp_sgd",
]


class UnsupportedLayerError(ValueError):
    """The model has layers DP-SGD cannot train (e.g. BatchNorm mixes examples)."""


def check_dp_compatible(model: nn.Module) -> None:
    """Raise :class:`UnsupportedLayerError` naming each layer Opacus cannot make private.

    BatchNorm computes statistics across the batch, so one example's gradient
    depends on the others and per-example clipping bounds nothing; use
    ``GroupNorm`` or ``LayerNorm`` instead (``opacus.validators.ModuleValidator.fix``
    does the replacement).
    """
    errors = [
        e for e in ModuleValidator.validate(model, strict=False) if "training mode" not in str(e)
    ]
    if errors:
        details = "; ".join(str(e) for e in errors)
        raise UnsupportedLayerError(
            f"the model cannot be trained with DP-SGD: {details}. Replace BatchNorm with "
            "GroupNorm/LayerNorm (opacus.validators.ModuleValidator.fix(model))"
        )


@dataclass(frozen=True)
class DPSGDPlan:
    """One round of DP-SGD on one client: what the accountant needs."""

    sample_rate: float
    steps: int
    noise_multiplier: float
    max_grad_norm: float


def plan_dp_sgd(
    *, num_examples: int, train: TrainConfig, noise_multiplier: float, max_grad_norm: float
) -> DPSGDPlan:
    """Sampling rate and steps of one round (``local_epochs`` expected passes)."""
    if num_examples < 1:
        raise ValueError("DP-SGD needs at least one example")
    if noise_multiplier <= 0 or not math.isfinite(noise_multiplier):
        raise ValueError(f"noise multiplier must be > 0, got {noise_multiplier}")
    if max_grad_norm <= 0 or not math.isfinite(max_grad_norm):
        raise ValueError(f"clipping norm must be > 0, got {max_grad_norm}")
    sample_rate = min(1.0, train.batch_size / num_examples)
    steps = train.local_epochs * math.ceil(1.0 / sample_rate)
    return DPSGDPlan(sample_rate, steps, noise_multiplier, max_grad_norm)


def train_dp_sgd(
    model: nn.Module,
    data: Dataset,
    train: TrainConfig,
    *,
    plan: DPSGDPlan,
    generator: torch.Generator,
) -> float:
    """Run the planned DP-SGD steps on ``model`` in place; return the mean loss.

    ``generator`` drives both the Poisson sampling and the noise.
    """
    model.train()
    check_dp_compatible(model)
    n = len(data)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    expected_batch = max(1, round(plan.sample_rate * n))
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    optimizer = DPOptimizer(
        torch.optim.SGD(gsm.parameters(), lr=train.learning_rate, momentum=train.momentum),
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=plan.max_grad_norm,
        expected_batch_size=expected_batch,
        loss_reduction="mean",
        generator=generator,
    )
    loss_fn = nn.CrossEntropyLoss()
    total, count = 0.0, 0
    gsm.train()
    try:
        for _ in range(plan.steps):
            batch = (torch.rand(n, generator=generator) < plan.sample_rate).nonzero().squeeze(1)
            optimizer.zero_grad()
            # An empty Poisson batch still takes a step: the noise alone.
            loss = loss_fn(gsm(x[batch]), y[batch]) if len(batch) else None
            if loss is not None:
                with warnings.catch_warnings():
                    # Opacus' hooks fire on module outputs as inputs need no grad: expected.
                    warnings.filterwarnings("ignore", "Full backward hook", UserWarning)
                    loss.backward()
                total += float(loss.detach()) * len(batch)
                count += len(batch)
            else:
                for p in gsm.parameters():
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
            optimizer.step()
    finally:
        gsm._close()
    return total / count if count else float("nan")


def train_centralized_dp(
    model: nn.Module,
    data: Dataset,
    train: TrainConfig,
    *,
    rounds: int,
    target_epsilon: float,
    delta: float,
    max_grad_norm: float,
    generator: torch.Generator,
    accountant: AccountantName = "rdp",
) -> tuple[float, DPSGDPlan]:
    """Train the centralized DP-SGD baseline at the same ε a federation's clients get.

    The same model and optimizer on the pooled data, for as many expected
    epochs as each client trains over the whole run (``rounds ×
    local_epochs``), with σ calibrated so the whole training ends at
    ``target_epsilon``. Returns the mean loss and the plan used.
    """
    from fedlearn.privacy.accounting import calibrate_noise_multiplier

    pooled = TrainConfig(
        local_epochs=train.local_epochs * rounds,
        batch_size=train.batch_size,
        learning_rate=train.learning_rate,
        momentum=train.momentum,
    )
    unit = plan_dp_sgd(
        num_examples=len(data), train=pooled, noise_multiplier=1.0, max_grad_norm=max_grad_norm
    )
    sigma = calibrate_noise_multiplier(
        target_epsilon=target_epsilon,
        delta=delta,
        sample_rate=unit.sample_rate,
        steps=unit.steps,
        accountant=accountant,
    )
    plan = DPSGDPlan(unit.sample_rate, unit.steps, sigma, max_grad_norm)
    return train_dp_sgd(model, data, pooled, plan=plan, generator=generator), plan
