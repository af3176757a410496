"""Segmentation outputs: the DICOM SEG, segment statistics, NIfTI, and ``record`` into a lake, on a small
synthetic phantom whose truth labels (and known geometry) give the expected values independently."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

pytest.importorskip("highdicom")
pytest.importorskip("nibabel")

from voxlake.ai.outputs import record, record_error, write_nifti
from voxlake.ai.seg import EmptySegmentationError, segment_code, segmentation, segmentation_file
from voxlake.ai.stats import segment_stats
from voxlake.errors import InvalidArgumentError

MODEL, VERSION = "phantom-organs", "3"


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """One 24-slice 64x64 phantom (5 mm slices, pelvis: body, bladder, spine, bone) and its truth."""
    from voxlake.synth.phantom import ORGANS, generate_phantoms

    out = tmp_path_factory.mktemp("phantom")
    result = generate_phantoms(out, cases=1, seed=3, rows=64, columns=64, slices=24)
    c = result.cases[0]
    truth = json.loads(c.labels_path.read_text())["case"]
    import nibabel as nib

    labels = np.asarray(nib.load(c.nifti_path).dataobj).transpose(2, 1, 0)  # (k, j, i), k along +z
    return {"case": c, "truth": truth, "labels": labels.astype(np.uint8),
            "names": {o.label: o.name for o in ORGANS.values()}}


@pytest.fixture(scope="module")
def volume(case):
    from voxlake.ai.volume import volume_from_datasets

    return volume_from_datasets(pydicom.dcmread(p) for p in case["case"].ct_files)


def _dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


# -- SEG --------------------------------------------------------------------------------------------------


def test_seg_has_one_binary_segment_per_present_label_numbered_consecutively(case, volume):
    seg = segmentation(volume, case["labels"], case["names"], model_name=MODEL, model_version=VERSION)
    present = sorted(int(v) for v in np.unique(case["labels"]) if v)
    assert seg.SegmentationType == "BINARY"
    assert [s.SegmentNumber for s in seg.SegmentSequence] == list(range(1, len(present) + 1))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [case["names"][v] for v in present]
    for s in seg.SegmentSequence:
        assert s.SegmentAlgorithmType == "AUTOMATIC"
        assert s.SegmentAlgorithmName == MODEL
        algorithm = s.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (MODEL, VERSION)
    body = seg.SegmentSequence[0]
    assert body.SegmentedPropertyTypeCodeSequence[0].CodeValue == "38266002"  # Entire body


def test_seg_is_in_the_source_study_and_references_every_source_instance(case, volume):
    seg = segmentation(volume, case["labels"], case["names"], model_name=MODEL, model_version=VERSION)
    assert seg.StudyInstanceUID == volume.StudyInstanceUID
    assert seg.FrameOfReferenceUID == volume.headers[0].FrameOfReferenceUID
    assert seg.SeriesInstanceUID != volume.SeriesInstanceUID
    assert MODEL in seg.SeriesDescription and VERSION in seg.SeriesDescription
    series = seg.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == volume.SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in series.ReferencedInstanceSequence} == {
        sop for sop, _ in volume.sources}
    # every frame is derived from the source slice at its position
    by_uid = {sop: k for k, (sop, _) in enumerate(volume.sources)}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        z = float(frame.PlanePositionSequence[0].ImagePositionPatient[2])
        assert z == pytest.approx(volume.affine[2, 3] + by_uid[source] * volume.spacing[0], abs=1e-3)


def test_seg_read_back_with_highdicom_equals_the_label_map(case, volume, tmp_path):
    import highdicom as hd

    seg = segmentation(volume, case["labels"], case["names"], model_name=MODEL, model_version=VERSION)
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    read = hd.seg.segread(path)
    assert read.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    source_uids = [sop for sop, _ in volume.sources]
    present = sorted(int(v) for v in np.unique(case["labels"]) if v)
    array = read.get_pixels_by_source_instance(source_sop_instance_uids=source_uids, combine_segments=True,
                                               skip_overlap_checks=True)
    lut = np.zeros(256, np.uint8)
    lut[np.arange(1, len(present) + 1)] = present
    assert np.array_equal(lut[array], case["labels"])


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) is not on PATH")
def test_seg_passes_dciodvfy_without_errors(case, volume, tmp_path):
    seg = segmentation(volume, case["labels"], case["names"], model_name=MODEL, model_version=VERSION)
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    assert _dciodvfy_errors(path) == []


def test_seg_of_a_label_map_without_any_label_is_refused_naming_the_series(volume):
    empty = np.zeros(volume.shape, np.uint8)
    with pytest.raises(EmptySegmentationError, match=volume.SeriesInstanceUID):
        segmentation(volume, empty, {1: "body"}, model_name=MODEL, model_version=VERSION)


def test_seg_of_a_label_map_of_another_shape_is_refused(volume):
    with pytest.raises(InvalidArgumentError, match="shape"):
        segmentation(volume, np.ones((2, 3, 4), np.uint8), {1: "body"}, model_name=MODEL, model_version=VERSION)


def test_segment_codes_cover_ct_tissue_names_phantom_organs_and_unknown_names():
    assert segment_code("lung").property_type.value == "39607008"
    assert segment_code("fat").property_type.value == "55603005"
    assert segment_code("muscle").category.value == "85756007"
    kidney = segment_code("kidney_left")
    assert (kidney.property_type.value, kidney.modifier.value) == ("64033007", "7771000")
    assert segment_code("something-new").property_type.meaning == "Tissue"


# -- statistics -------------------------------------------------------------------------------------------


def test_stats_match_truth_volumes_hu_means_and_boxes_computed_from_the_files(case, volume):
    truth, labels = case["truth"], case["labels"]
    rows = segment_stats(volume, labels, case["names"], model_name=MODEL, model_version=VERSION,
                         seg_sop_instance_uid="1.2.3", run_id="run-1")
    # HU straight from the CT files, slices ordered by z (the phantom is axial, feet first)
    slices = sorted((pydicom.dcmread(p) for p in case["case"].ct_files),
                    key=lambda ds: float(ds.ImagePositionPatient[2]))
    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices])
    dz, dy, dx = truth["spacing"]
    origin = np.array(truth["origin"])
    assert [r["label"] for r in rows] == [case["names"][v] for v in sorted(np.unique(labels)) if v]
    for row in rows:
        mask = labels == row["label_value"]
        assert row["SeriesInstanceUID"] == truth["SeriesInstanceUID"]
        assert (row["model"], row["model_version"], row["run_id"]) == (MODEL, VERSION, "run-1")
        assert row["SegmentationSOPInstanceUID"] == "1.2.3"
        assert row["voxels"] == int(mask.sum())
        assert row["volume_ml"] == pytest.approx(truth["organ_volumes_ml"][row["label"]], abs=1e-2)
        assert row["mean_hu"] == pytest.approx(hu[mask].mean(), abs=1e-3)
        assert row["std_hu"] == pytest.approx(hu[mask].std(), abs=1e-3)
        index = np.argwhere(mask)
        assert row["bbox_min_index"] == index.min(axis=0).tolist()
        assert row["bbox_max_index"] == index.max(axis=0).tolist()
        k0, j0, i0 = index.min(axis=0)
        k1, j1, i1 = index.max(axis=0)
        assert row["bbox_min_mm"] == pytest.approx(origin + np.array([i0 * dx, j0 * dy, k0 * dz]), abs=1e-3)
        assert row["bbox_max_mm"] == pytest.approx(origin + np.array([i1 * dx, j1 * dy, k1 * dz]), abs=1e-3)
        assert row["centroid_mm"] == pytest.approx(truth["organ_centres_lps_mm"][row["label"]], abs=1e-2)


# -- NIfTI ------------------------------------------------------------------------------------------------


def test_nifti_holds_the_label_map_with_the_ras_affine_of_the_phantoms_own_nifti(case, volume, tmp_path):
    import nibabel as nib

    path = write_nifti(volume, case["labels"], tmp_path / "labels.nii.gz")
    ours, truth = nib.load(path), nib.load(case["case"].nifti_path)
    assert np.array_equal(np.asarray(ours.dataobj), np.asarray(truth.dataobj))
    assert np.allclose(ours.affine, truth.affine, atol=1e-3)
    # columns run to the patient's left, rows to posterior, slices to superior
    assert nib.aff2axcodes(ours.affine) == ("L", "P", "S")


# -- record -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded(case, volume, tmp_path_factory):
    import voxlake

    lake_dir = tmp_path_factory.mktemp("lake")
    lake = voxlake.open(str(lake_dir))
    lake.ingest(str(case["case"].directory / "ct"), workers=0)
    result = record(lake, volume, case["labels"], case["names"], model_name=MODEL, model_version=VERSION,
                    nifti=True, meshes=True, mesh_step=1)
    return lake, result


def test_record_ingests_the_seg_into_instances_in_the_same_study(recorded, volume):
    lake, result = recorded
    assert result.seg_path.is_file()
    assert result.seg_path.is_relative_to(Path(lake.uri) / "dicom" / "derived")
    rows = lake.sql(f"SELECT Modality, StudyInstanceUID, SeriesInstanceUID, uri FROM instances "
                    f"WHERE SOPInstanceUID = '{result.SOPInstanceUID}'").fetchall()
    assert len(rows) == 1
    modality, study, series, uri = rows[0]
    assert (modality, study, series) == ("SEG", volume.StudyInstanceUID, result.SeriesInstanceUID)
    assert Path(uri) == result.seg_path
    (modalities,) = lake.sql(f"SELECT ModalitiesInStudy FROM studies WHERE StudyInstanceUID = '{study}'"
                             ).fetchall()[0]
    assert modalities.split("\\") == ["CT", "SEG"]


def test_record_appends_stats_and_mesh_rows_naming_the_series_model_version_and_seg(recorded, volume):
    from deltalake import DeltaTable

    lake, result = recorded
    stats = DeltaTable(str(Path(lake.uri) / "segment_stats")).to_pyarrow_table().to_pylist()
    meshes = DeltaTable(str(Path(lake.uri) / "meshes")).to_pyarrow_table().to_pylist()
    assert {r["label"] for r in stats} == {r["label"] for r in result.stats} == {r["label"] for r in meshes}
    for row in stats + meshes:
        assert row["SeriesInstanceUID"] == volume.SeriesInstanceUID
        assert (row["model"], row["model_version"]) == (MODEL, VERSION)
        assert row["SegmentationSOPInstanceUID"] == result.SOPInstanceUID
        assert row["run_id"] == result.run_id
    for row in meshes:
        assert Path(row["uri"]).is_file() and row["faces"] > 0
        voxels = next(s for s in stats if s["label"] == row["label"])["volume_ml"]
        assert row["volume_ml"] == pytest.approx(voxels, rel=0.35)  # 5 mm slices: coarse surfaces
    assert result.nifti_path is not None and result.nifti_path.is_file()


def test_a_failure_before_the_commits_leaves_no_seg_and_no_rows(case, volume, tmp_path, monkeypatch):
    import voxlake
    from voxlake.ai import outputs

    lake = voxlake.open(str(tmp_path / "lake"))
    lake.ingest(str(case["case"].directory / "ct"), workers=0)

    def broken(*_args, **_kwargs):
        raise RuntimeError("marching cubes failed")

    monkeypatch.setattr(outputs, "label_meshes", broken)
    with pytest.raises(RuntimeError, match="marching cubes"):
        record(lake, volume, case["labels"], case["names"], model_name=MODEL, model_version=VERSION)
    assert lake.sql("SELECT count(*) FROM instances WHERE Modality = 'SEG'").fetchall() == [(0,)]
    assert not (tmp_path / "lake" / "dicom" / "derived").exists()
    assert not (tmp_path / "lake" / "segment_stats").exists()


def test_record_error_appends_one_line_rows_to_segment_errors(tmp_path):
    from deltalake import DeltaTable

    import voxlake

    lake = voxlake.open(str(tmp_path))
    record_error(lake, "1.2.3", MODEL, VERSION, "VolumeError", "series 1.2.3: gantry tilt 15°\ntraceback...")
    rows = DeltaTable(str(tmp_path / "segment_errors")).to_pyarrow_table().to_pylist()
    assert [(r["SeriesInstanceUID"], r["model_version"], r["error_class"], r["message"]) for r in rows] == [
        ("1.2.3", VERSION, "VolumeError", "series 1.2.3: gantry tilt 15°")]


def test_segment_stats_are_queryable_with_lake_sql(recorded):
    lake, result = recorded
    rows = lake.sql(f"SELECT label FROM segment_stats WHERE run_id = '{result.run_id}'").fetchall()
    assert {r[0] for r in rows} == {r["label"] for r in result.stats}


def _volume(array, affine):
    from voxlake.ai.volume import Volume

    spacing = tuple(float(np.linalg.norm(affine[:3, axis])) for axis in range(3))
    return Volume(array=array, spacing=spacing, affine=affine, sources=[], headers=[], StudyInstanceUID="1.2",
                  SeriesInstanceUID="1.2.3", Modality="CT")


def _oblique_affine(rng):
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.array([2.5, 0.7, 0.9])
    affine[:3, 3] = rng.uniform(-200, 200, 3)
    return affine


@pytest.mark.parametrize("threads", [0, 3])  # 3: the slabs shared by three threads at once
@pytest.mark.parametrize("columns", [17, 16])  # 16: a power of two, a shift instead of a division
@pytest.mark.parametrize("slab", [1 << 20, 50, 1])
def test_stats_equal_a_straightforward_numpy_reference_on_an_oblique_random_volume(slab, columns, threads,
                                                                                  monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from voxlake.ai import stats

    monkeypatch.setattr(stats, "SLAB_VOXELS", slab)  # one slab, several slices per slab, one slice per slab
    rng = np.random.default_rng(7)
    shape = (11, 13, columns)
    labels_map = rng.choice([0, 0, 0, 1, 2, 5, 7], size=shape).astype(np.uint8)
    labels_map[:, :, :3] = np.where(labels_map[:, :, :3] == 7, 0, labels_map[:, :, :3])
    labels_map[labels_map == 5] = 0
    labels_map[4, 6, 9] = 5  # a single voxel
    array = rng.normal(-300, 400, size=shape).astype(np.float32)
    affine = _oblique_affine(rng)
    names = {1: "body", 2: "lung", 5: "bone", 7: "fat", 9: "muscle"}  # 9 absent
    sums = None
    if threads:
        sums = stats.LabelSums(labels_map, array, max(names))
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda _: sums.work(), range(threads)))
    rows = segment_stats(_volume(array, affine), labels_map, names, model_name=MODEL, model_version=VERSION,
                         sums=sums)
    assert [r["label_value"] for r in rows] == [1, 2, 5, 7]
    assert [r["SegmentNumber"] for r in rows] == [1, 2, 3, 4]
    for row in rows:
        mask = labels_map == row["label_value"]
        hu = array[mask].astype(np.float64)
        index = np.argwhere(mask)
        assert row["label"] == names[row["label_value"]]
        assert row["voxels"] == int(mask.sum())
        assert row["volume_ml"] == pytest.approx(mask.sum() * 2.5 * 0.7 * 0.9 / 1000, rel=1e-9)
        assert row["mean_hu"] == pytest.approx(hu.mean(), rel=1e-9)
        assert row["std_hu"] == pytest.approx(hu.std(), rel=1e-9, abs=1e-9)
        assert row["bbox_min_index"] == index.min(axis=0).tolist()
        assert row["bbox_max_index"] == index.max(axis=0).tolist()
        centres = np.c_[index, np.ones(len(index))] @ affine.T
        assert row["centroid_mm"] == pytest.approx(centres[:, :3].mean(axis=0).tolist(), rel=1e-9, abs=1e-9)
        lo, hi = index.min(axis=0), index.max(axis=0)
        corners = np.array([[a, b, c, 1.0] for a in (lo[0], hi[0]) for b in (lo[1], hi[1])
                            for c in (lo[2], hi[2])]) @ affine.T
        assert row["bbox_min_mm"] == pytest.approx(corners[:, :3].min(axis=0).tolist(), rel=1e-9, abs=1e-9)
        assert row["bbox_max_mm"] == pytest.approx(corners[:, :3].max(axis=0).tolist(), rel=1e-9, abs=1e-9)


def test_stats_of_a_non_contiguous_wide_label_map_and_unlisted_values(monkeypatch):
    from voxlake.ai import stats

    monkeypatch.setattr(stats, "SLAB_VOXELS", 64)
    rng = np.random.default_rng(1)
    labels_map = rng.integers(0, 300, size=(9, 8, 6)).astype(np.uint16).transpose(0, 2, 1)  # not C-contiguous
    array = rng.normal(size=(9, 6, 8)).astype(np.float32)
    names = {3: "a", 299: "b", 1000: "never"}
    rows = segment_stats(_volume(array, np.eye(4)), labels_map, names, model_name=MODEL, model_version=VERSION)
    assert [r["label_value"] for r in rows] == [v for v in (3, 299) if (labels_map == v).any()]
    for row in rows:
        mask = labels_map == row["label_value"]
        assert row["voxels"] == int(mask.sum())
        assert row["mean_hu"] == pytest.approx(array[mask].astype(np.float64).mean(), rel=1e-9)
        assert row["bbox_min_index"] == np.argwhere(mask).min(axis=0).tolist()
        assert row["bbox_max_index"] == np.argwhere(mask).max(axis=0).tolist()


def test_encode_writes_the_same_bytes_as_pydicoms_save_as(case, volume):
    from pydicom.filebase import DicomBytesIO

    from voxlake.ai.seg import encode

    seg = segmentation(volume, case["labels"], case["names"], model_name=MODEL, model_version=VERSION)
    buffer = DicomBytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    assert encode(seg) == buffer.getvalue()
    assert len(seg.PerFrameFunctionalGroupsSequence) == seg.NumberOfFrames  # left as it was


def test_seg_of_labels_that_are_not_segment_numbers_renumbers_them(case, volume):
    import highdicom as hd

    labels = np.where(case["labels"] > 0, case["labels"] + 10, 0).astype(np.uint8)
    labels[0, 0, 0] = 200  # a value the model does not name: background in the SEG
    names = {v + 10: n for v, n in case["names"].items()}
    seg = segmentation(volume, labels, names, model_name=MODEL, model_version=VERSION)
    read = hd.seg.Segmentation.from_dataset(seg)
    array = read.get_pixels_by_source_instance(source_sop_instance_uids=[s for s, _ in volume.sources],
                                               combine_segments=True, skip_overlap_checks=True)
    present = sorted(int(v) for v in np.unique(case["labels"]) if v)
    lut = np.zeros(256, np.uint8)
    lut[np.arange(1, len(present) + 1)] = np.array(present) + 10
    expected = labels.copy()
    expected[0, 0, 0] = 0
    assert np.array_equal(lut[array], expected)


def _frozen(monkeypatch):
    """highdicom's clock and pydicom's UID generator made repeatable, so two builds can be compared."""
    import datetime as dt
    import itertools
    import types

    import highdicom.base
    import highdicom.base_content

    from voxlake.ai import seg as seg_module

    fixed = dt.datetime(2026, 11, 22, 9, 30, 0, 123456)
    clock = types.SimpleNamespace(datetime=types.SimpleNamespace(now=lambda: fixed))
    monkeypatch.setattr(highdicom.base, "datetime", clock)
    monkeypatch.setattr(highdicom.base_content, "datetime", clock)  # ContributionDateTime
    # highdicom's own random UIDs (the dimension organisation) are not the SEG's: one value
    monkeypatch.setattr(pydicom.uid, "generate_uid", lambda prefix=None, **_: "2.25.77")

    def reset() -> None:
        counter = itertools.count(1)
        monkeypatch.setattr(seg_module, "generate_uid", lambda: f"2.25.{next(counter)}")

    return reset


@pytest.mark.parametrize("where", ["phantom", "real CT", "odd size", "labels not segment numbers", "one segment"])
def test_the_seg_file_is_byte_for_byte_the_one_highdicom_builds_frame_by_frame(case, volume, where, monkeypatch,
                                                                               ct_series, tmp_path):
    """segmentation_file builds the SEG of the union of the segments and writes each segment's frames
    from its plane items: the bytes must be encode(segmentation(...))'s, whatever the data."""
    from voxlake.ai.seg import encode
    from voxlake.ai.volume import volume_from_datasets

    names = case["names"]
    if where == "phantom":
        vol, label_map = volume, case["labels"]
    elif where == "real CT":
        from voxlake.ai.tissue import CTTissueModel

        model = CTTissueModel()
        vol = volume_from_datasets(pydicom.dcmread(p) for p in sorted(ct_series.glob("*.dcm"))[40:64])
        label_map, names = model.predict(vol), model.labels
    else:
        from voxlake.synth.phantom import generate_phantoms

        rng = np.random.default_rng(7)
        out = tmp_path / "odd"
        # 30x27 = 810 voxels a frame: frames share bytes in the packed stream
        generate_phantoms(out, cases=1, seed=5, rows=30, columns=27, slices=6, slice_thickness=5.0)
        vol = volume_from_datasets(pydicom.dcmread(p) for p in sorted((out / "case-0000" / "ct").glob("*.dcm")))
        label_map = rng.integers(0, 4, size=vol.shape).astype(np.uint8)
        label_map[2] = 0  # a plane with no segment at all
        label_map[3][label_map[3] == 2] = 0  # a plane without segment 2
        names = {1: "liver", 2: "spleen", 3: "aorta"}
        if where == "one segment":
            label_map = (label_map == 2).astype(np.uint8) * 2
        if where == "labels not segment numbers":
            label_map = (label_map.astype(np.uint16) * 100)
            names = {100: "liver", 200: "spleen", 300: "aorta", 400: "never"}
    reset = _frozen(monkeypatch)
    options = {"model_name": MODEL, "model_version": VERSION, "series_instance_uid": "2.25.900",
               "sop_instance_uid": "2.25.901"}
    reset()
    header, data = segmentation_file(vol, label_map, names, **options)
    reset()
    expected = encode(segmentation(vol, label_map, names, **options))
    assert data == expected
    assert header.SOPInstanceUID == "2.25.901"
    assert "PixelData" not in header and not header.PerFrameFunctionalGroupsSequence  # the fast path was taken
    read = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
    assert read.NumberOfFrames == len(read.PerFrameFunctionalGroupsSequence) > 0


def test_the_seg_of_a_volume_read_from_the_lakes_index_is_the_seg_of_the_files(monkeypatch, ct_series, tmp_path):
    """load_series reads geometry from the index and parses one header; the SEG must not notice: on the
    real CT its bytes are those of the SEG built from every file's pydicom header."""
    import shutil

    import voxlake
    from voxlake.ai.tissue import CTTissueModel
    from voxlake.ai.volume import load_series, volume_from_datasets

    folder = tmp_path / "series"
    folder.mkdir()
    copies = [shutil.copy2(p, folder / p.name) for p in sorted(ct_series.glob("*.dcm"))[40:64]]
    lake = voxlake.open(str(tmp_path / "lake"))
    lake.ingest(str(folder), workers=1)
    [(uid,)] = lake.sql("SELECT DISTINCT SeriesInstanceUID FROM instances").fetchall()
    indexed = load_series(lake, uid)
    assert "PatientID" not in indexed.headers[1]  # the index path was taken
    parsed = volume_from_datasets(pydicom.dcmread(p) for p in copies)
    model = CTTissueModel()
    label_map = model.predict(parsed)
    reset = _frozen(monkeypatch)
    options = {"model_name": MODEL, "model_version": VERSION, "series_instance_uid": "2.25.900",
               "sop_instance_uid": "2.25.901"}
    files = []
    for volume in (indexed, parsed):
        reset()
        files.append(segmentation_file(volume, label_map, model.labels, **options)[1])
    assert files[0] == files[1]


@pytest.mark.parametrize("top", [0, 3, 15, 16, 40, 63, 64, 300])
def test_the_values_present_in_a_label_map_are_those_a_histogram_finds(top):
    from voxlake.ai.seg import label_counts, values_present

    rng = np.random.default_rng(top)
    label_map = rng.integers(0, top + 1, size=(7, 33, 35)).astype(np.uint16 if top > 255 else np.uint8)
    label_map[label_map == 2] = 0  # a value missing in the middle
    assert values_present(label_map) == np.flatnonzero(label_counts(label_map)).tolist()


def test_a_fractional_label_map_is_refused_with_the_series_named_before_anything_is_written(case, volume, tmp_path):
    from voxlake.ai.outputs import prepare

    with pytest.raises(InvalidArgumentError, match=f"series {volume.SeriesInstanceUID}: label map must hold integers"):
        prepare(tmp_path, volume, case["labels"].astype(np.float32), case["names"], model_name=MODEL,
                model_version=VERSION, meshes=False)
    assert not any(tmp_path.iterdir())
