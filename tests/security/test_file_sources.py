"""Point 10 of the Trust issue, its file:// part: a refused path tells nothing about the
server's file system. A real ``imgstore serve`` with one allowed directory: whether the
path leaves it through ``..`` or a symbolic link, names nothing, a directory or a file
outside, the error is the same sentence naming only the path as given: not where it
resolves to, nor whether something exists there.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import DevCluster, Server
from tests.integration.services.images.test_images import add_image, add_storage, failed, images

pytestmark = pytest.mark.ceph


def test_refused_paths_all_say_the_same_and_never_where_they_lead(
        fresh_server: Server, c1: DevCluster, pool: str, tmp_path: Path) -> None:
    allowed = tmp_path / "images"
    (allowed / "sub").mkdir(parents=True)
    hidden = tmp_path / "hidden-place"
    hidden.mkdir()
    (hidden / "secret.raw").write_bytes(b"not for you" * 1000)
    (allowed / "out.raw").symlink_to(hidden / "secret.raw")
    (allowed / "dangling.raw").symlink_to(hidden / "nothing-here.raw")
    fresh_server.env["IMGSTORE_FILE_ALLOW_DIRS"] = str(allowed)
    api = fresh_server.start().login()
    storage = add_storage(api, c1, pool)
    given = [f"{allowed}/out.raw", f"{allowed}/dangling.raw", f"{allowed}/sub", f"{allowed}/missing.raw",
             f"{allowed}/../hidden-place/secret.raw", f"{allowed}/../hidden-place/nothing-here.raw"]
    for path in given:
        error = failed(api, add_image(api, f"file://{path}", [storage], name="peek"), timeout=30)
        assert error["code"] == "SYS.1007", (path, error)
        assert error["details"] == (f"file[{path}] is not a regular file inside the directories allowed for "
                                    "images (setting IMGSTORE_FILE_ALLOW_DIRS)"), error
        assert str(hidden) not in repr(error) or str(hidden) in path, "the link's target is not told"
    assert images(api, "name=peek") == []
