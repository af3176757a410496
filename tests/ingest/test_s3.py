"""Ingest against a real S3 API on localhost (moto's server): S3 sources, S3 lakes, reruns.

Every S3 result is compared with ingesting the same files from a local folder.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import voxlake

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CT_SERIES = DATA / "pancreatic-ct-cbct-seg_pyvista" / "series"
PYDICOM = DATA / "pydicom" / "test_files"
PARAMAP_ZIP = DATA / "dcmqi" / "data" / "paramaps" / "pm-example-dcm.zip"
PYDICOM_FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "MR_truncated.dcm", "README.txt")
CT_SLICES = 134  # the whole series; every slice one instance

SRC_BUCKET = "src-bucket"
SRC_PREFIX = "incoming"
SRC_URL = f"s3://{SRC_BUCKET}/{SRC_PREFIX}"
LAKE_BUCKET = "lake-bucket"


def _build_tree(root: Path) -> int:
    """The source as a local folder; returns the number of CT slices in it."""
    slices = sorted(CT_SERIES.glob("*.dcm"))[:CT_SLICES]
    (root / "ct").mkdir(parents=True)
    for f in slices:
        shutil.copyfile(f, root / "ct" / f.name)
    (root / "pydicom").mkdir()
    for name in PYDICOM_FILES:
        shutil.copyfile(PYDICOM / name, root / "pydicom" / name)
    (root / "archives").mkdir()
    shutil.copyfile(PARAMAP_ZIP, root / "archives" / PARAMAP_ZIP.name)
    # Two files that end as error rows: a cut-off archive and a DICOM file with a broken meta group.
    (root / "broken").mkdir()
    (root / "broken" / "truncated.zip").write_bytes(PARAMAP_ZIP.read_bytes()[:4096])
    (root / "broken" / "bad-meta.dcm").write_bytes(
        b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + b"x" * 50
    )
    return len(slices)


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    missing = [p for p in (CT_SERIES, PARAMAP_ZIP, *(PYDICOM / n for n in PYDICOM_FILES)) if not p.exists()]
    if missing:
        pytest.skip(f"test data not found (../shared/data): {missing[0]}")
    root = tmp_path_factory.mktemp("incoming")
    return root, _build_tree(root)


# The server runs in a child process: delta-rs holds the GIL while it waits on some requests
# (DeltaTable.is_deltatable does), so a server thread in this interpreter would never answer them.
_SERVER = """
import logging
import sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""


@pytest.fixture(scope="module")
def s3(source_tree: tuple[Path, int]) -> Iterator[str]:
    """A moto S3 server with the source uploaded; yields its endpoint URL."""
    pytest.importorskip("s3fs")
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("moto.server")
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(proc.stdout.readline())  # type: ignore[union-attr]
    except ValueError:
        proc.kill()
        pytest.fail("moto server did not start")
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_S3_LOCKING_PROVIDER"):
                mp.delenv(key, raising=False)
            for key, value in env.items():
                mp.setenv(key, value)
            client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            client.create_bucket(Bucket=SRC_BUCKET)
            client.create_bucket(Bucket=LAKE_BUCKET)
            root = source_tree[0]
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                client.upload_file(str(path), SRC_BUCKET, f"{SRC_PREFIX}/{path.relative_to(root).as_posix()}")
            yield endpoint
            import fsspec

            fsspec.filesystem("s3").clear_instance_cache()
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _rows(lake: voxlake.Lake, root: str) -> dict[str, tuple[str | None, str | None]]:
    """uri (relative to the source root) -> (SOPInstanceUID, sha256) of every instance."""
    out = {}
    for uri, uid, sha in lake.sql("SELECT uri, SOPInstanceUID, sha256 FROM instances").fetchall():
        assert root in uri, uri
        out[uri.replace(root, "<root>")] = (uid, sha)
    return out


_ERRORS = "SELECT uri, error_class FROM ingest_errors"


def _counts(summary: object) -> tuple[int, int, int]:
    return (summary.indexed, summary.skipped, summary.errors)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def local_reference(source_tree: tuple[Path, int], tmp_path_factory: pytest.TempPathFactory):
    """The same files ingested from the local folder into a local lake."""
    root = str(source_tree[0])
    lake = voxlake.open(str(tmp_path_factory.mktemp("local-lake")))
    summary = lake.ingest(root, workers=2)
    rows = _rows(lake, root)
    errors = sorted((u.replace(root, "<root>"), c) for u, c in lake.sql(_ERRORS).fetchall())
    lake.close()
    return summary, rows, errors


@pytest.fixture(scope="module")
def s3_lake(s3: str, local_reference):
    lake = voxlake.open(f"s3://{LAKE_BUCKET}/lakes/a")
    assert not lake.exists()
    summary = lake.ingest(SRC_URL, workers=2)
    yield lake, summary
    lake.close()


def _check_against_reference(lake: voxlake.Lake, summary: object, local_reference) -> None:
    ref_summary, ref_rows, ref_errors = local_reference
    assert _counts(summary) == _counts(ref_summary)
    assert summary.indexed > 0 and summary.skipped > 0 and summary.errors == 2  # type: ignore[attr-defined]
    rows = _rows(lake, SRC_URL)
    assert rows == ref_rows
    assert {uid for uid, _ in rows.values()} == {uid for uid, _ in ref_rows.values()}
    assert all(sha and len(sha) == 64 for _, sha in rows.values())
    uris = [u for (u,) in lake.sql("SELECT uri FROM instances").fetchall()]
    assert all(u.startswith(f"{SRC_URL}/") or u.startswith("zip://") for u in uris)
    members = [u for u in uris if u.startswith("zip://")]
    assert members
    assert all(u.endswith(f"::{SRC_URL}/archives/{PARAMAP_ZIP.name}") for u in members)
    errors = sorted((u.replace(SRC_URL, "<root>"), c) for u, c in lake.sql(_ERRORS).fetchall())
    assert errors == ref_errors
    assert [u for u, _ in errors] == ["<root>/broken/bad-meta.dcm", "<root>/broken/truncated.zip"]
    files = dict(lake.sql("SELECT uri, status FROM ingest_files").fetchall())
    assert files[f"{SRC_URL}/pydicom/README.txt"] == "skipped"
    assert files[f"{SRC_URL}/archives/{PARAMAP_ZIP.name}"] == "archive"


def test_s3_source_into_local_lake(local_reference, s3: str, tmp_path: Path) -> None:
    # local_reference comes first: its workers start the forkserver before the AWS variables are
    # set, so this run's workers only have them because the engine hands them over.
    lake = voxlake.open(str(tmp_path / "lake"))
    summary = lake.ingest(SRC_URL, workers=2)
    assert summary.committed
    _check_against_reference(lake, summary, local_reference)
    (source,) = {s for (s,) in lake.sql("SELECT DISTINCT source FROM ingest_runs").fetchall()}
    assert source == SRC_URL
    lake.close()


def test_s3_source_into_s3_lake(s3: str, s3_lake, local_reference) -> None:
    lake, summary = s3_lake
    assert summary.committed
    assert lake.exists()
    assert set(lake.versions().values()) == {1}  # created, then one run
    _check_against_reference(lake, summary, local_reference)
    # The lake's Parquet files live in the lake bucket, not on this machine.
    import fsspec

    fs = fsspec.filesystem("s3", endpoint_url=s3)
    fs.invalidate_cache()
    assert fs.glob(f"{LAKE_BUCKET}/lakes/a/instances/*.parquet")
    assert fs.exists(f"{LAKE_BUCKET}/lakes/a/instances/_delta_log/00000000000000000001.json")


def test_s3_lake_incremental_rerun(s3_lake) -> None:
    lake, first = s3_lake
    before = lake.versions()
    n_instances = lake.sql("SELECT count(*) FROM instances_history").fetchall()[0][0]
    n_files = lake.sql("SELECT count(*) FROM ingest_files").fetchall()[0][0]
    again = lake.ingest(SRC_URL, workers=2)
    assert again.indexed == again.skipped == again.errors == 0
    assert again.files_seen == first.files_seen
    assert again.files_unchanged == first.files_seen
    assert not again.committed
    assert lake.versions() == before
    assert lake.sql("SELECT count(*) FROM instances_history").fetchall()[0][0] == n_instances
    assert lake.sql("SELECT count(*) FROM ingest_files").fetchall()[0][0] == n_files
    # A reopened lake sees the same.
    reopened = voxlake.open(lake.uri)
    assert reopened.sql("SELECT count(*) FROM ingest_runs").fetchall()[0][0] == 1
    reopened.close()


def test_s3_lake_series_view(s3_lake, source_tree: tuple[Path, int]) -> None:
    lake, _ = s3_lake
    n_slices = source_tree[1]
    rows = lake.sql(
        "SELECT s.SeriesInstanceUID, s.instances, s.Modality FROM series s WHERE s.SeriesInstanceUID IN "
        f"(SELECT SeriesInstanceUID FROM instances WHERE uri LIKE '{SRC_URL}/ct/%')"
    ).fetchall()
    assert len(rows) == 1
    _, instances, modality = rows[0]
    assert instances == n_slices
    assert modality == "CT"
    total = lake.sql("SELECT count(*) FROM instances WHERE uri LIKE 's3://%/ct/%'").fetchall()[0][0]
    assert total == n_slices


def test_s3_rerun_picks_up_new_and_changed_objects(s3: str) -> None:
    """In one process (fsspec caches filesystems and listings), a rerun sees what changed."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3, region_name="us-east-1")
    prefix = "changing"
    for name in ("CT_small.dcm", "MR_small.dcm"):
        client.upload_file(str(PYDICOM / name), SRC_BUCKET, f"{prefix}/{name}")
    source = f"s3://{SRC_BUCKET}/{prefix}"
    lake = voxlake.open(f"s3://{LAKE_BUCKET}/lakes/changing")
    first = lake.ingest(source, workers=2)
    assert (first.indexed, first.files_seen) == (2, 2)
    client.upload_file(str(PYDICOM / "rtplan.dcm"), SRC_BUCKET, f"{prefix}/rtplan.dcm")
    client.upload_file(str(PYDICOM / "MR_small_padded.dcm"), SRC_BUCKET, f"{prefix}/MR_small.dcm")
    second = lake.ingest(source, workers=2)
    assert (second.files_seen, second.files_unchanged, second.indexed, second.errors) == (3, 1, 2, 0)
    rows = lake.sql("SELECT uri, size FROM instances ORDER BY uri").fetchall()
    assert [u for u, _ in rows] == [f"{source}/{n}" for n in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")]
    assert dict(rows)[f"{source}/MR_small.dcm"] == (PYDICOM / "MR_small_padded.dcm").stat().st_size
    assert lake.sql("SELECT count(*) FROM ingest_runs").fetchall()[0][0] == 2
    lake.close()


def test_s3_missing_lake_and_source(s3: str) -> None:
    assert not voxlake.open(f"s3://{LAKE_BUCKET}/lakes/none").exists()
    assert not voxlake.open("s3://no-such-bucket/lake").exists()
    with pytest.raises(voxlake.LakeNotFoundError):
        voxlake.open(f"s3://{LAKE_BUCKET}/lakes/none").sql("SELECT count(*) FROM instances")
    with pytest.raises(voxlake.SourceError):
        voxlake.open(f"s3://{LAKE_BUCKET}/lakes/none").ingest(f"s3://{SRC_BUCKET}/no/such/prefix")
    assert not voxlake.open(f"s3://{LAKE_BUCKET}/lakes/none").exists()


def test_an_s3_lake_is_read_through_pyarrows_native_filesystem(monkeypatch) -> None:
    """Not through fsspec in pyarrow's Python handler: DuckDB starts a scan of such a dataset while
    holding the GIL, and its reading threads need the GIL (a query hung so in CI)."""
    from pyarrow.fs import S3FileSystem

    from voxlake.lake import storage
    from voxlake.lake.tables import dataset

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    fs = storage.arrow_filesystem("s3://bucket/lake")
    assert isinstance(fs, S3FileSystem) and fs.region == "eu-west-1"
    import pyarrow as pa

    ds = dataset("s3://bucket/lake", [], pa.schema([("x", pa.int64())]))
    assert isinstance(ds.filesystem, S3FileSystem)
