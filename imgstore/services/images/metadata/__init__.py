"""ZStack's image metadata object ``bs_ceph_info.json``: adopt a pool's images, keep it current.

ZStack writes the inventory of every Ready image of a Ceph backup storage into the RADOS
object ``bs_ceph_info.json``, one ImageInventory JSON per line, and
``importImages`` on AddCephBackupStorage adopts a pool from it (3.4). imgstore does both:

* :func:`import_images` (run by AddCephBackupStorage with ``importImages=true``, in the
  background once the add answered, as in ZStack) reads the object from the pool ZStack
  reads it from, ``bak-t-<last '-' token of poolName>`` (ZStack's quirk), and from the
  storage's own pool, where imgstore writes it. Each line whose RBD image exists becomes
  a Ready image with its name, format, sizes and md5 (an image row of that uuid is
  revived). Only those: an RBD image the metadata does not name (someone else's, or
  planted) is not adopted, unless the add carried the system tag ``importImages::all``;
  then every RBD image of the pool named by an image uuid is adopted too, as a raw image
  named by its uuid.
* :func:`image_ready`, :func:`image_expunged` and :func:`rewrite` keep the object in the
  storage's own pool current: a line is added when an image turns Ready on the storage,
  removed when its bits are expunged, and the whole object is rewritten on reconnect
  and after an import. Lines are ZStack's format (with ``backupStorageRefs``), so ZStack
  could adopt a pool written by imgstore.

The storage's key is ``profile rbd pool=<its pool>``: it may read and write objects of
its own pool only. When ``bak-t-<token>`` is another pool, reading it is denied (or the
pool does not exist): that source is skipped with a log line, and only the storage's own
pool is looked at.

Updates of the object take its RADOS advisory lock, so nodes do not lose each other's
lines. Failures here never fail the API that triggered them: they are logged.

The package: ``lines`` (the file format, pure), ``pool`` (the storage's handle, whether
bits exist), ``follow`` (keeping the object current), ``adopt`` (importImages).
"""
from imgstore.services.images.metadata.adopt import IMPORT_ALL, import_images, import_in_background, on_storage_added
from imgstore.services.images.metadata.follow import image_expunged, image_ready, on_storage_reconnected, rewrite
from imgstore.services.images.metadata.lines import (
    METADATA_OBJECT,
    inventory_line,
    parse_metadata,
    split_install_path,
    zstack_metadata_pool,
)

__all__ = [
    "IMPORT_ALL",
    "METADATA_OBJECT",
    "image_expunged",
    "image_ready",
    "import_images",
    "import_in_background",
    "inventory_line",
    "on_storage_added",
    "on_storage_reconnected",
    "parse_metadata",
    "rewrite",
    "split_install_path",
    "zstack_metadata_pool",
]
