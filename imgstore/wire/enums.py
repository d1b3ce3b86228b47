"""ZStack's words for states and statuses, one enum per kind.

Each is a ``StrEnum``: a member *is* its ZStack string, so it compares equal to what a
row, a request or a reply holds, is stored as that string by either database, and is
written as that string in JSON. Code names a member, never the bare string, so a typo is
an AttributeError at import, not a status no client knows.
"""
from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """What an operator decides of a backup storage, a zone or an image (stateEvent)."""

    ENABLED = "Enabled"
    DISABLED = "Disabled"


class StorageStatus(StrEnum):
    """What imgstore observes of a backup storage or one of its mons."""

    CONNECTING = "Connecting"
    CONNECTED = "Connected"
    DISCONNECTED = "Disconnected"


class ImageStatus(StrEnum):
    """An image's status, and each of its backup-storage refs' (ZStack's ImageStatus;
    ``Expunging`` is imgstore's, on a ref whose bits an expunge is removing now)."""

    DOWNLOADING = "Downloading"
    READY = "Ready"
    ERROR = "Error"
    DELETED = "Deleted"
    EXPUNGING = "Expunging"


class MediaType(StrEnum):
    ROOT_VOLUME_TEMPLATE = "RootVolumeTemplate"
    ISO = "ISO"
    DATA_VOLUME_TEMPLATE = "DataVolumeTemplate"


class DeleteMode(StrEnum):
    """``deleteMode`` of the delete APIs: Permissive stops at a cleanup that fails,
    Enforcing deletes anyway."""

    PERMISSIVE = "Permissive"
    ENFORCING = "Enforcing"


class DeletionPolicy(StrEnum):
    """``IMGSTORE_IMAGE_DELETION_POLICY``: Delay keeps a deleted image recoverable until
    it is expunged, Direct removes its bits at once."""

    DELAY = "Delay"
    DIRECT = "Direct"


class JobState(StrEnum):
    """An async API call's job (``/api-jobs/<id>``); ``Refused`` is imgstore's, for a
    request refused before its job started (polled as a failure)."""

    PROCESSING = "Processing"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    REFUSED = "Refused"


__all__ = ["DeleteMode", "DeletionPolicy", "ImageStatus", "JobState", "MediaType", "State", "StorageStatus"]
