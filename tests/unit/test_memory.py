"""imgstore.memory: the process-wide knobs, each seen doing what its docstring says, in a
fresh interpreter (glibc's malloc settings are per process), set as ``imgstore serve`` sets
them."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import imgstore

ROOT = Path(imgstore.__file__).parent.parent

SERVE = """
import resource, threading
from imgstore import crypto, memory
memory.limit_arenas()
memory.fix_mmap_threshold()

def in_a_thread(fn):
    t = threading.Thread(target=fn)
    t.start()
    t.join()

def login_hash():  # as a login-hash thread of the server does
    crypto.hash_password(crypto.sha512_hex("password"))

def rss_anon_kib():
    return int(next(l for l in open("/proc/self/status") if l.startswith("RssAnon")).split()[1])

def stream(pieces=40):  # an image stream: 4 MiB buffers, three in flight at a time
    held = []
    for _ in range(pieces):
        buf = bytearray(4 << 20)
        buf[::4096] = b"\\1" * 1024
        held.append(buf)
        if len(held) > 3:
            held.pop(0)

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
"""

LOGINS = SERVE + """
before = rss_anon_kib()
for _ in range(3):  # the start's hash, then logins
    in_a_thread(login_hash)
print(rss_anon_kib() - before)
"""

STREAMS = SERVE + """
in_a_thread(login_hash)  # the start's hash

def two_streams():
    stream()
    before = faults()
    stream()
    print(faults() - before)
in_a_thread(two_streams)
"""

TRIMMED = SERVE + """
before = rss_anon_kib()
in_a_thread(stream)  # librbd's reads: their buffers are made in the pool's threads
memory.trim_heap()
print(rss_anon_kib() - before)
"""


def _child(script: str) -> int:
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    return int(out)


def test_a_login_hash_gives_its_block_back() -> None:
    """Each login's scrypt block (16 MiB) goes back to the kernel once freed: glibc's
    moving threshold had risen over it at the start's hash, and the idle server then
    carried it for good."""
    assert _child(LOGINS) < 4 * 1024


def test_a_stream_reuses_the_buffers_freed_before_it() -> None:
    """A second stream's 4 MiB buffers come from what the first one freed, not from fresh
    pages: with the threshold under 4 MiB, or the trim threshold left at glibc's 128 KiB,
    each buffer was faulted in anew (the export's server CPU)."""
    assert _child(STREAMS) < 1024


def test_a_stream_in_another_thread_is_given_back_by_the_trim() -> None:
    """An export's or a hash's reads are buffers librbd's binding makes in the pool's
    threads. With a second arena they landed at its top, which ``malloc_trim`` does not
    shrink (glibc trims only the main arena's top) and free() only beyond the 32 MiB trim
    threshold: each CalculateImageHash left ~15 MiB resident for good."""
    assert _child(TRIMMED) < 4 * 1024
