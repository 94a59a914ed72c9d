"""Dataset import: downloads from a local HTTP server, nested archives, hostile members."""

from __future__ import annotations

import functools
import http.server
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_folder_dataset

from pneumo_exp.data.fetch import fetch_dataset
from pneumo_exp.errors import DataError


def _zip_dataset(tmp_path: Path, prefix: str = "chest_xray/chest_xray/") -> Path:
    src = make_folder_dataset(tmp_path / "src", {"train": (2, 2), "test": (1, 1)}, size=16)
    archive = tmp_path / "archive.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(src.rglob("*")):
            if f.is_file():
                z.write(f, prefix + f.relative_to(src).as_posix())
        z.writestr("__MACOSX/chest_xray/train/NORMAL/._x", b"junk")
    return archive


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A static file server on 127.0.0.1 serving tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", www
    finally:
        server.shutdown()


def test_local_nested_zip(tmp_path: Path) -> None:
    dest = fetch_dataset(str(_zip_dataset(tmp_path)), tmp_path / "data" / "chest_xray")
    assert sorted(p.name for p in dest.iterdir() if p.is_dir()) == ["test", "train"]
    assert len(list((dest / "train" / "NORMAL").iterdir())) == 2
    assert not list((tmp_path / "data").glob(".fetch-*"))  # temporary folder removed


def test_download_over_http(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    url, www = http_root
    _zip_dataset(tmp_path).rename(www / "ChestXRay2017.zip")
    dest = fetch_dataset(f"{url}/ChestXRay2017.zip", tmp_path / "d")
    assert (dest / "train" / "PNEUMONIA").is_dir()


def test_download_failure_is_a_clear_error(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    url, _ = http_root
    with pytest.raises(DataError, match=r"cannot download .*missing\.zip"):
        fetch_dataset(f"{url}/missing.zip", tmp_path / "d")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("member", ["../evil.txt", "/abs/evil.txt", "a/../../evil.txt"])
def test_zip_members_leaving_the_target_are_refused(tmp_path: Path, member: str) -> None:
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("train/NORMAL/a.png", b"x")
        z.writestr(member, b"evil")
    with pytest.raises(DataError, match=r"refusing .*outside the target"):
        fetch_dataset(str(archive), tmp_path / "out" / "d")
    assert not list(tmp_path.rglob("evil.txt"))


def test_zip_symlinks_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as z:
        info = zipfile.ZipInfo("train/NORMAL/link.png")
        info.external_attr = (0o120777 << 16)
        z.writestr(info, "/etc/passwd")
    with pytest.raises(DataError, match="is a link"):
        fetch_dataset(str(archive), tmp_path / "d")


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_tar_members_leaving_the_target_are_refused(tmp_path: Path, kind: str) -> None:
    archive = tmp_path / "bad.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        info = tarfile.TarInfo({"dotdot": "../evil.txt", "absolute": "/tmp/evil.txt",
                                "symlink": "train/NORMAL/link.png"}[kind])
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            t.addfile(info)
        else:
            info.size = 4
            t.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(DataError, match="refusing"):
        fetch_dataset(str(archive), tmp_path / "out" / "d")
    assert not (tmp_path / "evil.txt").exists()


def test_archive_without_the_layout(tmp_path: Path) -> None:
    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("images/a.png", b"x")
    with pytest.raises(DataError, match="no train/NORMAL"):
        fetch_dataset(str(archive), tmp_path / "d")


def test_existing_destination_is_kept(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="already exists"):
        fetch_dataset(str(_zip_dataset(tmp_path)), tmp_path / "d")
