"""Burned-in text: the ground-truth boxes are covered, OCR finds no PHI afterwards, the ultrasound band
and rule regions go, every frame is redacted, lossless syntaxes survive, other pixels stay as they were."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SHARED_DATA, need

np = pytest.importorskip("numpy")
pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset  # noqa: E402

from voxlake.deid.pixels import _frames, clean_pixels, deny_terms, matches_deny, ocr_words  # noqa: E402

PRESIDIO = SHARED_DATA / "presidio-pseudo-phi"
US = SHARED_DATA / "deid-data/data/ultrasounds/GREYSCALE_IMAGE.dcm"
PADDING = 25  # presidio's ground truth is measured on the image padded by 25 pixels


def _tesseract() -> None:
    pytest.importorskip("pytesseract")
    import shutil

    if shutil.which("tesseract") is None:
        pytest.skip("tesseract is not installed (make deid-tools)")


def _mask(boxes, shape) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    for b in boxes:
        m[max(0, b.y):b.y + b.h, max(0, b.x):b.x + b.w] = True
    return m


@pytest.mark.slow
@pytest.mark.parametrize(("path", "key"), [
    ("docs_sample_data/2_ORIGINAL.dcm", "sample_data/2_ORIGINAL.dcm"),
    ("image_redactor_test_data/0_ORIGINAL_compressed.dcm", "sample_data/0_ORIGINAL.dcm"),  # RLE of 0_ORIGINAL
])
def test_presidio_ground_truth_boxes_are_covered_and_ocr_then_finds_no_phi(path, key):
    _tesseract()
    ds = pydicom.dcmread(need(PRESIDIO / path))
    truth = json.loads(need(PRESIDIO / "docs_sample_data/ground_truth.json").read_text())[key]
    terms = deny_terms(ds)
    boxes = clean_pixels(ds, terms=terms)
    covered = _mask(boxes, (ds.Rows, ds.Columns))
    for t in truth:
        x, y = t["left"] - PADDING, t["top"] - PADDING
        assert covered[y:y + t["height"], x:x + t["width"]].mean() >= 0.95, t["label"]
    assert {b.reason.split(":")[0] for b in boxes} == {"ocr"}
    words = [w for frame in _frames(ds) for w in ocr_words(frame)]
    assert [w.text for w in words if matches_deny(w.text, terms)] == []
    labels = {t["label"].strip("[]") for t in truth}
    assert not labels & {w.text.strip("[]") for w in words}


def test_the_ultrasound_band_above_the_regions_is_blacked_out_and_the_regions_kept():
    ds = pydicom.dcmread(need(US))
    before = ds.pixel_array.copy()
    top = min(r.RegionLocationMinY0 for r in ds.SequenceOfUltrasoundRegions)
    boxes = clean_pixels(ds, ocr=False)
    assert [(b.x, b.y, b.w, b.h, b.reason) for b in boxes] == [(0, 0, ds.Columns, top, "ultrasound:above-regions")]
    after = ds.pixel_array
    assert (after[:top] == 0).all()
    assert np.array_equal(after[top:], before[top:])
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.BurnedInAnnotation == "NO"
    assert "113101" in {i.CodeValue for i in ds.DeidentificationMethodCodeSequence}


@pytest.mark.slow
def test_deid_data_ultrasound_burned_in_text_is_gone_for_ocr():
    _tesseract()
    ds = pydicom.dcmread(need(US))
    terms = deny_terms(ds)
    before = [w.text for w in ocr_words(_frames(ds)[0]) if matches_deny(w.text, terms)]
    assert len(before) >= 5  # ZZZ TEST PATIENT..., the ID, DOB, site, date are readable before
    clean_pixels(ds, terms=terms)
    assert [w.text for w in ocr_words(_frames(ds)[0]) if matches_deny(w.text, terms)] == []


def test_a_rule_blacks_out_the_philips_patient_information_page():
    ds = pydicom.dcmread(need(SHARED_DATA / "dcm_qa_ct/In/Philips/S21570/S4010/I40"))
    boxes = clean_pixels(ds, ocr=False)
    assert [b.reason for b in boxes] == ["rule:philips-ct-patient-information-page"]
    assert not ds.pixel_array.any()


LOSSLESS = {
    "MR_small_RLE.dcm": "1.2.840.10008.1.2.5",
    "emri_small_RLE.dcm": "1.2.840.10008.1.2.5",  # 10 frames
    "SC_rgb_rle_2frame.dcm": "1.2.840.10008.1.2.5",
    "MR_small_jpeg_ls_lossless.dcm": "1.2.840.10008.1.2.4.80",
    "MR_small_jp2klossless.dcm": "1.2.840.10008.1.2.4.90",
    "MR_small.dcm": "1.2.840.10008.1.2.1",
    "image_dfl.dcm": "1.2.840.10008.1.2.1.99",
    "MR_small_implicit.dcm": "1.2.840.10008.1.2",
}
REWRITTEN = {  # no encoder for the syntax (JPEG lossless), lossy input, retired big endian
    "JPEG-LL.dcm": False, "SC_rgb_jpeg_dcmtk.dcm": True, "JPEG2000.dcm": True, "JPEGLSNearLossless_16.dcm": True,
    "MR_small_bigendian.dcm": False,
}


def _with_band(name: str) -> tuple[Dataset, np.ndarray]:
    """A file with an ultrasound region declared 4 rows down, so that the band above it is redacted."""
    folder = "pydicom-data/data" if name in ("emri_small_RLE.dcm", "JPEG-LL.dcm") else "pydicom/test_files"
    ds = pydicom.dcmread(need(SHARED_DATA / folder / name))
    before = _frames(ds).copy()
    region = Dataset()
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 4
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = ds.Columns - 1, ds.Rows - 1
    ds.SequenceOfUltrasoundRegions = [region]
    return ds, before


@pytest.mark.parametrize("name", sorted(LOSSLESS))
def test_lossless_input_keeps_its_transfer_syntax_and_every_frame_is_redacted(name, tmp_path):
    ds, before = _with_band(name)
    clean_pixels(ds, ocr=False)
    ds.save_as(tmp_path / "out.dcm")
    out = pydicom.dcmread(tmp_path / "out.dcm")
    assert out.file_meta.TransferSyntaxUID == LOSSLESS[name]
    after = _frames(out)
    assert after.shape == before.shape
    black = before.max() if out.PhotometricInterpretation == "MONOCHROME1" else before.min()
    assert (after[:, :4] == (0 if after.ndim == 4 else black)).all()  # every frame
    assert np.array_equal(after[:, 4:], before[:, 4:])  # the rest, bit for bit
    assert "LossyImageCompression" not in out or out.LossyImageCompression == ds.get("LossyImageCompression")


@pytest.mark.parametrize("name", sorted(REWRITTEN))
def test_other_input_is_written_uncompressed_and_lossy_history_is_kept(name, tmp_path):
    ds, before = _with_band(name)
    clean_pixels(ds, ocr=False)
    ds.save_as(tmp_path / "out.dcm")
    out = pydicom.dcmread(tmp_path / "out.dcm")
    assert out.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert np.array_equal(_frames(out)[:, 4:], before[:, 4:])
    if REWRITTEN[name]:
        assert out.LossyImageCompression == "01" and out.LossyImageCompressionMethod


def test_nothing_found_leaves_the_encoded_pixels_byte_for_byte():
    ds = pydicom.dcmread(need(SHARED_DATA / "pydicom/test_files/MR_small_RLE.dcm"))
    data = ds.PixelData
    assert clean_pixels(ds, ocr=False) == []
    assert ds.PixelData == data and ds.BurnedInAnnotation == "NO"


def test_ocr_matches_header_values_despite_misreadings():
    ds = Dataset()
    ds.PatientName, ds.PatientBirthDate, ds.PatientID = "KAUFMAN^SCOTT", "19430722", "MRN7755"
    terms = deny_terms(ds)
    assert matches_deny("KAUPMAN", terms) and matches_deny("07.22.1943", terms) and matches_deny("mrn7755", terms)
    assert not matches_deny("Portable", terms) and not matches_deny("[M]", terms)


@pytest.mark.slow
def test_clean_pixel_data_option_cleans_instead_of_leaving_out(tmp_path):
    _tesseract()
    from voxlake.deid.run import deidentify_file

    key = tmp_path / "deid.key"
    key.write_text("0123456789abcdef" * 4)
    outcome = deidentify_file(need(US), tmp_path / "o.dcm", secret=key, options=["clean-pixel-data"])
    assert outcome.status == "written" and outcome.boxes
    assert all(b[0] == -1 and b[5] for b in outcome.boxes)  # every frame; a reason, never the text
    out = pydicom.dcmread(tmp_path / "o.dcm")
    assert out.BurnedInAnnotation == "NO" and out.PatientIdentityRemoved == "YES"
    codes = [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113101"]
    assert (out.pixel_array[:38] == 0).all()
