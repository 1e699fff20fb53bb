"""CKKS secure aggregation: clients encrypt, the server adds ciphertexts, one key holder decrypts.

What each party holds and sees
------------------------------
* **Clients** (data holders) share one CKKS secret key (TenSEAL symmetric
  context). One holder, the *dealer*, makes it in a key ceremony and seals it
  to every other registered holder (:mod:`~fedlearn.privacy.secure.envelope`),
  signing each envelope with its identity key
  (:mod:`~fedlearn.privacy.secure.identity`). The dealer stays the key's
  *custodian*: the only holder that reshares the key to later joiners and the
  only one that decrypts under it.
* **The server** (aggregator) holds a *public* context: the encryption
  parameters without any key (:meth:`CkksServer.public_context`,
  ``is_private()`` is False). It relays registrations, envelopes and grants,
  checks that ciphertexts are well formed and adds them; it cannot decrypt or
  encrypt.
* **The custodian** receives the encrypted sum and each contributor's signed
  contribution (identity, signature, MAC tags of its ciphertexts, never the
  ciphertexts themselves, which it could decrypt). It decrypts only a sum it
  has verified, floods it with noise and returns it. The server learns the sum
  of the contributors' vectors (weighted updates and total weight), as in
  plaintext FedAvg; no party sees another holder's individual update.

Against an active server (what each holder checks)
--------------------------------------------------
The server may send anything, replay, substitute keys, ask twice and invent
clients. Every stage request is untrusted:

* **Identities.** Each holder has an Ed25519 identity key, a name and a pin
  file of the identities it has seen (:class:`~fedlearn.privacy.secure.identity.IdentityPins`):
  a known name with another key (or a known key under another name) is
  refused loudly. New identities are trusted on first use during the holder's
  first run in the federation, each fingerprint logged for comparison with the
  operator's registration list; after that run the membership is closed
  (``ckks-new-holders``: ``"refuse"`` closes it from the start, once the holder
  pinned the list itself; ``"pin"`` keeps it open). A key is only ever shared
  among identities every holder of it believes: the grant names them all.
* **The ceremony is authenticated end to end.** A registration is signed by
  the registering identity over its X25519 key, the run, the ceremony and its
  node; the dealer seals only to recipients whose registration verifies and
  whose identity passes the pins, and signs a *grant* per envelope (run,
  ceremony, key fingerprint, dealer, recipient, envelope hash). A holder
  accepts a key only with a grant by a pinned identity for exactly itself and
  that envelope, in an envelope whose label binds the same. A server that
  skips the deal and hands out a key of its own, swaps envelopes or
  substitutes a recipient's X25519 key is refused.
* **Decryption** (:mod:`.summac`, :mod:`.statements`). The custodian decrypts
  at most once per round (in increasing rounds), only a vector of the model's
  length, only within the key's decryption budget, and only if at least its
  own floor (never below 2, raised by the node config ``min-contributors``,
  never lowered by the server) of *distinct holders it sealed the key to*
  signed a contribution for that round and length, and the ``c1`` half of the
  ciphertext to decrypt is the sum of theirs (a linearly homomorphic MAC
  keyed by the shared secret; the ``c0`` half only shifts the result by
  something the server already knows). Each contributor signs one
  contribution per round. So the server gets one sum per round, of at least
  the floor of real contributions, and never a chosen ciphertext decrypted.
* **Noise flooding** sized to a statistical security parameter: every
  decryption adds Gaussian noise ``σ = √(12τ)·2^(s/2)·t`` per coefficient
  (Li, Micciancio, Schultz and Sorrell, CRYPTO 2022), ``s = 40`` bits,
  ``τ`` = the key's decryption budget, ``t`` = the error bound of the sum the
  custodian counted itself (:class:`CkksParameters`). Repeating or crafting
  ciphertexts to average the noise away is impossible: the custodian decrypts
  only fresh sums of honest contributions, once per round, ``τ`` at most.

What remains: one key is shared by all holders, so a holder colluding with
the server gives it every update (threshold CKKS would split the key; TenSEAL
has none), and the floor counts colluding holders like any others. Trust on
first use trusts the identities the operator registers during a holder's first
run, unless the holder pins them beforehand. If the custodian goes silent, the
round is lost and the next round makes a new key (no other holder decrypts:
a second decryptor would allow a second, differing sum of the round).

Wire format and size
--------------------
A client packs its vector into ``ceil(L / N)`` ciphertexts (two real values
per complex slot) and sends each as SEAL's serialization of a *seeded*
symmetric encryption: the uniform half of the ciphertext is replaced by a
64-byte seed and the rest is zstd-compressed by SEAL. With the default
parameters (N = 4096, two 36-bit data primes, scale 2**62) this is about 11.6
bytes per parameter (measured on 100,000 parameters; a float32 is 4, TenSEAL's
usual N = 8192, [60, 40, 40, 60] asymmetric ciphertexts are 83). TenSEAL's own
``encrypt`` does not keep the seed, so encryption goes through
``tenseal.sealapi`` (SEAL's own Python binding shipped with TenSEAL), whose
serialization only writes to a path: the bytes pass through an anonymous
in-memory file (``memfd``, Linux) or a private temporary directory elsewhere.

Stages (``query.secure`` messages, field ``stage``)
---------------------------------------------------
(:mod:`.client` answers them, :mod:`.server` sends them.)

``ckks-register``
    the node makes an X25519 key pair for the ceremony and replies it with its
    name and identity, signed.
``ckks-deal``
    the dealer checks the recipients' registrations, makes the key, seals and
    grants it to each, and replies the envelopes, grants, the public context
    and the key's fingerprint.
``ckks-reshare``
    the custodian does the same for newly registered holders.
``ckks-key``
    a node checks the grant and opens its envelope, checks the key's
    parameters and fingerprint, keeps it and replies the fingerprint.
``ckks-decrypt``
    the custodian verifies the contributions and the sum, floods and decrypts
    it, and replies it as a float64 array (``SECURE_BLOBS["sum"]``).

The train message of a CKKS round carries ``stage="train"``, the ceremony id,
the key fingerprint and the round; :meth:`CkksClient.protect` refuses to
encrypt under any other key or twice in a round.

Modules
-------
:mod:`.parameters`
    :class:`CkksParameters`, the HomomorphicEncryption.org limits, the flooding bound.
:mod:`.primitives`
    contexts, ciphertexts, their serialization and checks, noise flooding.
:mod:`.statements`
    what holders sign: registrations, grants, contributions.
:mod:`.summac`
    the MAC that lets the custodian check a sum without seeing its terms.
:mod:`.server`
    :class:`CkksServer` (ceremony relay, ciphertext checks, sum).
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
