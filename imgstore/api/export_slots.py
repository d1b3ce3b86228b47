"""How many downloads of export URLs run at once (Trust issue, point 8).

Each download holds an RBD image open, reads ahead and fills a socket buffer: 24 slow
readers of one export link once took the server from 0.8 to 1.9 GB. A download takes
a slot for as long as its response runs (a FastAPI dependency with ``yield``, which
FastAPI leaves only after the streamed body has ended or its client went away); beyond
``export_max_per_link`` downloads of one link, or ``export_max_total`` in all, the next
is answered 429 at once. HEAD takes no slot: it streams nothing.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable

from fastapi import Request

from imgstore.errors import OPERATION_ERROR, ApiError, ErrorKind

TOO_MANY_DOWNLOADS = ErrorKind(OPERATION_ERROR.code, OPERATION_ERROR.description, 429)
RETRY_AFTER_S = 5


class ExportSlots:
    """The downloads this node serves now, per link and in all."""

    def __init__(self, per_link: int, total: int) -> None:
        self.per_link = per_link
        self.total = total
        self._links: Counter[str] = Counter()

    def take(self, link: str) -> Callable[[], None]:
        """A slot for one download of ``link``, or 429; the function that gives it back."""
        if self._links[link] >= self.per_link:
            raise self._refusal(f"{self.per_link} downloads of this export URL are running "
                                "(setting export_max_per_link)")
        if sum(self._links.values()) >= self.total:
            raise self._refusal(f"{self.total} downloads of exported images are running on this node "
                                "(setting export_max_total)")
        self._links[link] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._links[link] -= 1
                if self._links[link] <= 0:
                    del self._links[link]

        return release

    def running(self, link: str | None = None) -> int:
        return sum(self._links.values()) if link is None else self._links.get(link, 0)

    @staticmethod
    def _refusal(why: str) -> ApiError:
        return ApiError(TOO_MANY_DOWNLOADS, f"too many downloads at once: {why}; retry in a few seconds",
                        opaque={"retryAfter": RETRY_AFTER_S})


async def export_slot(request: Request, pool: str, segment: str) -> AsyncIterator[None]:
    """FastAPI dependency of the export URL: a slot held until the response has ended."""
    if request.method != "GET":
        yield
        return
    slots: ExportSlots = request.app.state.export_slots
    release = slots.take(f"{pool}/{segment[-32:]}")  # a link is one image's export in one pool
    try:
        yield
    finally:
        release()
