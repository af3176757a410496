"""Fixtures of the AI tests: the real 134-slice CT read once per session (about 70 MB)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA, need

TOTALSEG = SHARED_DATA / "totalsegmentator" / "reference_files"
ENHANCED_CT = SHARED_DATA / "pydicom-data" / "data" / "eCT_Supplemental.dcm"


@pytest.fixture(scope="session")
def ct_datasets(ct_series: Path) -> list:
    """The classic CT's instances with Pixel Data, in file-name order. Shared: tests that change
    one must change a copy."""
    import pydicom

    return [pydicom.dcmread(p) for p in sorted(ct_series.iterdir()) if p.is_file()]


@pytest.fixture(scope="session")
def ct_volume(ct_datasets: list):
    from voxlake.ai.volume import volume_from_datasets

    return volume_from_datasets(ct_datasets)


@pytest.fixture(scope="session")
def totalseg_ct_dir() -> Path:
    """20-slice upper-abdomen CT (JPEG 2000) with a TotalSegmentator label map on the same grid."""
    return need(TOTALSEG / "example_ct_dicom")
