"""Parameters of GET and DELETE APIs, read from the query string as ZStack reads them.

A list comes as a repeated key (``k=a&k=b``, what the Java SDK sends) or with indexes
(``k.0=a&k.1=b``, which ZStack's RestServer normalises too); a boolean must be ``true``
or ``false`` (ZStack's ``TypeVerifier``). Unknown keys are ignored, as ZStack does.
"""
from __future__ import annotations

import re

from fastapi import Request

from imgstore.errors import invalid_argument


def list_param(request: Request, name: str) -> list[str]:
    """Every value of ``name``: repeated keys first, then ``name.N`` in index order."""
    values = list(request.query_params.getlist(name))
    indexed = re.compile(rf"{re.escape(name)}\.([0-9]{{1,19}})")  # int() of 4300+ digits raises
    numbered = []
    for key, value in request.query_params.multi_items():
        m = indexed.fullmatch(key)
        if m:
            numbered.append((int(m.group(1)), value))
    values += [v for _, v in sorted(numbered, key=lambda kv: kv[0])]
    return [v for v in values if v != ""]


def bool_param(request: Request, name: str, default: bool = False) -> bool:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    text = raw.strip().lower()
    if text not in ("true", "false"):
        raise invalid_argument(f"field[{name}] value[{raw}] is invalid: it must be true or false")
    return text == "true"
