"""ZStack's date format on the wire.

ZStack serialises timestamps with Gson's default US pattern, ``Jun 7, 2017 9:20:17 PM``,
in the server's local zone. The Java SDK rejects the U+202F narrow space that newer
ICU/JDK formatters put before AM/PM, so the string is built by hand, never by locale.
"""
from __future__ import annotations

from datetime import datetime, timezone

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def utcnow() -> datetime:
    """Naive UTC now: what the database stores."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def zstack_date(value: datetime | None) -> str | None:
    """Format a stored (naive UTC) time as ZStack does, in the server's local zone."""
    if value is None:
        return None
    local = value.replace(tzinfo=timezone.utc).astimezone()
    hour = local.hour % 12 or 12
    half = "AM" if local.hour < 12 else "PM"
    return (
        f"{_MONTHS[local.month - 1]} {local.day}, {local.year} "
        f"{hour}:{local.minute:02d}:{local.second:02d} {half}"
    )
