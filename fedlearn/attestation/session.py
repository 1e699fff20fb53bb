"""A run's attestation session: chain, contracts, coordinator key, outbox, run id.

Layout in the run directory; everything but ``secrets/`` may be published::

    RUN_DIR/attestations/deployment.json   where the contracts are (chain id, addresses)
    RUN_DIR/attestations/addresses.json    each node's wallet address
    RUN_DIR/attestations/outbox.sqlite     attestations not yet confirmed on chain
    RUN_DIR/attestations/run-id            the run's 32-byte id (kept on resume)
    RUN_DIR/attestations/round-NNNNNN.json one bundle (leaves + proofs) per round
    RUN_DIR/chain/                         the embedded chain's journal (embedded chain only)
    RUN_DIR/secrets/coordinator.key        development coordinator key (embedded chain only;
                                           0600 in a 0700 folder, see :mod:`fedlearn.files`)

Verifying a run (``fedlearn verify``, :func:`run_contracts`) reads only the
public part: ``attestations/`` and the chain (``chain/`` for the embedded
one, ``--chain URL`` otherwise). :data:`PUBLIC_ARTIFACTS` names those folders.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from fedlearn.attestation.chain import Chain, Contracts, Deployment, EmbeddedChain, RpcChain
from fedlearn.attestation.hexutil import to_bytes32
from fedlearn.attestation.outbox import Outbox
from fedlearn.attestation.signing import WalletError, load_wallet
from fedlearn.config import AttestationConfig, ConfigError
from fedlearn.files import create_atomically, run_secrets, write_atomically

__all__ = [
    "COORDINATOR_KEY_ENV",
    "COORDINATOR_KEYSTORE_ENV",
    "COORDINATOR_PASSWORD_ENV",
    "PUBLIC_ARTIFACTS",
    "TOKEN_DECIMALS",
    "AttestationSession",
    "coordinator_account",
    "open_chain",
    "run_contracts",
]

log = logging.getLogger(__name__)

COORDINATOR_KEY_ENV = "FEDLEARN_COORDINATOR_KEY"
COORDINATOR_KEYSTORE_ENV = "FEDLEARN_COORDINATOR_KEYSTORE"
COORDINATOR_PASSWORD_ENV = "FEDLEARN_COORDINATOR_PASSWORD"
#: The reward token has 18 decimals, like ether.
TOKEN_DECIMALS = 18
#: The run-directory folders anyone may read and that verifying a run needs.
PUBLIC_ARTIFACTS = ("attestations", "chain")
_CHAIN_DIR = "chain"


def open_chain(cfg: AttestationConfig, run_dir: Path) -> Chain:
    """The run's chain: the embedded one in ``RUN_DIR/chain`` or a JSON-RPC node."""
    if cfg.chain == "embedded":
        return EmbeddedChain(state_dir=run_dir / _CHAIN_DIR)
    return RpcChain(url=cfg.chain, dev_faucet=cfg.chain_dev_faucet)


def coordinator_account(cfg: AttestationConfig, run_dir: Path) -> LocalAccount:
    """The coordinator's key: keystore or environment; a development key for the embedded chain.

    Raises
    ------
    WalletError
        For a real chain without ``$FEDLEARN_COORDINATOR_KEY`` or
        ``$FEDLEARN_COORDINATOR_KEYSTORE``.
    """
    keystore = os.environ.get(COORDINATOR_KEYSTORE_ENV)
    if keystore or os.environ.get(COORDINATOR_KEY_ENV):
        return load_wallet(
            keystore=keystore or None,
            password_env=COORDINATOR_PASSWORD_ENV,
            key_env=COORDINATOR_KEY_ENV,
        )
    if cfg.chain != "embedded":
        raise WalletError(
            f"attesting on {cfg.chain} needs the coordinator's key: set "
            f"${COORDINATOR_KEYSTORE_ENV} (password in ${COORDINATOR_PASSWORD_ENV}) "
            f"or ${COORDINATOR_KEY_ENV}"
        )
    path = run_secrets(run_dir) / "coordinator.key"
    legacy = run_dir / _CHAIN_DIR / "coordinator.key"  # where runs before secrets/ kept it
    if legacy.exists() and not path.exists():
        os.replace(legacy, path)  # same file system: atomic, mode 0600 kept
        log.warning("moved the coordinator key out of the published chain folder to %s", path)
    if create_atomically(path, secrets.token_hex(32).encode()):
        log.warning("embedded chain: created a development coordinator key in %s", path)
    account: LocalAccount = Account.from_key(path.read_text().strip())
    return account


@dataclass
class AttestationSession:
    """Everything a run attests with; :meth:`open` creates or resumes it."""

    chain: Chain
    contracts: Contracts
    outbox: Outbox
    run_id: bytes
    budget: int

    @classmethod
    def open(
        cls, cfg: AttestationConfig, *, run_dir: Path, rounds: int, resume: bool
    ) -> AttestationSession:
        """Open the chain, deploy (first time) or load the contracts, open the outbox.

        The pool is funded with ``rounds × reward-per-round`` tokens at deployment.

        Raises
        ------
        ConfigError
            If a new run (``resume=False``) would reuse an attested run's directory:
            its bundles, outbox and run id belong to that run.
        """
        directory = run_dir / "attestations"
        id_file = directory / "run-id"
        if id_file.exists() and not resume:
            raise ConfigError(
                f"{run_dir} holds an attested run; resume it (--resume) or use a new run directory"
            )
        directory.mkdir(parents=True, exist_ok=True)
        if not id_file.exists():  # public: every bundle and leaf names it
            write_atomically(id_file, secrets.token_hex(32).encode(), mode=0o644)
        try:
            run_id = to_bytes32("run id", id_file.read_text(encoding="utf-8").strip())
        except ValueError as exc:
            raise ConfigError(f"{id_file} is not a 32-byte run id: {exc}") from None
        budget = cfg.reward_per_round * 10**TOKEN_DECIMALS
        chain = open_chain(cfg, run_dir)
        try:
            coordinator = coordinator_account(cfg, run_dir)
            deployment = directory / "deployment.json"
            if deployment.exists():
                contracts = Contracts.load(chain=chain, path=deployment, coordinator=coordinator)
                deployed_by = Deployment.load(deployment).coordinator
                if deployed_by != coordinator.address:
                    raise WalletError(
                        f"this run's contracts were deployed for coordinator {deployed_by}, "
                        f"not {coordinator.address}: set ${COORDINATOR_KEY_ENV} or "
                        f"${COORDINATOR_KEYSTORE_ENV} to that coordinator's key"
                    )
            else:
                supply = max(1, budget * rounds)
                contracts = Contracts.deploy(
                    chain=chain, coordinator=coordinator, token_supply=supply, path=deployment
                )
            outbox = Outbox(path=directory / "outbox.sqlite")
        except BaseException:
            chain.close()
            raise
        return cls(chain=chain, contracts=contracts, outbox=outbox, run_id=run_id, budget=budget)

    def close(self) -> None:
        """Close the outbox and the chain (the embedded chain's journal is already on disk)."""
        self.outbox.close()
        self.chain.close()


def run_contracts(
    run_dir: Path, *, chain: str | None = None, coordinator: LocalAccount | None = None
) -> tuple[Chain, Contracts]:
    """Attach to a run's deployed contracts (for ``verify``, ``claim``, ``attest``).

    Needs only the run's public artifacts (:data:`PUBLIC_ARTIFACTS`), so
    ``run_dir`` may be a published copy. The chain is ``chain`` if given,
    else the one ``RUN_DIR/config.toml`` names, else (a copy without the
    config) the embedded chain whose journal is in ``RUN_DIR/chain``. Close
    the returned chain when done.

    Raises
    ------
    FileNotFoundError
        If the run was not attested (no ``attestations/deployment.json``), or
        neither ``chain``, a ``chain/`` journal nor a ``config.toml`` says
        where its chain is.
    """
    from fedlearn.config import RunConfig

    run_dir = Path(run_dir)
    deployment = run_dir / "attestations" / "deployment.json"
    if not deployment.exists():
        raise FileNotFoundError(
            f"{run_dir} has no attestations (no {deployment}); was attestation.enabled set?"
        )
    config = run_dir / "config.toml"
    if config.exists():
        cfg = RunConfig.load(config).attestation
    elif (run_dir / _CHAIN_DIR).is_dir() or chain is not None:
        cfg = AttestationConfig()  # a published copy: the embedded chain's journal, or --chain
    else:
        raise FileNotFoundError(
            f"{run_dir} has no embedded chain ({_CHAIN_DIR}/) and no config.toml naming its "
            "chain: give the chain's JSON-RPC URL (--chain)"
        )
    if chain is not None:
        cfg = AttestationConfig(**{**cfg.__dict__, "chain": chain})
    opened = open_chain(cfg, run_dir)
    try:
        return opened, Contracts.load(chain=opened, path=deployment, coordinator=coordinator)
    except BaseException:
        opened.close()
        raise
