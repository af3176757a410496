"""CT phantoms with truth: the CT, the NIfTI label map and the SEG agree with each other and with the
organ centres the generator knows; they are valid DICOM and reproducible byte for byte.

Small cases (96x96, 32-40 slices of 15 mm, which covers pelvis to lung apex) keep the module fast.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

highdicom = pytest.importorskip("highdicom")
nib = pytest.importorskip("nibabel")

from voxlake.errors import InvalidArgumentError  # noqa: E402
from voxlake.synth.phantom import (  # noqa: E402
    ORGANS,
    TRANSFER_SYNTAXES,
    PhantomResult,
    Phase,
    generate_phantoms,
    make_phantom,
)

SMALL = {"rows": 96, "columns": 96, "slices": (32, 40), "slice_thickness": 15.0}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> PhantomResult:
    done: list[int] = []
    out = tmp_path_factory.mktemp("a") / "phantoms"
    result = generate_phantoms(out, cases=2, seed=7, progress=done.append, **SMALL)
    assert done == [1, 1]  # one call per case written
    return result


def _ct_series(case) -> list[pydicom.Dataset]:
    """The CT slices sorted along the slice normal (feet to head), as a reader must sort them."""
    slices = [pydicom.dcmread(f) for f in case.ct_files]
    return sorted(slices, key=lambda ds: float(ds.ImagePositionPatient[2]))


def _voxel_size(case) -> np.ndarray:
    """Voxel size along x, y, z (LPS) in mm."""
    dz, dy, dx = case.spacing
    return np.array([dx, dy, dz])


def _dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    lines = (out.stdout + out.stderr).splitlines()
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")]


def test_ct_slices_and_seg_pass_dciodvfy_without_errors(phantoms):
    """dicom3tools (snapshot 2022-06-18) reports neither errors nor warnings for the CT slices and the SEG;
    warnings would be accepted, errors are not."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) is not on PATH")
    case = phantoms.cases[0]
    for path in (case.ct_files[0], case.ct_files[len(case.ct_files) // 2], case.seg_path):
        errors, warnings = _dciodvfy(path)
        assert errors == [], f"{path}: {errors}"
        print(path.name, warnings)


def test_nifti_label_centroids_map_to_the_known_organ_centres(phantoms):
    for case in phantoms.cases:
        image = nib.load(case.nifti_path)
        labels = np.asarray(image.dataobj)
        assert labels.dtype == np.uint8
        assert set(np.unique(labels)) <= {0, *ORGANS}
        for organ in ORGANS.values():
            ijk = np.argwhere(labels == organ.label).mean(axis=0)
            ras = image.affine @ np.append(ijk, 1.0)
            lps = ras[:3] * [-1, -1, 1]
            assert np.all(np.abs(lps - case.organ_centres[organ.name]) <= _voxel_size(case)), organ.name


def test_nifti_affine_maps_voxel_zero_to_the_first_pixel_of_the_lowest_ct_slice(phantoms):
    case = phantoms.cases[0]
    lowest = _ct_series(case)[0]
    affine = nib.load(case.nifti_path).affine
    lps = (affine @ [0, 0, 0, 1])[:3] * [-1, -1, 1]
    np.testing.assert_allclose(lps, [float(v) for v in lowest.ImagePositionPatient], atol=1e-3)
    step_i = (affine @ [1, 0, 0, 1] - affine @ [0, 0, 0, 1])[:3] * [-1, -1, 1]  # along a row: +x
    np.testing.assert_allclose(step_i, [float(lowest.PixelSpacing[1]), 0, 0], atol=1e-6)


def test_seg_frames_map_to_the_known_organ_centres_through_their_plane_positions(phantoms):
    for case in phantoms.cases:
        seg = pydicom.dcmread(case.seg_path)
        shared = seg.SharedFunctionalGroupsSequence[0]
        orientation = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
        row_dir, col_dir = orientation[:3], orientation[3:]
        dy, dx = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
        frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
        sums: dict[int, np.ndarray] = {}
        for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
            number = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
            origin = np.array(item.PlanePositionSequence[0].ImagePositionPatient, float)
            rows, cols = np.nonzero(frame)
            points = origin + np.outer(cols * dx, row_dir) + np.outer(rows * dy, col_dir)
            sums.setdefault(number, np.zeros(4))
            sums[number] += np.array([len(rows), *points.sum(axis=0)])
        for organ in ORGANS.values():
            centre = sums[organ.label][1:] / sums[organ.label][0]
            assert np.all(np.abs(centre - case.organ_centres[organ.name]) <= _voxel_size(case)), organ.name


def test_ct_at_the_liver_centre_shows_liver_hounsfield_units(phantoms):
    for case in phantoms.cases:
        truth = json.loads(case.labels_path.read_text())["case"]
        centre = np.array(case.organ_centres["liver"])
        series = _ct_series(case)
        ds = min(series, key=lambda s: abs(float(s.ImagePositionPatient[2]) - centre[2]))
        orientation = np.array(ds.ImageOrientationPatient, float)
        offset = centre - np.array(ds.ImagePositionPatient, float)
        dy, dx = (float(v) for v in ds.PixelSpacing)
        col, row = round(offset @ orientation[:3] / dx), round(offset @ orientation[3:] / dy)
        hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        patch = hu[row - 1:row + 2, col - 1:col + 2].mean()
        expected = truth["hu_means"]["liver"]
        assert abs(patch - expected) < 5 * truth["noise_sd"] / 3 + 5
        low = min(m - 4 * sd for m, sd in ORGANS[5].hu.values())
        high = max(m + 4 * sd for m, sd in ORGANS[5].hu.values())
        assert low <= patch <= high
        k = series.index(ds)
        assert np.asarray(nib.load(case.nifti_path).dataobj)[col, row, k] == ORGANS[5].label


def test_nifti_and_seg_label_maps_agree_voxel_for_voxel(phantoms):
    for case in phantoms.cases:
        nifti = np.asarray(nib.load(case.nifti_path).dataobj).transpose(2, 1, 0)  # -> slice, row, column
        uids = [ds.SOPInstanceUID for ds in _ct_series(case)]
        seg = highdicom.seg.segread(case.seg_path)
        labels = seg.get_pixels_by_source_instance(uids, combine_segments=True, skip_overlap_checks=True)
        np.testing.assert_array_equal(labels, nifti)


def test_same_seed_gives_byte_identical_files_in_one_process_or_several(phantoms, tmp_path):
    def digests(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    again = generate_phantoms(tmp_path / "phantoms", cases=2, seed=7, workers=2, **SMALL)
    first = digests(phantoms.out_dir)
    assert len(first) == sum(len(c.ct_files) + 3 for c in phantoms.cases)
    assert digests(again.out_dir) == first


def test_cases_differ_in_organ_sizes_and_positions(phantoms):
    one, two = phantoms.cases
    for organ in ("liver", "spleen", "kidney_left", "urinary_bladder"):
        shift = np.subtract(one.organ_centres[organ], two.organ_centres[organ])
        assert np.linalg.norm(shift) > 2.0, organ
        ratio = one.organ_volumes_ml[organ] / two.organ_volumes_ml[organ]
        assert abs(ratio - 1) > 0.02, organ


def test_other_seeds_give_other_anatomy():
    grid = {"shape": (8, 32, 32), "spacing": (60.0, 14.0, 14.0)}
    a, b = make_phantom(7, 0, **grid), make_phantom(8, 0, **grid)
    assert a.organ_centres["liver"] != b.organ_centres["liver"]
    assert a.organ_volumes_ml["liver"] != b.organ_volumes_ml["liver"]


def test_ct_series_reads_back_with_full_geometry(phantoms):
    case = phantoms.cases[0]
    series = _ct_series(case)
    assert len(series) == case.shape[0]
    first, top = series[0], series[-1]
    assert {ds.SOPClassUID for ds in series} == {pydicom.uid.CTImageStorage}
    assert len({ds.FrameOfReferenceUID for ds in series}) == 1
    assert len({ds.SOPInstanceUID for ds in series}) == len(series)
    assert top.InstanceNumber == 1 and first.InstanceNumber == len(series)  # numbered head to feet
    assert [float(v) for v in first.PixelSpacing] == [case.spacing[1], case.spacing[2]]
    assert float(first.SliceThickness) == float(first.SpacingBetweenSlices) == case.spacing[0]
    gaps = np.diff([float(ds.ImagePositionPatient[2]) for ds in series])
    np.testing.assert_allclose(gaps, case.spacing[0], atol=1e-3)
    assert first.BodyPartExamined in {"ABDOMENPELVIS", "CHESTABDPELVIS"}
    assert first.pixel_array.shape == (96, 96)
    assert ("ContrastBolusAgent" in first) == (case.phase is not Phase.NATIVE)


def test_seg_reads_back_with_one_coded_segment_per_organ_referencing_every_ct_instance(phantoms):
    case = phantoms.cases[0]
    series = _ct_series(case)
    seg = highdicom.seg.segread(case.seg_path)
    assert seg.FrameOfReferenceUID == series[0].FrameOfReferenceUID
    assert seg.StudyInstanceUID == series[0].StudyInstanceUID
    assert seg.SegmentationType == "BINARY"
    instances = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    referenced = {item.ReferencedSOPInstanceUID for item in instances}
    assert referenced == {ds.SOPInstanceUID for ds in series}
    for item in seg.SegmentSequence:
        organ = ORGANS[item.SegmentNumber]
        assert item.SegmentLabel == organ.name
        code = item.SegmentedPropertyTypeCodeSequence[0]
        assert (code.CodeValue, code.CodingSchemeDesignator) == (organ.property_type.value, "SCT")
        modifier = code.get("SegmentedPropertyTypeModifierCodeSequence")
        expected = organ.modifier.meaning if organ.modifier else None
        assert (modifier[0].CodeMeaning if modifier else None) == expected
    labels = json.loads(case.labels_path.read_text())["labels"]
    assert labels["5"]["SegmentedPropertyTypeCodeSequence"]["CodeMeaning"] == "Liver"


@pytest.mark.parametrize("transfer_syntax", [ts for ts in TRANSFER_SYNTAXES if ts.is_compressed],
                         ids=lambda ts: ts.keyword)
def test_compressed_transfer_syntaxes_keep_the_same_pixels(phantoms, tmp_path, transfer_syntax):
    original = phantoms.cases[1]
    copy = generate_phantoms(tmp_path, cases=2, seed=7, transfer_syntax=transfer_syntax, **SMALL).cases[1]
    series, expected = _ct_series(copy), _ct_series(original)
    assert series[0].file_meta.TransferSyntaxUID == transfer_syntax
    for got, want in zip(series, expected, strict=True):
        assert got.SOPInstanceUID == want.SOPInstanceUID  # compressing must not draw a new UID
        np.testing.assert_array_equal(got.pixel_array, want.pixel_array)
    seg = highdicom.seg.segread(copy.seg_path)
    uids = [ds.SOPInstanceUID for ds in series]
    labels = seg.get_pixels_by_source_instance(uids, combine_segments=True, skip_overlap_checks=True)
    nifti = np.asarray(nib.load(original.nifti_path).dataobj).transpose(2, 1, 0)
    np.testing.assert_array_equal(labels, nifti)


def test_labelmap_segmentation_reads_back_equal(phantoms, tmp_path):
    case = generate_phantoms(tmp_path, cases=1, seed=7, segmentation_type="labelmap", **SMALL).cases[0]
    seg = highdicom.seg.segread(case.seg_path)
    assert seg.SegmentationType == "LABELMAP"
    uids = [ds.SOPInstanceUID for ds in _ct_series(case)]
    labels = seg.get_pixels_by_source_instance(uids, combine_segments=True, skip_overlap_checks=True)
    np.testing.assert_array_equal(labels, np.asarray(nib.load(case.nifti_path).dataobj).transpose(2, 1, 0))


def test_label_map_is_hard_while_the_image_has_partial_volume():
    p = make_phantom(3, 1, shape=(40, 96, 96), spacing=(15.0, 4.5, 4.5), table=False)
    assert p.labels.dtype == np.uint8 and set(np.unique(p.labels)) <= {0, *ORGANS}
    assert set(p.organ_centres) == {o.name for o in ORGANS.values()}
    inside = p.labels > 0
    edge = inside & ~np.roll(inside, 1, axis=2)  # first body voxel along each row
    # the skin crosses those voxels anywhere: their mean lies between air and fat, well away from both
    assert -950 < p.hu[edge].mean() < -150


def test_unknown_options_are_refused_with_the_valid_values(tmp_path):
    with pytest.raises(InvalidArgumentError, match=r"JPEG2000Lossless \(1\.2\.840\.10008\.1\.2\.4\.90\)"):
        generate_phantoms(tmp_path, cases=1, transfer_syntax="1.2.840.10008.1.2.4.50")
    with pytest.raises(InvalidArgumentError, match="BINARY, LABELMAP"):
        generate_phantoms(tmp_path, cases=1, segmentation_type="FRACTIONAL")
