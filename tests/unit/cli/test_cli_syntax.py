"""The CLI's words, the API catalogue and the client's requests, without a server."""
from __future__ import annotations

import io
import json
import re
import stat

import httpx
import pytest
from rich.console import Console

from imgstore.cli.render import error_line, human_bytes, mask_reply, mask_text, render
from imgstore.cli.words import parse_words, split_list
from imgstore.client import catalogue as apis
from imgstore.client.http import (
    ImgstoreClient,
    ImgstoreError,
    ParamError,
    SavedSession,
    build_request,
    coerce_params,
    guess_format,
    hash_password,
    load_session,
    normalize_url,
    poll_delays,
    save_session,
    session_file,
    upload_url,
)

MON_URL = "root:s3cret@10.0.0.1:2222/?monPort=16789"


def words(api_name: str, *given: str) -> dict:
    return parse_words(apis.get(api_name), given)


# ------------------------------------------------------------------ key=value words


def test_words_become_parameters_and_a_value_may_contain_equals() -> None:
    params = words("AddCephBackupStorage", "name=bs1", f"monUrls={MON_URL}", "poolName=imgs")
    assert params == {"name": "bs1", "monUrls": [MON_URL], "poolName": "imgs"}


def test_a_list_takes_commas_and_repeated_keys_append() -> None:
    params = words("AddCephBackupStorage", "name=bs", "monUrls=a@h1,b@h2", "monUrls=c@h3",
                   "systemTags=x::1,y::2")
    assert params["monUrls"] == ["a@h1", "b@h2", "c@h3"]
    assert params["systemTags"] == ["x::1", "y::2"]


def test_an_escaped_comma_stays_in_the_value() -> None:
    assert split_list(r"a\,b,c") == ["a,b", "c"]
    assert split_list("") == []
    assert split_list(r"a\b") == [r"a\b"]


def test_booleans_and_integers_are_typed() -> None:
    assert words("AddCephBackupStorage", "name=b", "monUrls=u@h", "importImages=TRUE")["importImages"] is True
    assert words("UpdateCephBackupStorageMon", "monUuid=m", "sshPort=2222")["sshPort"] == 2222
    with pytest.raises(ParamError, match="boolean"):
        words("AddCephBackupStorage", "name=b", "monUrls=u@h", "importImages=yes")
    with pytest.raises(ParamError, match="integer"):
        words("UpdateCephBackupStorageMon", "monUuid=m", "sshPort=22x")


def test_choices_are_matched_case_insensitively_like_the_sdk() -> None:
    assert words("ChangeBackupStorageState", "uuid=u", "stateEvent=Disable")["stateEvent"] == "disable"
    with pytest.raises(ParamError, match="enable, disable"):
        words("ChangeBackupStorageState", "uuid=u", "stateEvent=Disabled")


def test_an_unknown_parameter_names_the_closest() -> None:
    with pytest.raises(ParamError, match="did you mean poolName"):
        words("AddCephBackupStorage", "name=b", "monUrls=u@h", "poolname=x")


def test_missing_required_parameters_are_named() -> None:
    with pytest.raises(ParamError, match="needs name, monUrls"):
        words("AddCephBackupStorage", "poolName=x")


def test_a_word_without_equals_or_given_twice_is_refused() -> None:
    with pytest.raises(ParamError, match="not key=value"):
        words("DeleteBackupStorage", "uuid")
    with pytest.raises(ParamError, match="twice"):
        words("DeleteBackupStorage", "uuid=a", "uuid=b")


def test_a_refused_word_never_shows_a_password() -> None:
    with pytest.raises(ParamError) as e:
        words("AddCephBackupStorage", "name=b", "root:s3cret@host")
    assert "s3cret" not in str(e.value)


# ------------------------------------------------------------------ query words


@pytest.mark.parametrize("condition", [
    "name=bs1", "name!=bs1", "totalCapacity>100", "totalCapacity>=100", "totalCapacity<100",
    "totalCapacity<=100", "state?=Enabled,Disabled", "state!?=Enabled", "name~=bs%", "name!~=bs_",
])
def test_every_zstack_operator_makes_a_condition_sent_verbatim(condition: str) -> None:
    assert words("QueryBackupStorage", condition) == {"q": [condition]}


def test_paging_and_shape_words_are_query_parameters() -> None:
    params = words("QueryBackupStorage", "name~=bs%", "limit=10", "start=5", "sort=-createDate",
                   "fields=uuid,name", "count=true", "replyWithCount=false")
    assert params == {"q": ["name~=bs%"], "limit": 10, "start": 5, "sort": "-createDate",
                      "fields": "uuid,name", "count": True, "replyWithCount": False}


def test_null_conditions_are_three_words_or_one_quoted_word() -> None:
    assert words("QueryImage", "description", "is", "null", "name=x")["q"] == ["description is null", "name=x"]
    assert words("QueryImage", "md5Sum", "NOT", "null")["q"] == ["md5Sum not null"]
    assert words("QueryImage", "md5Sum not null")["q"] == ["md5Sum not null"]


def test_the_first_operator_of_zstacks_table_wins_as_on_the_server() -> None:
    # "name=a!=b" is name=a != b for ZStack; the CLI sends it untouched
    assert words("QueryBackupStorage", "name=a!=b") == {"q": ["name=a!=b"]}
    assert words("QueryBackupStorage", "limit>=3") == {"q": ["limit>=3"]}  # a condition, not paging


def test_a_query_word_without_operator_or_field_is_refused() -> None:
    with pytest.raises(ParamError, match="no operator"):
        words("QueryBackupStorage", "bs1")
    with pytest.raises(ParamError, match="no field name"):
        words("QueryBackupStorage", "=bs1")
    with pytest.raises(ParamError, match="integer"):
        words("QueryBackupStorage", "limit=ten")


# ------------------------------------------------------------------ requests


def request(api_name: str, **params: object):
    api = apis.get(api_name)
    return build_request(api, coerce_params(api, params))


def test_a_create_posts_params_with_tags_inside() -> None:
    r = request("AddCephBackupStorage", name="bs1", monUrls=MON_URL, systemTags=["a::b"])
    assert (r.method, r.path, r.query) == ("POST", "/backup-storage/ceph", ())
    assert r.body == {"params": {"name": "bs1", "monUrls": [MON_URL], "systemTags": ["a::b"]}}


def test_an_action_puts_its_name_as_body_key_and_the_path_variable_leaves_the_body() -> None:
    r = request("ChangeBackupStorageState", uuid="u1", stateEvent="enable")
    assert (r.method, r.path) == ("PUT", "/backup-storage/u1/actions")
    assert r.body == {"changeBackupStorageState": {"stateEvent": "enable"}}
    assert request("ReconnectBackupStorage", uuid="u1").body == {"reconnectBackupStorage": {}}


def test_delete_and_get_send_lists_as_repeated_keys_and_booleans_as_words() -> None:
    r = request("RemoveMonFromCephBackupStorage", uuid="u1", monHostnames=["h1", "h2"])
    assert (r.method, r.path, r.body) == ("DELETE", "/backup-storage/ceph/u1/mons", None)
    assert r.query == (("monHostnames", "h1"), ("monHostnames", "h2"))
    r = request("GetBackupStorageCapacity", all=True, zoneUuids=["z1"])
    assert r.query == (("all", "true"), ("zoneUuids", "z1"))


def test_a_query_sends_each_condition_as_q_then_paging() -> None:
    r = request("QueryBackupStorage", q=["name~=bs%", "state=Enabled"], limit=10, sort="-createDate")
    assert r.query == (("q", "name~=bs%"), ("q", "state=Enabled"), ("limit", "10"), ("sort", "-createDate"))


def test_path_variables_are_percent_encoded() -> None:
    assert request("DeleteBackupStorage", uuid="a/b c").path == "/backup-storage/a%2Fb%20c"


# ------------------------------------------------------------------ the catalogue


def test_every_path_variable_is_a_required_parameter() -> None:
    for api in apis.APIS.values():
        for var in api.path_vars:
            param = api.param(var)
            assert param is not None and param.required, (api.name, var)


def test_names_are_unique_in_the_catalogue_and_in_each_api() -> None:
    assert len(apis.APIS) == len(apis._APIS)
    for api in apis.APIS.values():
        names = [p.name for p in api.params]
        assert len(names) == len(set(names)), api.name


def test_body_keys_follow_zstacks_rules() -> None:
    for api in apis.APIS.values():
        if api.method in ("GET", "DELETE"):
            assert api.body_key is None, api.name
        elif api.path.endswith("/actions") or api.name == "RenewSession":  # isAction=true in ZStack
            assert api.body_key == apis.action_key(api.name), api.name
        elif api.name != "LogInByAccount":
            assert api.body_key == "params", api.name


def test_queries_are_sync_gets_answering_inventories_and_only_writes_are_async() -> None:
    for api in apis.APIS.values():
        if api.query:
            assert (api.method, api.reply_key, api.is_async) == ("GET", "inventories", False), api.name
        if api.method == "GET" or (api.group == "session" and api.name != "RenewSession"):
            assert not api.is_async, api.name


def test_the_catalogue_covers_the_reference_apis() -> None:
    expected = {
        "LogInByAccount", "LogOut", "ValidateSession", "AddCephBackupStorage", "QueryBackupStorage",
        "QueryCephBackupStorage", "DeleteBackupStorage", "UpdateBackupStorage", "ChangeBackupStorageState",
        "ReconnectBackupStorage", "AttachBackupStorageToZone", "DetachBackupStorageFromZone",
        "GetBackupStorageCapacity", "GetBackupStorageTypes", "AddMonToCephBackupStorage",
        "RemoveMonFromCephBackupStorage", "UpdateCephBackupStorageMon", "ExportImageFromBackupStorage",
        "DeleteExportedImageFromBackupStorage", "GetTrashOnBackupStorage", "CleanUpTrashOnBackupStorage",
        "AddImage", "DeleteImage", "ExpungeImage", "RecoverImage", "ChangeImageState", "SyncImageSize",
        "QueryImage", "GetUploadImageJobDetails", "GetTaskProgress", "CreateZone", "QueryZone", "DeleteZone",
        "QuerySystemTag", "QueryUserTag", "SetImageBootMode", "SetImageSecurityLevel", "SetImageQga",
        "GetImageQga", "RenewSession", "GetZone",
    }
    assert expected <= set(apis.APIS)


def test_names_are_found_case_insensitively_and_typos_get_suggestions() -> None:
    assert apis.get("querybackupstorage").name == "QueryBackupStorage"
    with pytest.raises(apis.UnknownApi) as e:
        apis.get("QueryBackupStorag")
    assert e.value.suggestions[0] == "QueryBackupStorage"
    assert "did you mean QueryBackupStorage" in str(e.value)


# ------------------------------------------------------------------ output and secrets


def test_passwords_are_masked_in_text_and_replies() -> None:
    assert mask_text(f"invalid monUrl[{MON_URL}]") == "invalid monUrl[root:******@10.0.0.1:2222/?monPort=16789]"
    assert mask_text("http://u:pw@example.com/x") == "http://u:******@example.com/x"
    assert mask_text("mail admin@example.com at 10:00") == "mail admin@example.com at 10:00"
    reply = mask_reply({"inventory": {"mons": [{"sshPassword": "s3cret", "hostname": "h"}], "x": MON_URL}})
    assert "s3cret" not in json.dumps(reply)
    assert reply["inventory"]["mons"][0] == {"sshPassword": "******", "hostname": "h"}


def test_bytes_are_human_readable() -> None:
    assert human_bytes(0) == "0 B"
    assert human_bytes(1023) == "1023 B"
    assert human_bytes(10 * 1024**3) == "10.0 GiB"
    assert human_bytes(None) == ""


def rendered(api_name: str, reply: dict, **kw: object) -> str:
    out = io.StringIO()
    render(Console(file=out, width=200), apis.get(api_name), reply, **kw)
    return out.getvalue()


def test_inventories_are_a_table_with_main_columns_and_readable_sizes() -> None:
    inv = {"uuid": "a" * 32, "name": "bs1", "type": "Ceph", "state": "Enabled", "status": "Connected",
           "totalCapacity": 10 * 1024**3, "availableCapacity": 5 * 1024**3, "url": "not used",
           "mons": [{"hostname": "10.0.0.1", "status": "Connected", "sshPassword": "s3cret"}]}
    text = rendered("QueryBackupStorage", {"inventories": [inv], "total": 3, "schema": {}})
    header = text.splitlines()[0].split()
    assert header[:5] == ["uuid", "name", "type", "state", "status"]
    assert "url" not in header
    assert "10.0 GiB" in text and "10.0.0.1 (Connected)" in text and "1 of 3" in text
    assert "s3cret" not in text


def test_one_inventory_is_a_key_value_table_and_json_is_the_raw_reply() -> None:
    reply = {"inventory": {"uuid": "u", "name": "[bs]", "poolUsedCapacity": 2048,
                           "mons": [{"hostname": "h", "sshPassword": "s3cret"}]}}
    text = rendered("AddCephBackupStorage", reply)
    assert re.search(r"name\s+\[bs\]", text) and "2.0 KiB" in text and "s3cret" not in text
    assert json.loads(rendered("AddCephBackupStorage", reply, as_json=True))["inventory"]["name"] == "[bs]"


def test_count_prints_the_number_and_an_empty_answer_says_done() -> None:
    assert rendered("QueryBackupStorage", {"total": 7}).strip() == "7"
    assert rendered("DeleteBackupStorage", {}).strip() == "done"


def test_an_error_is_one_line_with_its_cause() -> None:
    e = ImgstoreError("SYS.1002", "Unable to create a resource", "add failed\nsecond line",
                      cause={"code": "BS.1500", "details": "ssh refused"})
    assert error_line(e) == "error SYS.1002: add failed; second line (cause BS.1500: ssh refused)"


# ------------------------------------------------------------------ the client


def test_the_login_password_is_its_sha512_hex() -> None:
    assert hash_password("password").startswith("b109f3bbbc244eb8")
    assert normalize_url("127.0.0.1:8080/zstack/v1/") == "http://127.0.0.1:8080"


def test_polls_start_fast_and_settle_at_one_second() -> None:
    delays = poll_delays()
    assert [round(next(delays), 1) for _ in range(7)] == [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0]


def mock_client(handler) -> ImgstoreClient:
    return ImgstoreClient("http://imgstore.test:8080", "s1", transport=httpx.MockTransport(handler))


def test_an_async_call_asks_for_a_job_and_polls_it_where_it_talks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("imgstore.client.http.time.sleep", lambda _: None)
    seen: list[httpx.Request] = []
    polls = iter([202, 202, 200])

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        if req.method == "DELETE":
            return httpx.Response(202, json={"location": "http://elsewhere:1/zstack/v1/api-jobs/j1"})
        return httpx.Response(next(polls), json={})

    assert mock_client(handler).call("DeleteBackupStorage", uuid="u1") == {}
    first = seen[0]
    assert first.headers["prefer"] == "respond-async" and first.headers["authorization"] == "OAuth s1"
    assert str(first.url) == "http://imgstore.test:8080/zstack/v1/backup-storage/u1"
    assert {str(r.url) for r in seen[1:]} == {"http://imgstore.test:8080/zstack/v1/api-jobs/j1"}
    assert len(seen) == 4


def test_an_error_body_becomes_an_imgstore_error() -> None:
    body = {"error": {"code": "SYS.1007", "description": "One or more API argument is invalid", "details": "bad"}}
    client = mock_client(lambda _: httpx.Response(400, json=body))
    with pytest.raises(ImgstoreError) as e:
        client.query("QueryBackupStorage", ["nosuch=1"])
    assert (e.value.code, e.value.details, e.value.status) == ("SYS.1007", "bad", 400)
    client = mock_client(lambda _: httpx.Response(404, text="the job has been expired"))
    with pytest.raises(ImgstoreError) as e:
        client.wait_job("/zstack/v1/api-jobs/x")
    assert (e.value.code, e.value.details) == ("sdk.1000", "the job has been expired")


def test_no_session_and_no_server_are_clear_errors() -> None:
    with pytest.raises(ImgstoreError, match="not logged in"):
        ImgstoreClient("http://imgstore.test").call("QueryBackupStorage")

    def refuse(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=req)

    with pytest.raises(ImgstoreError) as e:
        mock_client(refuse).call("QueryBackupStorage")
    assert e.value.code == "SYS.1015" and "connection refused" in e.value.details


def test_the_session_file_is_private(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    path = save_session(SavedSession("http://h:8080", "s1", "admin"))
    assert path == session_file() == tmp_path / "cfg" / "imgstore" / "session.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_session() == SavedSession("http://h:8080", "s1", "admin")


def test_the_upload_url_is_read_from_the_add_image_reply(tmp_path) -> None:
    assert upload_url({"url": "upload://", "backupStorageRefs": [{"uploadUrl": "http://h/up/1"}]}) == "http://h/up/1"
    assert upload_url({"url": "http://h/up/2"}) == "http://h/up/2"
    assert upload_url({"url": "upload://"}) is None
    qcow2 = tmp_path / "disk.img"
    qcow2.write_bytes(b"QFI\xfb" + bytes(100))
    raw = tmp_path / "disk.raw"
    raw.write_bytes(bytes(100))
    assert (guess_format(qcow2), guess_format(raw)) == ("qcow2", "raw")


def test_upload_image_adds_an_upload_image_then_puts_the_bytes(tmp_path) -> None:
    data = bytes(range(256)) * 5000
    file = tmp_path / "disk.raw"
    file.write_bytes(data)
    received: dict[str, object] = {}

    def handler(req: httpx.Request) -> httpx.Response:
        if req.method == "POST":
            received["add"] = json.loads(req.content)
            return httpx.Response(200, json={"inventory": {"uuid": "i1", "url": "upload://", "backupStorageRefs": [
                {"backupStorageUuid": "b1", "uploadUrl": "/zstack/v1/images/i1/upload"}]}})
        received.update(url=str(req.url), body=req.read(), headers=req.headers)
        return httpx.Response(200)

    progress: list[int] = []
    image = mock_client(handler).upload_image(file, ["b1"], name="disk", format="raw",
                                              on_progress=progress.append)
    assert image["uuid"] == "i1"
    assert received["add"] == {"params": {"name": "disk", "url": "upload://", "backupStorageUuids": ["b1"],
                                          "format": "raw"}}
    assert received["url"] == "http://imgstore.test:8080/zstack/v1/images/i1/upload"
    assert received["body"] == data and sum(progress) == len(data) and len(progress) == 2
    assert received["headers"]["content-length"] == str(len(data))
