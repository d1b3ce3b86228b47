"""ceph.recent: an answer about a cluster is reused for a short while, failures never."""
from __future__ import annotations

import time

import pytest

from imgstore.ceph.recent import Recent


def test_an_answer_is_reused_within_its_seconds_and_asked_again_after() -> None:
    recent: Recent[int] = Recent(0.2)
    asked: list[str] = []

    def ask() -> int:
        asked.append("x")
        return len(asked)

    assert recent.get(("fsid-a", "df"), ask) == 1
    assert recent.get(("fsid-a", "df"), ask) == 1
    assert recent.get(("fsid-b", "df"), ask) == 2  # another cluster asks on its own
    time.sleep(0.25)
    assert recent.get(("fsid-a", "df"), ask) == 3


def test_a_failure_is_not_kept() -> None:
    recent: Recent[str] = Recent(60)

    def fail() -> str:
        raise TimeoutError("mon down")

    with pytest.raises(TimeoutError):
        recent.get("k", fail)
    assert recent.get("k", lambda: "answered") == "answered"
