"""How an intake reads a stream's head (imgstore/services/images/intake.py): the format is
read from the first piece in place, and the piece goes on to the writers lent, not copied
(two 4 MiB copies at the start set an upload's peak memory for its whole stream)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import pytest

from imgstore.services.images import intake
from imgstore.services.images.formats.inspect import HEAD_SIZE

pytestmark = pytest.mark.anyio
MiB = 1 << 20


class Writer:
    """What the intake hands a writer: each piece, and whether it was lent."""

    made: ClassVar[list[Writer]] = []

    def __init__(self, cluster: Any, pool: str, name: str, size: int | None = None, **_: Any) -> None:
        self.pieces: list[tuple[Any, bool]] = []
        Writer.made.append(self)

    async def open(self) -> None:
        pass

    async def write(self, data: Any, release: Any = None) -> None:
        self.pieces.append((data, release is not None))
        if release is not None:
            release()


@pytest.fixture
def writer(monkeypatch: pytest.MonkeyPatch) -> type[Writer]:
    Writer.made = []
    monkeypatch.setattr(intake, "ImageWriter", Writer)
    return Writer


def new_intake(tmp_path: Path, total: int | None) -> intake.ImageIntake:
    return intake.ImageIntake([intake.Target("bs", object(), "pool")], "image", total, tmp_path)  # type: ignore[arg-type]


async def test_a_first_piece_holding_the_head_goes_on_lent_and_uncopied(writer: type[Writer], tmp_path: Path) -> None:
    first, second = bytearray(os.urandom(4 * MiB)), bytearray(os.urandom(4 * MiB))
    released: list[int] = []
    feed = new_intake(tmp_path, len(first) + len(second))
    await feed.write(first, lambda: released.append(1))
    await feed.write(second, lambda: released.append(2))
    assert feed.detected == "raw"
    [w] = writer.made
    assert [(data is piece, lent) for (data, lent), piece in zip(w.pieces, (first, second), strict=True)] == [(True, True)] * 2
    assert released == [1, 2]


async def test_a_head_in_small_pieces_is_gathered_before_the_format_is_read(writer: type[Writer],
                                                                            tmp_path: Path) -> None:
    data = os.urandom(HEAD_SIZE + 100)
    feed = new_intake(tmp_path, len(data))
    await feed.write(data[:1000])
    assert feed.detected is None and writer.made == []
    await feed.write(data[1000:])
    assert feed.detected == "raw"
    [w] = writer.made
    assert b"".join(bytes(d) for d, _ in w.pieces) == data
