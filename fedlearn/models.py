"""Models every client trains, built by name from the run config.

Models are plain ``torch.nn.Module`` objects without BatchNorm, so they work
unchanged under Opacus DP-SGD (per-sample gradients).
"""

from __future__ import annotations

from torch import nn

from fedlearn.config import ModelConfig

__all__ = ["build_model"]


def build_model(spec: ModelConfig, *, num_features: int, num_classes: int) -> nn.Module:
    """Build an untrained model.

    Parameters
    ----------
    spec : ModelConfig
        ``name="mlp"`` (ReLU hidden layers of widths ``spec.hidden``) or
        ``name="logreg"`` (multinomial logistic regression).
    num_features, num_classes : int
        Input width and number of classes.
    """
    if num_features < 1 or num_classes < 2:
        raise ValueError(
            f"need num_features >= 1 and num_classes >= 2, got {num_features}, {num_classes}"
        )
    if spec.name == "logreg":
        return nn.Sequential(nn.Linear(num_features, num_classes))
    layers: list[nn.Module] = []
    width = num_features
    for hidden in spec.hidden:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
