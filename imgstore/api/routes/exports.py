"""The download URL of an exported image (ExportImageFromBackupStorage's ``imageUrl``).

``GET /zstack/v1/exports/{pool}/{name}-{imageUuid}?token=...`` streams the RBD image.
It sits outside the session: the URL is handed to plain HTTP clients (curl, wget, a
browser, another cloud), and its unguessable token is the credential
(services/images/export.py). ``Range: bytes=a-b`` answers 206 with that slice, so
interrupted downloads resume; ``HEAD`` answers the headers alone.
"""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from imgstore.api.deps import runtime
from imgstore.api.export_slots import export_slot
from imgstore.api.openapi import ErrorReply
from imgstore.errors import INVALID_ARGUMENT, ApiError, ErrorKind
from imgstore.services.images import export as image_export
from imgstore.services.node.runtime import Runtime

router = APIRouter(tags=["images"])

RANGE_NOT_SATISFIABLE = ErrorKind(INVALID_ARGUMENT.code, INVALID_ARGUMENT.description, 416)
_RANGE = re.compile(r"^\s*bytes\s*=\s*([0-9]{0,19})\s*-\s*([0-9]{0,19})\s*$", re.IGNORECASE | re.ASCII)


class BadRange(Exception):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``Range`` → inclusive ``(first, last)`` within ``size``; None for the whole image.

    One range only (``a-b``, ``a-``, ``-suffix``); anything else, or a range beyond the
    image, is BadRange (416).
    """
    if header is None:
        return None
    m = _RANGE.match(header)
    if not m or not (m.group(1) or m.group(2)):
        raise BadRange(f"unsupported Range[{header[:100]}]: one range of bytes is served, "
                       "as bytes=first-last, bytes=first- or bytes=-length")
    first, last = m.group(1), m.group(2)
    if not first:  # the last N bytes
        length = int(last)
        if length == 0 or size == 0:
            raise BadRange(f"Range[{header}] asks for no bytes of an image of {size} bytes")
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        raise BadRange(f"Range[{header}] is outside the image's {size} bytes")
    return start, end


def _disposition(filename: str) -> str:
    ascii_name = filename.encode("ascii", "replace").decode().replace("?", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


_PATH = "/exports/{pool}/{segment:path}"  # image_export.EXPORT_PATH under the API prefixes
_IMAGE = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the image", "content": _IMAGE},
    206: {"description": "the Range asked for", "content": _IMAGE},
    416: {"model": ErrorReply, "description": "a Range outside the image, or more than one"},
}
_RANGE_HEADER = {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"},
                 "description": "`bytes=first-last`, `bytes=first-` or `bytes=-length`"}


# GET and HEAD as two routes of one function: each its own operation in the document
@router.get(_PATH, summary="Download an exported image (the imageUrl of ExportImageFromBackupStorage)",
            responses=_RESPONSES, openapi_extra={"parameters": [_RANGE_HEADER]})
@router.head(_PATH, summary="The headers of an exported image's download",
             responses=_RESPONSES, openapi_extra={"parameters": [_RANGE_HEADER]})
async def download_exported_image(
    pool: str,
    segment: str,
    request: Request,
    token: str | None = Query(None, description="the token of the export URL"),
    rt: Runtime = Depends(runtime),
    _slot: None = Depends(export_slot),  # 429 beyond the caps; held until the body ends
) -> Response:
    download = await image_export.open_download(rt, pool, segment, token)
    size = download.size
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Disposition": _disposition(download.filename),
        "Cache-Control": "no-store",
    }
    if download.md5:
        headers["ETag"] = f'"{download.md5}"'
    try:
        wanted = parse_range(request.headers.get("range"), size)
    except BadRange as e:
        body = ApiError(RANGE_NOT_SATISFIABLE, str(e)).body()
        return JSONResponse(body, status_code=416, headers={"Content-Range": f"bytes */{size}", **headers})
    start, end, status = (0, size - 1, 200) if wanted is None else (*wanted, 206)
    headers["Content-Length"] = str(end - start + 1)
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type="application/octet-stream")
    return StreamingResponse(download.chunks(start, end + 1), status_code=status, headers=headers,
                             media_type="application/octet-stream")
