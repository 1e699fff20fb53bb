"""Make CrypTen 0.4.1 (its last release, 2022) import and decode correctly on current torch.

Two fixes, both applied by :func:`import_crypten`, both idempotent:

1. **Import.** ``crypten.nn.onnx_converter`` does
   ``from torch.onnx._internal.registration import registry`` at import time;
   that private torch module no longer exists (torch 2.13), so ``import crypten``
   fails. CrypTen uses ``registry`` only to convert ONNX models to CrypTen
   models (``crypten.nn.from_onnx`` / ``from_pytorch``), which fedlearn never
   does: secure aggregation only shares, adds and reveals. So, *only if the
   real module is missing*, a stub module carrying a ``registry`` attribute
   is registered under that name before the import. ONNX conversion stays
   broken (it was already: it needs torch's old ONNX exporter).

2. **Fixed-point decoding.** ``FixedPointEncoder.decode`` computes the integer
   part of a negative value as ``floor(x / (scale - 1))`` instead of
   ``floor(x / scale)``; for large enough negative encodings with the right
   remainder the result is off by exactly 1.0 (about 2 in 10,000 private x
   private products). The correct decoding of a two's-complement fixed-point
   integer ``x`` is ``floor(x / scale) + (x mod scale) / scale`` (floor
   division and a non-negative remainder), which :func:`decode_fixed_point`
   computes and which replaces the method.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import types
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

__all__ = ["PRECISION_BITS", "decode_fixed_point", "import_crypten"]

#: CrypTen's default number of fractional bits (``cfg.encoder.precision_bits``).
PRECISION_BITS = 16

_STUB_NAME = "torch.onnx._internal.registration"
_PATCH_MARK = "_fedlearn_fixed_decode"
_lock = threading.Lock()


def decode_fixed_point(
    values: torch.Tensor | NDArray[np.int64], *, precision_bits: int = PRECISION_BITS
) -> NDArray[np.float64]:
    """Decode two's-complement fixed-point ``int64`` values exactly, as ``float64``.

    Parameters
    ----------
    values : torch.Tensor or ndarray of int64
        Encoded values ``round(v * 2**precision_bits)`` (ring elements mod 2**64).
    precision_bits : int, default 16
        Number of fractional bits, in ``[0, 52]``.

    Returns
    -------
    ndarray of float64
        ``floor(x / 2**p) + (x mod 2**p) / 2**p``: exact whenever the integer
        part fits in 53 bits.
    """
    if isinstance(precision_bits, bool) or not isinstance(precision_bits, int):
        raise TypeError(f"precision_bits must be an int, got {type(precision_bits).__name__}")
    if not 0 <= precision_bits <= 52:
        raise ValueError(f"precision_bits must be in [0, 52], got {precision_bits}")
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
    if not isinstance(array, np.ndarray) or array.dtype != np.int64:
        raise TypeError(f"values must be int64, got {getattr(array, 'dtype', type(array))}")
    scale = 1 << precision_bits
    # numpy's // and % on integers are floor division and a non-negative remainder.
    whole = np.floor_divide(array, scale).astype(np.float64)
    fraction = np.remainder(array, scale).astype(np.float64) / scale
    result: NDArray[np.float64] = whole + fraction
    return result


def _fixed_decode(self: Any, tensor: torch.Tensor | None) -> torch.Tensor | None:
    """Replacement for ``FixedPointEncoder.decode`` (same contract, correct floor)."""
    if tensor is None:
        return None
    if tensor.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"input must be an integer tensor, got {tensor.dtype}")
    scale = int(self._scale)
    if scale > 1:
        tensor = tensor.long()
        whole = tensor.div(scale, rounding_mode="floor")
        fraction = tensor.remainder(scale)  # non-negative for a positive divisor
        # CrypTen works in float32; keep its result dtype so nothing else changes.
        return (whole.float() + fraction.float() / scale).data
    # scale == 1 is integer encoding: CrypTen's own path is correct there.
    return self._fedlearn_original_decode(tensor)  # type: ignore[no-any-return]


def _register_onnx_stub() -> None:
    """Stub ``torch.onnx._internal.registration`` if (and only if) torch lacks it."""
    if _STUB_NAME in sys.modules:
        return
    try:
        found = importlib.util.find_spec(_STUB_NAME) is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return  # an older torch has the real module: use it
    stub = types.ModuleType(_STUB_NAME)
    stub.__doc__ = "Stub registered by fedlearn: CrypTen needs it only for ONNX conversion."
    stub.registry = None  # type: ignore[attr-defined]
    sys.modules[_STUB_NAME] = stub


def import_crypten() -> types.ModuleType:
    """Import CrypTen with both compatibility fixes applied; return the module.

    Safe to call any number of times and from several threads.

    Returns
    -------
    module
        The ``crypten`` package.

    Examples
    --------
    >>> crypten = import_crypten()
    >>> crypten.encoder.FixedPointEncoder().decode(torch.tensor([-98304])).item()
    -1.5
    """
    with _lock:
        _register_onnx_stub()
        import crypten  # type: ignore[import-untyped,unused-ignore]
        import crypten.encoder  # type: ignore[import-untyped,unused-ignore]

        encoder_cls = crypten.encoder.FixedPointEncoder
        if not getattr(encoder_cls, _PATCH_MARK, False):
            encoder_cls._fedlearn_original_decode = encoder_cls.decode
            encoder_cls.decode = _fixed_decode
            setattr(encoder_cls, _PATCH_MARK, True)
        module: types.ModuleType = crypten
        return module
