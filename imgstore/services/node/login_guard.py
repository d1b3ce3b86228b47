"""Logins that cannot stall the server (issue Trust, point 4).

An account password is checked with scrypt: ~50 ms of CPU and 16 MiB by design. Run on
the event loop, eight clients guessing passwords raised every other request's latency
fifty-fold. So:

* Hashing runs in a small pool of its own (``login_hash_workers`` threads; hashlib's
  scrypt lets go of the GIL). A login waiting for the pool awaits a future: the loop
  serves other requests meanwhile, and the guesses cannot take more CPU than the pool.
* Failed logins are counted per source address and per account name with the ``limits``
  library (moving windows, in memory). Each setting is a list of tiers such as
  ``5 per minute; 20 per hour``: the delay grows as a later, longer tier fills. While a
  tier is full, a login is answered without hashing, with ID.1000, HTTP 429,
  ``Retry-After`` and the seconds in its details, after ``login_throttle_delay`` seconds
  (a sleeping coroutine, nothing held): a guessing client that ignores Retry-After
  slows down instead of spinning the loop on cheap 429s. Counters are per node: with
  several nodes (PostgreSQL) an attacker spreading guesses over them gets each node's
  allowance.
* An unknown account is checked against a dummy hash, so its answer and its time are a
  known account's.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from imgstore import crypto
from imgstore.config import Settings
from imgstore.errors import AUTH_FAILED, ApiError

T = TypeVar("T")

TOO_MANY = 429
_ACCOUNT_KEY_CHARS = 255  # an account name is at most this long; longer keys are cut


class LoginThrottled(ApiError):
    """A login refused before any check: too many failures lately; ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            AUTH_FAILED,
            f"too many failed logins from this address or for this account; "
            f"retry in {retry_after} seconds",
            status=TOO_MANY,
            opaque={"retryAfter": retry_after},
        )
        self.retry_after = retry_after


class LoginGuard:
    """The hashing pool and the failure counters of one node."""

    def __init__(self, settings: Settings) -> None:
        self._pool = ThreadPoolExecutor(max_workers=settings.login_hash_workers,
                                        thread_name_prefix="login-hash")
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._tiers: dict[str, list[RateLimitItem]] = {
            "address": parse_many(settings.login_failures_per_address),
            "account": parse_many(settings.login_failures_per_account),
        }
        self._delay = settings.login_throttle_delay
        self._pending: Counter[tuple[str, str]] = Counter()  # logins under way, by (kind, key)
        # made at once in the pool: the first unknown account costs what the others do
        self._dummy_hash = self._pool.submit(crypto.hash_password, crypto.new_uuid())

    @asynccontextmanager
    async def attempt(self, address: str, account: str) -> AsyncIterator[None]:
        """One login: LoginThrottled, after at most ``login_throttle_delay`` seconds, when
        the address or the account has failed too often lately. Logins under way count
        as failures to come, so concurrent guesses cannot overrun a limit while they hash."""
        keys = [("address", address), ("account", account[:_ACCOUNT_KEY_CHARS])]
        wait = max(self._wait(kind, key) for kind, key in keys)
        if wait > 0:
            await asyncio.sleep(min(self._delay, wait))
            raise LoginThrottled(max(1, wait - math.floor(min(self._delay, wait))))
        for key in keys:
            self._pending[key] += 1
        try:
            yield
        finally:
            for key in keys:
                self._pending[key] -= 1
                if self._pending[key] <= 0:
                    del self._pending[key]

    def failed(self, address: str, account: str) -> None:
        """Count one failed login against the address and the account name."""
        for kind, key in (("address", address), ("account", account[:_ACCOUNT_KEY_CHARS])):
            for tier in self._tiers[kind]:
                self._limiter.hit(tier, kind, key)

    async def hash(self, client_digest: str) -> str:
        return await self._run(crypto.hash_password, client_digest)

    async def verify(self, client_digest: str, stored_hash: str | None) -> bool:
        """The password against ``stored_hash``; None (no such account) is checked against
        a dummy hash, to cost the same, and is False."""
        stored = stored_hash if stored_hash is not None else await asyncio.wrap_future(self._dummy_hash)
        ok = await self._run(crypto.verify_password, client_digest, stored)
        return ok and stored_hash is not None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _wait(self, kind: str, key: str) -> int:
        """Seconds until the fullest tier of ``key`` lets one more login in; 0: now. A
        tier whose room is taken by logins under way says 1: they end in a moment."""
        pending = self._pending.get((kind, key), 0)
        wait = 0.0
        for tier in self._tiers[kind]:
            stats = self._limiter.get_window_stats(tier, kind, key)
            if stats.remaining <= 0:
                wait = max(wait, stats.reset_time - time.time(), 1)
            elif stats.remaining <= pending:
                wait = max(wait, 1)
        return max(1, math.ceil(wait)) if wait > 0 else 0

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
