"""voxlake and a real PACS: Orthanc sends to our DimseServer, we find, pull (C-GET and C-MOVE) and push.

One Orthanc per module on free loopback ports, with its storage in a temporary folder; it knows us as
two modalities (VOXLAKE for its C-STORE to our server, VOXMOVE as our C-MOVE destination, so that
no port is reused between tests). Its REST API uploads test data and shows what it holds.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

import voxlake
from voxlake.net import DimseServer, Peer
from voxlake.net.scu import echo, find, pull, push

ORTHANC = Path("/usr/sbin/Orthanc")
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CT_SERIES = DATA / "pancreatic-ct-cbct-seg_pyvista" / "series"
SEG_FILE = DATA / "dcmqi" / "data" / "segmentations" / "liver.dcm"
SLICES = 20
DEADLINE = 30.0

pytestmark = pytest.mark.skipif(not ORTHANC.exists(), reason=f"Orthanc not installed at {ORTHANC}")


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"test data not found: {path} (../shared/data is not beside the repository)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Any, what: str) -> Any:
    end = time.monotonic() + DEADLINE
    while True:
        try:
            result = check()
        except (OSError, voxlake.LakeNotFoundError):
            result = None
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {DEADLINE} s waiting for {what}")
        time.sleep(0.1)


class Orthanc:
    def __init__(self, root: Path) -> None:
        self.http_port, self.dicom_port = free_port(), free_port()
        self.store_port, self.move_port = free_port(), free_port()  # where we listen
        config = {
            "Name": "voxlake-test",
            "StorageDirectory": str(root / "storage"),
            "IndexDirectory": str(root / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC",
            "DicomModalities": {
                "voxlake": ["VOXLAKE", "127.0.0.1", self.store_port],
                "voxmove": ["VOXMOVE", "127.0.0.1", self.move_port],
            },
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "Plugins": [],
        }
        (root / "orthanc.json").write_text(json.dumps(config))
        self.log = open(root / "orthanc.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([str(ORTHANC), str(root / "orthanc.json")], stdout=self.log, stderr=self.log)
        self.peer = Peer("ORTHANC", "127.0.0.1", self.dicom_port)
        wait_for(lambda: self.proc.poll() is None and self.get("/system"), "Orthanc's REST API")

    def request(self, method: str, path: str, body: bytes | None = None) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=body, method=method)
        with urllib.request.urlopen(req, timeout=60) as response:
            return json.loads(response.read() or b"null")

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def upload(self, path: Path) -> Any:
        return self.request("POST", "/instances", path.read_bytes())

    def has_instance(self, sop_uid: str) -> bool:
        found = self.request("POST", "/tools/lookup", sop_uid.encode())
        return any(f["Type"] == "Instance" for f in found)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ct_study(orthanc: Orthanc) -> dict[str, Any]:
    """The first slices of a real CT series, uploaded to Orthanc: its UIDs and Orthanc's study ID."""
    files = sorted(need(CT_SERIES).glob("*.dcm"))[:SLICES]
    if len(files) < SLICES:
        pytest.skip(f"test data incomplete: {CT_SERIES}")
    uploaded = [orthanc.upload(f) for f in files]
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    return {
        "orthanc_id": uploaded[0]["ParentStudy"],
        "StudyInstanceUID": header.StudyInstanceUID,
        "SeriesInstanceUID": header.SeriesInstanceUID,
        "PatientID": header.PatientID,
        "sop_uids": sorted(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files),
    }


def lake_sop_uids(lake: voxlake.Lake) -> list[str]:
    return sorted(sop for (sop,) in lake.sql("SELECT SOPInstanceUID FROM instances").fetchall())


def test_echo_gets_success_from_orthanc(orthanc: Orthanc) -> None:
    assert echo(orthanc.peer) == 0x0000


def test_orthanc_sends_a_study_to_the_dimse_server_and_the_lake_has_every_instance(
    orthanc: Orthanc, ct_study: dict[str, Any], tmp_path: Path
) -> None:
    lake = voxlake.open(str(tmp_path / "lake"))
    with DimseServer(lake, port=orthanc.store_port, commit_interval=0.3):
        job = orthanc.request("POST", "/modalities/voxlake/store", ct_study["orthanc_id"].encode())
        assert job["FailedInstancesCount"] == 0 and job["InstancesCount"] == SLICES
        rows = wait_for(lambda: len(lake_sop_uids(lake)) == SLICES and lake_sop_uids(lake), "the commit")
    assert rows == ct_study["sop_uids"]


def test_find_matches_the_study_by_patient_and_date_range_with_default_return_keys(
    orthanc: Orthanc, ct_study: dict[str, Any]
) -> None:
    found = find(orthanc.peer, "study", {"PatientID": ct_study["PatientID"], "StudyDate": "19000101-"})

    assert [m["StudyInstanceUID"] for m in found] == [ct_study["StudyInstanceUID"]]
    assert found[0]["NumberOfStudyRelatedInstances"] == str(SLICES)
    assert {"PatientName", "StudyDate", "AccessionNumber", "ModalitiesInStudy"} <= found[0].keys()
    series = find(orthanc.peer, "series", {"StudyInstanceUID": ct_study["StudyInstanceUID"]})
    assert [(s["SeriesInstanceUID"], s["Modality"]) for s in series] == [(ct_study["SeriesInstanceUID"], "CT")]


def test_find_with_no_match_returns_an_empty_list(orthanc: Orthanc, ct_study: dict[str, Any]) -> None:
    assert find(orthanc.peer, "study", {"PatientID": "NO-SUCH-PATIENT"}) == []


def test_pull_by_c_get_lands_and_commits_the_whole_study(
    orthanc: Orthanc, ct_study: dict[str, Any], tmp_path: Path
) -> None:
    lake = voxlake.open(str(tmp_path / "lake"))
    seen: list[tuple[int, int]] = []

    result = pull(lake, orthanc.peer, study=ct_study["StudyInstanceUID"], method="get",
                  progress=lambda done, total: seen.append((done, total)))

    assert result.ok and (result.completed, result.received, result.committed) == (SLICES, SLICES, SLICES)
    assert seen[-1] == (SLICES, SLICES)
    assert lake_sop_uids(lake) == ct_study["sop_uids"]


def test_pull_by_c_move_to_a_temporary_server_lands_and_commits_the_whole_series(
    orthanc: Orthanc, ct_study: dict[str, Any], tmp_path: Path
) -> None:
    lake = voxlake.open(str(tmp_path / "lake"))

    result = pull(lake, orthanc.peer, study=ct_study["StudyInstanceUID"], series=ct_study["SeriesInstanceUID"],
                  method="move", ae_title="VOXMOVE", port=orthanc.move_port)

    assert result.ok and (result.completed, result.received) == (SLICES, SLICES)
    assert lake_sop_uids(lake) == ct_study["sop_uids"]


def test_push_stores_a_segmentation_from_the_lake_in_orthanc(orthanc: Orthanc, tmp_path: Path) -> None:
    source = tmp_path / "seg"
    source.mkdir()
    shutil.copy(need(SEG_FILE), source / SEG_FILE.name)
    lake = voxlake.open(str(tmp_path / "lake"))
    lake.ingest(str(source), workers=0)
    sop = pydicom.dcmread(SEG_FILE, stop_before_pixels=True).SOPInstanceUID
    assert not orthanc.has_instance(sop)

    result = push(lake, orthanc.peer, where="Modality = 'SEG'")

    assert result.ok and [(i.SOPInstanceUID, i.status) for i in result.instances] == [(sop, 0x0000)]
    assert orthanc.has_instance(sop)
    (orthanc_id,) = [f["ID"] for f in orthanc.request("POST", "/tools/lookup", sop.encode())]
    assert orthanc.get(f"/instances/{orthanc_id}/tags?simplify")["Modality"] == "SEG"


def test_cli_pacs_find_prints_a_table_and_pull_fills_the_lake(
    orthanc: Orthanc, ct_study: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from voxlake.cli.main import main as cli

    peers = tmp_path / "peers.yaml"
    peers.write_text(f"ORTHANC: {{host: 127.0.0.1, port: {orthanc.dicom_port}}}\n")
    study = ct_study["StudyInstanceUID"]

    assert cli(["pacs", "find", "ORTHANC", "--peers", str(peers), "--level", "study",
                "--PatientID", ct_study["PatientID"]]) == 0
    out = capsys.readouterr().out
    assert study in out and out.rstrip().endswith("(1 row)")

    assert cli(["pacs", "pull", "ORTHANC", "--peers", str(peers), "--study", study,
                "--lake", str(tmp_path / "lake"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["ok"], result["completed"], result["status"]) == (True, SLICES, "0x0000")
    assert lake_sop_uids(voxlake.open(str(tmp_path / "lake"))) == ct_study["sop_uids"]
