"""Frames by byte range (voxlake.dicom.frames), checked against pydicom on every real file.

Every DICOM file in ../shared/data is ingested (once per session, the real ingest path); for each
one with Pixel Data that pydicom can decode, the frames read from the indexed row must decode to
exactly the pixels pydicom decodes from the file.
"""

from __future__ import annotations

import copy
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

import voxlake
from tests.conftest import PYDICOM_FILES, SHARED_DATA, need
from voxlake.dicom.frames import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    NATIVE_SYNTAXES,
    open_uri,
    parse_bulk_data_uri,
    pixel_info,
    read_bulk,
    read_frames,
    transcode_frames,
)
from voxlake.errors import FrameError

_NOT_DICOM = {".md", ".txt", ".json", ".gz", ".png", ".jpg", ".csv", ".rst", ".icc", ".dump", ".tcia", ".py"}
BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
EMRI_RLE = SHARED_DATA / "pydicom-data" / "data" / "emri_small_RLE.dcm"  # 10 frames, RLE Lossless


def data_files() -> list[str]:
    """Every file of ../shared/data that may be DICOM (zip archives too), relative to it."""
    if not SHARED_DATA.exists():
        return []
    return sorted(
        str(p.relative_to(SHARED_DATA))
        for p in SHARED_DATA.rglob("*")
        if p.is_file() and p.suffix.lower() not in _NOT_DICOM and p.name not in ("LICENSE", "DICOMDIR")
    )


FILES = data_files() or ["(../shared/data absent)"]


@pytest.fixture(scope="session")
def data_lake(tmp_path_factory: pytest.TempPathFactory) -> voxlake.Lake:
    """../shared/data ingested once. Rows are read from ``instances_history`` by uri: several
    files share a SOPInstanceUID (one image in many encodings), which ``instances`` collapses."""
    need(SHARED_DATA)
    lake = voxlake.open(str(tmp_path_factory.mktemp("frames") / "lake"))
    lake.ingest(str(SHARED_DATA), workers=2)
    return lake


def rows_for(lake: voxlake.Lake, relative: str) -> list[dict[str, Any]]:
    """The instance rows of one data file (a zip archive's: all its members)."""
    path = str(SHARED_DATA / relative).replace("'", "''")
    where = f"uri LIKE 'zip://%::{path}'" if relative.endswith(".zip") else f"uri = '{path}'"
    return lake.sql(f"SELECT * FROM instances_history WHERE {where} ORDER BY uri").arrow().to_pylist()


def reference(row: dict[str, Any]) -> tuple[pydicom.Dataset, np.ndarray]:
    """pydicom's reading of the file, and its frames as (frames, rows, columns[, samples])."""
    with open_uri(row["uri"]) as fp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(fp, force=True)  # some files lack the preamble and DICM prefix
        try:
            arr = ds.pixel_array
        except Exception as exc:
            pytest.skip(f"pydicom cannot decode its Pixel Data ({type(exc).__name__}: {str(exc)[:120]})")
    frames = int(ds.get("NumberOfFrames") or 1)
    return ds, arr.reshape(frames, *arr.shape[-(3 if ds.get("SamplesPerPixel", 1) > 1 else 2) :])


def image_rows(lake: voxlake.Lake, relative: str) -> list[dict[str, Any]]:
    if relative.startswith("("):
        need(SHARED_DATA)
    rows = rows_for(lake, relative)
    if not rows:
        pytest.skip("not indexed as a DICOM instance")
    rows = [r for r in rows if r["has_pixels"]]
    if not rows:
        pytest.skip("no Pixel Data")
    return rows[:3]


def decode_alone(ds: pydicom.Dataset, frame: bytes, syntax: str) -> np.ndarray:
    """pydicom's decoding of a single-frame copy of the dataset that holds only ``frame``."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    one = copy.deepcopy(ds)
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in one:
            delattr(one, keyword)
    one.NumberOfFrames = 1
    if syntax == DEFLATED:
        syntax = EXPLICIT_VR_LITTLE_ENDIAN  # frames come inflated
        one.file_meta.TransferSyntaxUID = UID(syntax)
    one[_pixel_tag(ds)].value = frame if syntax in NATIVE_SYNTAXES else encapsulate([frame])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return one.pixel_array


def _pixel_tag(ds: pydicom.Dataset) -> int:
    return next(t for t in (0x7FE00010, 0x7FE00008, 0x7FE00009) if t in ds)


@pytest.mark.parametrize("relative", FILES)
def test_each_frame_read_by_byte_range_decodes_to_the_pixels_pydicom_reads_from_the_file(data_lake, relative):
    for row in image_rows(data_lake, relative):
        ds, expected = reference(row)
        info = pixel_info(row)
        numbers = list(range(1, len(expected) + 1))
        frames = read_frames(row["uri"], info, numbers)
        for n, frame in zip(numbers, frames, strict=True):
            np.testing.assert_array_equal(
                decode_alone(ds, frame, info.transfer_syntax_uid), expected[n - 1], err_msg=f"frame {n}"
            )


@pytest.mark.parametrize("relative", FILES)
def test_transcoding_to_little_endian_gives_the_decoded_pixels_bytes(data_lake, relative):
    for row in image_rows(data_lake, relative):
        _, expected = reference(row)
        info = pixel_info(row)
        numbers = sorted({1, len(expected)})
        for syntax in (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN):
            got = transcode_frames(row["uri"], info, numbers, syntax)
            if info.transfer_syntax_uid in NATIVE_SYNTAXES - {BIG_ENDIAN}:
                # Native little endian pixels are already in the requested encoding: sent as stored.
                assert got == read_frames(row["uri"], info, numbers)
                continue
            for n, data in zip(numbers, got, strict=True):
                want = expected[n - 1]
                if info.bits_allocated == 1:
                    assert data == np.packbits(want.ravel(), bitorder="little").tobytes()
                else:
                    assert data == want.astype(want.dtype.newbyteorder("<")).tobytes(), f"frame {n}"


@pytest.mark.parametrize("relative", FILES)
def test_frame_index_is_recorded_for_encapsulated_pixel_data_only(data_lake, relative):
    for row in image_rows(data_lake, relative):
        offsets, lengths = row["frame_offsets"], row["frame_lengths"]
        if row["TransferSyntaxUID"] in NATIVE_SYNTAXES or row["TransferSyntaxUID"] is None:
            assert offsets is None and lengths is None
            continue
        assert offsets is not None and len(offsets) == len(lengths) >= 1
        start, end = row["pixel_data_offset"], row["pixel_data_offset"] + row["pixel_data_length"]
        assert all(start < o and o + n <= end for o, n in zip(offsets, lengths, strict=True))
        assert offsets == sorted(offsets)


# -- frame grouping rules, on files rewritten with pydicom's encapsulation helpers ------------


def ingest_one(tmp_path: Path, path: Path) -> dict[str, Any]:
    """The real ingest path for one file: a fresh lake, ``ingest``, ``SELECT * FROM instances``."""
    lake = voxlake.open(str(tmp_path / f"lake-{path.name}"))
    lake.ingest(str(path), workers=1)
    [row] = lake.sql("SELECT * FROM instances").arrow().to_pylist()
    return row


def rewrite(tmp_path: Path, source: Path, encode: Any) -> tuple[Path, np.ndarray]:
    """``source`` (a multi-frame JPEG baseline file) with its frames re-encapsulated by ``encode``."""
    from pydicom.encaps import generate_frames

    ds = pydicom.dcmread(source)
    expected = ds.pixel_array
    frames = list(generate_frames(ds.PixelData, number_of_frames=ds.NumberOfFrames))
    encode(ds, frames)
    out = tmp_path / "rewritten.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out, expected


def _eot(ds: pydicom.Dataset, frames: list[bytes]) -> None:
    from pydicom.encaps import encapsulate_extended

    ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(frames)


def _fragmented_with_bot(ds: pydicom.Dataset, frames: list[bytes]) -> None:
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate(frames, fragments_per_frame=3, has_bot=True)


def _fragmented_without_bot(ds: pydicom.Dataset, frames: list[bytes]) -> None:
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate(frames, fragments_per_frame=3, has_bot=False)


@pytest.mark.parametrize(
    "encode",
    [_eot, _fragmented_with_bot, _fragmented_without_bot],
    ids=[
        "extended_offset_table",
        "three_fragments_per_frame_with_bot",
        "three_fragments_per_frame_no_bot_eoi",
    ],
)
def test_frames_are_located_as_pydicom_locates_them(tmp_path, encode):
    source = need(PYDICOM_FILES / "examples_ybr_color.dcm")
    path, expected = rewrite(tmp_path, source, encode)
    row = ingest_one(tmp_path, path)
    info = pixel_info(row)
    assert len(row["frame_offsets"]) == info.number_of_frames == len(expected)
    got = transcode_frames(row["uri"], info, [1, 7, len(expected)], EXPLICIT_VR_LITTLE_ENDIAN)
    assert got == [expected[i].tobytes() for i in (0, 6, len(expected) - 1)]


def delta_columns(table: Path) -> list[str]:
    from deltalake import DeltaTable

    return [f.name for f in DeltaTable(str(table)).schema().fields]


def test_a_lake_written_before_the_frame_index_still_reads_and_serves_frames(tmp_path):
    """Old lakes: files without frame_offsets/frame_lengths are read with NULLs, new rows get the
    columns (the Delta schema evolves), and frames of old rows are located by a header pass."""
    import pyarrow.parquet as pq
    from deltalake import DeltaTable, write_deltalake

    from voxlake.lake import schema

    old_file = need(PYDICOM_FILES / "SC_rgb_rle_2frame.dcm")
    new_file = need(EMRI_RLE)
    lake = voxlake.open(str(tmp_path / "lake"))
    lake.ingest(str(old_file), workers=1)
    table = tmp_path / "lake" / "instances"
    [part] = DeltaTable(str(table)).file_uris()
    rows = pq.read_table(part).drop_columns(["frame_offsets", "frame_lengths"])
    shutil.rmtree(table)
    old_schema = schema.INSTANCES.remove(schema.INSTANCES.get_field_index("frame_offsets"))
    old_schema = old_schema.remove(old_schema.get_field_index("frame_lengths"))
    write_deltalake(str(table), rows.cast(old_schema), mode="overwrite")
    assert "frame_offsets" not in delta_columns(table)
    assert lake.sql("SELECT frame_offsets FROM instances").fetchall() == [(None,)]

    lake.ingest(str(new_file), workers=1)

    by_uri = {r["uri"]: r for r in lake.sql("SELECT * FROM instances").arrow().to_pylist()}
    assert by_uri[str(old_file)]["frame_offsets"] is None
    assert len(by_uri[str(new_file)]["frame_offsets"]) == 10
    assert "frame_offsets" in delta_columns(table)  # the Delta schema evolved
    old = by_uri[str(old_file)]
    expected = pydicom.dcmread(old_file).pixel_array
    got = transcode_frames(old["uri"], pixel_info(old), [2], EXPLICIT_VR_LITTLE_ENDIAN)
    assert got == [expected[1].tobytes()]


# -- errors ------------------------------------------------------------------------------------


@pytest.fixture
def ct_row(tmp_path) -> dict[str, Any]:
    return ingest_one(tmp_path, need(PYDICOM_FILES / "CT_small.dcm"))


@pytest.fixture
def rle_row(tmp_path) -> dict[str, Any]:
    return ingest_one(tmp_path, need(EMRI_RLE))


@pytest.mark.parametrize("numbers", [[0], [2], [-1], [1, 11], []])
def test_frame_numbers_outside_1_to_number_of_frames_raise_frame_error_naming_instance_and_frame(
    ct_row, rle_row, numbers
):
    for row in (ct_row, rle_row):
        info = pixel_info(row)
        bad = [n for n in numbers if not 1 <= n <= info.number_of_frames]
        if numbers and not bad:
            continue
        with pytest.raises(FrameError, match=row["SOPInstanceUID"]) as caught:
            read_frames(row["uri"], info, numbers)
        if bad:
            assert f"frame {bad[0]}" in str(caught.value)


def test_transcoding_to_a_compressed_syntax_is_refused_with_the_syntaxes_that_work(rle_row):
    with pytest.raises(FrameError, match=re.escape("1.2.840.10008.1.2.1")):
        transcode_frames(rle_row["uri"], pixel_info(rle_row), [1], "1.2.840.10008.1.2.4.50")


def test_the_stored_syntax_is_served_as_stored(rle_row):
    info = pixel_info(rle_row)
    assert transcode_frames(rle_row["uri"], info, [3], info.transfer_syntax_uid) == read_frames(
        rle_row["uri"], info, [3]
    )


def test_an_instance_without_pixel_data_has_no_frames(tmp_path):
    row = ingest_one(tmp_path, need(PYDICOM_FILES / "rtplan.dcm"))
    with pytest.raises(FrameError, match="no Pixel Data"):
        pixel_info(row)


def test_a_file_changed_since_ingest_is_reported_not_misread(tmp_path):
    path = tmp_path / "ct.dcm"
    shutil.copy(need(EMRI_RLE), path)
    row = ingest_one(tmp_path, path)
    path.write_bytes(path.read_bytes()[: row["frame_offsets"][5]])
    with pytest.raises(FrameError, match="ends before"):
        read_frames(row["uri"], pixel_info(row), [9])


def test_bulk_data_uris_in_meta_read_their_bytes(ct_row):
    import json

    meta = json.loads(ct_row["meta"])
    uri, offset, length, deflated = parse_bulk_data_uri(meta["7FE00010"]["BulkDataURI"])
    data = read_bulk(uri, offset, length, deflated=deflated)
    assert data == pydicom.dcmread(uri).PixelData
    with pytest.raises(FrameError, match="not a voxlake BulkDataURI"):
        parse_bulk_data_uri("http://elsewhere/x")
