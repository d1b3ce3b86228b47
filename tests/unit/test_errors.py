"""The ZStack ErrorCode body and how failures map to HTTP statuses."""
from imgstore.errors import (
    CREATE_RESOURCE_ERROR,
    INVALID_ARGUMENT,
    OPERATION_ERROR,
    ApiError,
    not_found,
)


def test_body_has_every_zstack_errorcode_key() -> None:
    body = ApiError(INVALID_ARGUMENT, "field[name] is mandatory").body()
    assert body == {"error": {"code": "SYS.1007", "description": "One or more API argument is invalid",
                              "details": "field[name] is mandatory", "elaboration": None,
                              "opaque": None, "cause": None}}


def test_create_error_takes_the_status_of_its_cause() -> None:
    cause = ApiError(OPERATION_ERROR, "mon[h]: ssh authentication failed", status=400)
    err = ApiError(CREATE_RESOURCE_ERROR, "failed to add", cause=cause)
    assert err.status == 400
    assert err.to_dict()["cause"]["details"] == "mon[h]: ssh authentication failed"


def test_several_causes_are_listed_for_the_sdk() -> None:
    causes = [ApiError(OPERATION_ERROR, "a"), ApiError(OPERATION_ERROR, "b")]
    body = ApiError(OPERATION_ERROR, "both failed", causes=causes).to_dict()
    assert [c["details"] for c in body["causes"]] == ["a", "b"]


def test_not_found_names_the_resource() -> None:
    err = not_found("BackupStorageVO", "abc")
    assert err.status == 404 and "abc" in err.details and err.kind.code == "SYS.1003"
