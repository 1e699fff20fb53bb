"""The privacy ledger: every privacy-relevant release of one data holder, and its budget.

A :class:`PrivacyLedger` is kept by each data holder (record-level DP-SGD) or
by the server (user-level central DP). Each entry stores the *parameters* of a
release (mechanism name, noise multiplier, clipping norm, sampling, steps); the
``dp_accounting`` event is rebuilt from them, so a ledger written to JSON and
read back composes exactly the same events in the same order and reports
exactly the same ε. Cumulative ε is always computed by composing all events
with a ``dp_accounting`` accountant, never by adding up per-release ε.

Mechanisms (the ``mechanism`` names a ledger accepts; anything else is refused,
also when loading):

``"dpsgd"``
    Record-level DP-SGD: ``steps`` Poisson-sampled Gaussian steps at
    ``sample_rate`` (:func:`~fedlearn.privacy.accounting.dpsgd_event`).
``"gaussian"``
    ``steps`` Gaussian releases of the whole data (no sampling), e.g. a client
    that adds distributed noise every round.
``"sampled_gaussian_poisson"``
    User-level Gaussian sum mechanism with Poisson client sampling at ``sample_rate``.
``"sampled_gaussian_fixed"``
    User-level Gaussian sum mechanism with ``sample_size`` of ``population_size``
    clients sampled without replacement (replace-one relation, RDP only).

One ledger holds one neighbouring relation: fixed-size sampling (replace-one)
cannot be composed with the others (add-or-remove-one) and is refused.

Examples
--------
>>> ledger = PrivacyLedger(delta=1e-5)
>>> budget = PrivacyBudget(epsilon=8.0, delta=1e-5)
>>> release = dict(mechanism="dpsgd", noise_multiplier=1.1, sample_rate=0.01, steps=100)
>>> budget.check(ledger, release_event(**release))
>>> entry = ledger.record(round=1, clipping_norm=1.0, **release)
>>> entry.cumulative_epsilon == ledger.spent_epsilon()
True
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, fields, replace
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Literal, Self

import dp_accounting

from fedlearn.privacy.accounting import (
    AccountantName,
    dpsgd_event,
    epsilon,
    gaussian_event,
    make_accountant,
    sampled_gaussian_event,
)

__all__ = [
    "MECHANISMS",
    "BudgetExceeded",
    "LedgerEntry",
    "LedgerError",
    "Mechanism",
    "PrivacyBudget",
    "PrivacyError",
    "PrivacyLedger",
    "release_event",
]

Mechanism = Literal["dpsgd", "gaussian", "sampled_gaussian_fixed", "sampled_gaussian_poisson"]
MECHANISMS: tuple[str, ...] = (
    "dpsgd",
    "gaussian",
    "sampled_gaussian_fixed",
    "sampled_gaussian_poisson",
)

_FORMAT = "fedlearn.privacy-ledger"
_VERSION = 1
_REL_TOL = 1e-9


class PrivacyError(Exception):
    """Base class of the errors raised by privacy accounting and budgets."""


class BudgetExceeded(PrivacyError):  # noqa: N818 - reads as a condition, like StopIteration
    """A release would take a data holder past its privacy budget; it must not happen.

    Attributes
    ----------
    spent : float
        ε spent before the release.
    release : float
        ε of the release on its own.
    after : float
        ε after composing the release with everything spent.
    budget : PrivacyBudget
        The budget that refused it.
    """

    def __init__(
        self, message: str, *, spent: float, release: float, after: float, budget: PrivacyBudget
    ) -> None:
        super().__init__(message)
        self.spent = spent
        self.release = release
        self.after = after
        self.budget = budget


class LedgerError(PrivacyError, ValueError):
    """A ledger file or dictionary is malformed, unknown or inconsistent (fail closed)."""


# --------------------------------------------------------------------------- releases


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    result = float(value)
    if not (math.isfinite(result) and result > 0.0):
        raise ValueError(f"{name} must be > 0 and finite, got {value!r}")
    return result


def _integer(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _delta(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"delta must be a real number, got {value!r}")
    result = float(value)
    if not 0.0 < result < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {value!r}")
    return result


def _normalise(
    mechanism: str,
    *,
    noise_multiplier: float,
    steps: int,
    sample_rate: float | None,
    population_size: int | None,
    sample_size: int | None,
) -> tuple[dp_accounting.DpEvent, float, int | None, int | None]:
    """Event, effective sample rate and (population, sample) sizes of a release."""
    if mechanism not in MECHANISMS:
        raise LedgerError(
            f"unknown mechanism {mechanism!r}; a ledger accounts only for {list(MECHANISMS)}"
        )
    if mechanism != "sampled_gaussian_fixed" and (
        population_size is not None or sample_size is not None
    ):
        raise ValueError(
            f"population_size and sample_size apply only to 'sampled_gaussian_fixed', "
            f"not to {mechanism!r}"
        )
    if mechanism == "gaussian":
        if sample_rate not in (None, 1.0):
            raise ValueError(
                f"'gaussian' releases the whole data (sample_rate 1.0), got {sample_rate!r}; "
                "use 'dpsgd' or 'sampled_gaussian_poisson' for a sampled release"
            )
        return gaussian_event(noise_multiplier=noise_multiplier, steps=steps), 1.0, None, None
    if mechanism in ("dpsgd", "sampled_gaussian_poisson"):
        if sample_rate is None:
            raise ValueError(f"{mechanism!r} needs sample_rate")
        event = dpsgd_event(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        return event, float(sample_rate), None, None
    event = sampled_gaussian_event(
        noise_multiplier=noise_multiplier,
        steps=steps,
        sampling="fixed",
        sample_rate=sample_rate,
        population_size=population_size,
        sample_size=sample_size,
    )
    assert population_size is not None and sample_size is not None  # checked by the builder
    return event, sample_size / population_size, int(population_size), int(sample_size)


def release_event(
    *,
    mechanism: Mechanism,
    noise_multiplier: float,
    steps: int = 1,
    sample_rate: float | None = None,
    population_size: int | None = None,
    sample_size: int | None = None,
) -> dp_accounting.DpEvent:
    """The ``dp_accounting`` event of a release described by its parameters.

    Takes the same parameters as :meth:`PrivacyLedger.record` (without the
    round and clipping norm), so a budget can be checked on exactly the event
    the ledger will record.

    Parameters
    ----------
    mechanism : str
        One of :data:`MECHANISMS`.
    noise_multiplier : float
        Noise std divided by the clipping norm; > 0.
    steps : int, default 1
        Number of composed applications (DP-SGD steps, rounds); >= 1.
    sample_rate : float, optional
        Poisson rate for ``"dpsgd"`` and ``"sampled_gaussian_poisson"``.
    population_size, sample_size : int, optional
        For ``"sampled_gaussian_fixed"``.

    Returns
    -------
    dp_accounting.DpEvent
        The event.
    """
    event, _, _, _ = _normalise(
        mechanism,
        noise_multiplier=noise_multiplier,
        steps=steps,
        sample_rate=sample_rate,
        population_size=population_size,
        sample_size=sample_size,
    )
    return event


def _add_to_groups(
    groups: list[tuple[dp_accounting.DpEvent, int]], event: dp_accounting.DpEvent
) -> list[tuple[dp_accounting.DpEvent, int]]:
    """``groups`` with one more release of ``event`` (a new list)."""
    for index, (grouped, count) in enumerate(groups):
        if grouped == event:
            return [*groups[:index], (grouped, count + 1), *groups[index + 1 :]]
    return [*groups, (event, 1)]


@dataclass(frozen=True, kw_only=True)
class LedgerEntry:
    """One release and what it cost.

    Parameters
    ----------
    round : int
        Federated round of the release (>= 0).
    mechanism : str
        One of :data:`MECHANISMS`.
    noise_multiplier : float
        Noise std divided by the clipping norm.
    clipping_norm : float
        L2 bound ``C`` of each contribution (records for DP-SGD, clients' updates
        for user-level DP).
    sample_rate : float
        Sampling probability (``sample_size / population_size`` for fixed-size
        sampling, 1.0 for ``"gaussian"``).
    steps : int
        Number of composed applications within this release.
    delta : float
        The δ at which ``epsilon`` and ``cumulative_epsilon`` are stated.
    epsilon : float
        ε of this release alone.
    cumulative_epsilon : float
        ε of everything in the ledger up to and including this release, composed.
    population_size, sample_size : int or None
        Only for ``"sampled_gaussian_fixed"``.
    """

    round: int
    mechanism: str
    noise_multiplier: float
    clipping_norm: float
    sample_rate: float
    steps: int
    delta: float
    epsilon: float
    cumulative_epsilon: float
    population_size: int | None = None
    sample_size: int | None = None

    def event(self) -> dp_accounting.DpEvent:
        """Rebuild the ``dp_accounting`` event of this release from its parameters."""
        return _normalise(
            self.mechanism,
            noise_multiplier=self.noise_multiplier,
            steps=self.steps,
            sample_rate=self.sample_rate,
            population_size=self.population_size,
            sample_size=self.sample_size,
        )[0]


_ENTRY_FIELDS = frozenset(f.name for f in fields(LedgerEntry))


def _verify(index: int, key: str, stored: object, recomputed: float) -> None:
    if (
        isinstance(stored, bool)
        or not isinstance(stored, int | float)
        or not math.isclose(stored, recomputed, rel_tol=_REL_TOL)
    ):
        raise LedgerError(
            f"entry {index}: stored {key}={stored!r} but the accountant gives {recomputed!r}; "
            "the ledger was altered or the accountant changed (load with verify=False to "
            "recompute)"
        )


# --------------------------------------------------------------------------- ledger


class PrivacyLedger:
    """Record of every privacy-relevant release by one data holder (or the server).

    Parameters
    ----------
    delta : float
        δ at which ε is stated in the entries and by :meth:`spent_epsilon`; in (0, 1).
    accountant : {"rdp", "pld"}, default "rdp"
        ``dp_accounting`` accountant that composes the events.
    holder : str, default ""
        Who the ledger belongs to (a client id or ``"server"``); used in messages.

    Examples
    --------
    >>> ledger = PrivacyLedger(delta=1e-5, holder="client-3")
    >>> _ = ledger.record(
    ...     round=1, mechanism="dpsgd", noise_multiplier=1.0, clipping_norm=1.0,
    ...     sample_rate=0.02, steps=50,
    ... )
    >>> len(ledger), ledger.spent_epsilon() > 0
    (1, True)
    """

    def __init__(
        self, *, delta: float, accountant: AccountantName = "rdp", holder: str = ""
    ) -> None:
        self._delta = _delta(delta)
        if accountant not in ("rdp", "pld"):
            raise ValueError(f"accountant must be 'rdp' or 'pld', got {accountant!r}")
        if not isinstance(holder, str):
            raise TypeError(f"holder must be a string, got {holder!r}")
        self._accountant_name: AccountantName = accountant
        self._holder = holder
        self._entries: list[LedgerEntry] = []
        # Distinct events in order of first appearance, with how often each was
        # released: what the accountant composes (see _compose).
        self._groups: list[tuple[dp_accounting.DpEvent, int]] = []
        self._accountant: dp_accounting.PrivacyAccountant | None = None
        self._alone: dict[dp_accounting.DpEvent, float] = {}

    # ----------------------------------------------------------------- properties

    @property
    def delta(self) -> float:
        """δ at which the ledger states ε."""
        return self._delta

    @property
    def accountant(self) -> AccountantName:
        """Name of the ``dp_accounting`` accountant composing the events."""
        return self._accountant_name

    @property
    def holder(self) -> str:
        """Who the ledger belongs to."""
        return self._holder

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        """All releases, oldest first."""
        return tuple(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return (
            f"PrivacyLedger(holder={self._holder!r}, releases={len(self._entries)}, "
            f"epsilon={self.spent_epsilon():.6g}, delta={self._delta:g}, "
            f"accountant={self._accountant_name!r})"
        )

    # ----------------------------------------------------------------- accounting

    def _compose(self, event: dp_accounting.DpEvent | None) -> dp_accounting.PrivacyAccountant:
        """A fresh accountant with every recorded release (and ``event``) composed.

        Identical releases are composed as one ``(event, count)`` pair, which
        ``dp_accounting`` treats as ``count`` adaptive repetitions; composition is
        order-independent, so this is the same guarantee as composing the releases
        one by one, at the cost of one accountant evaluation per *distinct* release.
        It is also deterministic: replaying the same entries gives the same ε, bit for bit.
        """
        groups = list(self._groups)
        if event is not None:
            groups = _add_to_groups(groups, event)
        if not groups:
            raise ValueError("nothing to compose")
        accountant = make_accountant(groups[0][0], accountant=self._accountant_name)
        for grouped, count in groups:
            relation = make_accountant(grouped, accountant=self._accountant_name)
            if relation.neighboring_relation != accountant.neighboring_relation:
                raise ValueError(
                    "this ledger composes events under the "
                    f"{accountant.neighboring_relation.name} relation and cannot add an "
                    f"event under {relation.neighboring_relation.name} (fixed-size sampling "
                    "cannot be composed with Poisson-sampled or unsampled releases)"
                )
            accountant.compose(grouped, count)
        return accountant

    def _epsilon_alone(self, event: dp_accounting.DpEvent) -> float:
        if event not in self._alone:
            self._alone[event] = epsilon(event, delta=self._delta, accountant=self._accountant_name)
        return self._alone[event]

    def spent_epsilon(self, *, delta: float | None = None) -> float:
        """ε of all releases so far, composed (0.0 for an empty ledger).

        Parameters
        ----------
        delta : float, optional
            δ to state ε at; the ledger's δ by default.
        """
        d = self._delta if delta is None else _delta(delta)
        if not self._entries:
            return 0.0
        if delta is None:
            return self._entries[-1].cumulative_epsilon
        if self._accountant is None:
            self._accountant = self._compose(None)
        return float(self._accountant.get_epsilon(d))

    def epsilon_if(self, event: dp_accounting.DpEvent, *, delta: float | None = None) -> float:
        """ε after a hypothetical release of ``event``, composed with all recorded ones.

        Parameters
        ----------
        event : dp_accounting.DpEvent
            The release being considered (e.g. from :func:`release_event`).
        delta : float, optional
            δ to state ε at; the ledger's δ by default.

        Returns
        -------
        float
            The cumulative ε the ledger would report after the release. The
            ledger is not changed.
        """
        d = self._delta if delta is None else _delta(delta)
        return float(self._compose(event).get_epsilon(d))

    def record(
        self,
        *,
        round: int,
        mechanism: Mechanism,
        noise_multiplier: float,
        clipping_norm: float,
        steps: int = 1,
        sample_rate: float | None = None,
        population_size: int | None = None,
        sample_size: int | None = None,
    ) -> LedgerEntry:
        """Record a release that happened (or is about to be sent).

        Check it first with :meth:`PrivacyBudget.check`; recording never refuses
        a release for budget reasons, because a release that happened must be
        on the record.

        Parameters
        ----------
        round : int
            Federated round (>= 0).
        mechanism : str
            One of :data:`MECHANISMS`.
        noise_multiplier : float
            Noise std divided by ``clipping_norm``; > 0.
        clipping_norm : float
            L2 bound of each contribution; > 0.
        steps : int, default 1
            Number of composed applications in this release; >= 1.
        sample_rate : float, optional
            Poisson rate for ``"dpsgd"`` / ``"sampled_gaussian_poisson"``.
        population_size, sample_size : int, optional
            For ``"sampled_gaussian_fixed"``.

        Returns
        -------
        LedgerEntry
            The new entry with this release's ε and the cumulative ε.
        """
        event, entry = self._prepare(
            round=round,
            mechanism=mechanism,
            noise_multiplier=noise_multiplier,
            clipping_norm=clipping_norm,
            steps=steps,
            sample_rate=sample_rate,
            population_size=population_size,
            sample_size=sample_size,
        )
        composed = self._compose(event)
        entry = replace(entry, cumulative_epsilon=float(composed.get_epsilon(self._delta)))
        self._accountant = composed
        self._groups = _add_to_groups(self._groups, event)
        self._entries.append(entry)
        return entry

    def _prepare(
        self,
        *,
        round: int,
        mechanism: str,
        noise_multiplier: float,
        clipping_norm: float,
        steps: int,
        sample_rate: float | None,
        population_size: int | None,
        sample_size: int | None,
    ) -> tuple[dp_accounting.DpEvent, LedgerEntry]:
        """Validate a release; its event and entry (cumulative ε still to be filled in)."""
        rnd = _integer("round", round, minimum=0)
        bound = _positive("clipping_norm", clipping_norm)
        event, rate, population, sample = _normalise(
            mechanism,
            noise_multiplier=noise_multiplier,
            steps=steps,
            sample_rate=sample_rate,
            population_size=population_size,
            sample_size=sample_size,
        )
        entry = LedgerEntry(
            round=rnd,
            mechanism=mechanism,
            noise_multiplier=float(noise_multiplier),
            clipping_norm=bound,
            sample_rate=rate,
            steps=int(steps),
            delta=self._delta,
            epsilon=self._epsilon_alone(event),
            cumulative_epsilon=math.nan,
            population_size=population,
            sample_size=sample,
        )
        return event, entry

    # ----------------------------------------------------------------- persistence

    def to_dict(self) -> dict[str, Any]:
        """JSON-able representation; :meth:`from_dict` rebuilds an identical ledger."""
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "holder": self._holder,
            "delta": self._delta,
            "accountant": self._accountant_name,
            "entries": [asdict(entry) for entry in self._entries],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, verify: bool = True) -> Self:
        """Rebuild a ledger from the stored parameters of its releases.

        Every release's event is rebuilt from its parameters; its own ε and the
        ledger's total ε are recomputed by the accountant (one evaluation per
        distinct release, so loading stays cheap for long runs). The cumulative
        ε of earlier entries is history and kept as stored.

        Parameters
        ----------
        data : dict
            Output of :meth:`to_dict`.
        verify : bool, default True
            Check that the recomputed ε equal the stored ones (relative 1e-9);
            a mismatch means the file was altered or the accountant changed.
            With ``False`` the recomputed values replace the stored ones.

        Raises
        ------
        LedgerError
            On an unknown format or version, unknown or missing keys, an unknown
            mechanism name, invalid parameters or (with ``verify``) a mismatch.
        """
        if not isinstance(data, dict):
            raise LedgerError(f"a ledger must be a JSON object, got {type(data).__name__}")
        if data.get("format") != _FORMAT or data.get("version") != _VERSION:
            raise LedgerError(
                f"not a {_FORMAT} version {_VERSION} document "
                f"(format={data.get('format')!r}, version={data.get('version')!r})"
            )
        expected = {"format", "version", "holder", "delta", "accountant", "entries"}
        if set(data) != expected:
            raise LedgerError(f"ledger keys must be {sorted(expected)}, got {sorted(data)}")
        if not isinstance(data["entries"], list):
            raise LedgerError("ledger 'entries' must be a list")
        try:
            ledger = cls(delta=data["delta"], accountant=data["accountant"], holder=data["holder"])
        except (TypeError, ValueError) as exc:
            raise LedgerError(f"invalid ledger header: {exc}") from exc
        for index, raw in enumerate(data["entries"]):
            if not isinstance(raw, dict) or set(raw) != _ENTRY_FIELDS:
                keys = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
                raise LedgerError(
                    f"entry {index}: keys must be {sorted(_ENTRY_FIELDS)}, got {keys}"
                )
            if raw["mechanism"] not in MECHANISMS:
                raise LedgerError(
                    f"entry {index}: unknown mechanism {raw['mechanism']!r}; refusing to load "
                    f"a ledger this version cannot account for (known: {list(MECHANISMS)})"
                )
            if raw["delta"] != ledger.delta:
                raise LedgerError(
                    f"entry {index}: delta {raw['delta']!r} differs from the ledger's "
                    f"{ledger.delta}"
                )
            stored_total = raw["cumulative_epsilon"]
            if isinstance(stored_total, bool) or not isinstance(stored_total, int | float):
                raise LedgerError(f"entry {index}: cumulative_epsilon must be a number")
            try:
                event, entry = ledger._prepare(
                    round=raw["round"],
                    mechanism=raw["mechanism"],
                    noise_multiplier=raw["noise_multiplier"],
                    clipping_norm=raw["clipping_norm"],
                    steps=raw["steps"],
                    sample_rate=raw["sample_rate"],
                    population_size=raw["population_size"],
                    sample_size=raw["sample_size"],
                )
            except (TypeError, ValueError) as exc:
                raise LedgerError(f"entry {index}: {exc}") from exc
            if verify:
                _verify(index, "epsilon", raw["epsilon"], entry.epsilon)
                _verify(index, "sample_rate", raw["sample_rate"], entry.sample_rate)
            ledger._entries.append(replace(entry, cumulative_epsilon=float(stored_total)))
            ledger._groups = _add_to_groups(ledger._groups, event)
        if ledger._entries:
            # The total is recomputed from the parameters: it is what budgets are checked
            # against. Earlier cumulative values are history and kept as stored.
            try:
                ledger._accountant = ledger._compose(None)
            except ValueError as exc:
                raise LedgerError(str(exc)) from exc
            total = float(ledger._accountant.get_epsilon(ledger.delta))
            last = ledger._entries[-1]
            if verify:
                _verify(
                    len(ledger._entries) - 1, "cumulative_epsilon", last.cumulative_epsilon, total
                )
            ledger._entries[-1] = replace(last, cumulative_epsilon=total)
        return ledger

    def save(self, path: str | Path) -> Path:
        """Write the ledger as JSON atomically (temporary file, fsync, ``os.replace``).

        A crash at any instant leaves either the previous file or the new one.

        Parameters
        ----------
        path : str or pathlib.Path
            Destination file; its directory is created if needed.

        Returns
        -------
        pathlib.Path
            The path written.
        """
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps(self.to_dict(), indent=2).encode("utf-8")
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        if os.name == "posix":  # Make the rename itself durable.
            dir_fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return target

    @classmethod
    def load(cls, path: str | Path, *, verify: bool = True) -> Self:
        """Read a ledger written by :meth:`save` (see :meth:`from_dict` for ``verify``)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise LedgerError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_dict(data, verify=verify)


# --------------------------------------------------------------------------- budget


@dataclass(frozen=True, kw_only=True)
class PrivacyBudget:
    """A data holder's total (ε, δ) budget.

    Parameters
    ----------
    epsilon : float
        Total ε the holder accepts; > 0 and finite.
    delta : float
        δ at which the budget is stated; in (0, 1).

    Examples
    --------
    >>> budget = PrivacyBudget(epsilon=1.0, delta=1e-5)
    >>> ledger = PrivacyLedger(delta=1e-5)
    >>> try:
    ...     budget.check(ledger, release_event(mechanism="gaussian", noise_multiplier=1.0))
    ... except BudgetExceeded as exc:
    ...     print("refused")
    refused
    """

    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        _positive("epsilon", self.epsilon)
        _delta(self.delta)

    def remaining(self, ledger: PrivacyLedger) -> float:
        """Budget ε minus the ledger's composed ε at the budget's δ (may be negative)."""
        return self.epsilon - ledger.spent_epsilon(delta=self.delta)

    def check(self, ledger: PrivacyLedger, event: dp_accounting.DpEvent) -> None:
        """Refuse a release that would take ``ledger`` past this budget.

        Parameters
        ----------
        ledger : PrivacyLedger
            The holder's ledger.
        event : dp_accounting.DpEvent
            The release about to happen (e.g. from :func:`release_event`).

        Raises
        ------
        BudgetExceeded
            If ε after composing ``event`` with the ledger (at the budget's δ)
            exceeds the budget's ε. A release that lands exactly on the budget
            is allowed.
        """
        after = ledger.epsilon_if(event, delta=self.delta)
        if after <= self.epsilon:
            return
        spent = ledger.spent_epsilon(delta=self.delta)
        alone = epsilon(event, delta=self.delta, accountant=ledger.accountant)
        who = ledger.holder or "this data holder"
        raise BudgetExceeded(
            f"privacy budget exceeded for {who}: spent ε={spent:.6g}, this release alone "
            f"ε={alone:.6g}, after it ε={after:.6g} > budget ε={self.epsilon:.6g} "
            f"(δ={self.delta:g}); the release is refused",
            spent=spent,
            release=alone,
            after=after,
            budget=self,
        )
