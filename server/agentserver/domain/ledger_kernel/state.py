"""What a store read before asking for a plan: wallets, prior writes, reservations."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from agentserver.domain.ledger import (
    Entry,
    Reservation,
)


@dataclass(frozen=True)
class Delta:
    """A change of a wallet's four columns."""

    total: int = 0
    used: int = 0
    reserved: int = 0
    arrears: int = 0

    def __add__(self, other: Delta) -> Delta:
        return Delta(
            self.total + other.total,
            self.used + other.used,
            self.reserved + other.reserved,
            self.arrears + other.arrears,
        )

    @property
    def available(self) -> int:
        """What it does to the available tokens."""
        return self.total - self.used - self.reserved


ZERO = Delta()


@dataclass(frozen=True)
class Columns:
    """A wallet's balance columns."""

    total: int
    used: int
    reserved: int
    arrears: int
    low_balance_threshold: int

    @property
    def available(self) -> int:
        return self.total - self.used - self.reserved

    def moved(self, delta: Delta) -> Columns:
        return replace(
            self,
            total=self.total + delta.total,
            used=self.used + delta.used,
            reserved=self.reserved + delta.reserved,
            arrears=self.arrears + delta.arrears,
        )

    def before(self, delta: Delta) -> Columns:
        """These columns as they were before `delta` was applied to them."""
        return replace(
            self,
            total=self.total - delta.total,
            used=self.used - delta.used,
            reserved=self.reserved - delta.reserved,
            arrears=self.arrears - delta.arrears,
        )


@dataclass(frozen=True)
class Wallet:
    """A wallet the tenant has: its own location ('' for the tenant-wide wallet) and,
    when the store read them, its columns."""

    id: str
    tenant_id: str
    location_id: str
    columns: Columns | None = None


@dataclass(frozen=True)
class Prior:
    """What a request id already wrote: its fingerprint, its entry (with the deltas
    it made), and the reservation it made or ended, as it is now (if any)."""

    request_hash: str
    entry: Entry
    wallet_id: str
    delta: Delta = Delta()
    arrears_after: int = 0
    reservation: Reservation | None = None


@dataclass(frozen=True)
class Snapshot:
    tenant_id: str
    wallets: tuple[Wallet, ...]  # every wallet of the tenant (none: it has no wallet)
    prior: Mapping[str, Prior] = field(default_factory=dict)
    reservations: Mapping[str, Reservation] = field(default_factory=dict)
    # The reservations above were not read but expected by the caller: their ends
    # are guarded as such (the store checks state, amount, wallet and expiry).
    tenant_exists: bool = True

    @property
    def blind(self) -> bool:
        return any(w.columns is None for w in self.wallets)

    def wallet(self, location_id: str) -> Wallet | None:
        """The location's own wallet, or the tenant's for ''."""
        for w in self.wallets:
            if w.location_id == location_id:
                return w
        return None

    def paying_wallet(self, location_id: str) -> Wallet | None:
        """Which wallet pays for work at `location_id`: its own if it has one, else
        the tenant's."""
        return (self.wallet(location_id) if location_id else None) or self.wallet("")

    def wallet_by_id(self, wallet_id: str) -> Wallet | None:
        for w in self.wallets:
            if w.id == wallet_id:
                return w
        return None


class IdSource:
    """Where a plan's new ids come from (the store's `new_id`; a counter in tests)."""

    def __init__(self, new: Callable[[str], str]) -> None:
        self._new = new

    def __call__(self, prefix: str) -> str:
        return self._new(prefix)
