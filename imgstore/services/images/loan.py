"""One buffer lent to several writers (an upload's body piece, fanned out to every backup
storage's :class:`~imgstore.ceph.ImageWriter`): it goes back to its owner only once all of
them are done with it."""
from __future__ import annotations

from collections.abc import Callable

__all__ = ["Loan"]


class Loan:
    """A lent buffer passed to several writers: its owner's ``release`` runs once the
    intake and every writer that held it have let it go."""

    def __init__(self, release: Callable[[], None] | None) -> None:
        self._release = release
        self._holders = 1  # the intake's own hold, let go when its write() returns

    def hold(self) -> Callable[[], None]:
        """Another holder (a writer, which calls what this answers exactly once)."""
        self._holders += 1
        return self.let_go

    def let_go(self) -> None:
        self._holders -= 1
        if not self._holders and self._release is not None:
            self._release()
