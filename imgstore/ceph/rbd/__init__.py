"""The bits of images: RBD format-2 images in a pool, written and read as streams.

DESIGN decision 6: an image is an RBD image named by the image uuid in the storage's
pool. This package is the write path and the read path of those images, and nothing
else (no HTTP, no database):

* :mod:`.writer` — :class:`ImageWriter` streams bytes into a new image, all or nothing;
* :mod:`.reader` — :func:`iter_image` streams a byte range with reads in flight,
  holes (per the object map) without a read;
* :mod:`.manage` — :func:`image_size`, :func:`image_usage`, :func:`list_images`, :func:`remove_image`;
* :func:`zero_block` — the shared block of zeros: a source that hands it over for a hole
  costs the writer no compare (it is the block the writer compares with);
  :class:`SparsePiece` — a piece known by its data runs (a sparse file's extents): the
  writer writes them without comparing or copying its zeros.

Every call takes the storage's handle (:class:`imgstore.ceph.Cluster`, or anything with
the same ``handle`` and ``executor``, see :class:`RadosSource`). Blocking librbd calls run
in its bounded executor (:mod:`imgstore.ceph._calls`); ``aio_*`` completions come back to
the event loop through ``call_soon_threadsafe``. The event loop never blocks on Ceph.
"""

from imgstore.ceph._calls import RadosSource
from imgstore.ceph.rbd._common import CHUNK_SIZE, zero_block
from imgstore.ceph.rbd.manage import image_size, image_usage, list_images, remove_image
from imgstore.ceph.rbd.reader import READ_AHEAD, iter_image, read_range
from imgstore.ceph.rbd.writer import WRITE_WINDOW, ImageWriter, WriteResult
from imgstore.ceph.rbd.zeros import ZERO_GRAIN, SparsePiece, runs_to_write

__all__ = [
    "CHUNK_SIZE",
    "READ_AHEAD",
    "WRITE_WINDOW",
    "ZERO_GRAIN",
    "ImageWriter",
    "RadosSource",
    "SparsePiece",
    "WriteResult",
    "image_size",
    "image_usage",
    "iter_image",
    "list_images",
    "read_range",
    "remove_image",
    "runs_to_write",
    "zero_block",
]
