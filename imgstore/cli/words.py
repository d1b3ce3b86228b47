"""The CLI's words: ``key=value`` parameters and ZStack query conditions, checked against the
API catalogue before anything is sent."""
from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any

from imgstore.cli.render import mask_text
from imgstore.client import catalogue as apis
from imgstore.client.catalogue import Api
from imgstore.client.http import ParamError, coerce_params

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_NULL_WORDS = (("is", "null"), ("not", "null"))


def split_list(value: str) -> list[str]:
    """``a,b`` → ``["a", "b"]``; ``\\,`` is a literal comma; empty → ``[]``."""
    if value == "":
        return []
    parts, current, chars = [], [], iter(value)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            current.append(nxt if nxt == "," else ch + nxt)
        elif ch == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def operator_of(word: str) -> str | None:
    """The ZStack operator a condition uses: the first of the table found in it."""
    return next((op for op in apis.OPERATORS if op in word), None)


def parse_words(api: Api, words: Sequence[str]) -> dict[str, Any]:
    """The parameters ``words`` give ``api``, checked and typed (ParamError if not)."""
    raw = _query_words(words) if api.query else _param_words(api, words)
    return coerce_params(api, raw)


def _param_words(api: Api, words: Sequence[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for word in words:
        key, eq, value = word.partition("=")
        if not eq or not _KEY.match(key):
            raise ParamError(f"'{mask_text(word)}' is not key=value")
        param = api.param(key)
        if param is None:
            near = difflib.get_close_matches(key, [p.name for p in api.params], n=1)
            hint = f"did you mean {near[0]}?" if near else f"it takes {_names(api) or 'none'}"
            raise ParamError(f"{api.name} has no parameter '{key}'; {hint}")
        if param.kind == "list":
            params.setdefault(key, []).extend(split_list(value))
        elif key in params:
            raise ParamError(f"{key} is given twice")
        else:
            params[key] = value
    return params


def _query_words(words: Sequence[str]) -> dict[str, Any]:
    conditions: list[str] = []
    params: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        op = operator_of(word)
        follow = tuple(w.lower() for w in words[i + 1:i + 3])
        if op is None and follow in _NULL_WORDS:
            conditions.append(f"{word} {follow[0]} null")
            i += 3
            continue
        if op is None:
            raise ParamError(f"'{mask_text(word)}' has no operator; use field<op>value with one of "
                             f"{' '.join(apis.OPERATORS[:10])}, or 'field is null' / 'field not null'")
        name = word.partition(op)[0]
        if not name.strip():
            raise ParamError(f"'{mask_text(word)}' has no field name before {op}")
        if op == "=" and name in apis.QUERY_PARAMS:
            if name in params:
                raise ParamError(f"{name} is given twice")
            params[name] = word.partition("=")[2]
        else:
            conditions.append(word)
        i += 1
    return {"q": conditions, **params}


def _names(api: Api) -> str:
    return ", ".join(p.name for p in api.params)
