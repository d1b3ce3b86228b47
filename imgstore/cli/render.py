"""How the CLI shows replies and errors: tables for people, JSON for scripts, secrets masked."""
from __future__ import annotations

import json
import re
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from imgstore.client import catalogue as apis
from imgstore.client.catalogue import Api
from imgstore.client.http import ImgstoreError

# ------------------------------------------------------------------ secrets

MASK = "******"
_SECRET_KEYS = frozenset({"password", "sshPassword"}) | (apis.secret_params() - {"monUrls"})
_TOKEN = re.compile(r"[^\s\[\](){}<>,;'\"]+")


def mask_text(text: str) -> str:
    """Hide the password of every ``user:password@host`` in ``text`` (monUrls, URLs)."""
    return _TOKEN.sub(_mask_token, text)


def _mask_token(match: re.Match[str]) -> str:
    token = match.group(0)
    at = token.rfind("@")
    userinfo = token[:at]
    scheme, sep, rest = userinfo.partition("://")
    if not sep:
        scheme, rest = "", userinfo
    if at <= 0 or ":" not in rest:
        return token
    return f"{scheme}{sep}{rest.split(':', 1)[0]}:{MASK}{token[at:]}"


def mask_reply(value: Any, key: str | None = None) -> Any:
    """A copy of a reply with passwords replaced and monUrl passwords hidden."""
    if isinstance(value, dict):
        return {k: mask_reply(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_reply(v, key) for v in value]
    if isinstance(value, str):
        return MASK if key in _SECRET_KEYS and value else mask_text(value)
    return value


# ------------------------------------------------------------------ output

_COLUMNS = ("uuid", "name", "type", "resourceType", "resourceUuid", "tag", "inherent", "state", "status",
            "mediaType", "format", "platform", "size", "actualSize", "totalCapacity", "availableCapacity",
            "poolName", "mons", "progress", "processType")
_BYTE_FIELDS = frozenset({"size", "actualSize", "downloadSize", "offset"})
_HIDDEN = frozenset({"schema", "success"})
_PARENT_FIELDS = frozenset({"backupStorageUuid", "imageUuid", "createDate", "lastOpDate"})  # said by the parent


def human_bytes(n: Any) -> str:
    """``10737418240`` → ``10.0 GiB``; anything not a number as it is."""
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        return "" if n is None else str(n)
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _is_bytes(key: str) -> bool:
    return key in _BYTE_FIELDS or key.endswith("Capacity")


def _brief(item: dict[str, Any]) -> str:
    label = next((str(item[k]) for k in ("hostname", "name", "backupStorageUuid", "uuid") if item.get(k)), "")
    return f"{label} ({item['status']})" if item.get("status") and label else label or json.dumps(item)


def _cell(key: str, value: Any) -> Text:
    if value is None:
        text = ""
    elif _is_bytes(key) and isinstance(value, (int, float)):
        text = human_bytes(value)
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, list):
        text = "\n".join(_brief(v) if isinstance(v, dict) else str(v) for v in value)
    elif isinstance(value, dict):
        text = _brief(value)
    else:
        text = str(value)
    return Text(text)


def _columns(items: list[dict[str, Any]], fields: str | None) -> list[str]:
    if fields:
        return [f for f in fields.split(",") if f]
    present = {k for item in items for k in item}
    chosen = [c for c in _COLUMNS if c in present]
    return chosen if len(chosen) >= 2 else list(items[0])[:8]


def _items_table(items: list[dict[str, Any]], fields: str | None = None) -> Table:
    columns = _columns(items, fields)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for c in columns:
        table.add_column(c, no_wrap=c.lower().endswith("uuid"), justify="right" if _is_bytes(c) else "left")
    for item in items:
        table.add_row(*(_cell(c, item.get(c)) for c in columns))
    return table


def _record_table(record: dict[str, Any]) -> Table:
    table = Table(box=box.SIMPLE, show_header=False, show_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in record.items():
        if key in _HIDDEN or value is None:
            continue
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            columns = dict.fromkeys(k for v in value for k in v if k not in _PARENT_FIELDS)
            table.add_row(key, _items_table(value, ",".join(columns)))
        else:
            table.add_row(key, _cell(key, value))
    return table


def render(console: Console, api: Api, reply: dict[str, Any], as_json: bool = False,
           fields: str | None = None) -> None:
    """Show a reply: raw JSON, or a table for inventories, key/value for the rest."""
    reply = mask_reply(reply)
    if as_json:
        print_json(console, reply)
        return
    value = reply.get(api.reply_key) if api.reply_key else None
    if api.reply_key == "inventories" and value is None and "total" in reply:
        console.print(str(reply["total"]))  # count=true
    elif isinstance(value, list) and all(isinstance(v, dict) for v in value):
        if not value:
            console.print("no results" + (f" (total {reply['total']})" if "total" in reply else ""))
            return
        table = _items_table(value, fields)
        if "total" in reply:
            table.caption = f"{len(value)} of {reply['total']}"
        console.print(table)
    elif isinstance(value, list):
        for v in value:
            console.print(Text(str(v)))
    elif isinstance(value, dict):
        console.print(_record_table(value))
    else:
        rest = {k: v for k, v in reply.items() if k not in _HIDDEN}
        console.print(_record_table(rest) if rest else "done")


def print_json(console: Console, value: Any) -> None:
    if console.is_terminal:
        console.print_json(json.dumps(value))
    else:  # exactly the JSON, never re-wrapped
        console.file.write(json.dumps(value, indent=2) + "\n")


def error_line(e: ImgstoreError) -> str:
    """``error SYS.1007: <details>`` on one line, with the cause when it adds something."""
    line = one_line(e.details)
    cause = e.cause or {}
    if cause.get("code"):
        cause_details = one_line(str(cause.get("details") or cause.get("description") or ""))
        if cause_details and cause_details not in line:
            line += f" (cause {cause['code']}: {cause_details})"
    return f"error {e.code}: {line}"


def one_line(text: str) -> str:
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())
