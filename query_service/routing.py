"""Which reward backend serves which experiment.

A learner reports its reward service's address with its progress; the address is kept in the
database (`meta`, key `reward_address:<experiment>`), so a restarted service routes as before.
Backends are made from addresses by a `RewardFactory` (`reward_service.client.RewardClient` in the
servers; the query service core builds no gRPC client itself) on first use, one per address.
Experiments without an address use the default backend (None: their labels wait).
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any, Callable

from reward_service.types import RewardBackend

from .store import Store

ROUTE_KEY = "reward_address:"  # meta key prefix: the reward service address of one experiment

RewardFactory = Callable[[str], RewardBackend]
"""address (HOST:PORT) -> the reward backend of the experiments routed there."""


def _close(backend: Any) -> None:
    if backend is not None and hasattr(backend, "close"):
        try:
            backend.close()
        except Exception:  # noqa: BLE001
            pass


class Routes:
    """experiment -> reward service address -> backend. Thread-safe."""

    def __init__(self, store: Store, default: RewardBackend | None = None,
                 factory: RewardFactory | None = None) -> None:
        self.default = default  # experiments that reported no reward address
        self.factory = factory  # None: addresses are refused
        self._lock = threading.Lock()
        self._routes: dict[str, str] = store.meta_with_prefix(ROUTE_KEY)
        self._backends: dict[str, Any] = {}

    def address(self, experiment: str) -> str:
        """The reward service address `experiment` reported ("" when none: the default backend)."""
        with self._lock:
            return self._routes.get(experiment, "")

    def route(self, experiment: str) -> tuple[str, Any]:
        """(address, backend) of `experiment`; address "" for the default backend."""
        with self._lock:
            address = self._routes.get(experiment, "")
            if not address:
                return "", self.default
            backend = self._backends.get(address)
            if backend is None:
                if self.factory is None:  # routed by an earlier service of this database
                    return address, None
                backend = self._backends[address] = self.factory(address)
            return address, backend

    def backend(self, experiment: str) -> Any:
        """The reward backend of `experiment`: its own service if it reported one, else the default."""
        return self.route(experiment)[1]

    def move(self, c: sqlite3.Connection, experiment: str, address: str) -> None:
        """Route `experiment` to `address`, inside the caller's write transaction `c`: forwarding
        checks the route under the write lock before it marks labels, so it sees the move. The
        caller `drop`s the old address's backend after committing."""
        Store.set_meta(c, ROUTE_KEY + experiment, address)
        with self._lock:
            self._routes[experiment] = address

    def drop(self, address: str) -> None:
        """Forget the cached backend of `address` when no experiment routes to it any more."""
        with self._lock:
            if address in self._routes.values():
                return
            backend = self._backends.pop(address, None)
        _close(backend)

    def close(self) -> None:
        with self._lock:
            backends, self._backends = list(self._backends.values()), {}
        for b in backends:
            _close(b)
