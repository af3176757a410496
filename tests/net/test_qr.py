"""Query/Retrieve SCP: what DCMTK's findscu, movescu and getscu get from a lake of real files.

One lake for the module (a CT series of 134 instances, a GE CT series of 28, pydicom's MR_small and
CT_small), served on a free loopback port; expected answers come from reading the same files with
pydicom. Tests wait with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

import voxlake
from voxlake.net import DimseServer, Peer

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CT_SERIES = DATA / "pancreatic-ct-cbct-seg_pyvista" / "series"
GE_SERIES = DATA / "dcm_qa_ct" / "In" / "GE"
PYDICOM_FILES = DATA / "pydicom" / "test_files"
SINGLES = [PYDICOM_FILES / "MR_small.dcm", PYDICOM_FILES / "CT_small.dcm"]

DEADLINE = 60.0

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("findscu", "movescu", "getscu", "storescp", "storescu")),
    reason="DCMTK tools (findscu, movescu, getscu, storescp, storescu) not on PATH",
)


def headers(paths: list[Path]) -> list[Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


@pytest.fixture(scope="module")
def files() -> dict[str, list[Path]]:
    for path in (CT_SERIES, GE_SERIES, *SINGLES):
        if not path.exists():
            pytest.skip(f"test data not found: {path} (../shared/data is not beside the repository)")
    return {
        "ct": sorted(CT_SERIES.glob("*.dcm")),
        "ge": sorted(GE_SERIES.glob("*.dcm")),
        "singles": SINGLES,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def destination(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A storescp called DEST, the C-MOVE destination; yields its port and output folder."""
    folder = tmp_path_factory.mktemp("dest")
    port = free_port()
    proc = subprocess.Popen(
        ["storescp", "-aet", "DEST", "-od", str(folder), "+B", "-uf", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _listening(port), "storescp to listen")
        yield port, folder
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, list[Path]], destination: tuple[int, Path]
) -> Iterator[DimseServer]:
    lake = voxlake.open(str(tmp_path_factory.mktemp("qr") / "lake"))
    lake.ingest(str(CT_SERIES), workers=0)
    lake.ingest(str(GE_SERIES), workers=0)
    for path in SINGLES:
        lake.ingest(str(path), workers=0)
    peers = {"DEST": Peer("DEST", "127.0.0.1", destination[0])}
    with DimseServer(lake, port=0, peers=peers) as srv:
        yield srv


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(check, what: str, deadline: float = DEADLINE):  # type: ignore[no-untyped-def]
    end = time.monotonic() + deadline
    while not (result := check()):
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline} s waiting for {what}")
        time.sleep(0.1)
    return result


def findscu(server: DimseServer, tmp_path: Path, model: str, **keys: str) -> list[Dataset]:
    """Run findscu (``model`` -P or -S) with ``-k`` keys; returns the response identifiers."""
    out = tmp_path / f"find{len(list(tmp_path.glob('find*')))}"
    out.mkdir()
    args = [x for k, v in keys.items() for x in ("-k", f"{k}={v}")]
    r = subprocess.run(
        ["findscu", model, "-aec", "VOXLAKE", "-X", "-od", str(out), "127.0.0.1", str(server.port), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def pynetdicom_find(port: int, model: str, identifier: Dataset) -> list[tuple[int, Dataset | None]]:
    """(status, identifier) of every C-FIND response, to check statuses findscu does not report."""
    from pynetdicom import AE

    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title="VOXLAKE")
    assert assoc.is_established
    try:
        return [(status.Status, ds) for status, ds in assoc.send_c_find(identifier, model)]
    finally:
        assoc.release()


def dataset(**keys: str) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


# -- C-FIND -------------------------------------------------------------------------------------


def test_patient_level_wildcard_on_patient_name_is_case_insensitive_and_counts_instances(
    server: DimseServer, tmp_path: Path, files: dict[str, list[Path]]
) -> None:
    found = findscu(
        server,
        tmp_path,
        "-P",
        QueryRetrieveLevel="PATIENT",
        PatientName="pancreas*",
        PatientID="",
        NumberOfPatientRelatedInstances="",
        NumberOfPatientRelatedStudies="",
    )
    ct = headers(files["ct"][:1])[0]
    assert [(ds.PatientID, ds.PatientName) for ds in found] == [(ct.PatientID, ct.PatientName)]
    assert found[0].NumberOfPatientRelatedInstances == len(files["ct"])
    assert found[0].NumberOfPatientRelatedStudies == 1
    assert found[0].SpecificCharacterSet == "ISO_IR 192"
    assert found[0].RetrieveAETitle == "VOXLAKE"


def test_study_level_exact_patient_id_returns_the_requested_keys(server: DimseServer, tmp_path: Path) -> None:
    mr = headers([SINGLES[0]])[0]
    found = findscu(
        server,
        tmp_path,
        "-S",
        QueryRetrieveLevel="STUDY",
        PatientID=mr.PatientID,
        StudyInstanceUID="",
        StudyDate="",
        StudyTime="",
        PatientName="",
        ModalitiesInStudy="",
        NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances="",
        InstitutionName="",  # not a promoted column: read from the stored header
    )
    assert len(found) == 1
    ds = found[0]
    assert ds.QueryRetrieveLevel == "STUDY"
    assert ds.StudyInstanceUID == mr.StudyInstanceUID
    assert ds.StudyDate == mr.StudyDate
    assert ds.StudyTime == mr.StudyTime
    assert str(ds.PatientName) == str(mr.PatientName)
    assert ds.ModalitiesInStudy == "MR"
    assert (ds.NumberOfStudyRelatedSeries, ds.NumberOfStudyRelatedInstances) == (1, 1)
    assert ds.InstitutionName == mr.get("InstitutionName", "")


def test_universal_matching_lists_every_study_once(
    server: DimseServer, tmp_path: Path, files: dict[str, list[Path]]
) -> None:
    found = findscu(server, tmp_path, "-S", QueryRetrieveLevel="STUDY", StudyInstanceUID="")
    every = {h.StudyInstanceUID for h in headers(files["ct"][:1] + files["ge"][:1] + SINGLES)}
    assert sorted(ds.StudyInstanceUID for ds in found) == sorted(every)


def test_question_mark_matches_exactly_one_character(server: DimseServer, tmp_path: Path) -> None:
    mr = headers([SINGLES[0]])[0]  # PatientID 4MR1
    assert [
        ds.PatientID for ds in findscu(server, tmp_path, "-P", QueryRetrieveLevel="PATIENT", PatientID="4MR?")
    ] == [mr.PatientID]
    assert findscu(server, tmp_path, "-P", QueryRetrieveLevel="PATIENT", PatientID="4M?") == []


@pytest.mark.parametrize(
    ("date_range", "expected"),
    [
        ("20040101-20041231", {"MR_small.dcm", "CT_small.dcm"}),
        ("-20040301", {"CT_small.dcm"}),
        ("20040201-", {"MR_small.dcm", "pancreas"}),
        ("20040826", {"MR_small.dcm"}),
    ],
)
def test_study_date_range_matching(
    server: DimseServer, tmp_path: Path, files: dict[str, list[Path]], date_range: str, expected: set[str]
) -> None:
    by_name = {p.name: pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in SINGLES}
    by_name["pancreas"] = headers(files["ct"][:1])[0].StudyInstanceUID
    found = findscu(
        server, tmp_path, "-S", QueryRetrieveLevel="STUDY", StudyDate=date_range, StudyInstanceUID=""
    )
    assert {ds.StudyInstanceUID for ds in found} == {by_name[n] for n in expected}


def test_study_time_range_matching_includes_the_abbreviated_upper_bound(
    server: DimseServer, tmp_path: Path
) -> None:
    ct = headers([SINGLES[1]])[0]  # StudyTime 072730
    found = findscu(
        server, tmp_path, "-S", QueryRetrieveLevel="STUDY", StudyTime="0700-0727", StudyInstanceUID=""
    )
    assert [ds.StudyInstanceUID for ds in found] == [ct.StudyInstanceUID]


def test_uid_list_matching_returns_exactly_the_listed_studies(
    server: DimseServer, tmp_path: Path, files: dict[str, list[Path]]
) -> None:
    wanted = sorted({h.StudyInstanceUID for h in headers([SINGLES[0], files["ge"][0]])})
    found = findscu(server, tmp_path, "-S", QueryRetrieveLevel="STUDY", StudyInstanceUID="\\".join(wanted))
    assert sorted(ds.StudyInstanceUID for ds in found) == wanted


def test_modalities_in_study_matches_studies_that_contain_the_modality(
    server: DimseServer, tmp_path: Path
) -> None:
    mr = headers([SINGLES[0]])[0]
    found = findscu(
        server, tmp_path, "-S", QueryRetrieveLevel="STUDY", ModalitiesInStudy="MR", StudyInstanceUID=""
    )
    assert [ds.StudyInstanceUID for ds in found] == [mr.StudyInstanceUID]


def test_patient_root_series_and_image_levels(
    server: DimseServer, tmp_path: Path, files: dict[str, list[Path]]
) -> None:
    ge = headers(files["ge"])
    series = findscu(
        server,
        tmp_path,
        "-P",
        QueryRetrieveLevel="SERIES",
        PatientID=ge[0].PatientID,
        StudyInstanceUID=ge[0].StudyInstanceUID,
        SeriesInstanceUID="",
        Modality="",
        SeriesNumber="",
        NumberOfSeriesRelatedInstances="",
    )
    assert [(ds.SeriesInstanceUID, ds.Modality, ds.NumberOfSeriesRelatedInstances) for ds in series] == [
        (ge[0].SeriesInstanceUID, "CT", len(ge))
    ]
    assert series[0].SeriesNumber == ge[0].SeriesNumber
    images = findscu(
        server,
        tmp_path,
        "-P",
        QueryRetrieveLevel="IMAGE",
        PatientID=ge[0].PatientID,
        StudyInstanceUID=ge[0].StudyInstanceUID,
        SeriesInstanceUID=ge[0].SeriesInstanceUID,
        SOPInstanceUID="",
        InstanceNumber="",
        Rows="",
    )
    assert sorted((ds.SOPInstanceUID, ds.InstanceNumber) for ds in images) == sorted(
        (h.SOPInstanceUID, h.InstanceNumber) for h in ge
    )
    assert {ds.Rows for ds in images} == {h.Rows for h in ge}


def test_series_query_without_its_study_uid_is_refused_with_0xA900(server: DimseServer) -> None:
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as StudyRootFind

    identifier = dataset(QueryRetrieveLevel="SERIES", SeriesInstanceUID="")
    responses = pynetdicom_find(server.port, StudyRootFind, identifier)
    assert [status for status, _ in responses] == [0xA900]


def test_patient_level_does_not_exist_in_study_root(server: DimseServer) -> None:
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as StudyRootFind

    responses = pynetdicom_find(
        server.port, StudyRootFind, dataset(QueryRetrieveLevel="PATIENT", PatientID="")
    )
    assert [status for status, _ in responses] == [0xA900]


# -- C-MOVE and C-GET ---------------------------------------------------------------------------


def assert_same_instances(received: list[Path], sent: list[Path]) -> None:
    """Same SOP Instance UIDs, and the same Pixel Data bytes for each."""
    got = {ds.SOPInstanceUID: ds.PixelData for ds in map(pydicom.dcmread, received)}
    want = {ds.SOPInstanceUID: ds.PixelData for ds in map(pydicom.dcmread, sent)}
    assert sorted(got) == sorted(want)
    assert all(got[uid] == want[uid] for uid in want)


def test_c_move_sends_the_series_to_a_known_destination(
    server: DimseServer, files: dict[str, list[Path]], destination: tuple[int, Path]
) -> None:
    ge = headers(files["ge"][:1])[0]
    _, folder = destination
    r = subprocess.run(
        [
            "movescu",
            "-S",
            "-aec",
            "VOXLAKE",
            "-aem",
            "DEST",
            "-k",
            "QueryRetrieveLevel=SERIES",
            "-k",
            f"StudyInstanceUID={ge.StudyInstanceUID}",
            "-k",
            f"SeriesInstanceUID={ge.SeriesInstanceUID}",
            "127.0.0.1",
            str(server.port),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    received = wait_for(
        lambda: len(got := [p for p in folder.iterdir() if p.is_file()]) >= len(files["ge"]) and got,
        "the moved instances",
    )
    assert_same_instances(received, files["ge"])


def test_c_move_to_an_unknown_destination_fails_with_0xA801(server: DimseServer) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as StudyRootMove

    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(StudyRootMove)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="VOXLAKE")
    assert assoc.is_established
    try:
        identifier = dataset(QueryRetrieveLevel="STUDY", StudyInstanceUID="1.2.3")
        statuses = [status.Status for status, _ in assoc.send_c_move(identifier, "NOWHERE", StudyRootMove)]
    finally:
        assoc.release()
    assert statuses == [0xA801]


def test_c_get_of_a_series_retrieves_every_instance(
    server: DimseServer, tmp_path: Path, files: dict[str, list[Path]]
) -> None:
    ct = headers(files["ct"][:1])[0]
    r = subprocess.run(
        [
            "getscu",
            "-S",
            "-aec",
            "VOXLAKE",
            "-od",
            str(tmp_path),
            "-k",
            "QueryRetrieveLevel=SERIES",
            "-k",
            f"StudyInstanceUID={ct.StudyInstanceUID}",
            "-k",
            f"SeriesInstanceUID={ct.SeriesInstanceUID}",
            "127.0.0.1",
            str(server.port),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert_same_instances([p for p in tmp_path.iterdir() if p.is_file()], files["ct"])


# -- concurrency --------------------------------------------------------------------------------


def test_c_find_answers_while_a_series_is_arriving(tmp_path: Path, files: dict[str, list[Path]]) -> None:
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as StudyRootFind

    lake = voxlake.open(str(tmp_path / "lake"))
    lake.ingest(str(SINGLES[0]), workers=0)
    mr = headers([SINGLES[0]])[0]
    ct = headers(files["ct"][:1])[0]
    study_query = dataset(QueryRetrieveLevel="STUDY", StudyInstanceUID="")

    def studies() -> set[str]:
        responses = pynetdicom_find(srv.port, StudyRootFind, study_query)
        assert responses[-1][0] == 0x0000
        return {ds.StudyInstanceUID for status, ds in responses if status == 0xFF00}

    with DimseServer(lake, port=0, commit_interval=0.3) as srv:
        sender = subprocess.Popen(
            ["storescu", "-aec", "VOXLAKE", "127.0.0.1", str(srv.port), *map(str, files["ct"])],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        answered_during_store = 0
        try:
            while sender.poll() is None:
                found = studies()
                if sender.poll() is None:  # the store was still going when the answer came
                    answered_during_store += 1
                    assert mr.StudyInstanceUID in found
        finally:
            out, _ = sender.communicate(timeout=120)
        assert sender.returncode == 0, out
        assert answered_during_store > 0, "storescu finished before a C-FIND could run"
        wait_for(lambda: studies() == {mr.StudyInstanceUID, ct.StudyInstanceUID}, "the committed study")
