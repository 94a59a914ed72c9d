"""Import a dataset archive (a URL or a local .zip/.tar[.gz]) into the Kaggle folder layout.
Members with absolute paths, `..` or links that leave the target are refused, so a hostile
archive cannot write outside the folder; the folder holding train/NORMAL and
train/PNEUMONIA, however deep (Kaggle's zip nests chest_xray/chest_xray/), becomes the
destination."""

from __future__ import annotations

import logging
import shutil
import stat
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from pneumo_exp.config import CLASS_NAMES
from pneumo_exp.errors import DataError

log = logging.getLogger(__name__)

CHUNK = 1 << 20


def fetch_dataset(source: str, dest: Path, timeout: float = 60.0) -> Path:
    """Download or copy `source`, extract it safely, and move the dataset root to `dest`."""
    if dest.exists():
        raise DataError(f"{dest} already exists; remove it or choose another destination.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
        work = Path(tmp)
        archive = _download(source, work, timeout) if "://" in source else Path(source)
        if not archive.is_file():
            raise DataError(f"dataset archive not found: {archive}")
        extracted = work / "extracted"
        extracted.mkdir()
        _extract(archive, extracted)
        root = _find_root(extracted)
        root.rename(dest)  # same filesystem: the temporary folder sits next to dest
    log.info("Dataset ready at %s.", dest)
    return dest


def _download(url: str, work: Path, timeout: float) -> Path:
    if not url.startswith(("http://", "https://")):
        raise DataError(f"only http(s) URLs or local files can be fetched; got {url}")
    name = PurePosixPath(urllib.parse.urlparse(url).path).name or "dataset.zip"
    target = work / name
    log.info("Downloading %s ...", url)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as f:
            shutil.copyfileobj(response, f, CHUNK)
    except OSError as e:
        raise DataError(f"cannot download {url}: {e}. Download it by other means and give "
                        "the local file instead.") from e
    return target


def _extract(archive: Path, target: Path) -> None:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                _check_member(archive, info.filename, stat.S_ISLNK(info.external_attr >> 16))
            z.extractall(target)
        return
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            for member in t.getmembers():  # links inside the target are fine for tar
                _check_member(archive, member.name, is_link=False)
            try:
                t.extractall(target, filter="data")
            except tarfile.FilterError as e:
                raise DataError(f"refusing {archive}: member {e.tarinfo.name!r} would leave "
                                f"the target folder ({type(e).__name__}).") from e
        return
    raise DataError(f"{archive} is neither a zip nor a tar archive.")


def _check_member(archive: Path, name: str, is_link: bool) -> None:
    """Refuse absolute paths, `..` and (zip) links, rather than silently rewriting them."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or ":" in path.parts[0] or is_link:
        what = "a link" if is_link else "a path outside the target folder"
        raise DataError(f"refusing {archive}: member {name!r} is {what}.")


def _find_root(extracted: Path) -> Path:
    for candidate in sorted(extracted.rglob("train"), key=lambda p: len(p.parts)):
        if "__MACOSX" not in candidate.parts and all((candidate / name).is_dir()
                                                     for name in CLASS_NAMES):
            return candidate.parent
    raise DataError("the archive holds no train/NORMAL and train/PNEUMONIA folders: expected "
                    "the Kaggle layout ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/.")
