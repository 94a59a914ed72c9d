"""A throwaway Orthanc PACS with its DICOMweb plugin on 127.0.0.1, for tests and benchmarks
(Debian packages orthanc and orthanc-dicomweb).

    with orthanc(tmp_path, users={"pacs": "secret"}) as pacs:
        pacs.upload(paths)                       # REST: POST /instances
        pacs.dicomweb                            # http://127.0.0.1:PORT/dicom-web
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc/plugins"))


class OrthancUnavailable(RuntimeError):
    """Orthanc or its DICOMweb plugin is not installed, or it did not start."""


@dataclass
class Orthanc:
    port: int
    users: dict[str, str]
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def request(self, path: str, data: bytes | None = None, method: str | None = None) -> bytes:
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if self.users:
            user, password = next(iter(self.users.items()))
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.read()

    def upload(self, paths: Iterable[Path]) -> int:
        """Store DICOM files through the REST API; returns how many."""
        n = 0
        for path in paths:
            self.request("/instances", path.read_bytes(), "POST")
            n += 1
        return n


def plugin() -> Path:
    for folder in PLUGIN_DIRS:
        found = sorted(folder.glob("libOrthancDicomWeb.so*"))
        if found:
            return found[0]
    raise OrthancUnavailable("the DICOMweb plugin is not installed (Debian package "
                             "orthanc-dicomweb)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def orthanc(folder: Path, users: dict[str, str] | None = None,
            timeout: float = 60) -> Iterator[Orthanc]:
    """Orthanc with its storage under `folder`, listening on 127.0.0.1 only; stopped after."""
    binary = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists()
                                         else None)
    if binary is None:
        raise OrthancUnavailable("Orthanc is not installed (Debian package orthanc)")
    users = users or {}
    port = _free_port()
    storage = folder / "orthanc-storage"
    storage.mkdir(parents=True, exist_ok=True)
    config = {"Name": "pneumo-exp-test", "StorageDirectory": str(storage),
              "IndexDirectory": str(storage), "HttpPort": port, "DicomServerEnabled": False,
              "RemoteAccessAllowed": False, "HttpBindAddress": "127.0.0.1",
              "AuthenticationEnabled": bool(users), "RegisteredUsers": users,
              "Plugins": [str(plugin())], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config))
    log = (folder / "orthanc.log").open("w")
    process = subprocess.Popen([binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT)
    server = Orthanc(port, users, process)
    try:
        deadline = time.time() + timeout
        while True:
            if process.poll() is not None:
                raise OrthancUnavailable(f"Orthanc exited with {process.returncode}: "
                                         f"{(folder / 'orthanc.log').read_text()[-500:]}")
            try:
                server.request("/system")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.time() > deadline:
                    raise OrthancUnavailable("Orthanc did not answer within "
                                             f"{timeout:.0f} s") from None
                time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
