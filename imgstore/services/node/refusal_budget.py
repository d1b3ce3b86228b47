"""How many refused requests one node turns into failed jobs (issue 16 point 1).

A job API refused before its job starts (no session, a bad body) answers 202 and a job
that failed, as ZStack does (api/refused_jobs.py). Unbounded, that would let anyone
without a session write rows at will. So, as for failed logins (login_guard.py), the
``limits`` library counts them in moving windows, in memory, per source address and
for the whole node; beyond either, the refusal is answered at once, with no row.
"""
from __future__ import annotations

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from imgstore.config import Settings


class RefusalBudget:
    """The refused-job allowance of one node."""

    def __init__(self, settings: Settings) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._per_address: list[RateLimitItem] = parse_many(settings.refused_jobs_per_address)
        self._per_node: list[RateLimitItem] = parse_many(settings.refused_jobs_per_node)

    def take(self, address: str) -> bool:
        """One more refused job from ``address``: True (and counted) while both the
        address and the node have room, else False (and nothing counted)."""
        keys = [(tier, "address", address) for tier in self._per_address]
        keys += [(tier, "node", "all") for tier in self._per_node]
        if not all(self._limiter.test(tier, kind, key) for tier, kind, key in keys):
            return False
        for tier, kind, key in keys:
            self._limiter.hit(tier, kind, key)
        return True
