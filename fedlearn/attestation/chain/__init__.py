"""EVM chain access: an embedded chain that survives restarts, any JSON-RPC node, the contracts.

Two implementations of :class:`Chain` (:mod:`~fedlearn.attestation.chain.base`):

* :class:`EmbeddedChain` (:mod:`~fedlearn.attestation.chain.embedded`) runs
  py-evm in-process through eth-tester, so the demo and notebooks need no node;
  it journals every transaction and replays the journal when reopened, so its
  state survives a restart.
* :class:`RpcChain` (:mod:`~fedlearn.attestation.chain.rpc`) talks to any
  JSON-RPC endpoint (anvil in the tests).

:class:`Contracts` (:mod:`~fedlearn.attestation.chain.contracts`) deploys and
calls ``AttestationLedger``, ``RewardToken`` and ``RewardPool`` on either chain,
signing every transaction locally. Failures are the errors of
:mod:`~fedlearn.attestation.chain.errors`: :class:`ChainUnavailableError` for an
unreachable node (retry later), :class:`ContractRevertError` for a revert decoded
to the contracts' custom error name.

Examples
--------
>>> import tempfile
>>> from eth_account import Account
>>> chain = EmbeddedChain(state_dir=tempfile.mkdtemp())
>>> coordinator = Account.create()
>>> contracts = Contracts.deploy(chain=chain, coordinator=coordinator, token_supply=10**21)
>>> contracts.root_of(run_id=bytes([1]) * 32, round=1) == bytes(32)
True
>>> chain.close()
"""

from fedlearn.attestation.chain.base import Chain
from fedlearn.attestation.chain.contracts import (
    CLAIM_GAS,
    POST_ROUND_GAS,
    Contracts,
    Deployment,
    RoundPosted,
)
from fedlearn.attestation.chain.embedded import EmbeddedChain
from fedlearn.attestation.chain.errors import (
    ChainError,
    ChainUnavailableError,
    ContractRevertError,
    TransactionFailedError,
)
from fedlearn.attestation.chain.rpc import RpcChain

__all__ = [
    "CLAIM_GAS",
    "POST_ROUND_GAS",
    "Chain",
    "ChainError",
    "ChainUnavailableError",
    "ContractRevertError",
    "Contracts",
    "Deployment",
    "EmbeddedChain",
    "RoundPosted",
    "RpcChain",
    "TransactionFailedError",
]
