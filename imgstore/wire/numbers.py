"""Numbers sent by clients, in headers and parameters: at most 19 ASCII digits.

Python's ``int()`` takes any Unicode decimal digit (``'²'.isdigit()`` is true, yet
``int('²')`` fails) and refuses strings of more than 4300 digits: a header
``X-Upload-Offset: ²`` or a 5000-digit ``Content-Range`` was a 500. Nineteen digits
hold every size and offset a signed 64-bit integer can (Trust issue, point 10).
"""
from __future__ import annotations

import re

MAX_DIGITS = 19
DIGITS = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}")


def parse_count(text: str | None) -> int | None:
    """The non-negative integer ``text`` spells (blanks around it allowed); None when
    it spells none (absent, empty, a sign, a non-ASCII digit, more than 19 digits)."""
    if text is None:
        return None
    stripped = text.strip()
    return int(stripped) if DIGITS.fullmatch(stripped) else None
