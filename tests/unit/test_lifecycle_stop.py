"""A node's stop goes on past a step that does not end (lifecycle.stop): it logs where
every task and thread waits, and still leaves (its row, its database)."""
from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from imgstore import lifecycle


class _Step:
    """A stop step that records its call; with ``release``, it waits for it, and no
    cancel ends it before (a step stuck where cancelling does not reach)."""

    def __init__(self, calls: list[str], name: str, release: asyncio.Event | None) -> None:
        self.calls, self.name, self.release = calls, name, release

    async def __call__(self) -> None:
        self.calls.append(self.name)
        while self.release is not None and not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                continue


def _runtime(calls: list[str], hanging: str, release: asyncio.Event) -> Any:
    def step(name: str) -> _Step:
        return _Step(calls, name, release if name == hanging else None)

    node = SimpleNamespace(tracker=SimpleNamespace(stop=step("tracker")), expunger=SimpleNamespace(stop=step("expunger")),
                           membership=SimpleNamespace(hand_over=step("hand over"), leave=step("leave")))
    return SimpleNamespace(node=node, jobs=SimpleNamespace(drain=step("drain")), close=step("close"))


@pytest.mark.parametrize("hanging", ["tracker", "expunger", "hand over"])
def test_a_stop_step_that_does_not_end_is_logged_and_the_node_still_leaves(
        hanging: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(lifecycle, "STEP_SECONDS", 0.2, raising=False)
    calls: list[str] = []

    async def scenario() -> None:
        release = asyncio.Event()
        stopping = asyncio.ensure_future(lifecycle.stop(_runtime(calls, hanging, release)))
        try:
            await asyncio.wait({stopping}, timeout=5)
            assert stopping.done(), f"the stop waits for {hanging} forever: {calls}"
            stopping.result()
        finally:
            release.set()

    with caplog.at_level(logging.WARNING):
        asyncio.run(scenario())
    assert calls == ["tracker", "expunger", "hand over", "drain", "leave", "close"]
    assert any(f"{hanging} did not end within 0.2 s" in r.getMessage() for r in caplog.records), caplog.text
    assert any(r.name == "imgstore.waits" and "_Step.__call__" in r.getMessage() for r in caplog.records)
