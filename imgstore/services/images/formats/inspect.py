"""What an image is, from its first bytes, and whether it is safe to hand to qemu.

The inspection is oslo.utils' ``imageutils.format_inspector``: the inspectors OpenStack
wrote after CVE-2024-32498 and maintains for Glance, Nova and Cinder. Give
:func:`inspect` the head of the stream (``HEAD_SIZE`` bytes, or all of a smaller
image) before any of it reaches qemu or Ceph::

    info = inspect(head)
    if reason := info.unsafe_reason():
        refuse(reason)          # never hand such a file to qemu
    if info.format in ("qcow2", "vmdk"):
        convert naming the format (never probe) with backing files disabled

On top of oslo's safety checks (qcow2: backing file, data file, unknown features;
vmdk: create type, extent names, footer) three that it lacks, each of which let qemu
open another file of the server:

* a vmdk whose descriptor names a parent (``parentCID`` other than ``ffffffff``, or a
  ``parentFileNameHint``): qemu opens that file as the backing image;
* a vmdk that is only a text descriptor (no sparse header): its extents are other files;
* a vmdk extent that is not SPARSE (FLAT, VMFS... name raw files beside it).

An encrypted qcow2 is refused too (qemu cannot read it without the key). A head that
matches two formats is refused (a tool that probes could pick the other one), except an
ISO with a partition table (a bootable ISO, which oslo sees as both iso and gpt). A raw
disk with a partition table (gpt/mbr) is raw: raw never reaches qemu.

The head is all that is looked at: what lies beyond it cannot change the decision,
and a format qemu would find further in is never probed, because the format is named.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from oslo_utils.imageutils import format_inspector as fi

__all__ = ["ACCEPTED", "HEAD_SIZE", "ImageInfo", "inspect"]

HEAD_SIZE = 64 * 1024
"""Bytes of the stream's head that :func:`inspect` needs to see."""

ACCEPTED = ("raw", "iso", "qcow2", "vmdk")
"""Formats imgstore stores (raw and iso as they are; qcow2 and vmdk converted to raw)."""
_AS_RAW = {"raw", "gpt"}  # a disk with a partition table is a raw disk
_VMDK_EXTENT_TYPES_INSIDE = {"sparse", "zero"}  # in a sparse vmdk: the file itself, or nothing
_NO_PARENT = "ffffffff"
_FIELD = re.compile(r'^\s*(parentcid|parentfilenamehint)\s*=\s*"?([^"\n]*)"?', re.M)
_EXTENT = re.compile(r'^\s*(?:rw|rdonly|noaccess)\s+\d+\s+(\S+)', re.M)
_QCOW2_CRYPT = struct.Struct(">I")
_QCOW2_CRYPT_OFFSET = 32


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`inspect` found."""

    format: str  # raw, qcow2, iso, vmdk; or vhdx, vhd, qed, vdi, luks (not accepted)
    virtual_size: int | None = None  # None for raw: the stream's length is its size
    problem: str | None = None

    def unsafe_reason(self) -> str | None:
        """Why this image must be refused (CVE-2024-32498 class), or None if it is safe."""
        if self.problem:
            return self.problem
        if self.format not in ACCEPTED:
            return f"{self.format} images are not supported"
        return None


def inspect(head: bytes | bytearray | memoryview) -> ImageInfo:
    """Detect the format of an image from its first bytes (``HEAD_SIZE`` of them)."""
    data = bytes(head[:HEAD_SIZE])
    matches = _matches(data)
    names = {m.NAME for m in matches}
    if names == {"iso", "gpt"}:  # a bootable ISO
        matches = [m for m in matches if m.NAME == "iso"]
    elif len(matches) > 1:
        shown = " and ".join(sorted(names))
        return ImageInfo(sorted(names)[0], problem=f"image looks like {shown} at once")
    if not matches or matches[0].NAME in _AS_RAW:
        return ImageInfo("raw")
    found = matches[0]
    size = _virtual_size(found)
    if found.NAME not in ACCEPTED:
        return ImageInfo(found.NAME, size)
    return ImageInfo(found.NAME, size, _problem(found))


def _virtual_size(found: fi.FileInspector) -> int | None:
    """The inspector's virtual size; None when it has none (oslo's vmdk inspector raises
    KeyError for a bare descriptor)."""
    try:
        return found.virtual_size or None
    except Exception:
        return None


def _matches(data: bytes) -> list[fi.FileInspector]:
    """The inspectors (other than raw) that recognise the head, fed in one chunk.

    An inspector that cannot parse the head is no match (as in oslo's InspectWrapper);
    ``finish`` marks the end of what is looked at, so incomplete ones are no match.
    """
    found = []
    for name, kind in fi.ALL_FORMATS.items():
        if name == "raw":
            continue
        inspector = kind()
        try:
            inspector.eat_chunk(data)
            inspector.finish()
            if inspector.format_match:
                found.append(inspector)
        except Exception:
            continue
    return found


def _problem(found: fi.FileInspector) -> str | None:
    """oslo's safety checks, then the ones it lacks; the first reason found, or None."""
    try:
        found.safety_check()
    except fi.SafetyCheckFailed as e:
        reasons = "; ".join(f"{name}: {err}" for name, err in e.failures.items())
        return f"{found.NAME} image failed its safety checks ({_oslo_words(found.NAME, reasons)})"
    except fi.ImageFormatError as e:
        return f"{found.NAME} image cannot be checked within its first {HEAD_SIZE} bytes: {e}"
    if isinstance(found, fi.VMDKInspector):
        return _vmdk_problem(found)
    if isinstance(found, fi.QcowInspector):
        (crypt,) = _QCOW2_CRYPT.unpack_from(found.region("header").data, _QCOW2_CRYPT_OFFSET)
        return "qcow2 image is encrypted" if crypt else None
    return None


def _oslo_words(fmt: str, reasons: str) -> str:
    """oslo's terse reasons, with the words a user searches for (backing file, data file)."""
    if fmt == "qcow2":
        reasons = reasons.replace("data_file: Image has data_file set", "it has an external data file")
        reasons = reasons.replace("backing_file: Image has a backing file", "it has a backing file")
    return reasons


def _vmdk_problem(found: fi.VMDKInspector) -> str | None:
    """What oslo's vmdk checks let through: a parent, a bare descriptor, outside extents."""
    if not found.has_region("header"):
        return "vmdk is a descriptor of other files, not a disk image"
    text = found.desc_text or ""
    for field_name, value in _FIELD.findall(text):
        value = value.strip()
        if field_name == "parentcid" and value != _NO_PARENT:
            return f"vmdk names a parent image (parentCID={value[:16]}); only self-contained images are taken"
        if field_name == "parentfilenamehint" and value:
            return "vmdk names a parent file (parentFileNameHint); only self-contained images are taken"
    outside = sorted({t for t in _EXTENT.findall(text) if t not in _VMDK_EXTENT_TYPES_INSIDE})
    if outside:
        return f"vmdk has extents outside the file ({', '.join(outside)[:64]})"
    return None
