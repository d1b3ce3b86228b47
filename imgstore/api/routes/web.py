"""The operator console: ``/`` and its few static files, served without a session.

The page signs in through the API itself, so nothing here is secret. The files are a
fixed set named in ``ASSETS`` (no path from the URL ever reaches the filesystem).
"""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException

import imgstore

WEB_DIR = Path(imgstore.__file__).resolve().parent / "web"  # the package data, wherever this module sits

#: file name → media type; the only files ``/web/{name}`` serves.
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

# connect-src allows http(s) beyond 'self' only because an upload URL handed out by
# AddImage may name another host; scripts and styles stay strictly same-origin.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' http: https:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
_HEADERS = {
    "Cache-Control": "no-cache",  # revalidate, so an upgraded server never runs an old app.js
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def console() -> FileResponse:
    headers = {**_HEADERS, "Content-Security-Policy": _CSP, "X-Frame-Options": "DENY"}
    return FileResponse(WEB_DIR / "index.html", media_type="text/html; charset=utf-8", headers=headers)


@router.get("/web/{name}")
async def asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404)
    return FileResponse(WEB_DIR / name, media_type=media_type, headers=_HEADERS)
