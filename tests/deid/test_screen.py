"""The burned-in text screen (voxlake.deid.screen): fires on real and rendered text, stays quiet on
noise, anatomy, phantoms and masks."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CT_SERIES, PYDICOM_FILES, SHARED_DATA, need

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("scipy")

from voxlake.deid.screen import TextRegion, screen_dataset, screen_frame, screen_frames  # noqa: E402

US = SHARED_DATA / "deid-data" / "data" / "ultrasounds"
PRESIDIO = SHARED_DATA / "presidio-pseudo-phi"
PHILIPS = SHARED_DATA / "dcm_qa_ct" / "In" / "Philips" / "S21570" / "S4010"
PYDICOM_DATA = SHARED_DATA / "pydicom-data" / "data"
TOTALSEG = SHARED_DATA / "totalsegmentator" / "reference_files" / "example_ct_dicom"
STRINGS = ("ZYXWVUT^QUENTINA", "MRN 884422", "03/14/1958")
SIZES = range(10, 25, 2)


def overlaps(r: TextRegion, x: int, y: int, w: int, h: int) -> bool:
    return r.x < x + w and x < r.x + r.w and r.y < y + h and y < r.y + r.h


def render(img: np.ndarray, text: str, size: int, value: object, at: tuple[int, int] = (12, 10)) -> tuple:
    """Draw ``text`` antialiased in ``value`` onto a copy of ``img`` (2-D, or RGB with a colour);
    returns the image and the text's box (x, y, w, h)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=size)
    mask = Image.new("L", (img.shape[1], img.shape[0]), 0)
    ImageDraw.Draw(mask).text(at, text, fill=255, font=font)
    alpha = np.asarray(mask, dtype=np.float32) / 255.0
    if img.ndim == 3:
        alpha = alpha[..., None]
    out = img.astype(np.float32) * (1 - alpha) + np.asarray(value, dtype=np.float32) * alpha
    x0, y0, x1, y1 = ImageDraw.Draw(mask).textbbox(at, text, font=font)
    return np.rint(out).astype(img.dtype), (x0, y0, x1 - x0, y1 - y0)


def smooth(shape: tuple[int, int], seed: int, sigma: float) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma)


def mr_like(seed: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[:256, :256]
    body = ((yy - 128) ** 2 / 100 ** 2 + (xx - 128) ** 2 / 80 ** 2) < 1
    img = body * (600 + 4000 * smooth((256, 256), seed, 6)) + 20 * np.abs(np.random.default_rng(seed).normal(size=(256, 256)))
    return np.clip(img, 0, 4095).astype(np.uint16)


def speckle(shape: tuple[int, int], seed: int, scale: float = 40.0) -> np.ndarray:
    """Ultrasound-like speckle: the magnitude of a correlated complex Gaussian field."""
    re_, im_ = smooth(shape, seed, 1.2), smooth(shape, seed + 100, 1.2)
    mag = np.hypot(re_, im_)
    return np.clip(mag / mag.mean() * scale, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def ct_slice() -> np.ndarray:
    return pydicom.dcmread(sorted(need(CT_SERIES).iterdir())[60]).pixel_array


# -- fires on real burned-in text --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["GREYSCALE_IMAGE.dcm", "RGB_IMAGE.dcm"])
def test_ultrasound_patient_banner(name: str) -> None:
    ds = pydicom.dcmread(need(US / name))
    regions = screen_dataset(ds)
    # "ZZZ TEST PATIENT" and the ID/DOB/date banner lie across the top 25 rows
    assert any(r.y < 25 and r.x < 200 for r in regions), regions
    assert all(r.frame == 0 for r in regions)


def test_ultrasound_cine_every_frame() -> None:
    with zipfile.ZipFile(need(US / "GREYSCALE_CINE.zip")) as zf:
        ds = pydicom.dcmread(io.BytesIO(zf.read(zf.namelist()[0])))
    regions = screen_dataset(ds)
    assert {r.frame for r in regions} == set(range(int(ds.NumberOfFrames)))


@pytest.mark.parametrize("path, key", [
    ("docs_sample_data/2_ORIGINAL.dcm", "sample_data/2_ORIGINAL.dcm"),
    ("image_redactor_test_data/0_ORIGINAL_compressed.dcm", "sample_data/0_ORIGINAL.dcm"),
])
def test_presidio_ground_truth(path: str, key: str) -> None:
    ds = pydicom.dcmread(need(PRESIDIO / path))
    truth = json.loads((PRESIDIO / "docs_sample_data" / "ground_truth.json").read_text())[key]
    regions = screen_dataset(ds)
    # presidio's boxes are in its OCR frame, padded by 25 pixels on each side
    hit = [t for t in truth if any(overlaps(r, t["left"] - 25, t["top"] - 25, t["width"], t["height"])
                                   for r in regions)]
    assert len(hit) >= len(truth) - 1, (regions, truth)


@pytest.mark.parametrize("name", ["I40", "I50", "I60"])
def test_philips_patient_information_capture(name: str) -> None:
    ds = pydicom.dcmread(need(PHILIPS / name))
    assert len(screen_dataset(ds)) >= 5


# -- fires on rendered text ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("text", STRINGS)
@pytest.mark.parametrize("grey", ["max", "mid"])
def test_text_on_real_ct(ct_slice: np.ndarray, size: int, text: str, grey: str) -> None:
    lo, hi = int(ct_slice.min()), int(ct_slice.max())
    img, box = render(ct_slice, text, size, hi if grey == "max" else (lo + hi) // 2)
    assert any(overlaps(r, *box) for r in screen_frame(img))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("text", STRINGS)
def test_text_on_mr_like_image(size: int, text: str) -> None:
    img, box = render(mr_like(), text, size, 4095, at=(10, 226 - size))
    assert any(overlaps(r, *box) for r in screen_frame(img))


@pytest.mark.parametrize("size", SIZES)
def test_text_on_noise(size: int) -> None:
    noise = np.clip(np.random.default_rng(size).normal(80, 15, (256, 320)), 0, 255).astype(np.uint8)
    img, box = render(noise, STRINGS[0], size, 255)
    assert any(overlaps(r, *box) for r in screen_frame(img))


@pytest.mark.parametrize("size", SIZES)
def test_monochrome1_dark_text_on_light(size: int) -> None:
    """A MONOCHROME1 dataset (high stored values display dark) with text drawn in low values on a
    high background, screened through screen_dataset."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    base = (3000 - 200 * smooth((300, 300), 3, 20) * 20).clip(0, 4095).astype(np.uint16)
    img, box = render(base, STRINGS[2], size, 300)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.set_pixel_data(img, "MONOCHROME1", 12)
    assert any(overlaps(r, *box) for r in screen_dataset(ds))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("colour", [(255, 255, 0), (0, 255, 0)])
def test_coloured_text_on_speckle(size: int, colour: tuple[int, int, int]) -> None:
    grey = speckle((480, 640), size)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    img, box = render(rgb, STRINGS[1], size, colour, at=(40, 200))
    regions = screen_frame(img)
    assert any(overlaps(r, *box) for r in regions)
    assert screen_frames(img[None])[0].frame == 0


def test_multiframe_indices() -> None:
    blank = np.zeros((3, 120, 200), dtype=np.uint8)
    blank[1] = render(blank[1], STRINGS[0], 14, 255)[0]
    regions = screen_frames(blank)
    assert regions and {r.frame for r in regions} == {1}


# -- stays quiet --------------------------------------------------------------------------------------


def test_real_ct_series_every_tenth_slice() -> None:
    paths = sorted(need(CT_SERIES).iterdir())[::10]
    fired = [p.name for p in paths if screen_dataset(pydicom.dcmread(p))]
    assert not fired


def test_totalsegmentator_ct() -> None:
    paths = sorted(need(TOTALSEG).iterdir())
    fired = [p.name for p in paths if screen_dataset(pydicom.dcmread(p))]
    assert not fired


@pytest.mark.parametrize("path", [
    PYDICOM_FILES / "CT_small.dcm", PYDICOM_FILES / "MR_small.dcm", PYDICOM_FILES / "JPEG2000.dcm",
    PYDICOM_FILES / "rtdose.dcm", PYDICOM_FILES / "liver_1frame.dcm",
    PYDICOM_DATA / "emri_small.dcm", PYDICOM_DATA / "eCT_Supplemental.dcm", PYDICOM_DATA / "MR2_UNCR.dcm",
    PYDICOM_DATA / "693_UNCR.dcm", PYDICOM_DATA / "liver.dcm", PYDICOM_DATA / "MR-SIEMENS-DICOM-WithOverlays.dcm",
    PHILIPS / "I10",
], ids=lambda p: p.name)
def test_real_images_without_text(path: Path) -> None:
    assert screen_dataset(pydicom.dcmread(need(path))) == []


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("shape", [(256, 256), (512, 512)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
def test_gaussian_noise(seed: int, shape: tuple[int, int], dtype: type) -> None:
    rng = np.random.default_rng(seed)
    mean, sd = (128, 30) if dtype == np.uint8 else (1000, 200)
    img = np.clip(rng.normal(mean, sd, shape), 0, 255 if dtype == np.uint8 else 4095).astype(dtype)
    assert screen_frame(img) == []


@pytest.mark.parametrize("seed", range(3))
def test_rician_mr_background(seed: int) -> None:
    rng = np.random.default_rng(seed)
    img = np.hypot(rng.normal(0, 20, (256, 256)), rng.normal(0, 20, (256, 256)))
    assert screen_frame(img.astype(np.uint16)) == []
    assert screen_frame(img) == []  # float64


@pytest.mark.parametrize("seed", range(3))
def test_speckle(seed: int) -> None:
    assert screen_frame(speckle((480, 640), seed)) == []
    assert screen_frame(np.repeat(speckle((480, 640), seed)[..., None], 3, axis=2)) == []


def test_mr_like_without_text() -> None:
    assert screen_frame(mr_like(1)) == []


def test_phantom_with_sharp_edges() -> None:
    from PIL import Image, ImageDraw

    im = Image.new("I;16", (512, 512), 100)
    d = ImageDraw.Draw(im)
    d.ellipse((50, 50, 460, 460), fill=1000)
    for i, (x, y) in enumerate([(120, 120), (300, 130), (140, 300), (320, 320)]):
        d.ellipse((x, y, x + 60 + 10 * i, y + 60 + 10 * i), fill=1500 + 200 * i)
    d.rectangle((200, 220, 300, 260), fill=3000)
    for i in range(6):
        d.line((80, 400 + 8 * i, 430, 400 + 8 * i), fill=2500, width=1 + i % 2)
    for y in range(70, 110, 6):
        for x in range(150, 360, 6):
            d.rectangle((x, y, x + 1, y + 1), fill=2000)
    img = np.asarray(im, dtype=np.uint16)
    assert screen_frame(img) == []


def test_seg_like_masks() -> None:
    yy, xx = np.mgrid[:512, :512]
    mask = np.zeros((512, 512), dtype=np.uint8)
    for cy, cx, ry, rx in [(200, 180, 60, 40), (210, 330, 50, 70), (330, 260, 30, 90), (120, 256, 15, 15)]:
        mask[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1 + 0.2 * smooth((512, 512), 5, 8)] = 1
    assert screen_frame(mask) == []
    assert screen_frame(mask.astype(bool)) == []


def test_no_pixels() -> None:
    from pydicom.dataset import Dataset

    assert screen_dataset(Dataset()) == []


@pytest.mark.parametrize("seed", range(4))
def test_noise_inside_a_bright_object_on_black_is_not_text(seed: int) -> None:
    """Regression: a synthetic MR (a noisy bright ellipse on a black background, 12-bit) fired: the
    frame's noise level, set by the empty background, made the noise inside the object read as a
    row of glyphs. The noise around a line now decides too."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:256, :256]
    inside = ((yy - 128) / 78) ** 2 + ((xx - 128) / 88) ** 2 <= 1
    img = np.where(inside, rng.normal(900, 40, (256, 256)), 0).clip(0, 4095).astype(np.uint16)
    assert screen_frame(img) == []
