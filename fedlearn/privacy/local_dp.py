"""Record-level local DP: DP-SGD on the client through Opacus.

Every step samples a Poisson batch (each example independently with
probability ``q = batch_size / n``), clips each example's gradient to
``max_grad_norm`` and adds Gaussian noise of standard deviation
``noise_multiplier * max_grad_norm`` to the sum: the mechanism that
``dp_accounting``'s ``PoissonSampledDpEvent(q, GaussianDpEvent(σ))`` describes,
composed over the steps.

What Opacus does, and what stays ours:

* Batches: Opacus' ``UniformWithReplacementSampler`` (the sampler inside its
  ``DPDataLoader``), asked for exactly the planned steps. Its index batches
  select rows of the data tensors directly; a ``DataLoader`` around it would
  collate example by example, which on small models costs more than the
  training. It accepts only a ``torch.Generator``, which a holder's release
  seeds with 64 bits of its keyed sampler (see ``_random_sources``).
* Per-example gradients, clipping, accumulation, scaling and the step: Opacus'
  ``GradSampleModule`` and ``DPOptimizer``; an empty Poisson batch goes through
  the model as an empty tensor and takes a noise-only step, as in Opacus' own
  data loader.
* The noise: drawn from the one CSPRNG sampler,
  :class:`~fedlearn.privacy.noise.GaussianSampler`, not from a
  ``torch.Generator``. Opacus draws its noise with ``torch.normal`` from a
  ``torch.Generator`` (a Mersenne Twister, whose state can be recovered from its
  outputs); its ``secure_mode`` needs torchcsprng, which has no build for
  current torch. Opacus' ``DPOptimizer`` does the rest of the step around the
  draw (``_SamplerNoise``).
* Accounting: not Opacus' accountants; the caller records a ``dp_accounting``
  event in the holder's ledger (:mod:`fedlearn.privacy.ledger`).
* ``PrivacyEngine.make_private`` is not used: it wraps a ``DataLoader`` (the
  collation cost above), attaches its own accountant and chooses the optimizer
  class itself, so the noise could only come from a ``torch.Generator``.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from opacus.validators import ModuleValidator
from torch import nn

from fedlearn.config import AccountantName, TrainConfig
from fedlearn.data import Dataset
from fedlearn.privacy.noise import GaussianSampler

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


#: Standard normals drawn from the sampler at once, as many whole steps as fit in
#: 2**20 values (4 MiB of float32): inside a training loop one draw per step costs
#: several times more per value than one large draw (measured on the default MLP,
#: 4,810 parameters).
_NOISE_CHUNK = 1 << 20


class _StepNoise:
    """Unit Gaussian noise for each step, shaped like ``like``, from a :class:`GaussianSampler`.

    Values come in draws of ``_NOISE_CHUNK`` (or one step's worth, if larger), cut
    into steps in order, and never more steps than planned are drawn: for a given
    sampler, parameter shapes and step count the noise of every step is fixed.
    Draws are float32 unless a parameter is float64; each part is cast to its
    parameter's dtype.
    """

    def __init__(self, sampler: GaussianSampler, *, like: list[torch.Tensor], steps: int) -> None:
        self._sampler = sampler
        self._like = [(t.shape, t.dtype, t.numel()) for t in like]
        self._width = sum(t.numel() for t in like)
        self._wide = any(t.dtype == torch.float64 for t in like)
        self._left = steps
        self._step = 0
        self._block: list[torch.Tensor] = []  # per parameter: (steps in block, *shape)

    def draw(self) -> list[torch.Tensor]:
        """The next step's noise, one tensor per parameter."""
        if not self._block or self._step == len(self._block[0]):
            count = max(1, min(self._left, _NOISE_CHUNK // max(self._width, 1)))
            self._left -= count
            flat = torch.from_numpy(
                self._sampler.normal(
                    (count, self._width), 1.0, dtype=np.float64 if self._wide else np.float32
                )
            )
            # Views, not copies: each parameter's columns of the block, step by step.
            self._block, offset = [], 0
            for shape, dtype, size in self._like:
                part = flat[:, offset : offset + size].view(count, *shape)
                self._block.append(part if part.dtype == dtype else part.to(dtype))
                offset += size
            self._step = 0
        step, self._step = self._step, self._step + 1
        return [part[step] for part in self._block]


class _SamplerNoise:
    """Mixin for Opacus' DP optimizers: the Gaussian noise comes from a :class:`_StepNoise`.

    Opacus keeps its whole step (clipping, accumulation, scaling, the wrapped
    optimizer's update); only the draw is replaced. The optimizer's own
    ``add_noise`` runs at ``noise_multiplier = 0`` (the attribute Opacus' noise
    schedulers set), which leaves the clipped sum in ``p.grad``; the step's unit
    noise, times ``noise_multiplier * max_grad_norm``, is then added to it.
    """

    noise_multiplier: float
    max_grad_norm: float
    params: list[torch.Tensor]

    def __init__(self, *args: object, noise: _StepNoise, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.noise = noise

    def add_noise(self) -> None:
        sigma, self.noise_multiplier = self.noise_multiplier, 0.0
        try:
            super().add_noise()  # type: ignore[misc]  # the Opacus optimizer's
        finally:
            self.noise_multiplier = sigma
        if sigma > 0:
            std = sigma * self.max_grad_norm
            for p, unit in zip(self.params, self.noise.draw(), strict=True):
                if p.grad is not None:  # Opacus' add_noise set every one
                    p.grad.add_(unit, alpha=std)


class _SamplerNoiseDPOptimizer(_SamplerNoise, DPOptimizer):  # type: ignore[misc]  # untyped Opacus
    """Opacus' ``DPOptimizer`` drawing its noise from ``noise`` (see :class:`_SamplerNoise`)."""


def _random_sources(
    generator: GaussianSampler | torch.Generator,
) -> tuple[torch.Generator, GaussianSampler]:
    """The batch generator and the noise sampler of one DP-SGD run, both from ``generator``.

    Opacus' sampler takes only a ``torch.Generator``. From a :class:`GaussianSampler`
    (a holder's release), that generator is seeded with 64 bits of the sampler's
    stream: unpredictable without the sampler's key, and its outputs (which
    examples were drawn) never leave the holder. A seeded ``torch.Generator``
    (reproducible experiments, tests) draws the batches itself and keys the noise
    sampler with a hash of its current state, so its batches are the ones it would
    draw anyway; such a run is only as secret as that generator's seed.
    """
    if isinstance(generator, GaussianSampler):
        return torch.Generator().manual_seed(generator.seed()), generator
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            "generator must be a GaussianSampler or a torch.Generator, "
            f"got {type(generator).__name__}"
        )
    state = generator.get_state().numpy().tobytes()
    return generator, GaussianSampler(hashlib.sha256(b"fedlearn dp-sgd noise|" + state).digest())


def train_dp_sgd(
    model: nn.Module,
    data: Dataset,
    train: TrainConfig,
    *,
    plan: DPSGDPlan,
    generator: GaussianSampler | torch.Generator,
) -> float:
    """Run the planned DP-SGD steps on ``model`` in place; return the mean loss.

    ``generator`` is the run's randomness: a :class:`GaussianSampler` keyed by the
    release (what a data holder passes: the same key gives the same update), or a
    seeded ``torch.Generator`` for reproducible experiments (see
    ``_random_sources``). It drives both the Poisson batches and the noise.
    """
    model.train()
    check_dp_compatible(model)
    n = len(data)
    batches, sampler = _random_sources(generator)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    trainable = [p for p in gsm.parameters() if p.requires_grad]
    optimizer = _SamplerNoiseDPOptimizer(
        torch.optim.SGD(trainable, lr=train.learning_rate, momentum=train.momentum),
        noise=_StepNoise(sampler, like=trainable, steps=plan.steps),
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=plan.max_grad_norm,
        expected_batch_size=max(1, round(plan.sample_rate * n)),
        loss_reduction="mean",
    )
    poisson = UniformWithReplacementSampler(
        num_samples=n, sample_rate=plan.sample_rate, generator=batches, steps=plan.steps
    )
    loss_fn = nn.CrossEntropyLoss()
    total, count = 0.0, 0
    gsm.train()
    try:
        with warnings.catch_warnings():
            # Opacus' hooks fire on module outputs as inputs need no grad: expected.
            warnings.filterwarnings("ignore", "Full backward hook", UserWarning)
            for batch in poisson:
                rows = torch.as_tensor(batch, dtype=torch.long)
                # p.grad is reassigned by the optimizer's add_noise: no need to zero it.
                optimizer.zero_grad(set_to_none=True)
                # An empty Poisson batch still takes a step (the noise alone): it goes
                # through as an empty tensor, whose loss is nan and per-example gradients
                # empty.
                loss = loss_fn(gsm(x[rows]), y[rows])
                loss.backward()
                if len(rows):
                    total += float(loss.detach()) * len(rows)
                    count += len(rows)
                optimizer.step()
    finally:
        gsm.to_standard_module()  # removes Opacus' hooks and per-example attributes
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
    generator: GaussianSampler | torch.Generator,
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
