"""Labels from the viewer: the model segments a CT, a reader corrects the SEG in OHIF and saves it
(STOW-RS lands it in ``instances`` like any SEG), and ``sync_labels`` turns every SEG into rows of
``labels``: the model's as ``original``, the reader's as ``final`` with the Dice of each label
against the original. The expected Dice values are computed here with numpy from the label maps
the SEGs were written from."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ct_and_mr_lake

pytest.importorskip("highdicom")
pytest.importorskip("scipy")
# the CT's PatientName has one component; highdicom says so for every SEG built from it
pytestmark = pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent the intended person name")

from voxlake.ai.labels import decode_masks, final_labels, sync_labels  # noqa: E402

NAMES = {1: "body", 2: "lungs", 3: "bone", 4: "fat", 5: "muscle"}  # ct-tissue's labels


def viewer_seg(volume, label_map: np.ndarray, folder: Path, *, creator: str | None = None,
               operator: str | None = None, content: tuple[str, str, str] | None = None,
               headers: list | None = None) -> str:
    """Write ``label_map`` as a viewer does: a BINARY SEG by hand (MANUAL segments, Manufacturer
    OHIF, a new series) referencing the source instances, segments numbered in reverse label order
    (so only their labels match the model's). Returns its SOP Instance UID."""
    import highdicom as hd
    from pydicom.sr.coding import Code
    from pydicom.uid import generate_uid

    tissue = Code("85756007", "SCT", "Tissue")
    present = [v for v in sorted(NAMES, reverse=True) if np.any(label_map == v)]
    frames = np.zeros(label_map.shape, np.uint8)
    for number, value in enumerate(present, start=1):
        frames[label_map == value] = number
    seg = hd.seg.Segmentation(
        source_images=headers or volume.headers, pixel_array=frames, segmentation_type="BINARY",
        segment_descriptions=[hd.seg.SegmentDescription(
            segment_number=n, segment_label=NAMES[v], segmented_property_category=tissue,
            segmented_property_type=tissue, algorithm_type="MANUAL") for n, v in enumerate(present, start=1)],
        series_instance_uid=generate_uid(), series_number=1000, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="OHIF", manufacturer_model_name="OHIF Viewer", software_versions="3.9",
        device_serial_number="0", content_creator_name=creator, content_label="CORRECTED")
    if operator:
        seg.OperatorsName = operator
    if content:
        seg.ContentDate, seg.ContentTime, seg.TimezoneOffsetFromUTC = content
    folder.mkdir(parents=True, exist_ok=True)
    seg.save_as(folder / f"{seg.SOPInstanceUID}.dcm", enforce_file_format=True)
    return str(seg.SOPInstanceUID)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def world(tmp_path_factory, ct_series: Path):
    """40 slices of the real CT, segmented by ct-tissue (the original SEG), and its label map."""
    from voxlake.ai.segment import segment
    from voxlake.ai.tissue import CTTissueModel
    from voxlake.ai.volume import load_series

    lake = ct_and_mr_lake(tmp_path_factory, ct_series, 40, 40)
    model = CTTissueModel()
    summary = segment(lake, model=model, where="Modality = 'CT'", meshes=False)
    [outcome] = summary.outcomes
    volume = load_series(lake, outcome.SeriesInstanceUID)
    return {"lake": lake, "volume": volume, "original": model.predict(volume), "seg": outcome.SEG,
            "series": outcome.SeriesInstanceUID, "tmp": tmp_path_factory.mktemp("viewer")}


def corrected(original: np.ndarray) -> np.ndarray:
    """The reader's correction: fat erased from the first 10 slices, muscle drawn into a block of
    background (lungs, bone and body untouched)."""
    out = original.copy()
    out[:10][out[:10] == 4] = 0
    block = out[5:25, 0:40, 0:60]
    block[block == 0] = 5
    return out


@pytest.fixture(scope="module")
def first_sync(world):
    """The reader's first correction is stored, then one sync."""
    label_map = corrected(world["original"])
    sop = viewer_seg(world["volume"], label_map, world["tmp"] / "reader", creator="Dr^Reader",
                     content=("20250314", "093000", "+0200"))
    world["lake"].ingest(str(world["tmp"] / "reader"), workers=0)
    return {"result": sync_labels(world["lake"]), "sop": sop, "map": label_map}


def rows_of(lake, sop: str) -> dict[str, dict]:
    table = lake.sql(f"SELECT * FROM labels WHERE SegmentationSOPInstanceUID = '{sop}'").arrow().to_pylist()
    return {row["label"]: row for row in table}


def test_the_model_seg_becomes_original_rows_with_its_model_version_and_no_dice(world, first_sync):
    rows = rows_of(world["lake"], world["seg"])
    original = world["original"]
    assert set(rows) == set(NAMES.values())
    for value, name in NAMES.items():
        row = rows[name]
        assert (row["status"], row["model"], row["model_version"]) == ("original", "ct-tissue", "1")
        assert row["dice"] is None and row["corrects_sop_instance_uid"] is None
        assert row["label_version"] == 1
        assert row["SeriesInstanceUID"] == world["series"]
        assert row["author"] == "voxlake^ai"
        assert row["voxels"] == int((original == value).sum())  # decoded onto the CT's grid exactly


def test_the_readers_correction_becomes_final_rows_with_the_dice_of_each_label(world, first_sync):
    assert first_sync["result"].errors == []
    assert first_sync["result"].synced == [world["seg"], first_sync["sop"]]  # in the order they were indexed
    rows = rows_of(world["lake"], first_sync["sop"])
    original, final = world["original"], first_sync["map"]
    assert set(rows) == set(NAMES.values())
    for value, name in NAMES.items():
        row = rows[name]
        assert (row["status"], row["label_version"], row["author"]) == ("final", 2, "Dr^Reader")
        assert (row["model"], row["model_version"]) == ("ct-tissue", "1")  # the version it corrected
        assert row["corrects_sop_instance_uid"] == world["seg"]
        assert row["SegmentNumber"] == 6 - value  # numbered in reverse: matched by label, not number
        assert row["voxels"] == int((final == value).sum())
        assert row["dice"] == pytest.approx(dice(final == value, original == value), abs=1e-12)
    assert {name: rows[name]["dice"] for name in ("body", "lungs", "bone")} == {
        "body": 1.0, "lungs": 1.0, "bone": 1.0}
    assert 0.5 < rows["fat"]["dice"] < 1.0 and 0.5 < rows["muscle"]["dice"] < 1.0
    # ContentDate/Time 09:30 at UTC+2
    assert rows["fat"]["time"] == datetime(2025, 3, 14, 7, 30, tzinfo=UTC)


def test_a_second_correction_by_another_reader_is_version_3_and_wins_for_training(world, first_sync):
    lake = world["lake"]
    second_map = corrected(world["original"])
    second_map[30:][second_map[30:] == 3] = 0  # bone erased from the last 10 slices too
    folder = world["tmp"] / "second"
    sop = viewer_seg(world["volume"], second_map, folder, operator="Dr^Second")
    # a SEG of instances the lake does not hold: reported, the others still synced
    import copy

    from pydicom.uid import generate_uid

    elsewhere = [copy.deepcopy(h) for h in world["volume"].headers[:3]]
    foreign_series = generate_uid()
    for header in elsewhere:
        header.SeriesInstanceUID, header.SOPInstanceUID = foreign_series, generate_uid()
    broken = viewer_seg(world["volume"], second_map[:3], folder, creator="Dr^Reader", headers=elsewhere)
    lake.ingest(str(folder), workers=0)

    result = sync_labels(lake)

    assert result.synced == [sop]
    [error] = result.errors
    assert error["SOPInstanceUID"] == broken
    assert broken in error["reason"] and foreign_series in error["reason"] and "not in the lake" in error["reason"]
    assert "\n" not in error["reason"]
    rows = rows_of(lake, sop)
    assert {r["label_version"] for r in rows.values()} == {3}
    assert {r["author"] for r in rows.values()} == {"Dr^Second"}  # no ContentCreatorName: OperatorsName
    assert {r["corrects_sop_instance_uid"] for r in rows.values()} == {world["seg"]}
    assert rows["bone"]["dice"] == pytest.approx(dice(second_map == 3, world["original"] == 3), abs=1e-12)
    assert rows_of(lake, broken) == {}

    winners = final_labels(lake)
    assert {r["SegmentationSOPInstanceUID"] for r in winners} == {sop}
    assert sorted(r["label"] for r in winners) == sorted(NAMES.values())
    assert lake.sql("SELECT count(DISTINCT SegmentationSOPInstanceUID), count(DISTINCT author) FROM labels "
                    "WHERE status = 'final'").fetchall() == [(2, 2)]  # both readers' versions are kept


def test_a_sync_with_nothing_new_appends_nothing(world, first_sync):
    lake = world["lake"]
    before = lake.sql("SELECT count(*) FROM labels").fetchall()
    result = sync_labels(lake)
    assert (result.rows, result.table_version) == ([], None)
    assert lake.sql("SELECT count(*) FROM labels").fetchall() == before
    assert result.summary()["rows"] == 0


def test_a_seg_without_frame_references_is_placed_by_its_plane_positions(world, first_sync, monkeypatch):
    import pydicom

    from voxlake.ai import labels

    [(uri,)] = world["lake"].sql("SELECT uri FROM instances WHERE SOPInstanceUID = "
                                 f"'{first_sync['sop']}'").fetchall()
    ds = pydicom.dcmread(uri)
    by_reference = decode_masks(ds, world["volume"])
    for item in ds.PerFrameFunctionalGroupsSequence:
        del item.DerivationImageSequence

    def no_references(*args):
        raise AssertionError("the SEG has no frame references to use")

    monkeypatch.setattr(labels, "_by_reference", no_references)
    by_position = decode_masks(ds, world["volume"])
    assert by_position.keys() == by_reference.keys()
    for number in by_reference:
        assert np.array_equal(by_position[number], by_reference[number])
    assert np.array_equal(by_position[1], first_sync["map"] == 5)  # segment 1 is muscle


def test_a_label_map_seg_as_ohif_stores_it_is_decoded_frame_by_frame(world, first_sync):
    """OHIF 3.13 saves Label Map Segmentation Storage, RLE Lossless, without the FrameContentSequence
    highdicom needs: each frame is placed on the source slice it names."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.coding import Code
    from pydicom.uid import RLELossless, generate_uid

    label_map = first_sync["map"]
    tissue = Code("85756007", "SCT", "Tissue")
    present = [v for v in sorted(NAMES) if np.any(label_map == v)]
    seg = hd.seg.Segmentation(
        source_images=world["volume"].headers, pixel_array=label_map.astype(np.uint8), segmentation_type="LABELMAP",
        segment_descriptions=[hd.seg.SegmentDescription(
            segment_number=v, segment_label=NAMES[v], segmented_property_category=tissue,
            segmented_property_type=tissue, algorithm_type="MANUAL") for v in present],
        series_instance_uid=generate_uid(), series_number=1001, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="OHIF", manufacturer_model_name="OHIF Viewer", software_versions="3.13",
        device_serial_number="0", transfer_syntax_uid=RLELossless)
    path = world["tmp"] / "ohif-labelmap.dcm"
    seg.save_as(path, enforce_file_format=True)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7" and ds.file_meta.TransferSyntaxUID == RLELossless
    for item in ds.PerFrameFunctionalGroupsSequence:
        del item.FrameContentSequence
    with pytest.raises(AttributeError, match="FrameContentSequence"):
        hd.seg.Segmentation.from_dataset(ds, copy=True)

    masks = decode_masks(ds, world["volume"])
    assert sorted(masks) == present
    for value in present:
        assert np.array_equal(masks[value], label_map == value), NAMES[value]


def test_a_model_seg_whose_run_has_not_yet_committed_its_statistics_waits_for_the_next_sync(world, first_sync):
    """``record`` ingests the SEG before it appends ``segment_stats``: between the two, the SEG is
    neither a known original nor a reader's correction, so it is reported and left for later."""
    from voxlake.ai import tables
    from voxlake.ai.seg import encode, segmentation

    lake = world["lake"]
    seg = segmentation(world["volume"], world["original"], NAMES, model_name="ct-tissue", model_version="2")
    folder = world["tmp"] / "model-v2"
    folder.mkdir()
    (folder / "seg.dcm").write_bytes(encode(seg))
    lake.ingest(str(folder), workers=0)

    waiting = sync_labels(lake)
    assert waiting.synced == [] and [e["SOPInstanceUID"] for e in waiting.errors][-1] == seg.SOPInstanceUID
    assert "segment_stats" in waiting.errors[-1]["reason"]

    tables.append(lake.uri, "segment_stats", [{
        "SeriesInstanceUID": world["series"], "StudyInstanceUID": world["volume"].StudyInstanceUID,
        "model": "ct-tissue", "model_version": "2", "label": "body", "SegmentationSOPInstanceUID": seg.SOPInstanceUID,
        "created_at": datetime.now(UTC)}])
    done = sync_labels(lake)
    assert done.synced == [seg.SOPInstanceUID]
    rows = rows_of(lake, seg.SOPInstanceUID)
    assert {(r["status"], r["model_version"], r["label_version"]) for r in rows.values()} == {("original", "2", 4)}
