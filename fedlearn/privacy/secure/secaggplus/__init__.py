r"""SecAgg+ (Bell et al., CCS 2020) on Flower's Message API.

Flower 1.41 ships SecAgg+ only for its legacy API. This module runs the same
protocol on the :mod:`fedlearn.privacy.secure.base` contract, with Flower's
primitives (ECDH key pairs, Fernet, Shamir's secret sharing) and the fixes the
legacy path lacks:

* neighbourhoods and mask pairs are computed only over the nodes that
  completed each stage, so a node that drops before key sharing no longer
  aborts the round (Flower 1.41: survivors hit ``KeyError``);
* an even ``num_shares`` is refused up front (Flower silently halts the round);
* values outside ``±clipping_range`` are refused, never clamped.

Protocol, for round ``r`` with sampled nodes ``S0`` (all stage requests are
:data:`~fedlearn.wire.SECURE_QUERY_TYPE` messages):

1. ``secagg-setup``: the server sends the parameters; each client creates two
   SECP384R1 key pairs (``sk1`` for pairwise masks, ``sk2`` to encrypt shares)
   and replies with both public keys. ``S1`` = nodes that answered.
2. ``secagg-share-keys``: the server sends ``S1`` and the public keys of the
   node's neighbours. The neighbourhood ``N(i)`` of node ``i`` is a ring of
   ``num_shares`` nodes centred on ``i`` over ``sorted(S1)`` (all of ``S1`` if
   it is smaller); both sides compute it, the client checks the server's keys
   against it. The client draws a self-mask seed ``b`` and replies with
   Shamir shares (``threshold``-of-``|N(i)|``) of ``b`` and of ``sk1``, one
   per neighbour, each encrypted under the ECDH(``sk2``) key of that pair.
   ``S2`` = nodes that answered (nodes whose secrets could not be recovered
   from enough neighbours in ``S2`` are pruned).
3. Train message: :meth:`SecAggPlusServer.setup` returns, for each node of
   ``S2``, ``S2`` and the encrypted shares addressed to it.
   :meth:`SecAggPlusClient.protect` stores them, quantizes the vector and
   adds ``PRG(b)`` and ``±PRG(ECDH(sk1_i, pk1_j))`` for every neighbour ``j``
   in ``S2``, all modulo ``modulus_range``. ``S3`` = nodes whose masked
   vector arrived and is well formed; ``D = S2 \ S3`` are the dead.
4. ``secagg-unmask``: each node of ``S3`` receives its neighbours in ``S3``
   (active) and in ``D`` (dead) and returns its shares of ``b`` for the active
   and of ``sk1`` for the dead. It refuses a request that lists a node as both,
   names a node it holds no share of, or comes a second time. The server
   reconstructs each ``b`` and each dead ``sk1`` (``threshold`` shares each),
   removes the masks and dequantizes.

Precision. A value ``x`` in ``[-c, c]`` is mapped to an integer
``q = round((x + c) · Q / 2c)`` in ``[0, Q]`` (``Q = quantization_range``)
by stochastic (unbiased) or nearest rounding, so ``|q·Δ - (x + c)| < Δ``
(``≤ Δ/2`` for nearest), ``Δ = 2c/Q``. The masked arithmetic is exact modulo
``M = modulus_range`` as long as ``n·Q < M``, which the server enforces; the
revealed sum is therefore exactly ``Σ q_i``, dequantized as
``float(Σ q_i)·Δ - n·c``, and each coordinate is within
:meth:`SecAggPlusServer.error_bound` ``= n·Δ`` (``n·Δ/2`` nearest) plus a
float64 slack of ``n·c·2⁻⁴⁴`` of the plaintext float sum.

Deviations from Flower's primitives, on purpose: masks come from AES-256-CTR
keyed through HKDF-SHA256 (Flower's ``pseudo_rand_gen`` folds every seed
into a 32-bit ``RandomState`` seed, which an aggregator can enumerate), and
quantization uses OS randomness for stochastic rounding and refuses values
out of range (Flower's ``quantize`` clamps silently, draws from NumPy's global
generator and overflows ``int32`` for ``Q ≥ 2³¹``).

Threat model: semi-honest server and clients, as in Bell et al. The server
holds public keys only; it learns ``b`` of survivors and ``sk1`` of the dead,
both fresh per round and useless for any vector but the ones summed.

Modules
-------
:mod:`.parameters`
    :class:`~.parameters.SecAggPlusParameters` and the rules they must satisfy.
:mod:`.primitives`
    neighbourhoods, masks, quantization, key encodings.
:mod:`.server`
    :class:`SecAggPlusServer` (setup, share forwarding, unmasking).
:mod:`.client`
    :class:`SecAggPlusClient` (keys, shares, masking, unmask answers).
"""

from __future__ import annotations

from fedlearn.privacy.secure.secaggplus.client import SecAggPlusClient
from fedlearn.privacy.secure.secaggplus.server import SecAggPlusServer

__all__ = [
    "SecAggPlusClient",
    "SecAggPlusServer",
]
