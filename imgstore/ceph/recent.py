"""What a cluster said lately, kept a short while for every handle on that cluster.

The tracker pings every storage each interval, and several storages often live on one
cluster (a pool each). What the mons say about the cluster itself (its quorum, ``osd
df``, ``df``, a pool's layout) is the same through any of their handles, so asking once
per cluster per moment, not once per storage, spares the mons and the mgr most of their
work: with 100 storages on one cluster those questions were most of its CPU.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class Recent(Generic[V]):
    """Answers by key, each reused for ``seconds`` after it was asked.

    Safe to share between threads without a lock: two threads that miss at once both
    ask, and the later answer stays. Failures are not kept: the next caller asks again.
    """

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._answers: dict[Hashable, tuple[float, V]] = {}

    def get(self, key: Hashable, ask: Callable[[], V]) -> V:
        """The answer for ``key`` asked less than ``seconds`` ago, or ``ask()``'s."""
        asked = time.monotonic()
        known = self._answers.get(key)
        if known is not None and asked - known[0] < self._seconds:
            return known[1]
        answer = ask()
        self._answers[key] = (asked, answer)
        return answer
