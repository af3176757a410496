"""OHIF in a real headless chromium against the server under test (see conftest.py): the study list, the
134-slice CT opened from it, scrolling, and a DICOM SEG shown as an overlay on its CT, in the basic
viewer and in the segmentation mode. Screenshots are kept as artifacts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.viewer import harness

pytestmark = pytest.mark.slow

VIEWPORT = ".cornerstone-canvas"


def open_study_from_list(page: Any, target: harness.Target, patient: str, mode: str = "Basic Viewer") -> None:
    page.goto(target.url + "/")
    page.get_by_text(patient, exact=True).click()
    page.get_by_role("button", name=mode).click()


def test_study_list_lists_the_ct_and_the_seg_study(page: Any, target: harness.Target, artifacts: Path) -> None:
    page.goto(target.url + "/")

    page.get_by_text("Pancreas-CT-CB_001", exact=True).wait_for()
    page.get_by_text("CT\\SEG", exact=True).nth(1).wait_for()  # the phantom and the ct-tissue study
    page.screenshot(path=str(artifacts / "study-list.png"))
    assert page.evaluate("crossOriginIsolated") is True


def test_ct_opened_from_the_study_list_shows_an_image_and_scrolls_through_134_slices(
    page: Any, target: harness.Target, artifacts: Path
) -> None:
    open_study_from_list(page, target, "Pancreas-CT-CB_001")
    first = harness.wait_for_image(page)
    page.get_by_text(re.compile(r"\(1/134\)")).wait_for()
    before = harness.screenshot_array(page, artifacts / "ct-first-image.png", VIEWPORT)
    assert harness.is_non_blank(before)

    box = page.locator(VIEWPORT).first.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(20):
        page.mouse.wheel(0, 120)
    harness.wait_for_image(page, differs_from=first)
    page.get_by_text(re.compile(r"\((?!1/)\d+/134\)")).wait_for()  # another slice of the same 134
    after = harness.screenshot_array(page, artifacts / "ct-scrolled.png", VIEWPORT)

    assert harness.is_non_blank(after)
    assert np.abs(after.astype(np.int16) - before.astype(np.int16)).mean() > 1.0


@pytest.mark.parametrize(("study", "mode"), [("phantom", "viewer"), ("phantom", "segmentation"), ("ai", "viewer")])
def test_seg_is_shown_as_a_coloured_overlay_on_its_ct(
    page: Any, target: harness.Target, artifacts: Path, viewer_studies: dict[str, harness.Study], study: str,
    mode: str
) -> None:
    """The phantom's SEG (voxlake.synth) and the SEG of the ct-tissue model (voxlake.ai) on real CT."""
    page.goto(f"{target.url}/{mode}?StudyInstanceUIDs={viewer_studies[study].StudyInstanceUID}")
    harness.wait_for_image(page)
    ct_only = harness.screenshot_array(page, artifacts / f"seg-{study}-{mode}-ct.png", VIEWPORT)
    assert harness.is_non_blank(ct_only) and harness.coloured_fraction(ct_only) < 0.01

    page.get_by_text("SEG", exact=True).first.dblclick()  # the SEG series in the study browser
    yes = page.get_by_role("button", name="Yes")  # "Do you want to open this Segmentation?"
    yes.click()
    yes.wait_for(state="detached")
    overlay = harness.wait_for_overlay(page, VIEWPORT, artifacts / f"seg-{study}-{mode}-overlay.png")

    assert harness.is_non_blank(overlay)
    assert harness.coloured_fraction(overlay) > harness.coloured_fraction(ct_only) + 0.05
