"""What an upload:// image's PUTs say and what this node keeps of an upload in progress
(:mod:`imgstore.services.images.upload` receives the bytes)."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from imgstore.db.models import Image
from imgstore.errors import OPERATION_ERROR, ApiError
from imgstore.services.images.hashing import Expected
from imgstore.services.images.intake import ImageIntake
from imgstore.services.node.handles import Lease
from imgstore.services.node.task_progress import ProgressReporter

WAITING, RUNNING, SUCCEEDED, FAILED = "Waiting", "Running", "Succeeded", "Failed"


#: a piece of a PUT's body, and the call that gives its buffer back when it is lent
#: (ImageIntake.write: the writers may write straight from it); None when it is not
BodyPiece = tuple[bytes | bytearray, Callable[[], None] | None]


class BodyInterrupted(Exception):
    """The client went away before the end of its body (raised by the API layer)."""


class OffsetMismatch(ApiError):
    """The PUT does not start where the upload stands; ``offset`` is where it does."""

    def __init__(self, image_uuid: str, offset: int, asked: int) -> None:
        super().__init__(
            OPERATION_ERROR,
            f"the upload of image[uuid:{image_uuid}] stands at byte {offset}, the request starts at "
            f"{asked}; send the bytes from offset {offset}",
            status=409,
        )
        self.offset = offset


@dataclass
class Piece:
    """What one PUT says about its body."""

    offset: int | None = None  # where it starts; None: not said (0)
    total: int | None = None  # the whole image's size; None: not said
    length: int | None = None  # Content-Length of this body
    image_uuid: str | None = None  # X-Image-Uuid, checked when sent
    body_digests: dict[str, str] = field(default_factory=dict)  # Content-MD5: of this body
    image_digests: dict[str, str] = field(default_factory=dict)  # Digest, Repr-Digest: of the whole image


@dataclass
class UploadStatus:
    image_uuid: str
    state: str
    offset: int
    size: int | None
    image: Image | None = None

    @property
    def completed(self) -> bool:
        return self.state == SUCCEEDED


@dataclass
class Session:
    """An upload in progress on this node: its intake stays open between PUTs."""

    image_uuid: str
    reporter: ProgressReporter
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    intake: ImageIntake | None = None
    received: int = 0
    total: int | None = None
    task: asyncio.Task[object] | None = None  # the PUT sending bytes now
    saved_at: float = 0.0
    deleted: bool = False  # DeleteImage stopped it
    leases: list[Lease] = field(default_factory=list)  # the handles the writer uses, kept open till it ends
    expected: Expected = field(default_factory=Expected)  # digests of the whole image to check
    restarted: bool = False  # continues what this node's previous run left in RBD

    def release(self) -> None:
        """The writer is done with its handles: a Reconnect's old one may close now."""
        for lease in self.leases:
            lease.release()
        self.leases.clear()


