"""Image routes: AddImage, QueryImage, DeleteImage, the image actions, upload jobs,
task progress, and the upload URL itself.

:data:`router` sits behind the session like every API. :data:`upload_router` does not:
the upload URL is used by plain HTTP clients (curl, a browser, ZStack's UI), and its
unguessable token is the credential (services/images/upload.py).
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from imgstore.api.actions import Action, ActionTable
from imgstore.api.deps import ApiCall, api_call, runtime
from imgstore.api.envelope import JsonReply, dump, inventory_reply, rows_reply
from imgstore.api.openapi import (
    ChangeStateDoc,
    EmptyReply,
    GetImageQgaReply,
    GetUploadImageJobDetailsReply,
    InventoryReply,
    QueryReply,
    UploadStatusReply,
    bool_parameter,
    job_api,
    list_parameter,
    sync_api,
)
from imgstore.api.params import bool_param, list_param
from imgstore.api.route_shapes import Amend, QueryRoutes
from imgstore.api.schemas import (
    AddImageBody,
    CalculateImageHashParams,
    ChangeStateParams,
    ImageBackupStorageUuidsParams,
    Params,
    SetImageBootModeParams,
    SetImageQgaParams,
    SetImageSecurityLevelParams,
    TaskProgressInventory,
    UpdateImageParams,
)
from imgstore.crypto import new_uuid
from imgstore.db.models import Image
from imgstore.errors import invalid_argument
from imgstore.http_protocol import BodyCut, take_body
from imgstore.services.images import attributes as image_attributes
from imgstore.services.images import deletion as image_deletion
from imgstore.services.images import download as image_download
from imgstore.services.images import export as image_export
from imgstore.services.images import hashing as image_hashing
from imgstore.services.images import manage as images
from imgstore.services.images import upload as image_upload
from imgstore.services.images import upload_state
from imgstore.services.node import task_progress
from imgstore.services.node.runtime import Runtime
from imgstore.wire.inventories import ImageInventory
from imgstore.wire.numbers import MAX_DIGITS, parse_count

router = APIRouter(tags=["images"])
upload_router = APIRouter(tags=["images"])

_Reply = InventoryReply[ImageInventory]


async def image_inventories(rt: Runtime, rows: list[Image]) -> list[ImageInventory]:
    """Inventories of stored images; an upload:// image still waiting for bytes shows
    where to send them as ``uploadUrl`` on its ref; an export URL is unsealed."""
    urls = await image_upload.upload_urls(rt, [r.uuid for r in rows if r.status == images.DOWNLOADING])
    out = []
    for row in rows:
        inv = ImageInventory.model_validate(row)
        for ref in inv.backup_storage_refs:
            ref.export_url = image_export.shown_url(rt, ref.export_url)
        if row.uuid in urls:
            for ref in inv.backup_storage_refs:
                ref.upload_url = urls[row.uuid]
        out.append(inv)
    return out


async def _reply(call: ApiCall, row: Image) -> dict[str, Any]:
    [inv] = await image_inventories(call.rt, [row])
    return inventory_reply(inv, call.with_schema)


# ---------------------------------------------------------------- AddImage, QueryImage, DeleteImage


@router.post("/images", summary="AddImage", **job_api(_Reply))
async def add_image(body: AddImageBody, call: ApiCall = Depends(api_call)) -> JSONResponse:
    """Always a job (202): a download is long by nature. The job answers the Ready image;
    for ``upload://`` it answers at once, Downloading, with the upload URL."""
    p = body.params
    system_tags, user_tags = body.tags(p)
    request = images.NewImage(
        name=p.name, url=p.url, backup_storage_uuids=p.backupStorageUuids, description=p.description,
        media_type=p.mediaType, format=p.format, guest_os_type=p.guestOsType, platform=p.platform,
        architecture=p.architecture, system=p.system, virtio=p.virtio, type=p.type,
        resource_uuid=p.resourceUuid, system_tags=system_tags, user_tags=user_tags,
    )
    job = dataclasses.replace(call, asynchronous=True, job_uuid=call.job_uuid or new_uuid())
    api_id = job.job_uuid or ""

    async def work() -> dict[str, Any]:
        return await _reply(call, await image_download.add(call.rt, request, api_id, call.base_url))

    return await job.run("AddImage", work)


async def _with_urls(rt: Runtime, rows: Sequence[Image]) -> Amend:
    """Each row's dict as :func:`image_inventories` makes it: export URLs unsealed, and
    the upload URL of an upload:// image still waiting for bytes."""
    urls = await image_upload.upload_urls(rt, [r.uuid for r in rows if r.status == images.DOWNLOADING])

    def with_urls(row: Image, item: dict[str, Any]) -> None:
        for ref in item["backupStorageRefs"]:
            ref["exportUrl"] = image_export.shown_url(rt, ref.get("exportUrl"))
        if row.uuid in urls:
            for ref in item["backupStorageRefs"]:
                ref["uploadUrl"] = urls[row.uuid]

    return with_urls


@router.get(
    "/images/upload-job/details/{imageId}", summary="GetUploadImageJobDetails",
    **sync_api(GetUploadImageJobDetailsReply),
)
async def get_upload_image_job_details(imageId: str, rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    return {"existingJobDetails": await image_upload.job_details(rt, imageId)}


QueryRoutes("QueryImage", "/images", images.IMAGE_QUERY, (ImageInventory,), images.query,
            lambda _: ImageInventory, _with_urls).route(router, name="query_image", by_uuid_name="get_image")


@router.delete(
    "/images/{uuid}", summary="DeleteImage",
    **job_api(EmptyReply, [
        list_parameter("backupStorageUuids", "only from these storages (every storage when absent)"),
        {"name": "deleteMode", "in": "query", "required": False,
         "schema": {"type": "string", "enum": ["Permissive", "Enforcing"], "default": "Permissive"}},
    ]),
)
async def delete_image(uuid: str, request: Request, call: ApiCall = Depends(api_call)) -> JSONResponse:
    storages = list_param(request, "backupStorageUuids") or None
    mode = request.query_params.get("deleteMode", "Permissive")  # an empty one is invalid

    async def work() -> dict[str, Any]:
        await image_deletion.delete(call.rt, uuid, storages, mode)
        return {}

    return await call.run("DeleteImage", work)


# ---------------------------------------------------------------- PUT /images/{uuid}/actions


async def _expunge_image(call: ApiCall, uuid: str, p: ImageBackupStorageUuidsParams) -> dict[str, Any]:
    await image_deletion.expunge(call.rt, uuid, p.backupStorageUuids)
    return {}


async def _recover_image(call: ApiCall, uuid: str, p: ImageBackupStorageUuidsParams) -> dict[str, Any]:
    return await _reply(call, await image_deletion.recover(call.rt, uuid, p.backupStorageUuids))


async def _change_image_state(call: ApiCall, uuid: str, p: ChangeStateParams) -> dict[str, Any]:
    return await _reply(call, await images.change_state(call.rt, uuid, p.stateEvent))


async def _sync_image_size(call: ApiCall, uuid: str, p: Params) -> dict[str, Any]:
    return await _reply(call, await images.sync_size(call.rt, uuid))


async def _set_image_boot_mode(call: ApiCall, uuid: str, p: SetImageBootModeParams) -> dict[str, Any]:
    await image_attributes.set_boot_mode(call.rt, uuid, p.bootMode)
    return {}


async def _set_image_security_level(call: ApiCall, uuid: str, p: SetImageSecurityLevelParams) -> dict[str, Any]:
    await image_attributes.set_security_level(call.rt, uuid, p.securityLevel)
    return {}


async def _set_image_qga(call: ApiCall, uuid: str, p: SetImageQgaParams) -> dict[str, Any]:
    await image_attributes.set_qga(call.rt, uuid, p.enable)
    return {}


@router.get("/images/{uuid}/qga", summary="GetImageQga", **sync_api(GetImageQgaReply))
async def get_image_qga(uuid: str, rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    return {"enable": await image_attributes.get_qga(rt, uuid)}


async def _update_image(call: ApiCall, uuid: str, p: UpdateImageParams) -> dict[str, Any]:
    change = images.ImageUpdate(
        name=p.name, description=p.description, guest_os_type=p.guestOsType, media_type=p.mediaType,
        format=p.format, system=p.system, platform=p.platform, architecture=p.architecture, virtio=p.virtio,
    )
    return await _reply(call, await images.update(call.rt, uuid, change))


async def _calculate_image_hash(call: ApiCall, uuid: str, p: CalculateImageHashParams) -> dict[str, Any]:
    algorithm = image_hashing.algorithm_of(p.algorithm)
    return await _reply(call, await image_hashing.calculate(call.rt, uuid, p.backupStorageUuid, algorithm,
                                                            call.job_uuid or ""))


#: ``PUT /images/{uuid}/actions``. CalculateImageHash is always a job, as AddImage: it
#: reads the whole image (GetTaskProgress follows it); its algorithm is checked before.
IMAGE_ACTIONS = ActionTable(
    Action("ExpungeImage", ImageBackupStorageUuidsParams, _expunge_image),
    Action("RecoverImage", ImageBackupStorageUuidsParams, _recover_image),
    Action("ChangeImageState", ChangeStateParams, _change_image_state, doc=ChangeStateDoc),
    Action("SyncImageSize", Params, _sync_image_size),
    Action("UpdateImage", UpdateImageParams, _update_image),
    Action("SetImageBootMode", SetImageBootModeParams, _set_image_boot_mode),
    Action("SetImageSecurityLevel", SetImageSecurityLevelParams, _set_image_security_level),
    Action("SetImageQga", SetImageQgaParams, _set_image_qga),
    Action("CalculateImageHash", CalculateImageHashParams, _calculate_image_hash, run_as="job",
           check=lambda p: image_hashing.algorithm_of(p.algorithm)),
)
IMAGE_ACTIONS.route(router, "/images/{uuid}/actions", _Reply | EmptyReply,  # expungeImage and the Set* answer {}
                    name="image_actions")


# ---------------------------------------------------------------- task progress


@router.get(
    "/task-progresses/{apiId}", summary="GetTaskProgress",
    **sync_api(QueryReply[TaskProgressInventory], [bool_parameter("all", "`true`: every report, not only the latest")]),
)
async def get_task_progress(apiId: str, request: Request, rt: Runtime = Depends(runtime)) -> JsonReply:
    rows = await task_progress.progress_of(rt, apiId, bool_param(request, "all"))

    def with_opaque(row: Any, item: dict[str, Any]) -> None:  # stored as JSON text
        item["opaque"] = task_progress.opaque_of(row)

    return JsonReply(rows_reply(rows, lambda _: TaskProgressInventory, amend=with_opaque))


# ---------------------------------------------------------------- the upload URL (no session)

_CONTENT_RANGE = re.compile(r"bytes\s+([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19}|\*)", re.ASCII)


def _int_header(request: Request, *names: str) -> int | None:
    """The first of the headers present, as at most 19 ASCII digits (imgstore/wire/numbers.py)."""
    for name in names:
        raw = request.headers.get(name)
        if raw is None or raw.strip() == "":
            continue
        value = parse_count(raw)
        if value is None:
            raise invalid_argument(f"header {name}[{raw[:40]}] must be a non-negative integer of at most "
                                   f"{MAX_DIGITS} digits")
        return value
    return None


def _piece(request: Request) -> upload_state.Piece:
    """What the PUT's headers say about its body (services/images/upload.py)."""
    piece = upload_state.Piece(
        offset=_int_header(request, "x-upload-offset"),
        total=_int_header(request, "x-image-size", "x-upload-length"),
        length=_int_header(request, "content-length"),
        image_uuid=request.headers.get("x-image-uuid"),
    )
    if (md5 := request.headers.get("content-md5")) is not None:
        piece.body_digests = image_hashing.content_md5(md5)
    for name in ("digest", "repr-digest"):
        if (value := request.headers.get(name)) is not None:
            piece.image_digests.update(image_hashing.http_digests(value, name.title()))
    content_range = request.headers.get("content-range")
    if content_range:
        m = _CONTENT_RANGE.fullmatch(content_range.strip())
        if m is None:
            raise invalid_argument(f"header Content-Range[{content_range[:80]}] must be "
                                   f"'bytes <first>-<last>/<total|*>', numbers of at most {MAX_DIGITS} digits")
        first, last = int(m.group(1)), int(m.group(2))
        if last < first or (piece.length is not None and piece.length != last - first + 1):
            raise invalid_argument(f"header Content-Range[{content_range}] does not match the body's length")
        if piece.offset is not None and piece.offset != first:
            raise invalid_argument("headers Content-Range and X-Upload-Offset disagree")
        piece.offset = first
        if m.group(3) != "*":
            piece.total = int(m.group(3))
    return piece


BODY_PIECE = 4 << 20  # what the upload's body is read in: one RBD object


async def _body(request: Request, idle_timeout: float) -> AsyncIterator[upload_state.BodyPiece]:
    """The PUT's body. Where the server hands it over (:func:`take_body`), in pieces of
    :data:`BODY_PIECE` that the kernel writes straight into buffers lent to the consumer
    (the next one is received while the consumer writes the last): each comes back
    through its release call, to be received into again. Otherwise through ``receive``.
    A cut or silent body ends in :class:`~upload_state.BodyInterrupted`."""
    reader = take_body(request.scope)
    if reader is None:
        try:
            async for chunk in request.stream():
                if chunk:
                    yield chunk, None
        except ClientDisconnect:
            raise upload_state.BodyInterrupted() from None
        return
    free: list[bytearray] = []

    def receive() -> tuple[bytearray, asyncio.Future[int]]:
        buffer = free.pop() if free else bytearray(BODY_PIECE)
        return buffer, asyncio.ensure_future(reader.readinto(buffer, idle_timeout))

    buffer, reading = receive()
    try:
        while True:
            try:
                n = await reading
            except BodyCut:
                raise upload_state.BodyInterrupted() from None
            if not n:
                return
            piece, (buffer, reading) = buffer, receive()
            if n == len(piece):
                yield piece, functools.partial(free.append, piece)
            else:  # the last piece: copied, the buffer is not needed again
                yield piece[:n], None
    finally:
        reading.cancel()


def _status_reply(state: upload_state.UploadStatus, inventory: ImageInventory | None = None) -> JSONResponse:
    body: dict[str, Any] = {"imageUuid": state.image_uuid, "state": state.state, "offset": state.offset,
                            "size": state.size, "completed": state.completed}
    if inventory is not None:
        body["inventory"] = dump(inventory)
    return JSONResponse(body, headers={"X-Upload-Offset": str(state.offset)})


_COUNT = {"type": "integer", "minimum": 0, "maximum": 10**MAX_DIGITS - 1}  # wire/numbers.parse_count


@upload_router.put(
    "/images/uploads/{imageUuid}", summary="Send the bytes of an upload:// image",
    responses={200: {"model": UploadStatusReply}},
    openapi_extra={
        "requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        "parameters": [
            {"name": "X-Upload-Offset", "in": "header", "required": False, "schema": _COUNT,
             "description": "where this piece starts (the offset the last answer gave)"},
            {"name": "Content-Range", "in": "header", "required": False,
             "schema": {"type": "string", "pattern": rf"^\s*{_CONTENT_RANGE.pattern}\s*$"},
             "description": "`bytes <first>-<last>/<total|*>`, instead of X-Upload-Offset"},
            {"name": "X-Image-Size", "in": "header", "required": False, "schema": _COUNT,
             "description": "the whole image's size (or X-Upload-Length)"},
        ],
    },
)
async def put_image_bytes(imageUuid: str, request: Request, token: str = "",
                          rt: Runtime = Depends(runtime)) -> Response:
    try:
        state = await image_upload.receive(rt, imageUuid, token, _piece(request),
                                             _body(request, rt.settings.image_upload_timeout))
    except upload_state.OffsetMismatch as e:
        return JSONResponse(e.body(), status_code=e.status, headers={"X-Upload-Offset": str(e.offset)})
    inventory = None
    if state.image is not None:
        [inventory] = await image_inventories(rt, [state.image])
    return _status_reply(state, inventory)


@upload_router.get(
    "/images/uploads/{imageUuid}", summary="Where an upload stands",
    responses={200: {"model": UploadStatusReply}},
)
async def get_upload(imageUuid: str, token: str = "", rt: Runtime = Depends(runtime)) -> Response:
    return _status_reply(await image_upload.status(rt, imageUuid, token))


@upload_router.head(
    "/images/uploads/{imageUuid}", summary="Where an upload stands (headers only)",
    responses={200: {"description": "no body; X-Upload-Offset says how many bytes arrived"}},
)
async def head_upload(imageUuid: str, token: str = "", rt: Runtime = Depends(runtime)) -> Response:
    state = await image_upload.status(rt, imageUuid, token)
    return Response(headers={"X-Upload-Offset": str(state.offset)})
