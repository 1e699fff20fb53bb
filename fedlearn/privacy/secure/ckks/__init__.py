"""CKKS secure aggregation: clients encrypt, the server adds ciphertexts, one client decrypts.

What each party holds and sees
------------------------------
* **Clients** share one CKKS secret key (TenSEAL symmetric context). It is
  made by one client (the *dealer*) in a key ceremony and sent to every other
  client sealed to that client's X25519 key
  (:mod:`~fedlearn.privacy.secure.envelope`); the server relays only sealed
  envelopes. Clients that join later get the same key from
  a current key holder through the same sealed path.
* **The server** (aggregator) holds a *public* context: the encryption
  parameters without any key (:meth:`CkksServer.public_context`,
  ``is_private()`` is False). It can check that ciphertexts are well formed and
  add them; it cannot decrypt and cannot encrypt.
* **Who decrypts**: after adding the ciphertexts of the round's contributors
  the server sends the encrypted *sum* to one contributor (tried in node-id
  order until one answers) which decrypts it and returns the plaintext sum.
  The server therefore learns the sum of the contributors' vectors (weighted
  model updates and their total weight), as in plaintext FedAvg, and the
  resulting average model goes back to all clients in the next round in the
  clear. No party sees another client's individual update.

Threat model and its limits (read before deploying)
---------------------------------------------------
The server is honest-but-curious and does not collude with clients. With one
key shared by all clients, a server that *deviates* could send a single
client's ciphertext instead of the sum to be decrypted, or substitute its own
X25519 key during registration (registration keys are not authenticated) and
so obtain the CKKS key. The decryptor's refusal of requests naming fewer than
``min_contributors`` contributors is defence in depth only: it cannot check
that the ciphertext really is their sum. Threshold CKKS (the secret key split
among the clients, e.g. OpenFHE's multiparty CKKS) would remove both issues;
TenSEAL/SEAL offer no threshold decryption.

A passive attack that *does* apply to an honest-but-curious server is Li and
Micciancio's (EUROCRYPT 2021): the exact decryption ``m + e`` of a ciphertext
``(c0, c1)`` the server knows reveals the secret key as
``s = (m + e - c0) / c1``. The decryptor therefore *floods* the sum before
decrypting: it adds fresh Gaussian noise (drawn from ``os.urandom``) over the
whole plaintext space (real and imaginary slot parts, i.e. every polynomial
coefficient) with ``decryption_noise_factor`` times the standard deviation of
the noise the sum already carries, so what the server learns about the key is
an RLWE sample with fresh error instead of an exact linear equation. This is
the mitigation OpenFHE and Lattigo use; it is not a formal IND-CPA^D proof at
a stated number of decryptions (for that see Li, Micciancio, Schultz and
Sorrell, CRYPTO 2022), and it costs precision (see :class:`CkksParameters`).

Wire format and size
--------------------
A client packs its vector into ``ceil(L / slots)`` ciphertexts
(``slots = poly_modulus_degree / 2``) and sends each as SEAL's serialization
of a *seeded* symmetric encryption: the uniform half of the ciphertext is
replaced by a 64-byte seed and the rest is zstd-compressed by SEAL. With the
default parameters (N = 4096, a 36-bit data prime) this is about 11.5 bytes
per parameter (measured on 100,000 parameters; a float32 is 4, TenSEAL's usual
N = 8192, [60, 40, 40, 60] asymmetric ciphertexts are 83). TenSEAL's own
``encrypt`` does not keep the seed, so encryption goes through
``tenseal.sealapi`` (SEAL's own Python binding shipped with TenSEAL), whose
serialization only writes to a path: the bytes pass through an anonymous
in-memory file (``memfd``, Linux) or a private temporary directory elsewhere.

Stages (``query.secure`` messages, field ``stage``)
---------------------------------------------------
(:mod:`.client` answers them, :mod:`.server` sends them.)

``ckks-register``
    the node makes an X25519 key pair for the ceremony, keeps the private
    key in ``context.state`` and replies the public key.
``ckks-deal``
    the dealer makes the CKKS key, keeps it, seals the serialized secret
    context to each listed node (the label binds run id, ceremony id and the
    recipient's node id) and replies the envelopes, the public context and
    the key's fingerprint.
``ckks-reshare``
    a key holder seals the key it holds to newly registered nodes.
``ckks-key``
    a node opens its envelope, checks the key's parameters and fingerprint,
    keeps it and replies the fingerprint.
``ckks-decrypt``
    a contributor floods and decrypts the encrypted sum and replies it as a
    float64 array (``SECURE_BLOBS["sum"]``).

The train message of a CKKS round carries ``stage="train"``, the ceremony id
and the key fingerprint; :meth:`CkksClient.protect` refuses to encrypt under
any other key.

Modules
-------
:mod:`.parameters`
    :class:`CkksParameters` and the HomomorphicEncryption.org limits.
:mod:`.primitives`
    contexts, ciphertexts, their serialization and checks, noise flooding.
:mod:`.server`
    :class:`CkksServer` (key ceremony, ciphertext checks, sum).
:mod:`.client`
    :class:`CkksClient` (ceremony stages, encryption, decryption).
"""

from __future__ import annotations

from fedlearn.privacy.secure.ckks.client import CkksClient
from fedlearn.privacy.secure.ckks.parameters import HE_STANDARD_MAX_MODULUS_BITS, CkksParameters
from fedlearn.privacy.secure.ckks.primitives import key_fingerprint
from fedlearn.privacy.secure.ckks.server import CkksServer

__all__ = [
    "HE_STANDARD_MAX_MODULUS_BITS",
    "CkksClient",
    "CkksParameters",
    "CkksServer",
    "key_fingerprint",
]
