"""Background tasks a node runs, found again by key.

asyncio keeps only weak references to tasks: one nobody holds may be collected half-way.
A :class:`Tasks` holds each until it ends, by a key that names its work (an image uuid for
a download, a storage uuid for an import), so a caller can find it again to cancel or
await it. Each registry lives on the node (``Runtime.node``), owned by the one module that
starts its tasks.
"""
from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Tasks(Generic[T]):
    """The running tasks of one kind of work, by key; a task leaves when it ends."""

    def __init__(self) -> None:
        self._running: dict[str, asyncio.Task[T]] = {}

    def start(self, key: str, work: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._running[key] = task
        task.add_done_callback(lambda done: self._forget(key, done))
        return task

    def get(self, key: str) -> asyncio.Task[T] | None:
        return self._running.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._running

    def __len__(self) -> int:
        return len(self._running)

    def _forget(self, key: str, task: asyncio.Task[T]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
