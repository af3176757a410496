"""The Clean Recognizable Visual Features Option (PS3.15 E.3.2): voxlake does not deface, so what may
show the patient's face or body is left out with the reason, and what is written says NO."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.conftest import CT_SERIES, need
from voxlake.cli.main import main
from voxlake.deid.run import deidentify_files
from voxlake.deid.visual import visual_features_risk

OPTION = "clean-recognizable-visual-features"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def image(modality: str = "CT", sop_class: str = CT_IMAGE, **attributes: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.Modality, ds.PixelData = sop_class, modality, b"\0\0"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.fixture(scope="module")
def secret(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("key") / "deid.key"
    path.write_text("0123456789abcdef" * 4 + "\n")
    return path


# -- the rules -----------------------------------------------------------------------------------

@pytest.mark.parametrize("body_part", ["HEAD", "BRAIN", "HEADNECK", "NECK", "ORBIT", "TMJ", "WHOLEBODY"])
def test_a_head_ct_is_named_by_its_body_part(body_part):
    reason = visual_features_risk(image(BodyPartExamined=body_part))
    assert "head" in reason and f"BodyPartExamined '{body_part}'" in reason


@pytest.mark.parametrize(("keyword", "value"), [
    ("StudyDescription", "CT Head w/o contrast"), ("SeriesDescription", "AX T1 BRAIN"),
    ("ProtocolName", "Sinus_coronal"), ("SeriesDescription", "orbits 1mm"), ("StudyDescription", "H&N RT plan"),
])
def test_a_head_volume_is_named_by_its_descriptions(keyword, value):
    assert "head" in visual_features_risk(image("MR", **{keyword: value, "BodyPartExamined": "SPINE"}))


@pytest.mark.parametrize("description", ["HEADFIRST abdomen", "Head First Supine pelvis", "HFS chest",
                                         "CT PANCREAS HEAD", "Femoral neck"])
def test_patient_positions_and_other_organs_heads_are_not_the_head(description):
    assert visual_features_risk(image(SeriesDescription=description)) == ""


@pytest.mark.parametrize("modality", ["CT", "MR", "PT", "NM"])
def test_a_volume_of_unknown_region_is_left_out_to_be_safe(modality):
    assert visual_features_risk(image(modality)).startswith("body region unknown")
    assert visual_features_risk(image(modality, SeriesDescription="Head First Supine")).startswith(
        "body region unknown")


def test_a_ct_of_the_abdomen_and_other_images_are_safe():
    assert visual_features_risk(image(BodyPartExamined="ABDOMEN")) == ""
    assert visual_features_risk(image(StudyDescription="CT Thorax Abdomen")) == ""
    assert visual_features_risk(image("DX", "1.2.840.10008.5.1.4.1.1.1.1")) == ""  # a radiograph
    assert visual_features_risk(image("US", "1.2.840.10008.5.1.4.1.1.6.1")) == ""
    assert visual_features_risk(image("MG", "1.2.840.10008.5.1.4.1.1.1.2")) == ""


@pytest.mark.parametrize("sop_class", ["1.2.840.10008.5.1.4.1.1.77.1.4", "1.2.840.10008.5.1.4.1.1.77.1.4.1",
                                       "1.2.840.10008.5.1.4.1.1.77.1.5.1", "1.2.840.10008.5.1.4.1.1.77.1.5.2"])
def test_photographs_are_left_out_by_sop_class(sop_class):
    assert "may show the patient" in visual_features_risk(image("OT", sop_class))


def test_external_camera_photographs_are_left_out_by_modality():
    assert "Modality XC" in visual_features_risk(image("XC", "1.2.840.10008.5.1.4.1.1.7"))


def test_the_source_s_recognizable_visual_features_decides_first():
    assert visual_features_risk(image(BodyPartExamined="HEAD", RecognizableVisualFeatures="NO")) == ""
    assert visual_features_risk(image("US", RecognizableVisualFeatures="YES")) == \
        "Recognizable Visual Features is YES"


def test_an_instance_without_pixel_data_shows_nothing():
    ds = image(BodyPartExamined="HEAD", RecognizableVisualFeatures="YES")
    del ds.PixelData
    assert visual_features_risk(ds) == ""


# -- a run over a real CT slice ------------------------------------------------------------------

@pytest.fixture()
def chest_and_head(tmp_path) -> Path:
    """A real CT slice twice: as it is (Body Part Examined CHEST, or ABDOMEN when empty) and as a head."""
    slice_ = next(iter(sorted(need(CT_SERIES).glob("*.dcm"))))
    src = tmp_path / "in"
    src.mkdir()
    body = pydicom.dcmread(slice_)
    if not str(body.get("BodyPartExamined", "") or "").strip():
        body.BodyPartExamined = "ABDOMEN"
        body.save_as(src / "body.dcm")
    else:
        shutil.copy(slice_, src / "body.dcm")
    head = pydicom.dcmread(slice_)
    head.BodyPartExamined = "HEAD"
    head.SOPInstanceUID = generate_uid()
    head.save_as(src / "head.dcm")
    return src


def test_the_head_is_left_out_with_the_reason_and_the_body_written_marked(chest_and_head, tmp_path, secret):
    summary = deidentify_files(chest_and_head, tmp_path / "out", secret=secret, options=[OPTION])
    assert (summary.written, summary.excluded) == (1, 1)
    (problem,) = summary.to_dict()["problems"]
    assert problem["source"].endswith("head.dcm") and problem["status"] == "excluded"
    assert problem["reason"].startswith("recognizable visual features: a CT volume that holds the head")
    assert problem["reason"].endswith("; not cleaned (voxlake does not deface)")
    (written,) = (tmp_path / "out").rglob("*.dcm")
    out = pydicom.dcmread(written)
    assert out.RecognizableVisualFeatures == "NO"
    assert "113102" in [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    assert out.get("BodyPartExamined") != "HEAD"


def test_without_the_option_both_are_written(chest_and_head, tmp_path, secret):
    summary = deidentify_files(chest_and_head, tmp_path / "out", secret=secret)
    assert (summary.written, summary.excluded) == (2, 0)
    for path in (tmp_path / "out").rglob("*.dcm"):
        out = pydicom.dcmread(path, stop_before_pixels=True)
        assert "RecognizableVisualFeatures" not in out
        assert "113102" not in [item.CodeValue for item in out.DeidentificationMethodCodeSequence]


def test_the_cli_takes_the_option_and_reports_what_it_left_out(chest_and_head, tmp_path, secret, capsys):
    assert main(["deid", "file", str(chest_and_head), str(tmp_path / "out"), "--secret-file", str(secret),
                 "--option", OPTION, "--json"]) == 0  # left out on purpose: no error
    report = json.loads(capsys.readouterr().out)
    assert (report["written"], report["excluded"]) == (1, 1)
    assert report["problems"][0]["reason"].startswith("recognizable visual features:")
