"""The DIMSE client: echo, push (C-STORE from the lake) and what failures look like.

Peers are DCMTK's storescp, started by each test on a free loopback port; pulls run against voxlake's
own DimseServer only once it offers C-FIND/C-GET/C-MOVE. Waits use deadlines, never fixed sleeps.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

import voxlake
from voxlake.cli.main import main as cli
from voxlake.net import DimseServer, Peer
from voxlake.net.scu import AssociationError, echo, find, pull, push, resolve_peer

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CT_SERIES = DATA / "pancreatic-ct-cbct-seg_pyvista" / "series"
RLE_FILE = DATA / "pydicom" / "test_files" / "SC_rgb_rle.dcm"
DEADLINE = 30.0

pytestmark = pytest.mark.skipif(not shutil.which("storescp"), reason="DCMTK storescp not on PATH")


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"test data not found: {path} (../shared/data is not beside the repository)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dataset_bytes(path: Path) -> bytes:
    """The file without its preamble and file meta: what DIMSE carries (PS3.10 7.1)."""
    with open(path, "rb") as fp:
        pydicom.filereader.read_preamble(fp, force=False)
        pydicom.filereader._read_file_meta_info(fp)
        return fp.read()


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[voxlake.Lake]:
    """Five CT slices (Implicit VR Little Endian) and one RLE-compressed secondary capture."""
    source = tmp_path_factory.mktemp("source")
    for f in sorted(need(CT_SERIES).glob("*.dcm"))[:5]:
        shutil.copy(f, source / f.name)
    shutil.copy(need(RLE_FILE), source / RLE_FILE.name)
    lake = voxlake.open(str(tmp_path_factory.mktemp("lake")))
    lake.ingest(str(source), workers=0)
    yield lake
    lake.close()


class StoreSCP:
    """A storescp process writing what it receives, bit for bit, to ``out``."""

    def __init__(self, out: Path, *options: str) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.peer = Peer("STORESCP", "127.0.0.1", self.port)
        self.proc = subprocess.Popen(
            ["storescp", "-aet", "STORESCP", "-od", str(out), *options, str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        end = time.monotonic() + DEADLINE
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > end or self.proc.poll() is not None:
                    self.stop()
                    raise AssertionError("storescp did not start listening") from None
                time.sleep(0.05)

    def received(self) -> list[Path]:
        return sorted(p for p in self.out.iterdir() if p.is_file())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    scp = StoreSCP(tmp_path / "received", "+B")
    yield scp
    scp.stop()


def lake_rows(lake: voxlake.Lake, where: str) -> list[tuple[str, str]]:
    return lake.sql(f"SELECT SOPInstanceUID, uri FROM instances WHERE {where} ORDER BY 1").fetchall()


# -- echo ---------------------------------------------------------------------------------------


def test_echo_returns_the_peers_success_status(storescp: StoreSCP) -> None:
    assert echo(storescp.peer) == 0x0000


def test_echo_to_a_peer_that_is_down_raises_a_clear_association_error() -> None:
    with pytest.raises(AssociationError, match=r"NOBODY at 127\.0\.0\.1:\d+ could not be reached"):
        echo(Peer("NOBODY", "127.0.0.1", free_port()), timeout=5)


# -- push ---------------------------------------------------------------------------------------


def test_push_sends_each_selected_file_with_its_dataset_bytes_untouched(
    lake: voxlake.Lake, storescp: StoreSCP
) -> None:
    result = push(lake, storescp.peer, where="Modality = 'CT'")

    expected = lake_rows(lake, "Modality = 'CT'")
    assert result.ok and result.sent == len(expected) == 5
    assert {(i.SOPInstanceUID, i.status, i.transfer_syntax) for i in result.instances} == {
        (sop, 0x0000, "1.2.840.10008.1.2") for sop, _ in expected
    }
    received = {pydicom.dcmread(p).SOPInstanceUID: dataset_bytes(p) for p in storescp.received()}
    assert received == {sop: dataset_bytes(Path(uri)) for sop, uri in expected}


def test_push_falls_back_to_explicit_vr_little_endian_only_when_the_peer_refuses_the_files_syntax(
    lake: voxlake.Lake, storescp: StoreSCP
) -> None:
    # storescp accepts uncompressed syntaxes only by default; the file is RLE Lossless.
    result = push(lake, storescp.peer, where="TransferSyntaxUID = '1.2.840.10008.1.2.5'")

    assert result.ok and [i.transfer_syntax for i in result.instances] == ["1.2.840.10008.1.2.1"]
    (path,) = storescp.received()
    sent = pydicom.dcmread(path)
    assert sent.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert (sent.pixel_array == pydicom.dcmread(RLE_FILE).pixel_array).all()


def test_push_sends_instances_that_live_inside_a_zip_archive(tmp_path: Path, storescp: StoreSCP) -> None:
    import zipfile

    slices = sorted(need(CT_SERIES).glob("*.dcm"))[:3]
    with zipfile.ZipFile(tmp_path / "study.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for f in slices:
            zf.write(f, f"nested/{f.name}")
    lake = voxlake.open(str(tmp_path / "lake"))
    lake.ingest(str(tmp_path / "study.zip"), workers=0)
    assert all(uri.startswith("zip://") for _sop, uri in lake_rows(lake, "TRUE"))

    result = push(lake, storescp.peer, where="TRUE")

    assert result.ok and result.sent == 3
    received = {pydicom.dcmread(p).SOPInstanceUID: dataset_bytes(p) for p in storescp.received()}
    assert received == {pydicom.dcmread(f).SOPInstanceUID: dataset_bytes(f) for f in slices}


def test_push_to_a_peer_that_is_down_marks_nothing_sent_after_its_retries(lake: voxlake.Lake) -> None:
    result = push(lake, Peer("DOWN", "127.0.0.1", free_port()), where="TRUE", retries=1, retry_delay=0, timeout=5)

    assert not result.ok and result.sent == 0 and len(result.instances) == 6
    for item in result.instances:
        assert (item.status, item.attempts) == (None, 2)
        assert "DOWN at 127.0.0.1" in item.error and "could not be reached" in item.error


def test_push_to_a_peer_that_aborts_mid_transfer_marks_the_unanswered_instances_failed(
    lake: voxlake.Lake, tmp_path: Path
) -> None:
    scp = StoreSCP(tmp_path / "aborting", "--abort-after")  # aborts every association after the first C-STORE-RQ
    try:
        result = push(lake, scp.peer, where="Modality = 'CT'", retries=1, retry_delay=0, timeout=10)
    finally:
        scp.stop()

    assert result.sent == 0 and len(result.failed) == 5
    assert all(i.status is None for i in result.instances)
    assert any("no C-STORE response" in i.error for i in result.instances)
    assert all("dropped the association" in i.error or "no C-STORE response" in i.error for i in result.instances)


def test_push_with_a_where_that_selects_nothing_sends_nothing(lake: voxlake.Lake) -> None:
    result = push(lake, Peer("UNUSED", "127.0.0.1", 1), where="Modality = 'SEG'")
    assert result.ok and result.instances == []


# -- peers and the CLI --------------------------------------------------------------------------


def test_resolve_peer_reads_voxlake_peers_and_names_the_known_peers_when_one_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    peers = tmp_path / "peers.yaml"
    peers.write_text("ORTHANC: {host: 127.0.0.1, port: 4242}\n")
    monkeypatch.setenv("VOXLAKE_PEERS", str(peers))

    assert resolve_peer("ORTHANC") == Peer("ORTHANC", "127.0.0.1", 4242)
    with pytest.raises(voxlake.InvalidArgumentError, match="known: ORTHANC"):
        resolve_peer("PACS")


def test_cli_pacs_echo_and_push_print_json(
    lake: voxlake.Lake, storescp: StoreSCP, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    peers = tmp_path / "peers.yaml"
    peers.write_text(f"STORESCP: {{host: 127.0.0.1, port: {storescp.port}}}\n")

    assert cli(["pacs", "echo", "STORESCP", "--peers", str(peers), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "0x0000"

    assert cli(["pacs", "push", "STORESCP", "--peers", str(peers), "--lake", lake.uri,
                "--where", "Modality = 'CT' AND InstanceNumber <= 2", "--quiet", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["sent"], out["failed"]) == (2, 0)
    assert [i["status"] for i in out["instances"]] == ["0x0000", "0x0000"]


def test_cli_pacs_push_to_a_peer_that_is_down_fails_with_one_line(
    lake: voxlake.Lake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    peers = tmp_path / "peers.yaml"
    peers.write_text(f"DOWN: {{host: 127.0.0.1, port: {free_port()}}}\n")

    assert cli(["pacs", "echo", "DOWN", "--peers", str(peers), "--timeout", "5"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("voxlake: error: DOWN at 127.0.0.1")
    assert cli(["pacs", "push", "DOWN", "--peers", str(peers), "--lake", lake.uri, "--where", "TRUE",
                "--retries", "0", "--quiet", "--timeout", "5"]) == 1
    assert capsys.readouterr().out.startswith("sent 0 of 6 instances; 6 failed")


# -- pull from voxlake's own server (once it is a Query/Retrieve SCP) ---------------------------


@pytest.mark.parametrize("method", ["get", "move"])
def test_pull_copies_a_study_from_a_voxlake_server_into_another_lake(
    lake: voxlake.Lake, tmp_path: Path, method: str
) -> None:
    handler = {"get": "on_c_get", "move": "on_c_move"}[method]
    if not (hasattr(DimseServer, "on_c_find") and hasattr(DimseServer, handler)):
        pytest.skip(f"DimseServer has no C-FIND / {handler} yet")
    (study,) = {s for (s,) in lake.sql("SELECT StudyInstanceUID FROM instances WHERE Modality = 'CT'").fetchall()}
    target = voxlake.open(str(tmp_path / "target"))
    port = free_port()  # where we receive a C-MOVE; the source knows us by it
    with DimseServer(lake, ae_title="SOURCE", port=0, peers={"VOXLAKE": Peer("VOXLAKE", "127.0.0.1", port)}) as src:
        found = find(Peer("SOURCE", "127.0.0.1", src.port), "study", {"StudyInstanceUID": study})
        assert [m["StudyInstanceUID"] for m in found] == [study]
        result = pull(target, Peer("SOURCE", "127.0.0.1", src.port), study=study, method=method, port=port)
    assert result.ok and result.completed == 5
    assert target.sql("SELECT count(*) FROM instances").fetchall() == [(5,)]


def test_cli_dimse_serve_prints_where_it_listens_and_stops_on_sigterm(tmp_path: Path) -> None:
    import signal
    import sys

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "voxlake.cli.main", "dimse", "serve", "--lake", str(tmp_path / "lake"),
         "--port", str(port), "--ae", "VOXTEST"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"VOXTEST listening on 127.0.0.1:{port}, landing into ")
        assert echo(Peer("VOXTEST", "127.0.0.1", port)) == 0x0000
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_pull_from_a_peer_that_aborts_mid_c_get_keeps_and_commits_only_whole_instances(
    lake: voxlake.Lake, tmp_path: Path
) -> None:
    from pynetdicom import AE, StoragePresentationContexts, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

    files = [Path(uri) for (uri,) in lake.sql("SELECT uri FROM instances WHERE Modality = 'CT' ORDER BY 1").fetchall()]

    def on_c_get(event: object) -> Iterator[object]:
        yield len(files)
        for f in files[:2]:
            yield 0xFF00, pydicom.dcmread(f)
        event.assoc.abort()  # the peer goes away with 3 sub-operations left

    scp = AE(ae_title="DROPPER")
    scp.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    for cx in StoragePresentationContexts:
        scp.add_supported_context(cx.abstract_syntax, scp_role=True, scu_role=False)
    server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_GET, on_c_get)])
    target = voxlake.open(str(tmp_path / "target"))
    try:
        result = pull(target, Peer("DROPPER", "127.0.0.1", server.server_address[1]), study="1.2.3", timeout=10)
    finally:
        server.shutdown()

    assert not result.ok and "dropped the association" in result.error
    assert (result.received, result.committed) == (2, 2)
    expected = sorted(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files[:2])
    assert sorted(s for (s,) in target.sql("SELECT SOPInstanceUID FROM instances").fetchall()) == expected
    assert not list((tmp_path / "target" / "dicom").rglob(".*.tmp"))
