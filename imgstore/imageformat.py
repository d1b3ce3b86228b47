"""What an image is, from its first bytes: raw, qcow2, iso, vmdk (and a few to refuse).

Pure: no I/O besides the bytes given. Give it the head of the stream (``HEAD_SIZE``
bytes, or all of a smaller image) before any of it reaches qemu-img::

    info = inspect(head)
    if reason := info.unsafe_reason():
        refuse(reason)          # CVE-2024-32498 class: never hand such a file to qemu-img
    if info.format == "qcow2":
        convert with `qemu-img convert -f qcow2 -O raw` (always name the format: never probe)

A qcow2 is unsafe when it points outside itself (a backing file, an external data file)
or uses incompatible features this code does not know; a vmdk when it is a descriptor
for other files, or of a create type other than one self-contained file; any image when
its head matches two formats (a qcow2 header inside an ISO, say), because a tool that
probes could pick the other one. Header layouts: qemu's ``docs/interop/qcow2.txt``,
VMware's "Virtual Disk Format 5.0", ECMA-119 for ISO 9660.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

__all__ = ["HEAD_SIZE", "ImageInfo", "Qcow2Header", "VmdkInfo", "inspect"]

HEAD_SIZE = 64 * 1024
"""Bytes of the stream's head that :func:`inspect` needs to see."""

# ---------------------------------------------------------------- qcow2 constants

QCOW2_MAGIC = b"QFI\xfb"
QCOW2_V2_HEADER = 72
QCOW2_V3_HEADER = 104

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2

EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_ENCRYPTION = 0x0537BE77
EXT_DATA_FILE = 0x44415441  # "DATA": the external data file name

# ---------------------------------------------------------------- other magics

VMDK_MAGIC = b"KDMV"  # "VMDK" little-endian, sparse extent header
VMDK_DESCRIPTOR = b"# Disk DescriptorFile"
VMDK_GD_AT_END = 0xFFFFFFFFFFFFFFFF
VMDK_SAFE_CREATE_TYPES = ("monolithicSparse", "streamOptimized")
ISO_MAGIC_OFFSET = 0x8001  # "CD001" in the first volume descriptor (sector 16)
ISO_MAGIC = b"CD001"

_OTHER_MAGICS = (  # recognised so they are not taken for raw; not accepted
    (0, b"vhdxfile", "vhdx"),
    (0, b"QED\x00", "qed"),
    (0, b"LUKS\xba\xbe", "luks"),
    (64, b"\x7f\x10\xda\xbe", "vdi"),
    (0, b"conectix", "vhd"),  # a dynamic VHD starts with a copy of its footer
)


@dataclass(frozen=True)
class Qcow2Header:
    """The fields of a qcow2 header that say what the image depends on."""

    version: int
    virtual_size: int
    cluster_bits: int
    backing_file_offset: int
    backing_file_size: int
    crypt_method: int
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    header_length: int = QCOW2_V2_HEADER
    backing_file: str | None = None  # None: no backing file, or its name is beyond the head
    backing_format: str | None = None
    data_file: str | None = None
    extensions: tuple[int, ...] = ()
    problems: tuple[str, ...] = ()  # malformed or truncated parts

    @property
    def has_backing_file(self) -> bool:
        return self.backing_file_offset != 0

    @property
    def has_data_file(self) -> bool:
        return bool(self.incompatible_features & INCOMPAT_DATA_FILE) or EXT_DATA_FILE in self.extensions

    def unsafe_reason(self) -> str | None:
        """Why this qcow2 must not be used, or None."""
        if self.problems:
            return f"malformed qcow2 header: {'; '.join(self.problems)}"
        if self.has_backing_file:
            name = f" ({self.backing_file!r})" if self.backing_file is not None else ""
            return f"qcow2 image has a backing file{name}"
        if self.has_data_file:
            name = f" ({self.data_file!r})" if self.data_file is not None else ""
            return f"qcow2 image has an external data file{name}"
        unknown = self.incompatible_features & ~INCOMPAT_KNOWN
        if unknown:
            return f"qcow2 image uses unknown incompatible features (0x{unknown:x})"
        if self.incompatible_features & INCOMPAT_CORRUPT:
            return "qcow2 image is marked corrupt"
        if self.crypt_method != 0 or EXT_ENCRYPTION in self.extensions:
            return "qcow2 image is encrypted"
        return None


@dataclass(frozen=True)
class VmdkInfo:
    """A VMDK sparse extent header and its embedded descriptor, or a bare descriptor."""

    descriptor_only: bool
    create_type: str | None
    extents: tuple[str, ...] = ()  # file names the descriptor refers to
    virtual_size: int | None = None
    footer: bool = False
    problems: tuple[str, ...] = ()

    def unsafe_reason(self) -> str | None:
        if self.problems:
            return f"malformed vmdk: {'; '.join(self.problems)}"
        if self.descriptor_only:
            return "vmdk is a descriptor of other files, not a disk image"
        if self.create_type not in VMDK_SAFE_CREATE_TYPES:
            return f"vmdk create type {self.create_type!r} is not one self-contained file"
        bad = [e for e in self.extents if "/" in e or "\\" in e]
        if bad:
            return f"vmdk refers to extent files by path ({', '.join(bad)})"
        if self.footer:
            return "vmdk keeps its grain directory in a footer (not streamable)"
        return None


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`inspect` found."""

    format: str  # raw, qcow2, iso, vmdk; or vhdx, vhd, qed, vdi, luks (not accepted)
    virtual_size: int | None = None  # None for raw: the stream's length is its size
    qcow2: Qcow2Header | None = None
    vmdk: VmdkInfo | None = None
    also_matches: tuple[str, ...] = field(default=())

    def unsafe_reason(self) -> str | None:
        """Why this image must be refused (CVE-2024-32498 class), or None if it is safe."""
        if self.also_matches:
            return f"image looks like {' and '.join((self.format, *self.also_matches))} at once"
        if self.qcow2 is not None:
            return self.qcow2.unsafe_reason()
        if self.vmdk is not None:
            return self.vmdk.unsafe_reason()
        if self.format not in ("raw", "iso"):
            return f"{self.format} images are not supported"
        return None


def inspect(head: bytes | bytearray | memoryview) -> ImageInfo:
    """Detect the format of an image from its first bytes (``HEAD_SIZE`` of them)."""
    head = bytes(head[:HEAD_SIZE])
    found: list[str] = []
    if head.startswith(QCOW2_MAGIC):
        found.append("qcow2")
    if head.startswith(VMDK_MAGIC) or head.startswith(VMDK_DESCRIPTOR):
        found.append("vmdk")
    for offset, magic, name in _OTHER_MAGICS:
        if head[offset:offset + len(magic)] == magic:
            found.append(name)
    if head[ISO_MAGIC_OFFSET:ISO_MAGIC_OFFSET + len(ISO_MAGIC)] == ISO_MAGIC:
        found.append("iso")
    if not found:
        return ImageInfo("raw")
    fmt, others = found[0], tuple(found[1:])
    if fmt == "qcow2":
        q = parse_qcow2(head)
        return ImageInfo(fmt, q.virtual_size, qcow2=q, also_matches=others)
    if fmt == "vmdk":
        v = parse_vmdk(head)
        return ImageInfo(fmt, v.virtual_size, vmdk=v, also_matches=others)
    if fmt == "iso":
        return ImageInfo(fmt, _iso_size(head), also_matches=others)
    return ImageInfo(fmt, also_matches=others)


# ---------------------------------------------------------------- qcow2


def parse_qcow2(head: bytes) -> Qcow2Header:
    """Parse a qcow2 header (v2 or v3) and its extensions from the image's first bytes."""
    if len(head) < QCOW2_V2_HEADER:
        return Qcow2Header(0, 0, 0, 0, 0, 0, problems=(f"header truncated at {len(head)} bytes",))
    (_magic, version, backing_off, backing_size, cluster_bits, size, crypt, _l1_size,
     _l1_off, _rc_off, _rc_clusters, _nb_snaps, _snaps_off) = struct.unpack_from(">4sIQIIQIIQQIIQ", head)
    problems: list[str] = []
    fields: dict[str, object] = {}
    if version not in (2, 3):
        problems.append(f"unknown version {version}")
    if not 9 <= cluster_bits <= 21:
        problems.append(f"cluster_bits {cluster_bits} out of range 9..21")
    header_length = QCOW2_V2_HEADER
    if version == 3:
        if len(head) < QCOW2_V3_HEADER:
            problems.append("v3 header truncated")
        else:
            incompat, compat, autoclear, _refcount_order, header_length = struct.unpack_from(">QQQII", head, 72)
            fields.update(incompatible_features=incompat, compatible_features=compat,
                          autoclear_features=autoclear)
            if header_length < QCOW2_V3_HEADER or header_length % 8:
                problems.append(f"header_length {header_length} invalid")
    cluster_size = 1 << cluster_bits if 9 <= cluster_bits <= 21 else 0
    backing_file = None
    if backing_off:
        if backing_size > 1023 or (cluster_size and backing_off > cluster_size):
            problems.append("backing file name out of bounds")  # qemu refuses these too
        elif backing_off + backing_size <= len(head):
            backing_file = head[backing_off:backing_off + backing_size].decode("utf-8", "replace")
    ext, ext_problems = _qcow2_extensions(head, header_length, cluster_size) if not problems else ({}, [])
    problems += ext_problems
    return Qcow2Header(
        version=version, virtual_size=size, cluster_bits=cluster_bits,
        backing_file_offset=backing_off, backing_file_size=backing_size, crypt_method=crypt,
        header_length=header_length, backing_file=backing_file,
        backing_format=_text(ext.get(EXT_BACKING_FORMAT)), data_file=_text(ext.get(EXT_DATA_FILE)),
        extensions=tuple(ext), problems=tuple(problems), **fields,  # type: ignore[arg-type]
    )


def _qcow2_extensions(head: bytes, start: int, cluster_size: int) -> tuple[dict[int, bytes], list[str]]:
    """The header extensions (type -> data) that follow the header, up to the end marker.

    They must end inside the first cluster; if the end marker is not inside the bytes
    given, that is a problem too: an unseen extension could be a data file.
    """
    out: dict[int, bytes] = {}
    limit = min(len(head), cluster_size or len(head))
    where = "the first cluster" if limit == cluster_size else "the bytes inspected"
    pos = start
    while True:
        if pos + 8 > limit:
            return out, [f"header extensions run past {where}"]
        ext_type, length = struct.unpack_from(">II", head, pos)
        if ext_type == EXT_END:
            return out, []
        data_end = pos + 8 + length
        if data_end > limit:
            return out, [f"header extension 0x{ext_type:08x} runs past {where}"]
        if ext_type in out:
            return out, [f"header extension 0x{ext_type:08x} appears twice"]
        out[ext_type] = head[pos + 8:data_end]
        pos = data_end + (-length % 8)


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.rstrip(b"\0").decode("utf-8", "replace")


# ---------------------------------------------------------------- vmdk


_EXTENT = re.compile(r'^\s*(RW|RDONLY|NOACCESS)\s+\d+\s+(\S+)(?:\s+"([^"]*)")?', re.M)
_CREATE_TYPE = re.compile(r'^\s*createType\s*=\s*"([^"]*)"', re.M)


def parse_vmdk(head: bytes) -> VmdkInfo:
    """A sparse VMDK's header and embedded descriptor, or a text descriptor file."""
    if head.startswith(VMDK_DESCRIPTOR):
        text = head.split(b"\0", 1)[0].decode("utf-8", "replace")
        return _vmdk_descriptor(text, descriptor_only=True, virtual_size=None, footer=False)
    if len(head) < 77:
        return VmdkInfo(False, None, problems=("sparse header truncated",))
    (_magic, _version, _flags, capacity, _grain, desc_off, desc_size, _gtes, _rgd,
     gd_off) = struct.unpack_from("<4sIIQQQQIQQ", head)
    start, end = desc_off * 512, (desc_off + desc_size) * 512
    if not desc_off or not desc_size:
        return VmdkInfo(False, None, virtual_size=capacity * 512,
                        problems=("no embedded descriptor",))
    if end > len(head):
        return VmdkInfo(False, None, virtual_size=capacity * 512,
                        problems=("embedded descriptor beyond the bytes inspected",))
    text = head[start:end].split(b"\0", 1)[0].decode("utf-8", "replace")
    return _vmdk_descriptor(text, descriptor_only=False, virtual_size=capacity * 512,
                            footer=gd_off == VMDK_GD_AT_END)


def _vmdk_descriptor(text: str, *, descriptor_only: bool, virtual_size: int | None,
                     footer: bool) -> VmdkInfo:
    ct = _CREATE_TYPE.search(text)
    extents = tuple(m.group(3) or "" for m in _EXTENT.finditer(text))
    return VmdkInfo(descriptor_only, ct.group(1) if ct else None, extents, virtual_size, footer)


# ---------------------------------------------------------------- iso


def _iso_size(head: bytes) -> int | None:
    """Volume space size x logical block size of the primary volume descriptor."""
    pvd = ISO_MAGIC_OFFSET - 1
    if len(head) < pvd + 130 or head[pvd] != 1:
        return None
    blocks = struct.unpack_from("<I", head, pvd + 80)[0]
    block_size = struct.unpack_from("<H", head, pvd + 128)[0]
    return blocks * block_size or None
