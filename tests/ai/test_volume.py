"""Series → volume: sorting, rescale, spacing, affine, and every geometry problem reported by name.

Modified series are copies of the real 134-slice CT (3.0 mm apart, axial) made by each test."""

from __future__ import annotations

import random
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.ai.conftest import ENHANCED_CT
from tests.conftest import SHARED_DATA, need
from voxlake.ai.errors import VolumeError
from voxlake.ai.volume import volume_from_datasets
from voxlake.errors import InvalidDicomError


def _copy(ds, **changes):
    """A copy of ``ds`` sharing its elements (Pixel Data included) with ``changes`` applied."""
    from pydicom import Dataset

    out = Dataset(dict(ds.items()))
    out.file_meta = ds.file_meta
    for keyword, value in changes.items():
        if keyword in out:
            del out[keyword]  # setattr would change the element the original shares
        setattr(out, keyword, value)
    return out


def _moved(ds, dx=0.0, dy=0.0, dz=0.0):
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    return _copy(ds, ImagePositionPatient=[round(x + dx, 4), round(y + dy, 4), round(z + dz, 4)])


def _z_sorted(datasets):
    return sorted(datasets, key=lambda d: float(d.ImagePositionPatient[2]))


# -- the real series ---------------------------------------------------------------------------


def test_real_ct_becomes_134_axial_slices_in_hounsfield_units(ct_volume, ct_datasets):
    v = ct_volume
    assert v.shape == (134, 512, 512)
    assert v.array.dtype == np.float32
    assert v.spacing == pytest.approx((3.0, 1.07421875, 1.07421875))
    assert v.Modality == "CT"
    assert v.SeriesInstanceUID == ct_datasets[0].SeriesInstanceUID
    assert v.warnings == []
    # Air outside the patient reads about -1000 HU once RescaleIntercept (-1000) is applied.
    assert float(np.median(v.array[:, :20, :20])) == pytest.approx(-1000, abs=30)


def test_slices_ascend_along_the_normal_and_each_equals_its_rescaled_pixels(ct_volume, ct_datasets):
    by_sop = {d.SOPInstanceUID: d for d in ct_datasets}
    z = [float(by_sop[sop].ImagePositionPatient[2]) for sop, _ in ct_volume.sources]
    assert z == sorted(z) and len(set(z)) == 134  # normal of [1,0,0,0,1,0] is +z
    for k in (0, 67, 133):
        ds = by_sop[ct_volume.sources[k][0]]
        expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(ct_volume.array[k], expected.astype(np.float32))


def test_affine_maps_voxel_indices_to_patient_coordinates(ct_volume, ct_datasets):
    by_sop = {d.SOPInstanceUID: d for d in ct_datasets}
    for k, j, i in [(0, 0, 0), (50, 10, 300), (133, 511, 7)]:
        ds = by_sop[ct_volume.sources[k][0]]
        row, col = (
            np.array(ds.ImageOrientationPatient[:3], float),
            np.array(ds.ImageOrientationPatient[3:], float),
        )
        expected = (
            np.array(ds.ImagePositionPatient, float)
            + i * row * float(ds.PixelSpacing[1])
            + j * col * float(ds.PixelSpacing[0])
        )
        np.testing.assert_allclose((ct_volume.affine @ [k, j, i, 1])[:3], expected, atol=1e-3)


def test_headers_follow_sources_and_carry_no_pixel_data(ct_volume):
    assert [h.SOPInstanceUID for h in ct_volume.headers] == [sop for sop, _ in ct_volume.sources]
    assert all("PixelData" not in h for h in ct_volume.headers)
    assert all(frame == 1 for _, frame in ct_volume.sources)


def test_file_order_does_not_change_the_volume(ct_volume, ct_datasets):
    shuffled = list(ct_datasets)
    random.Random(7).shuffle(shuffled)
    v = volume_from_datasets(shuffled)
    assert v.sources == ct_volume.sources
    np.testing.assert_array_equal(v.array, ct_volume.array)
    np.testing.assert_array_equal(v.affine, ct_volume.affine)


# -- problems, each named --------------------------------------------------------------------


def test_a_removed_slice_is_reported_as_missing_slices(ct_datasets):
    series = _z_sorted(ct_datasets)
    del series[60]
    with pytest.raises(
        VolumeError, match=r"missing slices: a gap of 6\.00 mm .*1 slice\(s\) of 3\.00 mm missing"
    ) as e:
        volume_from_datasets(series)
    assert ct_datasets[0].SeriesInstanceUID in str(e.value)
    assert isinstance(e.value, InvalidDicomError)


def test_a_tilted_copy_is_reported_with_its_angle(ct_datasets):
    series = _z_sorted(ct_datasets)[:20]
    step = np.tan(np.radians(15.0)) * 3.0  # y moves with z, as on a gantry tilted by 15 degrees
    tilted = [_moved(d, dy=k * step) for k, d in enumerate(series)]
    with pytest.raises(VolumeError, match=r"gantry tilt of 15\.0 degrees"):
        volume_from_datasets(tilted)


def test_the_real_gantry_tilted_head_ct_is_reported_at_18_5_degrees():
    folder = need(SHARED_DATA / "dcm_qa_ct" / "In" / "GE")
    import pydicom

    datasets = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    with pytest.raises(VolumeError, match=r"gantry tilt of 18\.5 degrees"):
        volume_from_datasets(datasets)


def test_position_jitter_below_5_percent_is_accepted_with_a_warning(ct_datasets):
    series = _z_sorted(ct_datasets)[:20]
    jittered = [_moved(d, dz=0.1 if k == 10 else 0.0) for k, d in enumerate(series)]  # 3.3% of 3 mm
    v = volume_from_datasets(jittered)
    assert v.spacing[0] == pytest.approx(3.0, abs=1e-6)
    assert len(v.warnings) == 1 and "slice spacing varies from 2.900 to 3.100 mm" in v.warnings[0]


def test_rounding_of_positions_gives_no_warning(ct_datasets):
    series = _z_sorted(ct_datasets)[:20]
    v = volume_from_datasets([_moved(d, dz=0.005 * (k % 2)) for k, d in enumerate(series)])
    assert v.warnings == []


def test_uneven_spacing_beyond_tolerance_is_an_error(ct_datasets):
    series = _z_sorted(ct_datasets)[:20]
    uneven = [_moved(d, dz=1.0 if k % 2 else 0.0) for k, d in enumerate(series)]  # gaps 4, 2, 4, ...
    with pytest.raises(VolumeError, match=r"uneven slice spacing: gaps from 2\.00 to 4\.00 mm"):
        volume_from_datasets(uneven)


def test_an_identical_duplicate_instance_is_dropped_with_a_warning(ct_datasets):
    series = [*ct_datasets, _copy(ct_datasets[5])]
    v = volume_from_datasets(series)
    assert v.shape == (134, 512, 512)
    assert (
        len(v.warnings) == 1
        and "dropped an identical duplicate of " + ct_datasets[5].SOPInstanceUID in v.warnings[0]
    )


def test_a_different_instance_at_the_same_position_is_an_error(ct_datasets):
    conflicting = _copy(ct_datasets[5], SOPInstanceUID="1.2.3.4.5")
    with pytest.raises(VolumeError, match="conflicting duplicate slices"):
        volume_from_datasets([*ct_datasets[:20], conflicting])


def test_the_same_instance_with_other_pixels_is_an_error(ct_datasets):
    changed = _copy(ct_datasets[5], PixelData=bytes(len(ct_datasets[5].PixelData)))
    with pytest.raises(VolumeError, match="conflicting duplicate slices"):
        volume_from_datasets([*ct_datasets[:20], changed])


def test_mixed_rows_and_columns_are_an_error(ct_datasets):
    small = ct_datasets[3]
    half = small.pixel_array[::2, ::2].copy()
    resized = _copy(small, Rows=256, Columns=256, PixelData=half.tobytes())
    with pytest.raises(VolumeError, match=r"mixed Rows/Columns .*256x256 vs 512x512"):
        volume_from_datasets([*ct_datasets[:3], resized, *ct_datasets[4:10]])


def test_mixed_pixel_spacing_is_an_error(ct_datasets):
    other = _copy(ct_datasets[3], PixelSpacing=[0.8, 0.8])
    with pytest.raises(VolumeError, match="mixed PixelSpacing"):
        volume_from_datasets([*ct_datasets[:3], other, *ct_datasets[4:10]])


def test_mixed_orientation_is_an_error(ct_datasets):
    other = _copy(ct_datasets[3], ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    with pytest.raises(VolumeError, match="mixed ImageOrientationPatient"):
        volume_from_datasets([*ct_datasets[:3], other, *ct_datasets[4:10]])


def test_an_instance_without_pixel_data_is_an_error(ct_datasets):
    bare = _copy(ct_datasets[3])
    del bare.PixelData
    with pytest.raises(VolumeError, match=f"{ct_datasets[3].SOPInstanceUID} has no Pixel Data"):
        volume_from_datasets([*ct_datasets[:3], bare])


def test_a_single_slice_is_not_a_volume(ct_datasets):
    with pytest.raises(VolumeError, match="a single slice"):
        volume_from_datasets(ct_datasets[:1])
    with pytest.raises(VolumeError, match="no instances"):
        volume_from_datasets([])


def test_instances_of_another_series_are_an_error(ct_datasets):
    stranger = _copy(ct_datasets[3], SeriesInstanceUID="1.2.3")
    with pytest.raises(VolumeError, match=r"belongs to series 1\.2\.3"):
        volume_from_datasets([*ct_datasets[:3], stranger])


# -- enhanced multi-frame ----------------------------------------------------------------------


def test_real_enhanced_ct_frames_are_sorted_along_the_normal_and_rescaled():
    import pydicom

    ds = pydicom.dcmread(need(ENHANCED_CT))
    v = volume_from_datasets([ds])
    # Orientation [-1,0,0, 0,1,0]: the normal is -z, so frame 2 (z=-149) comes before frame 1 (z=-159).
    assert v.sources == [(ds.SOPInstanceUID, 2), (ds.SOPInstanceUID, 1)]
    assert v.spacing == pytest.approx((10.0, 0.388672, 0.388672))
    np.testing.assert_array_equal(v.array[0], ds.pixel_array[1].astype(np.float32) - 1024)
    np.testing.assert_allclose(v.affine[:3, 3], [99.5, -301.5, -149.0])


@pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent")
def test_enhanced_ct_built_from_the_classic_series_gives_the_same_volume(ct_datasets):
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    series = _z_sorted(ct_datasets)[40:52]
    enhanced = LegacyConvertedEnhancedCTImage(
        series,
        series_instance_uid="1.2.826.0.1.3680043.8.498.1",
        series_number=99,
        sop_instance_uid="1.2.826.0.1.3680043.8.498.2",
        instance_number=1,
    )
    classic = volume_from_datasets(series)
    v = volume_from_datasets([enhanced])
    np.testing.assert_array_equal(v.array, classic.array)
    np.testing.assert_allclose(v.affine, classic.affine, atol=1e-4)
    assert v.spacing == pytest.approx(classic.spacing)
    assert {sop for sop, _ in v.sources} == {enhanced.SOPInstanceUID}
    assert sorted(frame for _, frame in v.sources) == list(range(1, 13))


# -- from the lake -----------------------------------------------------------------------------


def test_load_series_reads_zipped_instances_of_the_lake(tmp_path: Path, ct_series: Path):
    import pydicom

    import voxlake
    from voxlake.ai.volume import load_series

    files = sorted(p for p in ct_series.iterdir() if p.is_file())[:20]
    archive = tmp_path / "in" / "ct.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for p in files:
            zf.write(p, p.name)
    lake = voxlake.open(str(tmp_path / "lake"))
    lake.ingest(str(archive.parent), workers=1)
    uid = lake.sql("SELECT DISTINCT SeriesInstanceUID FROM instances").fetchall()[0][0]
    v = load_series(lake, uid)
    expected = volume_from_datasets([pydicom.dcmread(p) for p in files])
    assert v.shape == (20, 512, 512)
    assert v.spacing[0] == pytest.approx(3.0)
    assert v.sources == expected.sources
    np.testing.assert_array_equal(v.array, expected.array)
    with pytest.raises(VolumeError, match=r"series 9\.9\.9: no instances in the lake"):
        load_series(lake, "9.9.9")


def test_uncompressed_16_bit_pixels_read_straight_from_pixel_data_equal_pydicoms(shared_data: Path) -> None:
    """The fast path of volume_from_datasets against pydicom's decoder on every uncompressed little-endian
    16-bit monochrome file of the shared data (CT, MR, 12-bit, signed, multi-frame)."""
    import pydicom

    from voxlake.ai.volume import _native_pixels

    compared = 0
    for path in sorted(shared_data.rglob("*.dcm")):
        try:
            ds = pydicom.dcmread(path)
            native = _native_pixels(ds)
            if native is None:
                continue
            expected = ds.pixel_array
        except Exception:  # malformed files are other tests' business
            continue
        assert native.dtype == expected.dtype and np.array_equal(native, expected), path
        compared += 1
    assert compared >= 20


@pytest.mark.parametrize(("signed", "expected"), [(True, [-2048, 2047, -1, 0]), (False, [2048, 2047, 4095, 0])])
def test_bits_above_bits_stored_are_ignored_as_pydicom_ignores_them(signed: bool, expected: list[int]) -> None:
    """12 bits stored in 16 with garbage in the top 4: sign-extended from bit 11, or masked."""
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    from voxlake.ai.volume import _native_pixels

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 2, 2, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, int(signed)
    ds.PixelData = np.array([0xF800, 0x07FF, 0xAFFF, 0x5000], "<u2").tobytes()
    assert _native_pixels(ds).ravel().tolist() == expected
    assert ds.pixel_array.ravel().tolist() == expected


# -- from the lake's index ---------------------------------------------------------------------


def _indexed(tmp_path: Path, files: list[Path]):
    """The files copied into a folder of their own and ingested into a fresh lake: (lake, series, copies)."""
    import shutil

    import voxlake

    folder = tmp_path / "series"
    folder.mkdir()
    copies = [Path(shutil.copy2(p, folder / p.name)) for p in files]
    lake = voxlake.open(str(tmp_path / "lake"))
    lake.ingest(str(folder), workers=1)
    [(uid,)] = lake.sql("SELECT DISTINCT SeriesInstanceUID FROM instances").fetchall()
    return lake, uid, copies


def _assert_same_volume(v, expected) -> None:
    np.testing.assert_array_equal(v.array, expected.array)
    assert v.sources == expected.sources
    np.testing.assert_array_equal(v.affine, expected.affine)
    assert v.spacing == expected.spacing
    assert v.warnings == expected.warnings
    assert (v.StudyInstanceUID, v.SeriesInstanceUID, v.Modality) == (
        expected.StudyInstanceUID, expected.SeriesInstanceUID, expected.Modality)
    referenced = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
                  "FrameOfReferenceUID", "Rows", "Columns", "ImagePositionPatient", "ImageOrientationPatient",
                  "PixelSpacing", "SliceThickness")
    for header, full in zip(v.headers, expected.headers, strict=True):
        assert "PixelData" not in header
        assert [header.get(k) for k in referenced] == [full.get(k) for k in referenced]


def test_a_series_read_from_the_lakes_index_is_the_volume_pydicom_reads(tmp_path: Path, ct_series: Path):
    """Geometry and rescale from the index, pixels from the indexed offsets, one header parsed: the
    same volume, and every header holds what a SEG references of its source."""
    import pydicom

    from voxlake.ai.volume import load_series

    lake, uid, copies = _indexed(tmp_path, sorted(ct_series.glob("*.dcm"))[30:54])
    v = load_series(lake, uid)
    _assert_same_volume(v, volume_from_datasets(pydicom.dcmread(p) for p in copies))
    assert "PatientID" in v.headers[0]  # the first slice's whole header: a SEG copies patient and study
    assert "PatientID" not in v.headers[1]  # the index was read, not the file


@pytest.mark.parametrize("signed", [True, False])
def test_stored_bits_and_rescale_from_the_index_are_applied_as_pydicom_applies_them(tmp_path: Path, signed: bool):
    """12 bits stored with garbage above them, a slope and an intercept, signed or not."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    from voxlake.ai.volume import load_series

    rng = np.random.default_rng(3)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    files = []
    for k in range(4):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID = "CT", "P1"
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 2.5 * (3 - k)], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.5, 0.5], 2.5
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 6, 5, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, int(signed)
        ds.RescaleSlope, ds.RescaleIntercept = 2, -5.5
        ds.PixelData = rng.integers(0, 1 << 16, size=30, dtype="<u2").tobytes()  # high bits: garbage
        path = tmp_path / "made" / f"{k}.dcm"
        path.parent.mkdir(exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    lake, uid, copies = _indexed(tmp_path, files)
    v = load_series(lake, uid)
    _assert_same_volume(v, volume_from_datasets(pydicom.dcmread(p) for p in copies))
    assert "PatientID" not in v.headers[1]
    assert (v.array.min() < -5.5) == signed


def test_a_file_changed_since_it_was_indexed_is_read_as_it_is_now(tmp_path: Path, ct_series: Path):
    """A file whose size or mtime is no longer the indexed one is not read at the indexed offset."""
    import pydicom

    from voxlake.ai.volume import load_series

    lake, uid, copies = _indexed(tmp_path, sorted(ct_series.glob("*.dcm"))[30:36])
    changed = pydicom.dcmread(copies[2])
    changed.PixelData = (changed.pixel_array // 2).astype(changed.pixel_array.dtype).tobytes()
    changed.ImageComments = "x" * 1000  # Pixel Data moves: the indexed offset is wrong now
    changed.save_as(copies[2])
    v = load_series(lake, uid)
    _assert_same_volume(v, volume_from_datasets(pydicom.dcmread(p) for p in copies))
    assert "PatientID" in v.headers[1]  # read with pydicom


def test_the_index_gives_the_latest_version_of_a_re_ingested_instance(tmp_path: Path, ct_series: Path):
    """A file changed and ingested again: its new row is read (at its new offset), its old one not."""
    import pydicom

    from voxlake.ai.volume import load_series, series_index

    lake, uid, copies = _indexed(tmp_path, sorted(ct_series.glob("*.dcm"))[30:36])
    changed = pydicom.dcmread(copies[2])
    changed.PixelData = (changed.pixel_array // 2).astype(changed.pixel_array.dtype).tobytes()
    changed.ImageComments = "x" * 1000
    changed.save_as(copies[2])
    lake.ingest(str(copies[2].parent), workers=1)
    assert lake.sql(f"SELECT count(*) FROM instances_history WHERE SOPInstanceUID = '{changed.SOPInstanceUID}'"
                    ).fetchall() == [(2,)]
    assert len(series_index(lake, uid)) == 6
    v = load_series(lake, uid)
    _assert_same_volume(v, volume_from_datasets(pydicom.dcmread(p) for p in copies))
    assert "PatientID" not in v.headers[1]  # the index path, with the new row


@pytest.mark.parametrize(("column", "value"), [("RescaleSlope", "abc"), ("ImagePositionPatient", [0.0, None, 1.0]),
                                               ("pixel_data_offset", None), ("has_meta", False),
                                               ("TransferSyntaxUID", "1.2.840.10008.1.2.4.70")])
def test_what_the_index_cannot_answer_is_left_to_pydicom(tmp_path: Path, ct_series: Path, column: str, value):
    """A value the index holds but cannot be read from (or lacks) sends the series to the pydicom path."""
    from voxlake.ai.volume import _from_index, series_index

    lake, uid, _ = _indexed(tmp_path, sorted(ct_series.glob("*.dcm"))[30:33])
    records = series_index(lake, uid)
    assert _from_index(records, uid, 2) is not None
    records[1] = records[1] | {column: value}
    assert _from_index(records, uid, 2) is None
