"""A real server for the DICOMweb tests: a lake of ../shared/data files, the app of
:func:`voxlake.server.app.create_app`, uvicorn in a thread on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import voxlake
from tests.conftest import SHARED_DATA, need

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

DCMQI_SEGMENTATIONS = SHARED_DATA / "dcmqi" / "data" / "segmentations"


class Server:
    """uvicorn serving ``app`` in a thread on 127.0.0.1, an ephemeral port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.app = app
        self.sock = socket.socket()
        # Accepted sockets inherit it; asyncio sets it only on sockets it created itself (without it,
        # each keep-alive response waits up to 40 ms for a delayed ACK).
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        while not self.server.started:  # bounded by pytest-timeout, not by a clock here
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join()
        self.sock.close()

    @property
    def dicomweb(self) -> str:
        return self.url + "/dicomweb"


@pytest.fixture(scope="session")
def lake(tmp_path_factory: pytest.TempPathFactory, pydicom_files: Path) -> voxlake.Lake:
    """pydicom's test files (every classic transfer syntax) and dcmqi's CT + SEG, in one lake."""
    lake = voxlake.open(str(tmp_path_factory.mktemp("server") / "lake"))
    lake.ingest(str(pydicom_files), workers=0)
    lake.ingest(str(need(DCMQI_SEGMENTATIONS)), workers=0)
    return lake


@pytest.fixture(scope="session")
def server(lake: voxlake.Lake) -> Iterator[Server]:
    from voxlake.server.app import create_app

    with Server(create_app(lake, viewer=False, refresh_interval=0, qido_max_results=1000)) as s:
        yield s


@pytest.fixture(scope="session")
def client(server: Server) -> Any:
    dicomweb_client = pytest.importorskip("dicomweb_client")
    return dicomweb_client.DICOMwebClient(url=server.dicomweb)


@pytest.fixture(scope="session")
def http(server: Server) -> Iterator[Any]:
    import httpx

    with httpx.Client(base_url=server.dicomweb, timeout=60) as c:
        yield c


def rows(lake: voxlake.Lake, where: str = "true") -> list[dict[str, Any]]:
    """Instances of the lake as dicts (the truth the server is checked against)."""
    return lake.sql(f"SELECT * EXCLUDE (meta) FROM instances WHERE {where} "
                    "ORDER BY SOPInstanceUID").arrow().to_pylist()


def value(ds: dict[str, Any], tag: str) -> Any:
    """The first value of a DICOM JSON element (PN: its Alphabetic group), or None."""
    values = (ds.get(tag) or {}).get("Value")
    if not values:
        return None
    first = values[0]
    return first.get("Alphabetic") if isinstance(first, dict) else first


def values(results: list[dict[str, Any]], tag: str) -> list[Any]:
    return [value(ds, tag) for ds in results]
