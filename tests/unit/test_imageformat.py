"""imageformat tells raw, qcow2, iso and vmdk apart and refuses what points outside itself.

Real headers come from ``qemu-img create`` (Debian's qemu-utils) in a tmp dir; the
malformed ones are built by hand. The CVE-2024-32498 class: a qcow2 with a backing file
or an external data file, unknown incompatible features, a vmdk descriptor of other
files, an image that is two formats at once.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from imgstore.imageformat import (
    EXT_BACKING_FORMAT,
    EXT_DATA_FILE,
    EXT_FEATURE_TABLE,
    HEAD_SIZE,
    INCOMPAT_CORRUPT,
    INCOMPAT_DATA_FILE,
    ImageInfo,
    inspect,
)

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
    assert info.format == "qcow2"
    assert info.virtual_size == 10 * 1024 * 1024
    assert info.qcow2 is not None and info.qcow2.version == 3 and info.qcow2.cluster_bits == 16
    assert info.unsafe_reason() is None


@needs_qemu_img
def test_qcow2_v2_is_safe(tmp_path: Path) -> None:
    info = inspect(qemu_img(tmp_path, "v2.qcow2", "qcow2", "-o", "compat=0.10", size="5M"))
    assert info.qcow2 is not None and info.qcow2.version == 2
    assert info.virtual_size == 5 * 1024 * 1024
    assert info.unsafe_reason() is None


@needs_qemu_img
def test_qcow2_with_a_raw_backing_file_is_refused(tmp_path: Path) -> None:
    qemu_img(tmp_path, "base.raw", "raw", size="1M")
    info = inspect(qemu_img(tmp_path, "child.qcow2", "qcow2", "-b", "base.raw", "-F", "raw", size="1M"))
    assert info.qcow2 is not None
    assert info.qcow2.backing_file == "base.raw" and info.qcow2.backing_format == "raw"
    assert info.unsafe_reason() == "qcow2 image has a backing file ('base.raw')"


@needs_qemu_img
def test_qcow2_backing_file_by_absolute_path_is_refused(tmp_path: Path) -> None:
    qemu_img(tmp_path, "base.qcow2", "qcow2", size="1M")
    base = str(tmp_path / "base.qcow2")
    info = inspect(qemu_img(tmp_path, "child.qcow2", "qcow2", "-b", base, "-F", "qcow2", size="1M"))
    assert info.qcow2 is not None and info.qcow2.backing_file == base
    assert "backing file" in unsafe(qemu_img(tmp_path, "c2.qcow2", "qcow2", "-b", base, "-F", "qcow2"))


@needs_qemu_img
def test_qcow2_with_an_external_data_file_is_refused(tmp_path: Path) -> None:
    info = inspect(qemu_img(tmp_path, "df.qcow2", "qcow2", "-o", "data_file=data.raw"))
    assert info.qcow2 is not None
    assert info.qcow2.incompatible_features & INCOMPAT_DATA_FILE
    assert info.qcow2.data_file == "data.raw"
    assert info.unsafe_reason() == "qcow2 image has an external data file ('data.raw')"


@needs_qemu_img
def test_vmdk_monolithic_sparse_and_stream_optimized_are_safe(tmp_path: Path) -> None:
    for sub in ("monolithicSparse", "streamOptimized"):
        info = inspect(qemu_img(tmp_path, f"{sub}.vmdk", "vmdk", "-o", f"subformat={sub}"))
        assert info.format == "vmdk"
        assert info.vmdk is not None and info.vmdk.create_type == sub
        assert info.virtual_size == 10 * 1024 * 1024
        assert info.unsafe_reason() is None


@needs_qemu_img
def test_vmdk_descriptor_of_a_flat_file_is_refused(tmp_path: Path) -> None:
    info = inspect(qemu_img(tmp_path, "flat.vmdk", "vmdk", "-o", "subformat=monolithicFlat"))
    assert info.format == "vmdk"
    assert info.vmdk is not None and info.vmdk.extents == ("flat-flat.vmdk",)
    assert info.unsafe_reason() == "vmdk is a descriptor of other files, not a disk image"


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
    info = inspect(head)
    assert info.also_matches == ("iso",)
    assert info.unsafe_reason() == "image looks like qcow2 and iso at once"


def test_only_the_head_is_looked_at() -> None:
    assert inspect(bytes(HEAD_SIZE) + b"QFI\xfb").format == "raw"


# ---------------------------------------------------------------- hand-made qcow2


def test_hand_made_header_parses_like_qemu_ones() -> None:
    info = inspect(qcow2_header(size=123 << 20, cluster_bits=20))
    assert info.qcow2 is not None
    assert (info.virtual_size, info.qcow2.cluster_bits, info.qcow2.header_length) == (123 << 20, 20, 104)
    assert info.unsafe_reason() is None


def test_unknown_incompatible_feature_is_refused() -> None:
    assert unsafe(qcow2_header(incompat=1 << 5)) == (
        "qcow2 image uses unknown incompatible features (0x20)")
    assert "0x8000000000000000" in unsafe(qcow2_header(incompat=1 << 63))


def test_data_file_bit_alone_is_refused() -> None:
    assert unsafe(qcow2_header(incompat=INCOMPAT_DATA_FILE)) == "qcow2 image has an external data file"


def test_data_file_extension_alone_is_refused() -> None:
    head = qcow2_header(extensions=[(EXT_DATA_FILE, b"/etc/shadow")])
    assert unsafe(head) == "qcow2 image has an external data file ('/etc/shadow')"


def test_backing_file_name_beyond_the_head_is_still_refused() -> None:
    head = qcow2_header(backing=(60000, 16), total=4096)
    info = inspect(head)
    assert info.qcow2 is not None and info.qcow2.backing_file is None
    assert info.unsafe_reason() == "qcow2 image has a backing file"


def test_backing_file_offset_outside_the_first_cluster_is_malformed() -> None:
    assert unsafe(qcow2_header(backing=(1 << 20, 8))).startswith("malformed qcow2 header")


def test_corrupt_and_encrypted_images_are_refused() -> None:
    assert unsafe(qcow2_header(incompat=INCOMPAT_CORRUPT)) == "qcow2 image is marked corrupt"
    assert unsafe(qcow2_header(crypt=1)) == "qcow2 image is encrypted"


def test_known_extensions_are_read() -> None:
    info = inspect(qcow2_header(extensions=[(EXT_BACKING_FORMAT, b"raw"),
                                            (EXT_FEATURE_TABLE, bytes(48))]))
    assert info.qcow2 is not None
    assert info.qcow2.extensions == (EXT_BACKING_FORMAT, EXT_FEATURE_TABLE)
    assert info.qcow2.backing_format == "raw"
    assert info.unsafe_reason() is None


@pytest.mark.parametrize(
    ("head", "problem"),
    [
        (b"QFI\xfb\x00\x00\x00\x03", "header truncated at 8 bytes"),
        (qcow2_header(version=4), "unknown version 4"),
        (qcow2_header(version=1), "unknown version 1"),
        (qcow2_header(cluster_bits=30), "cluster_bits 30 out of range 9..21"),
        (qcow2_header(cluster_bits=8), "cluster_bits 8 out of range 9..21"),
        (qcow2_header(header_length=100), "header_length 100 invalid"),
        (qcow2_header(header_length=108), "header_length 108 invalid"),
        (qcow2_header(end_marker=False, total=0), "header extensions run past the bytes inspected"),
        (qcow2_header(extensions=[(0x1234, bytes(8000))], total=0)[:2000],
         "header extension 0x00001234 runs past the bytes inspected"),
        (qcow2_header(extensions=[(0x1234, b"a"), (0x1234, b"b")]),
         "header extension 0x00001234 appears twice"),
        (qcow2_header(cluster_bits=9, extensions=[(0x1234, bytes(600))]),
         "header extension 0x00001234 runs past the first cluster"),
    ],
)
def test_malformed_headers_are_refused(head: bytes, problem: str) -> None:
    assert unsafe(head) == f"malformed qcow2 header: {problem}"


def test_extensions_must_end_in_the_first_cluster() -> None:
    # 512-byte clusters: the extension area ends at 512 even if more bytes were given
    head = qcow2_header(cluster_bits=9, extensions=[(0x1234, bytes(400))], end_marker=False,
                        total=4096)
    assert unsafe(head) == "malformed qcow2 header: header extensions run past the first cluster"


# ---------------------------------------------------------------- hand-made vmdk


def vmdk_head(descriptor: str, *, gd_offset: int = 21) -> bytes:
    head = bytearray(HEAD_SIZE)
    struct.pack_into("<4sIIQQQQIQQ", head, 0, b"KDMV", 1, 3, 20480, 128, 1, 20, 512, 0, gd_offset)
    raw = descriptor.encode()
    head[512:512 + len(raw)] = raw
    return bytes(head)


DESCRIPTOR = '# Disk DescriptorFile\nversion=1\ncreateType="{ct}"\nRW 20480 SPARSE "{name}"\n'


def test_vmdk_extent_by_path_is_refused() -> None:
    head = vmdk_head(DESCRIPTOR.format(ct="monolithicSparse", name="../../etc/passwd"))
    assert unsafe(head) == "vmdk refers to extent files by path (../../etc/passwd)"


def test_vmdk_of_another_create_type_is_refused() -> None:
    head = vmdk_head(DESCRIPTOR.format(ct="twoGbMaxExtentSparse", name="a.vmdk"))
    assert "'twoGbMaxExtentSparse' is not one self-contained file" in unsafe(head)


def test_vmdk_with_a_footer_is_refused() -> None:
    head = vmdk_head(DESCRIPTOR.format(ct="streamOptimized", name="a.vmdk"), gd_offset=2**64 - 1)
    assert unsafe(head) == "vmdk keeps its grain directory in a footer (not streamable)"


def test_vmdk_descriptor_beyond_the_head_is_refused() -> None:
    head = bytearray(vmdk_head(""))
    struct.pack_into("<Q", head, 28, 1000)  # descriptorOffset: sector 1000, past 64 KiB
    assert unsafe(bytes(head)) == "malformed vmdk: embedded descriptor beyond the bytes inspected"


def test_hand_made_vmdk_is_safe_with_its_size() -> None:
    info = inspect(vmdk_head(DESCRIPTOR.format(ct="monolithicSparse", name="a.vmdk")))
    assert info.virtual_size == 20480 * 512
    assert info.unsafe_reason() is None
