"""The streaming header parser, checked against pydicom on real files and on crafted bad input."""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.conftest import need
from voxlake.dicom.parser import read_header
from voxlake.errors import InvalidDicomError, NotDicomError


def _read(path: Path, **kw):
    with open(path, "rb") as fp:
        return read_header(fp, uri=str(path), size=path.stat().st_size, **kw)


def _norm(v):
    if isinstance(v, float):
        return round(v, 6)
    if isinstance(v, str):
        return v.strip() or None
    return v


def _dicom_files(root: Path):
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.endswith((".md", ".txt", ".json", ".gz", ".zip", ".png", ".jpg")):
            yield p


def test_every_public_element_matches_pydicom_on_every_shared_file(shared_data):
    compared = 0
    mismatches = []
    for path in _dicom_files(shared_data):
        try:
            ours = _read(path).dataset
        except (NotDicomError, InvalidDicomError):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = pydicom.dcmread(path, force=True).to_json_dict(bulk_data_threshold=1 << 30)
        except Exception:
            continue  # pydicom itself cannot convert this file
        for tag, elem in ref.items():
            if int(tag[:4], 16) & 1 or tag.endswith("0000") or tag.startswith("7FE0"):
                continue  # private, group length and pixel data are compared elsewhere
            mine = ours.get(tag)
            assert mine is not None, f"{path}: {tag} missing"
            assert mine["vr"] == elem["vr"], f"{path}: {tag} VR {mine['vr']} != {elem['vr']}"
            if elem["vr"] == "SQ":
                assert len(mine.get("Value", [])) == len(elem.get("Value", [])), f"{path}: {tag}"
            elif "Value" in elem:
                a = [_norm(x) for x in elem["Value"]]
                b = [_norm(x) for x in mine.get("Value", [])]
                if a != b:
                    mismatches.append((path.name, tag, a[:4], b[:4]))
            elif "InlineBinary" in elem:
                assert mine.get("InlineBinary") == elem["InlineBinary"] or "BulkDataURI" in mine
            compared += 1
    assert compared > 20000
    assert mismatches == []


def test_pixel_data_offset_and_length_point_at_the_pixel_bytes(ct_series):
    path = sorted(ct_series.iterdir())[0]
    header = _read(path)
    raw = path.read_bytes()
    pixels = pydicom.dcmread(path).PixelData
    off, length = header.pixel_data_offset, header.pixel_data_length
    assert raw[off : off + length] == pixels
    assert header.dataset["7FE00010"]["BulkDataURI"] == f"{path}?offset={off}&length={length}"
    assert header.has_pixels


def test_encapsulated_pixel_data_length_spans_all_fragments(pydicom_files):
    path = need(pydicom_files / "JPEG2000.dcm")
    header = _read(path)
    raw = path.read_bytes()
    end = header.pixel_data_offset + header.pixel_data_length
    assert raw[end - 8 : end] == b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # sequence delimiter


def test_sha256_covers_every_byte_of_the_file(ct_series):
    path = sorted(ct_series.iterdir())[5]
    hasher = hashlib.sha256()
    _read(path, hasher=hasher)
    assert hasher.hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()


def test_file_without_preamble_is_read(pydicom_files):
    header = _read(need(pydicom_files / "ExplVR_LitEndNoMeta.dcm"))
    assert not header.has_preamble
    assert header.dataset["00080060"]["Value"] == ["RTPLAN"]


def test_big_endian_file_without_meta_is_read(pydicom_files):
    header = _read(need(pydicom_files / "ExplVR_BigEndNoMeta.dcm"))
    assert header.dataset["00080060"]["Value"] == ["RTPLAN"]


def test_truncated_file_keeps_what_was_read_and_is_flagged_partial(pydicom_files):
    header = _read(need(pydicom_files / "MR_truncated.dcm"))
    assert header.partial
    assert "00100010" in header.dataset
    assert any("(7FE0,0010)" in w for w in header.warnings)


def test_text_file_is_not_dicom(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello, this is not DICOM at all\n" * 10)
    with pytest.raises(NotDicomError):
        _read(p)


def test_empty_file_is_not_dicom(tmp_path):
    p = tmp_path / "empty.dcm"
    p.write_bytes(b"")
    with pytest.raises(NotDicomError):
        _read(p)


def test_dicm_prefix_with_garbage_is_an_invalid_dicom_error(tmp_path):
    p = tmp_path / "garbage.dcm"
    p.write_bytes(b"\0" * 128 + b"DICM" + b"\x02")
    with pytest.raises(InvalidDicomError, match=r"garbage\.dcm"):
        _read(p)


def _write(ds: Dataset, path: Path) -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", "1.2.3")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID") or "1.2.3.4"
    ds.save_as(path, enforce_file_format=True)
    return path


def _base() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = "Doe^Jane"
    ds.Modality = "CT"
    return ds


def test_absurd_declared_length_is_reported_not_allocated(tmp_path):
    path = _write(_base(), tmp_path / "absurd.dcm")
    raw = path.read_bytes()
    # Append an LO element claiming 0xFFF0 bytes and a UT claiming 4 GB - far past the end.
    raw += b"\x10\x00\x20\x10LO\xf0\xff" + b"x" * 10
    path.write_bytes(raw)
    header = _read(path)
    assert header.partial
    assert any("declares" in w for w in header.warnings)
    assert header.dataset["00100010"]["Value"] == [{"Alphabetic": "Doe^Jane"}]


def test_sequences_nested_too_deep_are_cut_with_a_warning(tmp_path):
    ds = _base()
    inner = ds
    for _ in range(80):
        item = Dataset()
        item.CodeValue = "1"
        inner.ContentSequence = [item]
        inner = item
    path = _write(ds, tmp_path / "deep.dcm")
    header = _read(path)
    assert header.partial
    assert any("deeper than" in w for w in header.warnings)
    assert header.dataset["00080018"]["Value"] == [ds.SOPInstanceUID]


def test_wrong_vr_is_read_with_a_warning(pydicom_files):
    header = _read(need(pydicom_files / "badVR.dcm"))
    assert any("not a valid number" in w for w in header.warnings)


def test_invalid_decimal_string_is_kept_as_text_with_a_warning(tmp_path):
    ds = _base()
    path = _write(ds, tmp_path / "ds.dcm")
    raw = path.read_bytes()
    raw += b"\x18\x00\x50\x00DS\x04\x00abcd"  # SliceThickness 'abcd'
    path.write_bytes(raw)
    header = _read(path)
    assert header.dataset["00180050"]["Value"] == ["abcd"]
    assert any("(0018,0050)" in w for w in header.warnings)


def test_float_nan_becomes_null_not_invalid_json(tmp_path):
    import struct

    path = _write(_base(), tmp_path / "nan.dcm")
    path.write_bytes(path.read_bytes() + b"\x18\x00\x88\x00FD\x08\x00" + struct.pack("<d", math.nan))
    header = _read(path)
    assert header.dataset["00180088"]["Value"] == [None]


def test_specific_character_set_decodes_like_pydicom(shared_data):
    path = need(shared_data / "pydicom" / "charset_files" / "chrH32.dcm")
    ours = _read(path).dataset["00100010"]["Value"][0]
    ref = pydicom.dcmread(path).PatientName
    assert ours["Alphabetic"] == str(ref.alphabetic)
    assert ours["Ideographic"] == str(ref.ideographic)


def test_reading_from_memory_works_like_reading_a_file(ct_series):
    path = sorted(ct_series.iterdir())[0]
    from_file = _read(path).dataset
    from_memory = read_header(io.BytesIO(path.read_bytes()), uri=str(path)).dataset
    assert from_file == from_memory


def test_a_large_pixel_data_element_is_hashed_in_bounded_memory(tmp_path):
    import tracemalloc

    ds = _base()
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 4096, 4096, 16, 16, 15
    ds.SamplesPerPixel, ds.PixelRepresentation, ds.PhotometricInterpretation = 1, 0, "MONOCHROME2"
    ds.NumberOfFrames = 4
    ds.PixelData = b"\x01\x02" * (4096 * 4096 * 4)  # 128 MiB
    path = _write(ds, tmp_path / "big.dcm")
    del ds
    tracemalloc.start()
    header = _read(path, hasher=hashlib.sha256())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert header.pixel_data_length == 128 << 20
    assert peak < 4 << 20  # a few MiB of buffers, never the file


def test_unknown_sop_class_and_empty_uids_are_read(tmp_path):
    ds = _base()
    ds.SOPClassUID = "1.2.3.4.5.6.7.999"  # no such storage class
    ds.SOPInstanceUID = ""
    ds.StudyInstanceUID = ""
    path = _write(ds, tmp_path / "odd.dcm")
    header = _read(path)
    assert header.dataset["00080016"]["Value"] == ["1.2.3.4.5.6.7.999"]
    assert "Value" not in header.dataset["00080018"]
    assert not header.partial
