"""The data holder's policy: the floor a holder's client enforces on every server request.

Every message from the server is an untrusted request (threat model: the
operator may be active). The holder states a floor once, when it starts its
client (``fedlearn client --require-secure/--allow-plaintext/--min-contributors
/--crypten-party-key``, carried in the SuperNode's node config), and the
ClientApp checks every message against it:

=========================  ==============================================================
rule                       where it is enforced
=========================  ==============================================================
``secure-mode``            :func:`holder_policy_mod` (outermost on ``train``): the round's
                           mode must be one the holder requires (plaintext ``none`` only
                           with ``allow-plaintext``) and agree with the run config;
                           :func:`check_query_mode` does the same for every stage query.
``same-mode``              the first train message of a run pins its mode (in
                           ``context.state``); a later message of another mode (a server
                           that lowers the protection mid-run) is refused.
``min-contributors``       the sums a holder helps reveal: CKKS ``ckks-decrypt``
                           (contributor list, checked in the query handler and again by
                           the CKKS decryptor), SecAgg+ ``secagg-share-keys`` (keyed
                           nodes), ``secagg-train`` (nodes that shared keys) and
                           ``secagg-unmask`` (active nodes, when this node neighbours
                           every keyed node). CrypTen: the compute parties choose the
                           contributor set when they open the shares, after the client
                           replied, so the client cannot see it; the parties' own floor
                           applies (pin their keys to choose whose floor you trust).
``dp-with-budget``         a holder with an ε budget joins only local-DP rounds (checked
                           here and, as before, in the train handler).
``crypten-party-keys``     a CrypTen round must announce exactly the pinned party keys, in
                           order (the party index is part of every share's label).
=========================  ==============================================================

Defaults per engine
-------------------
Real holders (the Deployment Engine, ``make_client_app()``): any secure mode,
never plaintext unless ``allow-plaintext``; floor ``max(2, min-train-clients of
the run, min-contributors)``. Simulated holders (``make_client_app(simulated=True)``)
stand for holders the researcher configured through the run itself: every mode
the run asks for is allowed, plaintext included, and the same floor and
same-mode rules apply. A node config that states a policy overrides the engine
default in both engines.

Refusals are ``ErrorCode.POLICY`` error replies whose reason names the rule,
never a private figure.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast, get_args

from flwr.app import ConfigRecord, Context, Error, Message
from flwr.clientapp.typing import ClientAppCallable, Mod

from fedlearn.config import ConfigError, RunConfig, SecureMode
from fedlearn.wire import CONFIG_KEY, SECURE_MODE_KEY, ErrorCode

__all__ = [
    "ALLOW_PLAINTEXT_KEY",
    "CRYPTEN_PARTY_KEYS_KEY",
    "MIN_CONTRIBUTORS_KEY",
    "REQUIRE_SECURE_KEY",
    "SECURE_MODES",
    "HolderPolicy",
    "PolicyError",
    "check_floor",
    "check_query_mode",
    "contributor_floor",
    "make_holder_policy_mod",
    "policy_error",
]

log = logging.getLogger(__name__)

#: Node-config key: ``true`` lets plaintext (``none``) rounds through.
ALLOW_PLAINTEXT_KEY = "allow-plaintext"
#: Node-config key: comma-separated secure modes the holder accepts (default: all).
REQUIRE_SECURE_KEY = "require-secure"
#: Node-config key: the least number of contributors in a sum the holder helps reveal.
MIN_CONTRIBUTORS_KEY = "min-contributors"
#: Node-config key: comma-separated hex X25519 public keys of the CrypTen parties, in order.
CRYPTEN_PARTY_KEYS_KEY = "crypten-party-keys"

#: Every secure mode (``SecureMode`` without ``none``).
SECURE_MODES: frozenset[str] = frozenset(m for m in get_args(SecureMode) if m != "none")
#: No sum of fewer than two contributions is ever revealed: it would be one update.
_ABSOLUTE_FLOOR = 2
#: Name of the holder's pinned run facts in ``context.state``.
_STATE = "holder-policy"
_PARTY_KEY_BYTES = 32


class PolicyError(ValueError):
    """A request below the holder's floor; ``rule`` names the rule (no private figures).

    The reply's code is :attr:`ErrorCode.POLICY`, except for the DP rule, whose
    refusals keep :attr:`ErrorCode.BUDGET`.
    """

    def __init__(self, rule: str, reason: str, *, code: ErrorCode = ErrorCode.POLICY) -> None:
        super().__init__(f"holder policy, rule {rule!r}: {reason}")
        self.rule = rule
        self.code = code


def policy_error(msg: Message, exc: PolicyError) -> Message:
    """The error reply to a request the holder's policy refuses."""
    log.warning("refused by the holder's policy: %s", exc)
    return Message(Error(code=exc.code, reason=str(exc)), reply_to=msg)


@dataclass(frozen=True, kw_only=True)
class HolderPolicy:
    """A data holder's floor, validated eagerly.

    Parameters
    ----------
    secure_modes : frozenset of str, default every secure mode
        The secure modes the holder accepts (``ckks``, ``secagg+``, ``crypten``).
    allow_plaintext : bool, default False
        Whether plaintext rounds (mode ``none``) are accepted.
    min_contributors : int, optional
        The holder's own floor on contributors in a revealed sum (>= 2). The
        effective floor is the largest of this, 2 and the run's
        ``min-train-clients``.
    crypten_party_keys : tuple of bytes, optional
        The CrypTen parties' X25519 public keys (32 bytes each, at least 2, in
        party order); a CrypTen round announcing other keys is refused.

    Examples
    --------
    >>> policy = HolderPolicy(min_contributors=5)
    >>> policy.allows("none")
    False
    >>> policy.allows("ckks")
    True
    """

    secure_modes: frozenset[str] = SECURE_MODES
    allow_plaintext: bool = False
    min_contributors: int | None = None
    crypten_party_keys: tuple[bytes, ...] | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.secure_modes) - SECURE_MODES)
        if unknown:
            raise ValueError(
                f"unknown secure mode(s) {unknown}; choose from {sorted(SECURE_MODES)}"
            )
        if not self.secure_modes and not self.allow_plaintext:
            raise ValueError("the policy accepts no mode at all (no secure mode, no plaintext)")
        floor = self.min_contributors
        if floor is not None and (
            isinstance(floor, bool) or not isinstance(floor, int) or floor < _ABSOLUTE_FLOOR
        ):
            raise ValueError(
                f"min-contributors must be an integer >= {_ABSOLUTE_FLOOR} (a 'sum' of one "
                f"contribution is that holder's update), got {floor!r}"
            )
        keys = self.crypten_party_keys
        if keys is not None:
            if len(keys) < 2 or not all(
                isinstance(k, bytes) and len(k) == _PARTY_KEY_BYTES for k in keys
            ):
                raise ValueError("pinned CrypTen party keys: >= 2 X25519 keys of 32 bytes each")
            if len(set(keys)) != len(keys):
                raise ValueError("pinned CrypTen party keys: two parties have the same key")

    @classmethod
    def from_node_config(
        cls, node_config: Mapping[str, object], *, simulated: bool = False
    ) -> HolderPolicy:
        """The policy a node config states, with the engine's defaults for what it omits.

        Real holders default to any secure mode and no plaintext; simulated
        holders to every mode the run asks for, plaintext included.
        """
        plaintext = node_config.get(ALLOW_PLAINTEXT_KEY, simulated)
        if not isinstance(plaintext, bool):
            raise ValueError(f"{ALLOW_PLAINTEXT_KEY} must be true or false, got {plaintext!r}")
        modes_text = node_config.get(REQUIRE_SECURE_KEY)
        modes = SECURE_MODES
        if modes_text is not None:
            modes = frozenset(m.strip() for m in str(modes_text).split(",") if m.strip())
            if not modes:
                raise ValueError(f"{REQUIRE_SECURE_KEY} names no mode")
        floor = node_config.get(MIN_CONTRIBUTORS_KEY)
        keys_text = node_config.get(CRYPTEN_PARTY_KEYS_KEY)
        keys = None
        if keys_text is not None:
            try:
                keys = tuple(bytes.fromhex(k.strip()) for k in str(keys_text).split(","))
            except ValueError:
                raise ValueError(f"{CRYPTEN_PARTY_KEYS_KEY}: not comma-separated hex") from None
        return cls(
            secure_modes=modes,
            allow_plaintext=plaintext,
            min_contributors=cast(int | None, floor),
            crypten_party_keys=keys,
        )

    def node_config(self) -> dict[str, bool | int | str]:
        """The node-config entries that state this policy (what ``fedlearn client`` passes)."""
        entries: dict[str, bool | int | str] = {
            ALLOW_PLAINTEXT_KEY: self.allow_plaintext,
            REQUIRE_SECURE_KEY: ",".join(sorted(self.secure_modes)),
        }
        if self.min_contributors is not None:
            entries[MIN_CONTRIBUTORS_KEY] = self.min_contributors
        if self.crypten_party_keys is not None:
            entries[CRYPTEN_PARTY_KEYS_KEY] = ",".join(k.hex() for k in self.crypten_party_keys)
        return entries

    def describe(self) -> list[str]:
        """The policy in a few lines, for the holder's console."""
        modes = ", ".join(sorted(self.secure_modes)) or "(none)"
        plain = "accepted (--allow-plaintext)" if self.allow_plaintext else "refused"
        floor = (
            f"at least {self.min_contributors} (and the run's min-train-clients if higher)"
            if self.min_contributors is not None
            else f"the run's min-train-clients, never below {_ABSOLUTE_FLOOR}"
        )
        keys = (
            "pinned: " + ", ".join(k.hex()[:16] + "…" for k in self.crypten_party_keys)
            if self.crypten_party_keys is not None
            else "not pinned (the server relays them)"
        )
        return [
            f"secure modes accepted: {modes}",
            f"plaintext rounds: {plain}",
            f"contributors in any sum you help reveal: {floor}",
            "DP: required in every round when you set a privacy budget",
            f"CrypTen party keys: {keys}",
        ]

    def allows(self, mode: str) -> bool:
        """Whether a round of ``mode`` is acceptable (``none``: plaintext)."""
        return self.allow_plaintext if mode == "none" else mode in self.secure_modes

    def check_mode(self, mode: str) -> None:
        """Refuse a mode outside the policy."""
        if mode == "none" and not self.allow_plaintext:
            raise PolicyError(
                "secure-mode",
                "this holder requires a secure mode and refuses plaintext rounds (mode 'none')",
            )
        if not self.allows(mode):
            raise PolicyError(
                "secure-mode",
                f"this holder accepts only {sorted(self.secure_modes)}, not {mode!r}",
            )


def _pinned(context: Context) -> ConfigRecord | None:
    return context.state.config_records.get(_STATE)


def contributor_floor(context: Context, policy: HolderPolicy | None = None) -> int:
    """The least number of contributors in a sum this holder helps reveal now.

    The largest of 2, the holder's ``min-contributors`` and the run's
    ``min-train-clients`` as pinned by the run's first train message (before
    it, e.g. in a key ceremony, the run's figure is not known yet). Without
    ``policy``, the holder's floor is read from the node config.
    """
    if policy is None:
        policy = HolderPolicy.from_node_config(context.node_config)
    pinned = _pinned(context)
    run_floor = int(cast(int, pinned.get("run-floor", 0))) if pinned is not None else 0
    return max(_ABSOLUTE_FLOOR, policy.min_contributors or 0, run_floor)


def check_floor(
    count: int, context: Context, *, what: str, policy: HolderPolicy | None = None
) -> None:
    """Refuse to help reveal a sum of ``count`` contributors below the floor."""
    floor = contributor_floor(context, policy)
    if count < floor:
        raise PolicyError(
            "min-contributors",
            f"{what} lists {count} node(s); this holder helps reveal only sums of at least "
            f"{floor} contributors",
        )


def check_query_mode(mode: str, context: Context, policy: HolderPolicy) -> None:
    """A stage query of ``mode``: a mode the holder accepts, and the run's pinned one."""
    policy.check_mode(mode)
    pinned = _pinned(context)
    if pinned is not None and str(pinned["mode"]) != mode:
        raise PolicyError(
            "same-mode", f"this run's rounds are {pinned['mode']!r}; a {mode!r} request is refused"
        )


def _check_train(msg: Message, context: Context, policy: HolderPolicy, *, simulated: bool) -> None:
    config = msg.content.config_records.get("config")
    mode = str(config.get(SECURE_MODE_KEY, "none")) if config is not None else "none"
    policy.check_mode(mode)
    cfg: RunConfig | None = None
    if config is not None and CONFIG_KEY in config:
        try:
            cfg = RunConfig.from_json(str(config[CONFIG_KEY]))
        except (ConfigError, ValueError):
            cfg = None  # the train handler refuses it (ErrorCode.CONFIG); nothing is sent
    if cfg is not None and cfg.secure.mode != mode:
        raise PolicyError(
            "secure-mode",
            f"the round's mode {mode!r} differs from the run config's {cfg.secure.mode!r}",
        )
    pinned = _pinned(context)
    if pinned is not None and str(pinned["mode"]) != mode:
        raise PolicyError(
            "same-mode",
            f"this run's earlier rounds were {pinned['mode']!r}; a {mode!r} round is refused "
            "(a run never changes its protection)",
        )
    run_floor = max(_ABSOLUTE_FLOOR, cfg.federation.min_train_clients) if cfg else 0
    if pinned is not None and run_floor < int(cast(int, pinned.get("run-floor", 0))):
        raise PolicyError(
            "min-contributors", "the run config lowers min-train-clients mid-run; refused"
        )
    if cfg is not None:
        budgeted = "epsilon-budget" in context.node_config or (
            simulated and cfg.privacy.client_epsilon_budget > 0
        )
        if budgeted and not cfg.privacy.local_dp:
            raise PolicyError(
                "dp-with-budget",
                "this data holder has a privacy budget and only joins runs with local DP "
                "(privacy.local-dp = true); the round is refused",
                code=ErrorCode.BUDGET,  # the code budget refusals always had
            )
    if mode == "crypten" and policy.crypten_party_keys is not None:
        from fedlearn.privacy.secure.crypten_mode import announced_party_keys

        try:
            keys = tuple(announced_party_keys(msg))
        except ValueError:
            keys = ()
        if keys != policy.crypten_party_keys:
            raise PolicyError(
                "crypten-party-keys",
                "the round announces CrypTen party keys other than the ones this holder pinned",
            )
    if mode == "secagg+":
        from fedlearn.privacy.secure.secaggplus.client import shared_nodes

        # The nodes that shared keys: the most this round's sum can hold.
        pin = max(run_floor, int(cast(int, pinned.get("run-floor", 0))) if pinned else 0)
        floor = max(_ABSOLUTE_FLOOR, policy.min_contributors or 0, pin)
        try:
            count = len(shared_nodes(msg))
        except ValueError:
            count = None  # malformed: the SecAgg+ client refuses it
        if count is not None and count < floor:
            raise PolicyError(
                "min-contributors",
                f"the round's SecAgg+ sum lists {count} node(s) that shared keys; this holder "
                f"helps reveal only sums of at least {floor} contributors",
            )
    if pinned is None or (cfg is not None and run_floor > int(cast(int, pinned["run-floor"]))):
        context.state[_STATE] = ConfigRecord({"mode": mode, "run-floor": run_floor})


def make_holder_policy_mod(*, simulated: bool = False) -> Mod:
    """The client mod that refuses a train message below the holder's policy.

    Place it outermost: a refused round is refused before anything trains,
    so no update (protected or not) is computed or sent.

    Parameters
    ----------
    simulated : bool, default False
        Engine defaults for what the node config omits (see the module docs).

    Examples
    --------
    >>> mod = make_holder_policy_mod()
    >>> # @app.train(mods=[mod, make_attestation_mod(wallet), secure_aggregation_mod, ...])
    """

    def holder_policy_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        try:
            policy = HolderPolicy.from_node_config(context.node_config, simulated=simulated)
        except ValueError as exc:
            log.error("the holder's policy is invalid: %s", exc)
            return policy_error(
                msg, PolicyError("policy", "this holder's policy is invalid; nothing is answered")
            )
        try:
            _check_train(msg, context, policy, simulated=simulated)
        except PolicyError as exc:
            return policy_error(msg, exc)
        return call_next(msg, context)

    return holder_policy_mod
