"""Local training and evaluation loops (plain SGD on CPU tensors).

Mini-batch order comes from a seeded NumPy generator, so a round's local
update is a pure function of (global weights, data, seed): the property that
makes ``--resume`` reproduce an uninterrupted run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedlearn.config import TrainConfig
from fedlearn.data import Dataset

__all__ = ["EvalResult", "evaluate", "train", "train_centralized"]


@dataclass(frozen=True)
class EvalResult:
    """Mean cross-entropy loss and accuracy over a dataset."""

    loss: float
    accuracy: float
    num_examples: int


def train(
    model: nn.Module, data: Dataset, cfg: TrainConfig, *, seed: int, proximal_mu: float = 0.0
) -> float:
    """Train ``model`` in place for ``cfg.local_epochs`` epochs; return the mean loss.

    ``proximal_mu`` > 0 adds FedProx's term ``μ/2 ‖w − w_start‖²`` (Li et al.
    2020), keeping the local model near the global one it started from.
    """
    if len(data) == 0:
        raise ValueError("cannot train on an empty dataset")
    if proximal_mu < 0:
        raise ValueError(f"proximal_mu must be >= 0, got {proximal_mu}")
    start = [p.detach().clone() for p in model.parameters()]
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(data.x)
    y = torch.from_numpy(data.y)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    total, count = 0.0, 0
    for _ in range(cfg.local_epochs):
        order = torch.from_numpy(rng.permutation(len(data)))
        for batch in torch.split(order, cfg.batch_size):
            optimizer.zero_grad()
            loss = loss_fn(model(x[batch]), y[batch])
            if proximal_mu > 0:
                distance = sum(
                    ((p - p0) ** 2).sum() for p, p0 in zip(model.parameters(), start, strict=True)
                )
                (loss + proximal_mu / 2 * distance).backward()
            else:
                loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
            count += len(batch)
    return total / count


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset) -> EvalResult:
    """Loss and accuracy of ``model`` on ``data``."""
    if len(data) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    model.eval()
    logits = model(torch.from_numpy(data.x))
    labels = torch.from_numpy(data.y)
    loss = float(nn.functional.cross_entropy(logits, labels))
    accuracy = float((logits.argmax(dim=1) == labels).float().mean())
    return EvalResult(loss=loss, accuracy=accuracy, num_examples=len(data))


def train_centralized(
    model: nn.Module, data: Dataset, cfg: TrainConfig, *, rounds: int, seed: int
) -> float:
    """Train the centralized baseline a federation is compared with.

    The same model and optimizer on the pooled data, for as many epochs as
    each client trains in the whole run.
    """
    epochs = cfg.local_epochs * rounds
    pooled = TrainConfig(
        local_epochs=epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        momentum=cfg.momentum,
    )
    return train(model, data, pooled, seed=seed)
