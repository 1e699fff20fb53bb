"""``dp_cost``: time of a DP-SGD epoch over that of a non-private epoch, same model and data.

The model is fedlearn's default MLP (``default_model(RunConfig())``: 64-64-10),
the data the digits partition of one client (partition 1 of
:func:`fedlearn.data.partition_bundled` with the default config: 204 examples)
and the pooled training data of all ten clients (1,438 examples). One
measured call is one client round of the default :class:`~fedlearn.config.TrainConfig`
(2 local epochs, SGD lr 0.05, momentum 0.9) at the given batch size, from a
fresh copy of the same initial model; an epoch's time is the call's time
divided by the epochs. Every call includes what a client round pays (optimizer
and Opacus wrapper set-up), none includes copying the model.

Sides:

* non-private: :func:`fedlearn.training.train` (shuffled mini-batches), at
  fedlearn's default batch size 16 and at the private side's batch size;
* ``fedlearn``: :func:`fedlearn.privacy.local_dp.train_dp_sgd` with the plan of
  :func:`~fedlearn.privacy.local_dp.plan_dp_sgd` (Poisson batches of expected
  size ``batch_size``, ``local_epochs * ceil(n / batch_size)`` steps): what
  fedlearn's clients run;
* alternatives: the same loop (the same Poisson batches from Opacus'
  ``UniformWithReplacementSampler`` and the same noise from fedlearn's
  ``GaussianSampler``, both derived from the same generator as in
  ``train_dp_sgd``; same steps, clipping norm and optimizer) with another way of
  computing per-example gradients: Opacus' ``hooks`` (fedlearn's mode, as a
  check of the reproduction), ``functorch`` (``force_functorch``), ``ew``
  (PyTorch ExpandedWeights), ``ghost`` (Opacus' ghost clipping: per-example
  norms only, then a second, reweighted backward pass) and ``vmap``
  (``torch.func.vmap(grad(...))`` with clipping written out, no Opacus).

Every variant's correctness is checked before timing, one step from the same
model on the same Poisson batch: with σ = 0 the update must equal a
per-example reference (autograd per example, clip to C, sum, divide by the
expected batch size), and with σ = 1 the update minus that reference must have
standard deviation ``σ·C / expected batch size``.

Calls are interleaved: every repetition runs every variant once, in a fresh
random order, each private variant with the same sampling/noise seed within a
repetition. Torch uses one thread, as simulated clients do, and times are the
calling thread's CPU time (``time.thread_time``: the machine is shared, and
waiting for a core is no cost of either side); wall-time ratios are recorded
alongside. Figures are medians over repetitions; ratios are ratios of medians.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
import warnings
from typing import Any

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.grad_sample import (
    GradSampleModuleExpandedWeights,
    GradSampleModuleFastGradientClipping,
)
from opacus.optimizers import DPOptimizerFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from benchmarks.core import BenchContext, Outcome, Target, median, register
from fedlearn.client_app import default_model
from fedlearn.config import RunConfig, TrainConfig
from fedlearn.data import Dataset, partition_bundled

# train_dp_sgd's own pieces (its noise draw and random sources), so that every
# alternative below consumes exactly the randomness fedlearn's loop does.
from fedlearn.privacy.local_dp import (
    DPSGDPlan,
    _random_sources,
    _SamplerNoise,
    _SamplerNoiseDPOptimizer,
    _StepNoise,
    plan_dp_sgd,
    train_dp_sgd,
)
from fedlearn.training import train

__all__ = ["dp_cost"]

#: Ways of computing per-example gradients; "fedlearn" is ``train_dp_sgd`` itself.
MODES = ("fedlearn", "hooks", "functorch", "ew", "ghost", "vmap", "linear")
MODE_LABELS = {
    "fedlearn": "fedlearn train_dp_sgd (Opacus hooks)",
    "hooks": "reproduced loop, Opacus hooks",
    "functorch": "Opacus functorch (force_functorch)",
    "ew": "Opacus ExpandedWeights",
    "ghost": "Opacus ghost clipping",
    "vmap": "torch.func vmap, no Opacus",
    "linear": "closed-form clipping for nn.Linear layers, no Opacus",
}
CLIENT_PARTITION = 1
DEFAULT_BATCH = TrainConfig().batch_size
SETTINGS: dict[str, dict[str, Any]] = {
    "quick": {
        "datasets": {"client": 7, "pooled": 3},
        "batch_sizes": [16, 64, 128],
        "modes": list(MODES),
    },
    "full": {
        "datasets": {"client": 41, "pooled": 9},
        "batch_sizes": [16, 32, 64, 128],
        "modes": list(MODES),
    },
}
#: σ and C of the timed runs (neither changes the work done per step).
NOISE_MULTIPLIER = 1.0
MAX_GRAD_NORM = 1.0
CLOCKS = ("cpu", "wall")


# --------------------------------------------------------------------------- the DP-SGD loop


class _SamplerNoiseGhostOptimizer(_SamplerNoise, DPOptimizerFastGradientClipping):  # type: ignore[misc]
    """Opacus' ghost-clipping optimizer with train_dp_sgd's noise draw."""


class _Stepper:
    """One way of turning a Poisson batch into a DP-SGD step (per-example grads, clip, noise)."""

    def __init__(
        self,
        mode: str,
        model: nn.Module,
        train_cfg: TrainConfig,
        plan: DPSGDPlan,
        expected_batch: int,
        noise: _StepNoise,
    ) -> None:
        self.mode = mode
        self.model = model
        self.plan = plan
        self.expected = expected_batch
        self.noise = noise
        self.loss_fn = nn.CrossEntropyLoss()
        sgd = torch.optim.SGD(
            model.parameters(), lr=train_cfg.learning_rate, momentum=train_cfg.momentum
        )
        common = {
            "noise_multiplier": plan.noise_multiplier,
            "max_grad_norm": plan.max_grad_norm,
            "expected_batch_size": expected_batch,
            "loss_reduction": "mean",
            "noise": noise,
        }
        self.module: nn.Module = model
        self.optimizer: torch.optim.Optimizer = sgd
        if mode == "hooks":
            self.module = GradSampleModule(model, batch_first=True, loss_reduction="mean")
            self.optimizer = _SamplerNoiseDPOptimizer(sgd, **common)
        elif mode == "functorch":
            self.module = GradSampleModule(
                model, batch_first=True, loss_reduction="mean", force_functorch=True
            )
            self.optimizer = _SamplerNoiseDPOptimizer(sgd, **common)
        elif mode == "ew":
            self.module = GradSampleModuleExpandedWeights(
                model, batch_first=True, loss_reduction="mean"
            )
            self.optimizer = _SamplerNoiseDPOptimizer(sgd, **common)
        elif mode == "ghost":
            self.module = GradSampleModuleFastGradientClipping(
                model,
                batch_first=True,
                loss_reduction="mean",
                max_grad_norm=plan.max_grad_norm,
                use_ghost_clipping=True,
            )
            self.optimizer = _SamplerNoiseGhostOptimizer(sgd, **common)
            self.criterion = DPLossFastGradientClipping(
                self.module,
                self.optimizer,  # type: ignore[arg-type]
                nn.CrossEntropyLoss(),
                loss_reduction="mean",
            )
        elif mode == "vmap":
            self.params = {k: p.detach() for k, p in model.named_parameters()}

            def loss_one(
                params: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor
            ) -> torch.Tensor:
                logits = functional_call(model, params, (xi.unsqueeze(0),))
                return nn.functional.cross_entropy(logits, yi.unsqueeze(0))

            self.per_example = vmap(grad_and_value(loss_one), in_dims=(None, 0, 0))
        elif mode == "linear":
            self.linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
            owned = {id(p) for m in self.linears for p in m.parameters()}
            if any(id(p) not in owned for p in model.parameters()):
                raise ValueError("mode 'linear' needs every parameter inside an nn.Linear")
            self.captured: list[tuple[torch.Tensor, torch.Tensor]] = []

            def capture(
                _module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
            ) -> None:
                self.captured.append((inputs[0].detach(), output))

            self.handles = [m.register_forward_hook(capture) for m in self.linears]
        else:
            raise ValueError(f"unknown mode {mode!r}")
        self.module.train()

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> float | None:
        """One DP-SGD step on the batch; return the batch's mean loss (None if empty)."""
        if self.mode == "vmap":
            return self._vmap_step(xb, yb)
        if self.mode == "linear":
            return self._linear_step(xb, yb)
        self.optimizer.zero_grad()
        loss_value = None
        if len(xb) or self.mode in ("hooks", "functorch"):
            # As train_dp_sgd: an empty Poisson batch goes through the model as an
            # empty tensor and the step adds the noise alone.
            if self.mode == "ghost":
                loss = self.criterion(self.module(xb), yb)
            else:
                loss = self.loss_fn(self.module(xb), yb)
            loss.backward()
            loss_value = float(loss.detach()) if len(xb) else None
        elif self.mode == "ghost":
            for p in self.model.parameters():
                p.grad = torch.zeros_like(p)
        else:  # ExpandedWeights refuses a batch of 0: empty per-example gradients by hand
            for p in self.model.parameters():
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
        self.optimizer.step()
        return loss_value

    def _noise(self) -> dict[int, torch.Tensor]:
        """train_dp_sgd's noise of this step by ``id`` of parameter (none at σ = 0)."""
        std = self.plan.noise_multiplier * self.plan.max_grad_norm
        if std <= 0:
            return {}
        units = self.noise.draw()
        return {id(p): u * std for p, u in zip(self.model.parameters(), units, strict=True)}

    def _vmap_step(self, xb: torch.Tensor, yb: torch.Tensor) -> float | None:
        plan, names = self.plan, list(self.params)
        loss_value = None
        if len(xb):
            grads, losses = self.per_example(self.params, xb, yb)
            norms = torch.stack([grads[k].reshape(len(xb), -1).norm(2, dim=1) for k in names])
            factor = (plan.max_grad_norm / (norms.norm(2, dim=0) + 1e-6)).clamp(max=1.0)
            summed = {k: torch.einsum("i,i...", factor, grads[k]) for k in names}
            loss_value = float(losses.mean())
        else:
            summed = {k: torch.zeros_like(p) for k, p in self.params.items()}
        noises = self._noise()
        for name, p in self.model.named_parameters():
            noise = noises.get(id(p))
            p.grad = (summed[name] if noise is None else summed[name] + noise) / self.expected
        self.optimizer.step()
        return loss_value

    def _linear_step(self, xb: torch.Tensor, yb: torch.Tensor) -> float | None:
        """Per-example clipping without per-example gradients, for ``nn.Linear`` layers.

        Examples are independent, so the gradient of the summed loss with respect to a
        layer's output row i is example i's; example i's gradient of that layer is
        ``outer(dz_i, a_i)`` (+ ``dz_i`` for the bias), of squared norm
        ``|dz_i|^2 |a_i|^2 (+ |dz_i|^2)``. The clipped sum is then ``(c * dz)^T a``.
        """
        plan = self.plan
        loss_value = None
        grads: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        if len(xb):
            self.captured.clear()
            losses = nn.functional.cross_entropy(self.model(xb), yb, reduction="none")
            acts = [a for a, _ in self.captured]
            backprops = torch.autograd.grad(losses.sum(), [z for _, z in self.captured])
            sq = torch.zeros(len(xb), dtype=xb.dtype)
            for layer, a, dz in zip(self.linears, acts, backprops, strict=True):
                dz_sq = (dz * dz).sum(dim=1)
                sq += dz_sq * (a * a).sum(dim=1)
                if layer.bias is not None:
                    sq += dz_sq
            factor = (plan.max_grad_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
            for layer, a, dz in zip(self.linears, acts, backprops, strict=True):
                scaled = dz * factor.unsqueeze(1)
                grads.append((scaled.T @ a, scaled.sum(0) if layer.bias is not None else None))
            loss_value = float(losses.mean().detach())
        else:
            for layer in self.linears:
                bias = torch.zeros_like(layer.bias) if layer.bias is not None else None
                grads.append((torch.zeros_like(layer.weight), bias))
        noises = self._noise()
        for layer, (g_weight, g_bias) in zip(self.linears, grads, strict=True):
            for p, g in ((layer.weight, g_weight), (layer.bias, g_bias)):
                if p is None or g is None:
                    continue
                noise = noises.get(id(p))
                p.grad = (g if noise is None else g + noise) / self.expected
        self.optimizer.step()
        return loss_value

    def close(self) -> None:
        if self.mode in ("hooks", "functorch", "ghost"):
            self.module.to_standard_module()  # type: ignore[operator]
        if self.mode == "linear":
            for handle in self.handles:
                handle.remove()


def train_dp_mode(
    model: nn.Module,
    data: Dataset,
    train_cfg: TrainConfig,
    *,
    plan: DPSGDPlan,
    generator: torch.Generator,
    mode: str,
) -> float:
    """``train_dp_sgd``'s loop with another way of computing per-example gradients."""
    if mode == "fedlearn":
        return train_dp_sgd(model, data, train_cfg, plan=plan, generator=generator)
    n = len(data)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    model.train()
    batches, sampler = _random_sources(generator)
    noise = _StepNoise(
        sampler, like=[p for p in model.parameters() if p.requires_grad], steps=plan.steps
    )
    stepper = _Stepper(mode, model, train_cfg, plan, max(1, round(plan.sample_rate * n)), noise)
    poisson = UniformWithReplacementSampler(
        num_samples=n, sample_rate=plan.sample_rate, generator=batches, steps=plan.steps
    )
    total, count = 0.0, 0
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Full backward hook", UserWarning)
            warnings.filterwarnings("ignore", ".*ExpandedWeights.*", UserWarning)
            for batch in poisson:
                loss = stepper.step(x[batch], y[batch])
                if loss is not None:
                    total += loss * len(batch)
                    count += len(batch)
    finally:
        stepper.close()
    return total / count if count else float("nan")


# --------------------------------------------------------------------------- correctness


def _reference_update(
    model: nn.Module, data: Dataset, batch: torch.Tensor, clip: float, expected: int
) -> dict[str, torch.Tensor]:
    """The clipped average gradient of ``batch``, example by example (autograd)."""
    summed = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    for i in batch.tolist():
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()}  # type: ignore[union-attr]
        norm = torch.sqrt(sum((g**2).sum() for g in grads.values()))  # type: ignore[arg-type]
        factor = min(1.0, clip / (float(norm) + 1e-6))
        for k in summed:
            summed[k] += factor * grads[k]
    return {k: v / expected for k, v in summed.items()}


def check_mode(mode: str, model0: nn.Module, data: Dataset, batch_size: int) -> dict[str, float]:
    """One step of ``mode`` against the per-example reference (σ = 0 and σ = 1)."""
    n = len(data)
    q = min(1.0, batch_size / n)
    expected = max(1, round(q * n))
    clip = 0.1  # small, so that most examples are clipped
    sgd = TrainConfig(local_epochs=1, batch_size=batch_size, learning_rate=1.0, momentum=0.0)
    seed = 12345
    batch = (torch.rand(n, generator=torch.Generator().manual_seed(seed)) < q).nonzero()
    reference = _reference_update(copy.deepcopy(model0), data, batch.squeeze(1), clip, expected)
    out: dict[str, float] = {"batch": float(len(batch))}
    for sigma in (0.0, 1.0):
        model = copy.deepcopy(model0)
        before = {k: p.detach().clone() for k, p in model.named_parameters()}
        train_dp_mode(
            model,
            data,
            sgd,
            plan=DPSGDPlan(q, 1, sigma, clip),
            generator=torch.Generator().manual_seed(seed),
            mode=mode,
        )
        # lr = 1, no momentum: the update is minus the (noisy) clipped average gradient.
        residual = torch.cat(
            [
                ((before[k] - p.detach()) - reference[k]).reshape(-1)
                for k, p in model.named_parameters()
            ]
        )
        if sigma == 0.0:
            out["max_abs_error_sigma0"] = float(residual.abs().max())
            out["reference_max_abs"] = float(max(float(v.abs().max()) for v in reference.values()))
        else:
            out["noise_std_over_expected"] = float(residual.std()) / (sigma * clip / expected)
    # Ten noisy steps with momentum: the same trajectory as fedlearn's train_dp_sgd.
    trained = {}
    for kind in ("fedlearn", mode):
        model = copy.deepcopy(model0)
        train_dp_mode(
            model,
            data,
            TrainConfig(batch_size=batch_size),
            plan=DPSGDPlan(q, 10, 1.0, 0.5),
            generator=torch.Generator().manual_seed(seed),
            mode=kind,
        )
        trained[kind] = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    out["max_abs_diff_vs_fedlearn_10_steps"] = float(
        (trained[mode] - trained["fedlearn"]).abs().max()
    )
    out["ok"] = float(
        out["max_abs_error_sigma0"] <= 1e-6
        and abs(out["noise_std_over_expected"] - 1.0) < 0.1
        and out["max_abs_diff_vs_fedlearn_10_steps"] <= 1e-5
    )
    return out


# --------------------------------------------------------------------------- timing


def _datasets() -> dict[str, Dataset]:
    cfg = RunConfig()
    parts, _, _ = partition_bundled(
        cfg.data, clients=cfg.federation.clients, seed=cfg.federation.seed
    )
    pooled = Dataset(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))
    return {"client": parts[CLIENT_PARTITION], "pooled": pooled}


def _variants(batch_sizes: list[int], modes: list[str]) -> list[tuple[str, int]]:
    """``("nonprivate", b)`` and ``(mode, b)`` for every batch size (and the default 16)."""
    out = [("nonprivate", DEFAULT_BATCH)]
    for b in batch_sizes:
        if b != DEFAULT_BATCH:
            out.append(("nonprivate", b))
        out += [(m, b) for m in modes]
    return out


def _key(kind: str, batch: int) -> str:
    return f"{kind}@{batch}"


def _timed_call(
    kind: str, batch: int, model0: nn.Module, data: Dataset, seed: int
) -> dict[str, float]:
    """Seconds per epoch (thread CPU time and wall time) of one round of ``kind``."""
    cfg = TrainConfig(batch_size=batch)
    model = copy.deepcopy(model0)
    if kind == "nonprivate":
        cpu, wall = time.thread_time(), time.perf_counter()
        train(model, data, cfg, seed=seed)
    else:
        plan = plan_dp_sgd(
            num_examples=len(data),
            train=cfg,
            noise_multiplier=NOISE_MULTIPLIER,
            max_grad_norm=MAX_GRAD_NORM,
        )
        generator = torch.Generator().manual_seed(seed)
        cpu, wall = time.thread_time(), time.perf_counter()
        train_dp_mode(model, data, cfg, plan=plan, generator=generator, mode=kind)
    return {
        "cpu": (time.thread_time() - cpu) / cfg.local_epochs,
        "wall": (time.perf_counter() - wall) / cfg.local_epochs,
    }


def _measure(
    ctx: BenchContext,
    name: str,
    data: Dataset,
    model0: nn.Module,
    variants: list[tuple[str, int]],
    repetitions: int,
    order_rng: random.Random,
) -> dict[str, dict[str, list[float]]]:
    """``{clock: {variant: [seconds per epoch of each repetition]}}``."""
    for kind, batch in variants:  # warm-up (imports, lazy initialisation, caches)
        _timed_call(kind, batch, model0, data, seed=0)
    times: dict[str, dict[str, list[float]]] = {
        clock: {_key(k, b): [] for k, b in variants} for clock in CLOCKS
    }
    for rep in range(repetitions):
        ctx.status(f"dp_cost: {name} data, repetition {rep + 1}/{repetitions}")
        order = list(variants)
        order_rng.shuffle(order)
        for kind, batch in order:
            measured = _timed_call(kind, batch, model0, data, seed=1000 + rep)
            for clock in CLOCKS:
                times[clock][_key(kind, batch)].append(measured[clock])
        ctx.advance()
    return times


@register(
    "dp_cost",
    target=Target("<=", 2.0),
    description=(
        "Median time (thread CPU time) of a DP-SGD epoch "
        "(`fedlearn.privacy.local_dp.train_dp_sgd`, Opacus hooks) divided by that of a "
        "non-private epoch (`fedlearn.training.train`) on the same model (default MLP) and "
        "one client's digits data (204 examples), both at fedlearn's default TrainConfig "
        "(batch 16); plus batch sizes 32-128, the pooled data (1,438 examples) and other "
        "per-example-gradient modes, all interleaved."
    ),
)
def dp_cost(ctx: BenchContext) -> Outcome:
    """Measure what DP-SGD costs over non-private training per epoch.

    Parameters
    ----------
    ctx : BenchContext
        Runner context (mode, scratch directory, progress).

    Returns
    -------
    Outcome
        Headline: fedlearn's DP-SGD epoch / non-private epoch, client data, batch 16.
    """
    mode = "quick" if ctx.quick else "full"
    setting = SETTINGS[mode]
    batch_sizes: list[int] = list(setting["batch_sizes"])
    modes: list[str] = list(setting["modes"])
    reps: dict[str, int] = dict(setting["datasets"])
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)  # as simulated clients (fedlearn.client_app)
    try:
        datasets = _datasets()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RunConfig().federation.seed)
            model0 = default_model(RunConfig())
        ctx.plan(len(modes) + sum(reps.values()))

        checks: dict[str, dict[str, float]] = {}
        for m in modes:
            ctx.status(f"dp_cost: checking {m} against the per-example reference")
            checks[m] = check_mode(m, model0, datasets["client"], batch_size=32)
            ctx.advance()
        failed = [m for m, c in checks.items() if not c["ok"]]

        variants = _variants(batch_sizes, modes)
        order_rng = random.Random(0)
        load_before = os.getloadavg()[0]
        measured = {
            name: _measure(ctx, name, data, model0, variants, reps[name], order_rng)
            for name, data in datasets.items()
        }
    finally:
        torch.set_num_threads(threads_before)

    # raw[clock][dataset][variant] -> seconds per epoch of each repetition
    raw = {clock: {name: measured[name][clock] for name in datasets} for clock in CLOCKS}
    med = {
        clock: {
            name: {k: median(v) for k, v in by_variant.items()} for name, by_variant in d.items()
        }
        for clock, d in raw.items()
    }

    def ratio(kind: str, batch: int, base: int, name: str = "client", clock: str = "cpu") -> float:
        return med[clock][name][_key(kind, batch)] / med[clock][name][_key("nonprivate", base)]

    headline = ratio("fedlearn", DEFAULT_BATCH, DEFAULT_BATCH)
    tables: dict[str, Any] = {}
    fastest: dict[str, Any] = {}
    opacus_modes = [m for m in modes if m not in ("vmap", "linear")]
    for name in datasets:
        rows = {}
        for b in batch_sizes:
            steps = math.ceil(len(datasets[name]) / b)
            rows[f"batch {b} ({steps} steps/epoch)"] = {
                "non-private ms/epoch": 1e3 * med["cpu"][name][_key("nonprivate", b)],
                **{
                    m: (
                        f"{1e3 * med['cpu'][name][_key(m, b)]:.1f} ms/epoch, "
                        f"{ratio(m, b, b, name):.2f}x same batch, "
                        f"{ratio(m, b, DEFAULT_BATCH, name):.2f}x vs batch {DEFAULT_BATCH} "
                        f"(wall: {ratio(m, b, b, name, 'wall'):.2f}x, "
                        f"{ratio(m, b, DEFAULT_BATCH, name, 'wall'):.2f}x)"
                    )
                    for m in modes
                },
            }
        tables[name] = rows
        best = {}
        for b in batch_sizes:
            for label, pool in (("any", modes), ("Opacus", opacus_modes)):
                top = min(pool, key=lambda m, b=b: med["cpu"][name][_key(m, b)])
                best[f"batch {b}, {label}"] = (
                    f"{top} ({ratio(top, b, b, name):.2f}x same batch, "
                    f"{ratio(top, b, DEFAULT_BATCH, name):.2f}x vs batch {DEFAULT_BATCH})"
                )
        fastest[name] = best

    per_rep = {
        clock: [
            a / b
            for a, b in zip(
                raw[clock]["client"][_key("fedlearn", DEFAULT_BATCH)],
                raw[clock]["client"][_key("nonprivate", DEFAULT_BATCH)],
                strict=True,
            )
        ]
        for clock in CLOCKS
    }
    fedlearn_ratios = {
        name: {
            f"batch {b}": (
                f"{ratio('fedlearn', b, b, name):.2f}x same batch, "
                f"{ratio('fedlearn', b, DEFAULT_BATCH, name):.2f}x vs batch {DEFAULT_BATCH} "
                f"(wall: {ratio('fedlearn', b, b, name, 'wall'):.2f}x, "
                f"{ratio('fedlearn', b, DEFAULT_BATCH, name, 'wall'):.2f}x)"
            )
            for b in batch_sizes
        }
        for name in datasets
    }
    summary: dict[str, Any] = {
        "headline: client data, batch 16, fedlearn train_dp_sgd / train (CPU time)": headline,
        "same, wall time": ratio("fedlearn", DEFAULT_BATCH, DEFAULT_BATCH, clock="wall"),
        "ms per epoch (client, batch 16; CPU / wall)": {
            side: f"{1e3 * med['cpu']['client'][_key(kind, DEFAULT_BATCH)]:.2f} / "
            f"{1e3 * med['wall']['client'][_key(kind, DEFAULT_BATCH)]:.2f}"
            for side, kind in (("non-private", "nonprivate"), ("fedlearn DP-SGD", "fedlearn"))
        },
        "headline ratio per repetition (paired; CPU, wall)": [
            [round(c, 3), round(w, 3)] for c, w in zip(per_rep["cpu"], per_rep["wall"], strict=True)
        ],
        "fedlearn train_dp_sgd by batch size": fedlearn_ratios,
        "fastest mode per batch size (CPU time)": fastest,
        "table, client data (204 examples), CPU time (wall-time ratios in brackets)": tables[
            "client"
        ],
        "table, pooled data (1,438 examples), CPU time (wall-time ratios in brackets)": tables[
            "pooled"
        ],
        "correctness checks (vs per-example reference and vs fedlearn)": {
            m: (
                f"{'ok' if c['ok'] else 'FAILED'}: max |error| at σ=0 "
                f"{c['max_abs_error_sigma0']:.1e} (update up to {c['reference_max_abs']:.1e}), "
                f"noise std / expected {c['noise_std_over_expected']:.3f}, "
                f"max |Δ param| vs fedlearn after 10 noisy steps "
                f"{c['max_abs_diff_vs_fedlearn_10_steps']:.1e}"
            )
            for m, c in checks.items()
        },
    }
    notes = [
        "An epoch's time is one client round (default TrainConfig: 2 local epochs) divided by "
        "2, from a fresh copy of the same initial model, including optimizer and Opacus "
        "wrapper set-up. DP-SGD takes local_epochs × ceil(n / batch) Poisson-sampled steps "
        "(expected batch = batch size). 'same batch' compares with non-private training at "
        "the same batch size, 'vs batch 16' with fedlearn's default. Times are the calling "
        "thread's CPU time (torch.set_num_threads(1), as simulated clients), which other "
        "processes on the machine do not inflate; wall-time ratios are given alongside. "
        "The alternatives reproduce train_dp_sgd's loop (same Poisson batches, noise, "
        "optimizer) with another per-example-gradient mode; 'linear' computes each "
        "example's clipped contribution of an nn.Linear layer in closed form (per-example "
        "norm |dz|·|a|, clipped sum (c·dz)ᵀa) with one ordinary backward pass. Every mode "
        "passed a one-step check against a per-example autograd reference and follows "
        "fedlearn's trajectory over 10 noisy steps (see correctness checks).",
    ]
    if failed:
        notes.append(f"Modes that FAILED the correctness check: {failed}.")
    return Outcome(
        figure="DP-SGD epoch / non-private epoch (fedlearn train_dp_sgd, 1 client, batch 16)",
        value=headline,
        unit="x",
        settings={
            "mode": mode,
            "model": "default_model(RunConfig()): MLP 64-64-10",
            "datasets": {
                "client": f"partition {CLIENT_PARTITION} of partition_bundled(digits, 10 "
                f"clients, Dirichlet 0.5, seed 42): {len(datasets['client'])} examples",
                "pooled": f"all 10 partitions: {len(datasets['pooled'])} examples",
            },
            "train_config": "TrainConfig(batch_size=b): 2 local epochs, lr 0.05, momentum 0.9",
            "batch_sizes": batch_sizes,
            "modes": {m: MODE_LABELS[m] for m in modes},
            "noise_multiplier": NOISE_MULTIPLIER,
            "max_grad_norm": MAX_GRAD_NORM,
            "repetitions": reps,
            "seeds": "model init torch seed 42; repetition r: train seed and DP generator "
            "seed 1000 + r (same for every variant of a repetition); order random.Random(0)",
            "torch_threads": 1,
            "clocks": "cpu = time.thread_time (headline), wall = time.perf_counter",
            "load_1min_before_timing": load_before,
        },
        summary=summary,
        raw={"seconds_per_epoch": raw, "checks": checks},
        notes=notes,
    )
