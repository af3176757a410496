"""De-identifying one header: every place PHI can hide, keyed replacements, the audit."""

from __future__ import annotations

from datetime import datetime

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, SegmentationStorage

from voxlake.deid.errors import DeidentificationError
from voxlake.deid.header import Deidentifier
from voxlake.deid.keys import Secret
from voxlake.deid.profile import Profile, Recipe

KEY = Secret.from_bytes(b"k" * 40)
OTHER_KEY = Secret.from_bytes(b"q" * 40)
MODIFIED = ["retain-longitudinal-modified-dates"]


def _item(**values: object) -> Dataset:
    ds = Dataset()
    for k, v in values.items():
        setattr(ds, k, v)
    return ds


def _ct(sop: str = "1.2.3.4.1", patient: str = "MRN123", study_date: str = "20200314") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.SourceApplicationEntityTitle = "HOSPITAL_PACS"
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = "1.2.3.1", "1.2.3.2", "1.2.3.3"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "DOE^JANE", patient, "19700102"
    ds.StudyDate, ds.StudyTime = study_date, "235900"
    ds.SeriesDate, ds.SeriesTime = study_date, "001500.25"
    ds.AcquisitionDateTime = study_date + "101010"
    ds.Modality, ds.Manufacturer, ds.Rows = "CT", "ACME", 4
    ds.InstitutionName = "St. Elsewhere"
    ds.StudyDescription = "CT CHEST DOE JANE 03/14/2020"
    # PHI three sequences deep
    inner = _item(PatientName="DOE^JANE", PatientID="MRN123", PersonName="SMITH^JOHN")
    middle = _item(ContentSequence=[inner], UID="1.2.3.1")
    ds.ReferencedSeriesSequence = [_item(SeriesInstanceUID="1.2.3.2", ContentSequence=[middle])]
    ds.ReferencedImageSequence = [_item(ReferencedSOPClassUID=CTImageStorage, ReferencedSOPInstanceUID="1.2.3.4.0")]
    ds.private_block(0x0011, "ACME RIS", create=True).add_new(0x01, "LO", "DOE^JANE MRN123")
    ds.private_block(0x0019, "GEMS_ACQU_01", create=True).add_new(0x24, "DS", "1.5")
    return ds


def _strings(ds: Dataset) -> list[str]:
    out = []
    for elem in ds.iterall():
        if elem.VR not in ("SQ", "OB", "OW", "UN") and elem.value is not None:
            out.append(str(elem.value))
    return out


def run(ds: Dataset, options=(), key: Secret = KEY, recipe: Recipe | None = None):
    return Deidentifier(Profile(options, recipe=recipe), key).deidentify(ds)


def test_basic_profile_removes_patient_name_in_nested_sequences():
    out = run(_ct()).dataset
    assert not any("DOE" in s or "MRN123" in s or "SMITH" in s for s in _strings(out))
    assert out.PatientName == ""
    deep = out.ReferencedSeriesSequence[0].ContentSequence[0].ContentSequence[0]  # D on a sequence: walked
    assert deep.PatientName == "" and deep.PersonName == "ANONYMOUS" and deep.PatientID not in ("", "MRN123")


def test_private_tags_are_removed_unless_safe_and_the_option_is_chosen():
    out = run(_ct()).dataset
    assert not any(e.tag.is_private for e in out.iterall())
    recipe = Recipe.from_mapping({"safe_private": ["0019,GEMS_ACQU_01,24"]})
    kept = run(_ct(), ["retain-safe-private"], recipe=recipe).dataset
    private = {int(e.tag): e.value for e in kept.iterall() if e.tag.is_private}
    assert private == {0x00190010: "GEMS_ACQU_01", 0x00191024: "1.5"}  # the RIS block is gone


def test_uids_are_keyed_consistent_and_the_file_meta_follows():
    a, b = run(_ct("1.2.3.4.1")).dataset, run(_ct("1.2.3.4.2")).dataset
    assert a.StudyInstanceUID == b.StudyInstanceUID != "1.2.3.1"
    assert a.StudyInstanceUID.startswith("2.25.") and len(a.StudyInstanceUID) <= 64
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID
    assert "SourceApplicationEntityTitle" not in a.file_meta
    # a UID referenced deep down is remapped like the attribute it refers to
    assert a.StudyInstanceUID == a.ReferencedSeriesSequence[0].ContentSequence[0].UID
    assert a.ReferencedSeriesSequence[0].SeriesInstanceUID == a.SeriesInstanceUID
    assert a.ReferencedImageSequence[0].ReferencedSOPClassUID == CTImageStorage  # the standard's UIDs stay
    assert a.ReferencedImageSequence[0].ReferencedSOPInstanceUID == run(_ct("1.2.3.4.0")).dataset.SOPInstanceUID
    assert a.SOPClassUID == CTImageStorage


def test_same_key_same_output_and_another_key_other_uids():
    first, again = run(_ct()), run(_ct())
    assert first.dataset == again.dataset and first.audit == again.audit
    other = run(_ct(), key=OTHER_KEY).dataset
    assert other.SOPInstanceUID != first.dataset.SOPInstanceUID
    assert other.PatientID != first.dataset.PatientID


def test_patient_id_becomes_a_keyed_pseudonym():
    a, b = run(_ct("1.1")).dataset, run(_ct("1.2")).dataset
    assert a.PatientID == b.PatientID and a.PatientID not in ("", "MRN123")
    assert run(_ct("1.3", patient="OTHER")).dataset.PatientID != a.PatientID


def _when(da: str, tm: str) -> datetime:
    return datetime.strptime(da + tm[:6], "%Y%m%d%H%M%S")


def test_modified_dates_keep_intervals_within_a_patient():
    a = run(_ct("1.1", study_date="20200314"), MODIFIED).dataset
    b = run(_ct("1.2", study_date="20210101"), MODIFIED).dataset
    assert a.StudyDate != "20200314" and a.StudyTime != "235900"
    before = _when("20210101", "235900") - _when("20200314", "235900")
    assert _when(b.StudyDate, b.StudyTime) - _when(a.StudyDate, a.StudyTime) == before
    # Study and Series times cross midnight together; the fraction survives
    assert _when(a.SeriesDate, a.SeriesTime) - _when(a.StudyDate, a.StudyTime) == \
        _when("20200314", "001500") - _when("20200314", "235900")
    assert a.SeriesTime.endswith(".25")
    assert datetime.strptime(a.AcquisitionDateTime, "%Y%m%d%H%M%S") - _when(a.StudyDate, a.StudyTime) == \
        _when("20200314", "101010") - _when("20200314", "235900")
    assert a.PatientBirthDate == ""  # Z in the Basic Profile; the option does not retain it
    assert a.LongitudinalTemporalInformationModified == "MODIFIED"


def test_basic_profile_without_date_options_empties_dates():
    out = run(_ct()).dataset
    assert out.StudyDate == "" and out.StudyTime == ""  # Z
    assert "AcquisitionDateTime" not in out  # X/Z/D, Type 3 in the CT Image IOD: removed
    assert out.LongitudinalTemporalInformationModified == "REMOVED"


def test_clean_descriptors_removes_this_instances_identifiers_from_free_text():
    out = run(_ct(), ["clean-descriptors"]).dataset
    assert out.StudyDescription.startswith("CT CHEST")
    assert "DOE" not in out.StudyDescription and "JANE" not in out.StudyDescription
    assert "2020" not in out.StudyDescription


def test_marks_the_dataset_and_audits_actions_without_values():
    result = run(_ct(), MODIFIED)
    out = result.dataset
    assert out.PatientIdentityRemoved == "YES"
    assert [i.CodeValue for i in out.DeidentificationMethodCodeSequence] == ["113100", "113107"]
    entries = {e.path: e.action for e in result.audit}
    assert entries["PatientName"] == "Z"
    assert entries["ReferencedSeriesSequence[0].ContentSequence[0].ContentSequence[0].PatientName"] == "Z"
    assert entries["(0011,1001)"] == "X" and entries["StudyDate"] == "C"
    text = repr(result.audit)
    assert "DOE" not in text and "MRN123" not in text and "20200314" not in text


def test_a_seg_keeps_pointing_at_its_ct():
    ct = run(_ct("1.2.3.4.7")).dataset
    seg = Dataset()
    seg.file_meta = FileMetaDataset()
    seg.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    seg.SOPClassUID, seg.SOPInstanceUID, seg.StudyInstanceUID = SegmentationStorage, "1.2.3.9", "1.2.3.1"
    seg.FrameOfReferenceUID = "1.2.3.3"
    seg.ReferencedSeriesSequence = [_item(SeriesInstanceUID="1.2.3.2", ReferencedInstanceSequence=[
        _item(ReferencedSOPClassUID=CTImageStorage, ReferencedSOPInstanceUID="1.2.3.4.7")])]
    out = run(seg).dataset
    ref = out.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == ct.SeriesInstanceUID
    assert ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == ct.SOPInstanceUID
    assert out.FrameOfReferenceUID == ct.FrameOfReferenceUID and out.StudyInstanceUID == ct.StudyInstanceUID


def test_no_secret_or_a_short_one_is_an_error(tmp_path):
    with pytest.raises(DeidentificationError, match="secret file is required"):
        Secret.read(None)
    with pytest.raises(DeidentificationError, match="not found"):
        Secret.read(tmp_path / "missing.key")
    (tmp_path / "short.key").write_text("abc\n")
    with pytest.raises(DeidentificationError, match="too short"):
        Secret.read(tmp_path / "short.key")
    assert "k" not in repr(KEY).lower().replace("secret", "")
