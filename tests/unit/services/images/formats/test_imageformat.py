"""imageformat tells raw, qcow2, iso and vmdk apart and refuses what points outside itself.

The inspection is oslo.utils' format_inspector; these tests pin what imgstore relies on
and the checks it adds (vmdk parents, bare descriptors, outside extents, encryption).
Real headers come from ``qemu-img create`` (Debian's qemu-utils) in a tmp dir; the
malformed ones are built by hand. The CVE-2024-32498 class: a qcow2 with a backing file
or an external data file, unknown incompatible features, a vmdk naming a parent or other
files, an image that is two formats at once.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from imgstore.services.images.formats.inspect import HEAD_SIZE, ImageInfo, inspect

INCOMPAT_DATA_FILE = 1 << 2

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                    reason="qemu-img (Debian qemu-utils) is not installed")

def qemu_img(tmp_path: Path, name: str, fmt: str, *args: str, size: str = "10M") -> bytes:
    """Create an image with qemu-img in tmp_path and return its head."""
    path = tmp_path / name
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, *args, str(path), size],
                   check=True, cwd=tmp_path, timeout=30)
    with open(path, "rb") as f:
        return f.read(HEAD_SIZE)


def qcow2_header(*, version: int = 3, size: int = 1 << 30, cluster_bits: int = 16,
                 backing: tuple[int, int] = (0, 0), crypt: int = 0, incompat: int = 0,
                 header_length: int = 104, extensions: list[tuple[int, bytes]] | None = None,
                 end_marker: bool = True, total: int = 4096) -> bytes:
    """A qcow2 header as qemu lays it out, with the given fields and extensions."""
    head = struct.pack(">4sIQIIQIIQQIIQ", b"QFI\xfb", version, backing[0], backing[1],
                       cluster_bits, size, crypt, 0, 0, 0, 0, 0, 0)
    if version >= 3:
        head += struct.pack(">QQQII", incompat, 0, 0, 4, header_length)
        head += bytes(max(0, header_length - len(head)))
    for ext_type, data in extensions or []:
        head += struct.pack(">II", ext_type, len(data)) + data + bytes(-len(data) % 8)
    if end_marker:
        head += bytes(8)
    return head + bytes(max(0, total - len(head)))


def unsafe(head: bytes) -> str:
    reason = inspect(head).unsafe_reason()
    assert reason is not None
    return reason


# ---------------------------------------------------------------- made by qemu-img




@needs_qemu_img
def test_plain_qcow2_is_safe_and_gives_its_virtual_size(tmp_path: Path) -> None:
    info = inspect(qemu_img(tmp_path, "plain.qcow2", "qcow2", size="10M"))
    assert (info.format, info.virtual_size) == ("qcow2", 10 * 1024 * 1024)
    assert info.unsafe_reason() is None


@needs_qemu_img
def test_qcow2_v2_is_safe(tmp_path: Path) -> None:
    info = inspect(qemu_img(tmp_path, "v2.qcow2", "qcow2", "-o", "compat=0.10", size="5M"))
    assert info.virtual_size == 5 * 1024 * 1024
    assert info.unsafe_reason() is None


@needs_qemu_img
def test_a_32_tib_qcow2_gives_its_virtual_size(tmp_path: Path) -> None:
    info = inspect(qemu_img(tmp_path, "huge.qcow2", "qcow2", size="32T"))
    assert info.virtual_size == 32 << 40 and info.unsafe_reason() is None


@needs_qemu_img
def test_qcow2_with_a_raw_backing_file_is_refused(tmp_path: Path) -> None:
    qemu_img(tmp_path, "base.raw", "raw", size="1M")
    head = qemu_img(tmp_path, "child.qcow2", "qcow2", "-b", "base.raw", "-F", "raw", size="1M")
    assert "backing file" in unsafe(head)


@needs_qemu_img
def test_qcow2_backing_file_by_absolute_path_is_refused(tmp_path: Path) -> None:
    qemu_img(tmp_path, "base.qcow2", "qcow2", size="1M")
    base = str(tmp_path / "base.qcow2")
    assert "backing file" in unsafe(qemu_img(tmp_path, "c2.qcow2", "qcow2", "-b", base, "-F", "qcow2"))


@needs_qemu_img
def test_qcow2_with_an_external_data_file_is_refused(tmp_path: Path) -> None:
    assert "external data file" in unsafe(qemu_img(tmp_path, "df.qcow2", "qcow2", "-o", "data_file=data.raw"))


@needs_qemu_img
def test_encrypted_qcow2_is_refused(tmp_path: Path) -> None:
    # qcow2's own AES: the header says "encrypted" (crypt_method 1) as LUKS's does (2), and
    # qemu-img makes it at once; a LUKS one took seconds of key derivation, 30+ on a busy machine
    head = qemu_img(tmp_path, "enc.qcow2", "qcow2", "--object", "secret,id=s0,data=pw",
                    "-o", "encrypt.format=aes,encrypt.key-secret=s0", size="1M")
    assert unsafe(head) == "qcow2 image is encrypted"


@needs_qemu_img
def test_vmdk_monolithic_sparse_and_stream_optimized_are_safe(tmp_path: Path) -> None:
    for sub in ("monolithicSparse", "streamOptimized"):
        info = inspect(qemu_img(tmp_path, f"{sub}.vmdk", "vmdk", "-o", f"subformat={sub}"))
        assert info.format == "vmdk"
        assert info.virtual_size == 10 * 1024 * 1024
        assert info.unsafe_reason() is None


@needs_qemu_img
def test_vmdk_child_naming_a_parent_is_refused(tmp_path: Path) -> None:
    qemu_img(tmp_path, "parent.vmdk", "vmdk", size="1M")
    head = qemu_img(tmp_path, "child.vmdk", "vmdk", "-b", str(tmp_path / "parent.vmdk"), "-F", "vmdk",
                    size="1M")
    assert b"parentFileNameHint" in head
    assert "names a parent" in unsafe(head)


@needs_qemu_img
@pytest.mark.parametrize("sub", ["monolithicFlat", "twoGbMaxExtentFlat", "twoGbMaxExtentSparse"])
def test_vmdk_descriptor_of_other_files_is_refused(tmp_path: Path, sub: str) -> None:
    info = inspect(qemu_img(tmp_path, f"{sub}.vmdk", "vmdk", "-o", f"subformat={sub}"))
    assert info.format == "vmdk" and info.unsafe_reason()


@needs_qemu_img
@pytest.mark.parametrize("fmt", ["vhdx", "qed", "vdi", "vpc"])
def test_other_formats_are_recognised_and_not_accepted(tmp_path: Path, fmt: str) -> None:
    info = inspect(qemu_img(tmp_path, f"x.{fmt}", fmt))
    assert info.format == {"vpc": "vhd"}.get(fmt, fmt)
    assert info.unsafe_reason() == f"{info.format} images are not supported"


@needs_qemu_img
def test_raw_made_by_qemu_img_is_raw(tmp_path: Path) -> None:
    assert inspect(qemu_img(tmp_path, "x.raw", "raw")) == ImageInfo("raw")


# ---------------------------------------------------------------- raw and iso


def test_random_and_zero_bytes_are_raw() -> None:
    assert inspect(os.urandom(HEAD_SIZE)).format == "raw"
    assert inspect(bytes(HEAD_SIZE)).unsafe_reason() is None
    assert inspect(b"").format == "raw"


def test_a_disk_with_a_partition_table_is_raw() -> None:
    head = bytearray(HEAD_SIZE)
    head[446:462] = bytes([0x80, 0, 2, 0, 0x83, 0, 0, 0]) + struct.pack("<II", 1, 1000)
    head[510:512] = b"\x55\xaa"
    assert inspect(head) == ImageInfo("raw")


def iso_head(blocks: int = 1000, block_size: int = 2048) -> bytearray:
    head = bytearray(HEAD_SIZE)
    head[0x8000:0x8006] = b"\x01CD001"
    struct.pack_into("<I", head, 0x8000 + 80, blocks)
    struct.pack_into("<H", head, 0x8000 + 128, block_size)
    return head


def test_iso_is_detected_with_its_size() -> None:
    info = inspect(iso_head())
    assert info.format == "iso"
    assert info.virtual_size == 1000 * 2048
    assert info.unsafe_reason() is None


def test_a_qcow2_header_inside_an_iso_is_refused() -> None:
    head = iso_head()
    head[: 4096] = qcow2_header()
    assert unsafe(head) == "image looks like iso and qcow2 at once"


def test_only_the_head_is_looked_at() -> None:
    assert inspect(bytes(HEAD_SIZE) + b"QFI\xfb").format == "raw"


# ---------------------------------------------------------------- hand-made qcow2


def test_hand_made_header_parses_like_qemu_ones() -> None:
    info = inspect(qcow2_header(size=123 << 20, cluster_bits=20))
    assert (info.format, info.virtual_size) == ("qcow2", 123 << 20)
    assert info.unsafe_reason() is None


def test_unknown_incompatible_feature_is_refused() -> None:
    assert "unknown_features" in unsafe(qcow2_header(incompat=1 << 5))
    assert "unknown_features" in unsafe(qcow2_header(incompat=1 << 63))


def test_data_file_bit_alone_is_refused() -> None:
    assert "external data file" in unsafe(qcow2_header(incompat=INCOMPAT_DATA_FILE))


def test_backing_file_name_beyond_the_head_is_still_refused() -> None:
    assert "backing file" in unsafe(qcow2_header(backing=(60000, 16), total=4096))


def test_unknown_versions_are_refused() -> None:
    assert unsafe(qcow2_header(version=4))
    assert unsafe(qcow2_header(version=1))


def test_encrypted_bit_is_refused() -> None:
    assert unsafe(qcow2_header(crypt=1)) == "qcow2 image is encrypted"


# ---------------------------------------------------------------- hand-made vmdk


def vmdk_head(descriptor: str, *, gd_offset: int = 21) -> bytes:
    head = bytearray(HEAD_SIZE)
    struct.pack_into("<4sIIQQQQIQQ", head, 0, b"KDMV", 1, 3, 20480, 128, 1, 20, 512, 0, gd_offset)
    raw = descriptor.encode()
    head[512:512 + len(raw)] = raw
    return bytes(head)


DESCRIPTOR = '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="{ct}"\n' \
             'RW 20480 {kind} "{name}"\n'


def sparse(name: str = "a.vmdk", ct: str = "monolithicSparse", kind: str = "SPARSE", extra: str = "") -> str:
    return DESCRIPTOR.format(ct=ct, name=name, kind=kind) + extra


def test_hand_made_vmdk_is_safe_with_its_size() -> None:
    info = inspect(vmdk_head(sparse()))
    assert info.virtual_size == 20480 * 512
    assert info.unsafe_reason() is None


def test_vmdk_extent_by_path_is_refused() -> None:
    assert unsafe(vmdk_head(sparse(name="../../etc/passwd")))


def test_vmdk_flat_extent_in_a_sparse_file_is_refused() -> None:
    assert "extents outside the file" in unsafe(vmdk_head(sparse(name="secret", kind="FLAT")))


@pytest.mark.parametrize("line", ['parentFileNameHint="/etc/shadow"', "parentCID=deadbeef"])
def test_vmdk_naming_a_parent_is_refused(line: str) -> None:
    head = vmdk_head(sparse().replace("parentCID=ffffffff\n", "") + line + "\n")
    assert "names a parent" in unsafe(head)


def test_vmdk_of_another_create_type_is_refused() -> None:
    assert unsafe(vmdk_head(sparse(ct="twoGbMaxExtentSparse")))


def test_vmdk_with_a_footer_is_refused() -> None:
    assert unsafe(vmdk_head(sparse(ct="streamOptimized"), gd_offset=2**64 - 1))


def test_vmdk_whose_descriptor_is_elsewhere_is_never_converted() -> None:
    # qemu also insists on the descriptor at sector 1: oslo takes such bytes for raw,
    # which are stored as they are and never reach qemu
    head = bytearray(vmdk_head(""))
    struct.pack_into("<Q", head, 28, 1000)  # descriptorOffset: sector 1000, past 64 KiB
    info = inspect(bytes(head))
    assert info.format == "raw" or info.unsafe_reason()


def test_bare_vmdk_descriptor_is_refused() -> None:
    text = sparse().encode()
    assert unsafe(text) == "vmdk is a descriptor of other files, not a disk image"
    assert inspect(text + bytes(512 - len(text))).format == "raw", "not text: stored as bytes, never parsed"
