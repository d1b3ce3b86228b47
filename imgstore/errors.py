"""The ZStack error catalogue and the one exception services raise.

Every failure leaves imgstore as ZStack's ErrorCode body
(``{"error": {code, description, details, elaboration, opaque, cause}}``); the HTTP
status says what kind of failure it was (README, Design notes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ErrorKind:
    code: str
    description: str
    status: int


INTERNAL = ErrorKind("SYS.1000", "An internal error happened in system", 500)
TIMEOUT = ErrorKind("SYS.1001", "A message or a operation timeout", 504)
CREATE_RESOURCE_ERROR = ErrorKind("SYS.1002", "Unable to create a resource", 503)
RESOURCE_NOT_FOUND = ErrorKind("SYS.1003", "A resource can not be found", 404)
DELETE_RESOURCE_ERROR = ErrorKind("SYS.1004", "Unable to delete a resource", 503)
CHANGE_RESOURCE_STATE_ERROR = ErrorKind("SYS.1005", "Unable to change resource state", 409)
OPERATION_ERROR = ErrorKind("SYS.1006", "An operation failed", 409)
INVALID_ARGUMENT = ErrorKind("SYS.1007", "One or more API argument is invalid", 400)
UNKNOWN_MESSAGE = ErrorKind("SYS.1008", "Unknown message, no service can deal with the message", 404)
UNIMPLEMENTED = ErrorKind("SYS.1014", "Not implemented or not supported", 501)
AUTH_FAILED = ErrorKind("ID.1000", "Authentication failed", 401)
INVALID_SESSION = ErrorKind("ID.1001", "Invalid or expired session", 401)
PERMISSION_DENIED = ErrorKind("ID.1002", "Permission denied", 403)

_KINDS = {k.code: k for k in list(globals().values()) if isinstance(k, ErrorKind)}


def kind_of(code: str) -> ErrorKind:
    """The catalogue's kind for ``code`` (an error that crossed a process boundary)."""
    return _KINDS.get(code, INTERNAL)


class ApiError(Exception):
    """A failure the client should see, as one ZStack ErrorCode.

    ``status`` overrides the kind's HTTP status where the same code means different
    things (SYS.1006 for a conflict and for an unreachable cluster, say); a wrapping
    error with no status of its own takes its cause's.
    """

    def __init__(
        self,
        kind: ErrorKind,
        details: str | None = None,
        *,
        cause: ApiError | None = None,
        causes: list[ApiError] | None = None,
        status: int | None = None,
        opaque: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(details or kind.description)
        self.kind = kind
        self.details = details or kind.description
        self.cause = cause
        self.causes = causes or []
        self.opaque = opaque
        self._status = status

    @property
    def status(self) -> int:
        if self._status is not None:
            return self._status
        if self.cause is not None and self.kind is CREATE_RESOURCE_ERROR:
            return self.cause.status
        return self.kind.status

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "code": self.kind.code,
            "description": self.kind.description,
            "details": self.details,
            "elaboration": None,
            "opaque": self.opaque,
            "cause": self.cause.to_dict() if self.cause else None,
        }
        if self.causes:
            body["causes"] = [c.to_dict() for c in self.causes]
        return body

    def body(self) -> dict[str, Any]:
        return {"error": self.to_dict()}


def invalid_argument(details: str) -> ApiError:
    return ApiError(INVALID_ARGUMENT, details)


def not_found(resource: str, uuid: str, field: str = "uuid") -> ApiError:
    return ApiError(
        RESOURCE_NOT_FOUND,
        f"invalid field[{field}], resource[uuid:{uuid}, type:{resource}] not found",
    )
