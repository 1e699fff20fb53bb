"""The one 32-byte check of the attestation package; every hex conversion is ``eth_utils``'.

Run ids, commitments, Merkle nodes, roots and aggregate hashes are all
``bytes32`` on chain. :func:`to_bytes32` is the single place that checks a
value is exactly that, whether it arrives as bytes (from Python code) or as
hex text (from a bundle file, a config record, a journal line). Turning bytes
into hex text is ``eth_utils.encode_hex`` everywhere (``0x``-prefixed,
lowercase), and reading it back ``eth_utils.decode_hex``.

Examples
--------
>>> to_bytes32("root", "0x" + "ab" * 32) == bytes([0xAB]) * 32
True
>>> to_bytes32("root", b"short")
Traceback (most recent call last):
...
ValueError: root must be 32 bytes, got b'short'
"""

from __future__ import annotations

from eth_utils.hexadecimal import decode_hex, is_hex

__all__ = ["to_bytes32"]

_BYTES32 = 32


def to_bytes32(name: str, value: object) -> bytes:
    """``value`` as exactly 32 bytes.

    Parameters
    ----------
    name : str
        What the value is, for the error message (e.g. ``"run_id"``).
    value : bytes, bytearray or str
        The bytes, or their hex text (with or without the ``0x`` prefix).

    Returns
    -------
    bytes
        The 32 bytes.

    Raises
    ------
    ValueError
        If ``value`` is text that is not hex, or is not 32 bytes long.
    """
    if isinstance(value, str):
        try:
            if not is_hex(value):
                raise ValueError
            value = decode_hex(value)
        except ValueError:  # not hex digits, or an odd number of them
            raise ValueError(f"{name} is not hex: {value!r}") from None
    if not isinstance(value, bytes | bytearray) or len(value) != _BYTES32:
        raise ValueError(f"{name} must be 32 bytes, got {value!r}")
    return bytes(value)
