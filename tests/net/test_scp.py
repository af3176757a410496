"""The Storage SCP: what a C-STORE Success promises, and what bad input gets.

Real DCMTK clients (echoscu, storescu) against a server on a free loopback port, and real files from
../shared/data. Commits run every 0.3 s; tests wait on the lake with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

import voxlake
from voxlake.net import DimseServer, Peer, load_peers
from voxlake.net.store import LOCK_NAME, LandingArea

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CT_SERIES = DATA / "pancreatic-ct-cbct-seg_pyvista" / "series"
PYDICOM_FILES = DATA / "pydicom" / "test_files"

INTERVAL = 0.3
DEADLINE = 30.0  # seconds; generous, a batch normally commits within a second

#: Compressed files and the storescu option that proposes their own transfer syntax.
COMPRESSED = {
    "JPEG2000.dcm": "-xw",
    "SC_rgb_rle.dcm": "-xr",
    "MR_small_jpeg_ls_lossless.dcm": "-xt",
    "JPEG-lossy.dcm": "-xx",
    "SC_rgb_jpeg_dcmtk.dcm": "-xy",
}

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("echoscu", "storescu")),
    reason="DCMTK tools (echoscu, storescu) not on PATH",
)


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"test data not found: {path} (../shared/data is not beside the repository)")
    return path


@pytest.fixture(scope="module")
def ct_files() -> list[Path]:
    files = sorted(need(CT_SERIES).glob("*.dcm"))
    if len(files) < 100:
        pytest.skip(f"test data incomplete: {CT_SERIES} holds {len(files)} files")
    return files


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DimseServer]:
    with DimseServer(voxlake.open(str(tmp_path / "lake")), port=0, commit_interval=INTERVAL) as srv:
        yield srv


def wait_for(check: Callable[[], Any], what: str, deadline: float = DEADLINE) -> Any:
    end = time.monotonic() + deadline
    while True:
        try:
            result = check()
        except voxlake.LakeNotFoundError:
            result = None
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline} s waiting for {what}")
        time.sleep(0.1)


def history(lake_path: str) -> list[tuple[str, str, str, str]]:
    """(SOPInstanceUID, uri, sha256, TransferSyntaxUID) of every committed instance version."""
    with voxlake.open(lake_path) as lake:
        return lake.sql(
            "SELECT SOPInstanceUID, uri, sha256, TransferSyntaxUID FROM instances_history ORDER BY uri"
        ).fetchall()


def wait_for_rows(lake_path: str, n: int, what: str) -> list[tuple[str, str, str, str]]:
    """The committed instance versions, once there are at least ``n``."""
    return wait_for(lambda: (rows := history(lake_path)) and len(rows) >= n and rows, what)


def storescu(port: int, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run storescu; the last of ``args`` is the file or folder to send."""
    options, files = map(str, args[:-1]), str(args[-1])
    return subprocess.run(
        ["storescu", "-aec", "VOXLAKE", *options, "127.0.0.1", str(port), files],
        capture_output=True,
        text=True,
        timeout=120,
    )


def sop_uid(path: Path) -> str:
    return pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID


def send_file_as_is(port: int, path: Path, aet: str) -> Any:
    """C-STORE a file's dataset bytes untouched (pynetdicom's chunked sending reads only the file
    meta; storescu and pynetdicom's default decode and re-encode). Returns the response status."""
    from pynetdicom import AE, _config

    meta = pydicom.filereader.read_file_meta_info(path)
    ae = AE(ae_title=aet)
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="VOXLAKE")
    assert assoc.is_established
    chunked, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        return assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        assoc.release()


def landed_files(server: DimseServer) -> list[Path]:
    root = server.landing.root
    files = root.rglob("*") if root.exists() else []
    return [p for p in files if p.is_file() and p.name != LOCK_NAME]  # the lock is not an instance


def dataset_bytes(path: Path) -> bytes:
    """The file without its preamble and file meta: what DIMSE carries (PS3.10 7.1)."""
    with open(path, "rb") as fp:
        pydicom.filereader.read_preamble(fp, force=False)
        pydicom.filereader._read_file_meta_info(fp)
        return fp.read()


# -- verification -------------------------------------------------------------------------------


def test_c_echo_succeeds(server: DimseServer) -> None:
    r = subprocess.run(
        ["echoscu", "-aec", "VOXLAKE", "127.0.0.1", str(server.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stdout + r.stderr


# -- storage ------------------------------------------------------------------------------------


def test_storescu_study_lands_in_the_lake_with_the_hash_of_the_stored_file(
    server: DimseServer, ct_files: list[Path]
) -> None:
    t0 = time.perf_counter()
    r = storescu(server.port, "+sd", "+r", CT_SERIES)
    seconds = time.perf_counter() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    logging.getLogger(__name__).info("storescu: %d instances in %.2f s", len(ct_files), seconds)
    sent = {sop_uid(p) for p in ct_files}
    rows = wait_for_rows(server.lake.uri, len(sent), "the commit")
    assert {r[0] for r in rows} == sent
    assert len(rows) == len(sent)
    for _, uri, sha, ts in rows:
        assert Path(uri).is_relative_to(server.landing.root)
        assert sha == hashlib.sha256(Path(uri).read_bytes()).hexdigest()
        assert ts == "1.2.840.10008.1.2"


def test_compressed_syntaxes_are_stored_as_received(server: DimseServer) -> None:
    need(PYDICOM_FILES)
    files = {
        PYDICOM_FILES / name: flag for name, flag in COMPRESSED.items() if (PYDICOM_FILES / name).exists()
    }
    if not files:
        pytest.skip(f"no compressed test files in {PYDICOM_FILES}")
    for path, flag in files.items():
        r = storescu(server.port, flag, path)
        assert r.returncode == 0, f"{path.name}: {r.stdout}{r.stderr}"
    rows = wait_for_rows(server.lake.uri, len(files), "the commit")
    by_sop = {sop: (Path(uri), ts) for sop, uri, _, ts in rows}
    for path in files:
        sent = pydicom.dcmread(path)
        landed, ts = by_sop[sent.SOPInstanceUID]
        assert ts == sent.file_meta.TransferSyntaxUID, path.name
        assert pydicom.dcmread(landed).PixelData == sent.PixelData, f"{path.name}: fragments changed"


def test_dataset_bytes_are_kept_exactly_as_sent(server: DimseServer) -> None:
    """storescu re-encodes what it sends, so only a sender that keeps the bytes can show this."""
    path = need(PYDICOM_FILES / "JPEG2000.dcm")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert send_file_as_is(server.port, path, "RAWSCU").Status == 0x0000
    landed = server.landing.versions(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert [dataset_bytes(p) for p in landed] == [dataset_bytes(path)]


def test_eight_concurrent_associations_lose_and_duplicate_nothing(
    server: DimseServer, ct_files: list[Path]
) -> None:
    parts = [ct_files[i::8] for i in range(8)]
    procs = [
        subprocess.Popen(
            [
                "storescu",
                "-aet",
                f"SCU{i}",
                "-aec",
                "VOXLAKE",
                "127.0.0.1",
                str(server.port),
                *map(str, part),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i, part in enumerate(parts)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out
    sent = sorted(sop_uid(p) for p in ct_files)
    rows = wait_for_rows(server.lake.uri, len(sent), "the commits")
    assert sorted(r[0] for r in rows) == sent


def test_identical_bytes_sent_again_add_nothing_and_different_bytes_add_a_version(
    server: DimseServer, ct_files: list[Path]
) -> None:
    path = ct_files[0]
    assert storescu(server.port, path).returncode == 0
    assert storescu(server.port, path).returncode == 0
    changed = server.landing.root.parent / "changed.dcm"
    ds = pydicom.dcmread(path)
    ds.SeriesDescription = "re-sent with a correction"
    # Study and series kept, so both versions share a folder.
    ds.save_as(changed)
    assert storescu(server.port, changed).returncode == 0
    rows = wait_for_rows(server.lake.uri, 2, "the commits")
    assert [Path(r[1]).name for r in rows] == [f"{ds.SOPInstanceUID}.2.dcm", f"{ds.SOPInstanceUID}.dcm"]
    with voxlake.open(server.lake.uri) as lake:
        assert lake.sql("SELECT SeriesDescription FROM instances").fetchall() == [
            ("re-sent with a correction",)
        ]


# -- durability ---------------------------------------------------------------------------------


def _start_subprocess_server(lake: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voxlake.net",
            "--lake",
            str(lake),
            "--port",
            "0",
            "--commit-interval",
            str(INTERVAL),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    match = re.search(r"listening on .*:(\d+)", line)
    assert match, f"server did not start: {line!r}"
    return proc, int(match.group(1))


def test_every_acknowledged_instance_is_in_the_lake_once_after_a_crash(
    tmp_path: Path, ct_files: list[Path]
) -> None:
    lake = tmp_path / "lake"
    landing = lake / "dicom"
    server, port = _start_subprocess_server(lake)
    try:
        sender = subprocess.Popen(
            ["storescu", "-v", "-aec", "VOXLAKE", "127.0.0.1", str(port), *map(str, ct_files)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        wait_for(lambda: len(list(landing.rglob("*.dcm"))) >= 30, "30 landed instances")
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
        out, _ = sender.communicate(timeout=60)
    finally:
        server.kill()
    acknowledged = len(re.findall(r"Received Store Response \(Success\)", out))
    landed = {sop_uid(p) for p in landing.rglob("*.dcm")}
    assert 0 < acknowledged <= len(landed) < len(ct_files), "the crash was not mid-stream"

    server, port = _start_subprocess_server(lake)
    try:
        rows = wait_for_rows(str(lake), len(landed), "the recovery commit")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    sops = [r[0] for r in rows]
    assert sorted(sops) == sorted(landed)  # every landed (so every acknowledged) instance, none twice
    assert not list(landing.rglob(".*.tmp"))


# -- bad input ----------------------------------------------------------------------------------


def test_unknown_calling_ae_title_is_rejected_when_peers_are_required(tmp_path: Path) -> None:
    peers_file = tmp_path / "peers.yaml"
    peers_file.write_text("KNOWN: {host: 127.0.0.1, port: 4242}\n")
    peers = load_peers(peers_file)
    assert peers == {"KNOWN": Peer("KNOWN", "127.0.0.1", 4242)}
    lake = voxlake.open(str(tmp_path / "lake"))
    with DimseServer(lake, port=0, peers=peers, require_known_peers=True, commit_interval=INTERVAL) as srv:

        def echo(aet: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["echoscu", "-aet", aet, "-aec", "VOXLAKE", "127.0.0.1", str(srv.port)],
                capture_output=True,
                text=True,
                timeout=30,
            )

        assert echo("KNOWN").returncode == 0
        stranger = echo("STRANGER")
        assert stranger.returncode != 0
        assert "Calling AE Title Not Recognized" in stranger.stdout + stranger.stderr


def test_requiring_known_peers_without_peers_is_refused(tmp_path: Path) -> None:
    with pytest.raises(voxlake.InvalidArgumentError, match="needs peers"):
        DimseServer(voxlake.open(str(tmp_path / "lake")), port=0, require_known_peers=True)


def test_unsupported_sop_class_is_refused_at_negotiation(server: DimseServer) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import ModalityWorklistInformationFind, Verification

    ae = AE(ae_title="SCU")
    ae.add_requested_context(Verification)
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="VOXLAKE")
    assert assoc.is_established
    assert [cx.abstract_syntax for cx in assoc.rejected_contexts] == [ModalityWorklistInformationFind]
    assoc.release()


def test_a_dataset_that_cannot_be_parsed_gets_0xC210_and_leaves_no_file(
    server: DimseServer, ct_files: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    whole = ct_files[0].read_bytes()
    sop = sop_uid(ct_files[0])
    # The real file meta, then the dataset cut inside an element's value: a sender that lied.
    meta_end = len(whole) - len(dataset_bytes(ct_files[0]))
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(whole[: meta_end + 600])
    with caplog.at_level(logging.WARNING, logger="voxlake.net"):
        status = send_file_as_is(server.port, broken, "BROKEN")
    assert status.Status == 0xC210
    assert any("BROKEN" in m and sop in m and "0xC210" in m for m in caplog.messages)
    assert landed_files(server) == []


def test_a_dataset_without_study_and_series_uids_gets_0xA900_and_leaves_no_file(
    server: DimseServer, caplog: pytest.LogCaptureFixture
) -> None:
    path = need(PYDICOM_FILES / "JPEGLSNearLossless_08.dcm")  # a real file that lacks both
    with caplog.at_level(logging.WARNING, logger="voxlake.net"):
        status = send_file_as_is(server.port, path, "NOUIDS")
    assert status.Status == 0xA900
    assert any("NOUIDS" in m and sop_uid(path) in m and "0xA900" in m for m in caplog.messages)
    assert landed_files(server) == []


# -- the landing area ---------------------------------------------------------------------------


def test_landing_area_refuses_uids_that_would_leave_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a valid UID"):
        LandingArea(tmp_path).store(b"x", "1.2", "../../etc", "1.3")
    assert not any(tmp_path.iterdir())


def test_landing_area_temporaries_left_by_a_crash_are_removed(tmp_path: Path) -> None:
    area = LandingArea(tmp_path)
    area.store(b"DICM", "1.2", "1.2.3", "1.2.3.4")
    stale = tmp_path / "1.2" / "1.2.3" / ".1.2.3.5.abc.tmp"
    stale.write_bytes(b"half")
    assert area.remove_temporaries() == [stale]
    assert os.listdir(tmp_path / "1.2" / "1.2.3") == ["1.2.3.4.dcm"]
