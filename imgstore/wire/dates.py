"""ZStack's date format on the wire, both ways.

ZStack serialises timestamps with Gson's default US pattern, ``Jun 7, 2017 9:20:17 PM``,
in the server's local zone. The Java SDK rejects the U+202F narrow space that newer
ICU/JDK formatters put before AM/PM, so the string is built by hand, never by locale;
and it is read by hand too (``strptime``'s ``%b``/``%p`` follow the process locale),
accepting what JDK 9+ writes (a comma after the year, U+202F before AM/PM).
"""
from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_EPOCH = datetime(1970, 1, 1)
_SECOND = timedelta(seconds=1)


def utcnow() -> datetime:
    """Naive UTC now: what the database stores."""
    return datetime.now(UTC).replace(tzinfo=None)


def zstack_date(value: datetime | None) -> str | None:
    """Format a stored (naive UTC) time as ZStack does, in the server's local zone."""
    if value is None:
        return None
    # the local time of the date's whole second, as ``value.replace(tzinfo=UTC).astimezone()``
    # reads it, without the zone object it makes each time (half a query reply's dates' cost)
    year, month, day, hour, minute, second = time.localtime((value - _EPOCH) // _SECOND)[:6]
    half = "AM" if hour < 12 else "PM"
    return f"{_MONTHS[month - 1]} {day}, {year} {hour % 12 or 12}:{minute:02d}:{second:02d} {half}"


_MONTH_NUMBERS = {m.lower(): i for i, m in enumerate(_MONTHS, 1)}
_US_DATE = re.compile(
    r"([A-Za-z]{3}) ([0-9]{1,2}), ([0-9]{4}),? ([0-9]{1,2}):([0-9]{2}):([0-9]{2})\s?([AaPp][Mm])"
)


def parse_us_date(text: str) -> datetime | None:
    """``Jun 7, 2017 9:20:17 PM`` as the naive local time it names; None if not one."""
    m = _US_DATE.fullmatch(text)
    if m is None or m.group(1).lower() not in _MONTH_NUMBERS:
        return None
    hour = int(m.group(4))
    if not 1 <= hour <= 12:
        return None
    hour = hour % 12 + (12 if m.group(7).lower() == "pm" else 0)
    try:
        return datetime(int(m.group(3)), _MONTH_NUMBERS[m.group(1).lower()], int(m.group(2)),
                        hour, int(m.group(5)), int(m.group(6)))
    except ValueError:
        return None


def parse_zstack_date(value: Any) -> datetime | None:
    """What :func:`zstack_date` wrote, back as a stored (naive UTC) time; None if ``value``
    is not a ZStack date."""
    local = parse_us_date(value) if isinstance(value, str) else None
    if local is None:
        return None
    return local.astimezone(UTC).replace(tzinfo=None)
