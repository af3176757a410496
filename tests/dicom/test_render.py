"""Rendered frames and thumbnails (voxlake.dicom.render), PS3.18 8.3.5 and 6.5.8."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import PYDICOM_FILES, SHARED_DATA, need
from tests.dicom.test_frames import FILES, data_lake, image_rows, ingest_one, reference  # noqa: F401
from voxlake.dicom.frames import pixel_info
from voxlake.dicom.render import THUMBNAIL_SIZE, render, rendered_pixels, thumbnail
from voxlake.errors import FrameError, InvalidArgumentError


def image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(image(data))


def fits(size: tuple[int, int], viewport: tuple[int, int], source: tuple[int, int]) -> bool:
    """Inside the viewport, touching it on one side, with the source's aspect ratio (±1 pixel)."""
    (w, h), (vw, vh), (cols, rows) = size, viewport, source
    aspect_ok = abs(w * rows - h * cols) <= max(rows, cols)
    return w <= vw and h <= vh and (w == vw or h == vh) and aspect_ok


@pytest.mark.parametrize("relative", FILES)
def test_rendered_frame_fits_the_viewport_and_shows_the_image(data_lake, relative):  # noqa: F811
    for row in image_rows(data_lake, relative):
        ds, expected = reference(row)
        info = pixel_info(row)
        frame = expected[0]
        window = None
        if frame.ndim == 2 and info.photometric_interpretation != "PALETTE COLOR":
            # A window over the frame's own range (in Modality LUT units) must show its structure.
            hu = frame * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
            lo, hi = float(hu.min()), float(hu.max())
            window = ((lo + hi) / 2, max(hi - lo, 1.0), "LINEAR_EXACT")
        out = render(row["uri"], info, 1, media_type="image/png", viewport=(96, 64), window=window)
        assert fits(image(out).size, (96, 64), (info.columns, info.rows))
        if frame.min() != frame.max() and min(info.rows, info.columns) >= 8:
            voi = None if window is None else (window[0], window[1], _fn(window))
            full = rendered_pixels(row["uri"], info, 1, window=voi)
            assert full.min() != full.max(), "a non-constant frame rendered blank"


def _fn(window: tuple[Any, ...]) -> Any:
    from voxlake.dicom.render import VOILUTFunction

    return VOILUTFunction(window[2])


@pytest.fixture
def ct(tmp_path) -> dict[str, Any]:
    """CT_small.dcm: 128x128 CT, RescaleIntercept -1024, no WindowCenter/Width."""
    return ingest_one(tmp_path, need(PYDICOM_FILES / "CT_small.dcm"))


def hounsfield(row: dict[str, Any]) -> np.ndarray:
    import pydicom

    ds = pydicom.dcmread(row["uri"])
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def test_linear_window_follows_ps3_3_c_11_2_1_2_on_hounsfield_units(ct):
    c, w = 40.0, 400.0
    want = np.clip(((hounsfield(ct) - (c - 0.5)) / (w - 1) + 0.5) * 255, 0, 255)
    got = pixels(render(ct["uri"], pixel_info(ct), 1, media_type="image/png", window=(c, w, "LINEAR")))
    np.testing.assert_allclose(got, want, atol=0.51)


def test_window_level_changes_the_image(ct):
    info = pixel_info(ct)
    soft = pixels(render(ct["uri"], info, media_type="image/png", window=(40, 400, "LINEAR")))
    bone = pixels(render(ct["uri"], info, media_type="image/png", window=(500, 2000, "LINEAR")))
    exact = pixels(render(ct["uri"], info, media_type="image/png", window=(40, 400, "LINEAR_EXACT")))
    sigmoid = pixels(render(ct["uri"], info, media_type="image/png", window=(40, 400, "sigmoid")))
    assert (soft != bone).mean() > 0.5
    assert not np.array_equal(soft, sigmoid) and not np.array_equal(exact, sigmoid)


def test_without_any_window_the_frame_min_max_spans_black_to_white(ct):
    got = pixels(render(ct["uri"], pixel_info(ct), media_type="image/png"))
    assert (got.min(), got.max()) == (0, 255)


def test_the_header_window_is_used_when_the_request_has_none(tmp_path):
    row = ingest_one(tmp_path, need(PYDICOM_FILES / "MR_small.dcm"))
    import pydicom

    ds = pydicom.dcmread(row["uri"])
    if "WindowCenter" not in ds:
        pytest.skip("MR_small.dcm has no WindowCenter here")
    c = float(np.ravel(ds.WindowCenter)[0])
    w = float(np.ravel(ds.WindowWidth)[0])
    info = pixel_info(row)
    default = pixels(render(row["uri"], info, media_type="image/png"))
    explicit = pixels(render(row["uri"], info, media_type="image/png", window=(c, w, "LINEAR")))
    np.testing.assert_array_equal(default, explicit)


def test_monochrome1_is_inverted(tmp_path):
    row = ingest_one(tmp_path, need(SHARED_DATA / "highdicom" / "test_files" / "dx_image.dcm"))
    info = pixel_info(row)
    assert info.photometric_interpretation == "MONOCHROME1"
    stored = reference(row)[1][0]
    got = rendered_pixels(row["uri"], info)
    lo = np.unravel_index(stored.argmin(), stored.shape)
    hi = np.unravel_index(stored.argmax(), stored.shape)
    assert got[lo] > got[hi]  # the lowest stored value shows brightest


def test_ybr_jpeg_renders_as_rgb_jpeg(tmp_path):
    row = ingest_one(tmp_path, need(PYDICOM_FILES / "SC_rgb_jpeg_dcmtk.dcm"))
    out = image(render(row["uri"], pixel_info(row), quality=95))
    assert out.format == "JPEG" and out.mode == "RGB"
    expected = reference(row)[1][0].astype(int)
    assert np.abs(np.asarray(out).astype(int) - expected).mean() < 4


def test_thumbnail_fits_a_small_square(ct):
    out = image(thumbnail(ct["uri"], pixel_info(ct)))
    assert max(out.size) == THUMBNAIL_SIZE and out.format == "JPEG"


def test_multi_frame_renders_the_requested_frame(tmp_path):
    row = ingest_one(tmp_path, need(SHARED_DATA / "pydicom-data" / "data" / "emri_small_RLE.dcm"))
    info = pixel_info(row)
    first, last = (pixels(render(row["uri"], info, n, media_type="image/png")) for n in (1, 10))
    assert not np.array_equal(first, last)
    with pytest.raises(FrameError, match="frame 11"):
        render(row["uri"], info, 11)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"media_type": "image/gif"}, "media_type must be one of image/jpeg, image/png"),
        ({"window": (40, 0, "LINEAR")}, "window width must be at least 1"),
        ({"window": (40, 400, "CUBIC")}, "window function must be one of LINEAR"),
        ({"viewport": (0, 10)}, "viewport"),
        ({"quality": 0}, "quality"),
    ],
)
def test_bad_options_raise_invalid_argument_naming_the_valid_values(ct, options, message):
    with pytest.raises(InvalidArgumentError, match=message):
        render(ct["uri"], pixel_info(ct), **options)
