"""A reader corrects a model's SEG in OHIF and saves it: the ``final`` label row appears.

A phantom CT (voxlake.synth, 24 slices of 256x256) is segmented in its lake by voxlake's ``ct-tissue``
model (an ``original``: its SOP Instance UID is in ``segment_stats``) and served by ``voxlake serve``
(DICOMweb, OHIF, the AI routes). In OHIF's segmentation mode, headless chromium loads the model's SEG
onto the CT, selects a segment, paints with the Brush and stores the segmentation (the segmentation
panel's menu: Export, DICOM SEG, Save): OHIF sends it through STOW-RS, the server syncs the ``labels``
table in the background, and a ``final`` row appears for the CT series, correcting the model's SEG
(its model and version) with a Dice below 1 for the painted segment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.viewer import harness

pytestmark = pytest.mark.slow

VIEWPORT = ".cornerstone-canvas"
PAINTED = "bone"  # the ct-tissue segment the reader paints with: little of it in the phantom's centre
SYNC_DEADLINE = 120.0


class LabelsWorld:
    """The lake, its CT series and the model's SEG, and the server on it."""

    def __init__(self, lake: Path, study: str, series: str, original: str, target: harness.Target) -> None:
        self.lake, self.study, self.series, self.original, self.target = lake, study, series, original, target

    def finals(self) -> list[dict[str, Any]]:
        """The ``final`` rows of ``labels`` (the lake opened afresh: the server writes it)."""
        import voxlake
        from voxlake.errors import QueryError

        try:
            return voxlake.open(str(self.lake)).sql("SELECT * FROM labels WHERE status = 'final'").arrow().to_pylist()
        except QueryError:  # no labels table yet
            return []


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelsWorld]:
    from voxlake.errors import MissingExtraError
    from voxlake.server.viewer import find_ohif_dist

    try:
        find_ohif_dist()
    except MissingExtraError as exc:
        pytest.skip(str(exc))
    if why := harness.voxlake_server_available():
        pytest.skip(why)
    pytest.importorskip("highdicom", reason="the phantom needs the synth extra")
    pytest.importorskip("scipy", reason="the ct-tissue model needs the ai extra")
    import pydicom

    import voxlake
    from voxlake.ai.segment import segment
    from voxlake.ai.tissue import CTTissueModel

    work = tmp_path_factory.mktemp("labels")
    phantom = harness.phantom_study(work / "phantom")
    ct = [f for f in phantom.files if pydicom.dcmread(f, stop_before_pixels=True).Modality == "CT"]
    assert len(ct) == 24  # the phantom's own (ground truth) SEG stays out: the model's is the only one
    src, lake = work / "sources", work / "lake"
    src.mkdir()
    for f in ct:
        (src / f.name).symlink_to(f)
    subprocess.run([sys.executable, "-m", "voxlake", "ingest", str(src), "--lake", str(lake), "--workers", "1",
                    "--json"], check=True, capture_output=True, cwd=harness.REPO)
    summary = segment(voxlake.open(str(lake)), model=CTTissueModel(), meshes=False)
    assert summary.segmented == 1, summary.to_dict()
    outcome = summary.outcomes[0]

    port = harness.free_port()
    log = work / "voxlake-serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "voxlake", "serve", "--lake", str(lake), "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=harness.REPO,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    target = harness.Target("voxlake", f"http://127.0.0.1:{port}", [proc], [log])
    harness._wait_target(target)
    try:
        yield LabelsWorld(lake, phantom.StudyInstanceUID, outcome.SeriesInstanceUID, outcome.SEG, target)
    finally:
        target.stop()


@pytest.fixture
def tab(browser: Any, world: LabelsWorld, artifacts: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A new tab whose console and DICOMweb POSTs are recorded (``tab.console``, ``tab.posts``); on
    failure a screenshot, the console and the server's log are kept."""
    page = browser.new_page()
    page.set_default_timeout(90_000)
    console: list[str] = []
    posts: list[dict[str, Any]] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))

    def on_response(response: Any) -> None:
        req = response.request
        if req.method == "POST" and "/dicomweb/" in req.url:
            posts.append({"method": req.method, "url": req.url, "content_type": req.headers.get("content-type"),
                          "status": response.status, "bytes": len(req.post_data_buffer or b"")})

    page.on("response", on_response)
    page.console, page.posts = console, posts
    try:
        yield page
    finally:
        (artifacts / f"{request.node.name}-console.log").write_text("\n".join(console))
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            page.screenshot(path=str(artifacts / f"FAILED-{request.node.name}.png"))
            (artifacts / f"FAILED-{request.node.name}.log").write_text(world.target.log_tail())
        page.close()


def test_a_brush_correction_saved_in_ohif_becomes_a_final_label_of_the_model_version(
    tab: Any, world: LabelsWorld, artifacts: Path
) -> None:
    start = time.monotonic()
    page = tab
    page.goto(f"{world.target.url}/segmentation?StudyInstanceUIDs={world.study}")
    harness.wait_for_image(page)

    # the model's SEG, from the study browser, onto the CT
    page.get_by_text("SEG", exact=True).first.dblclick()
    yes = page.get_by_role("button", name="Yes")  # "Do you want to open this Segmentation?"
    yes.click()
    yes.wait_for(state="detached")
    page.get_by_text(PAINTED, exact=True).first.wait_for()  # the segments listed in the panel
    before = harness.wait_for_overlay(page, VIEWPORT, artifacts / "labels-before-painting.png")
    assert harness.coloured_fraction(before) > 0.05

    # select the segment, the Brush, and paint across the middle of the CT
    page.get_by_text(PAINTED, exact=True).first.click()
    page.locator('[data-cy="Brush-btn"]').click()
    box = page.locator(VIEWPORT).first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - box["width"] * 0.2, cy)
    page.mouse.down()
    for step in range(1, 21):
        page.mouse.move(cx - box["width"] * 0.2 + step * box["width"] * 0.02, cy + (step % 2) * 4)
        page.wait_for_timeout(30)
    page.mouse.up()
    page.wait_for_timeout(500)
    after = harness.screenshot_array(page, artifacts / "labels-after-painting.png", VIEWPORT)
    assert abs(after.astype(int) - before.astype(int)).mean() > 0.5, "the brush changed nothing on screen"

    # store: the segmentation's menu, Export, DICOM SEG, then Save in the "Store Segmentation" dialog
    page.locator('[data-cy="segmentation-collapsed-more-btn-Labelmap"]').first.click()
    page.get_by_role("menuitem", name="Export").click()
    page.get_by_role("menuitem", name="DICOM SEG").click()
    with page.expect_response(lambda r: r.request.method == "POST" and "/dicomweb/studies" in r.url) as stow:
        page.get_by_role("button", name="Save").click()
    assert stow.value.status == 200, (stow.value.status, stow.value.text(), page.posts)
    stored = json.loads(stow.value.text())
    page.wait_for_timeout(1000)
    harness.screenshot_array(page, artifacts / "labels-after-saving.png")

    # the server turns it into labels in the background
    try:
        rows = harness.wait_for(world.finals, "a final row in labels", SYNC_DEADLINE)
    except TimeoutError:
        why = [line for line in world.target.log_tail(20_000).splitlines() if "labels" in line]
        pytest.fail(f"no final label row {SYNC_DEADLINE:.0f} s after OHIF stored {stored}; server: {why}")
    (artifacts / "labels-final-rows.json").write_text(json.dumps(rows, indent=2, default=str))
    (artifacts / "labels-stow.json").write_text(json.dumps({"posts": page.posts, "response": stored}, indent=2))
    by_label = {r["label"]: r for r in rows}
    assert {r["SeriesInstanceUID"] for r in rows} == {world.series}
    assert {r["model"] for r in rows} == {"ct-tissue"} and {r["model_version"] for r in rows} == {"1"}
    assert {r["corrects_sop_instance_uid"] for r in rows} == {world.original}
    assert by_label[PAINTED]["dice"] is not None and by_label[PAINTED]["dice"] < 1.0

    # the stored SEG is OHIF's, a new instance referencing the CT series
    import pydicom

    import voxlake

    (sop,) = {r["SegmentationSOPInstanceUID"] for r in rows}
    assert sop != world.original
    (uri,) = voxlake.open(str(world.lake)).sql(
        f"SELECT uri FROM instances WHERE SOPInstanceUID = '{sop}'").fetchall()[0]
    from voxlake.dicom.frames import open_uri

    with open_uri(uri) as fp:
        seg = pydicom.dcmread(fp, stop_before_pixels=True)
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == world.study
    assert [s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence] == [world.series]
    print(f"\nOHIF stored {sop} ({seg.get('Manufacturer')}, series {seg.SeriesInstanceUID}); "
          f"STOW: {page.posts}; labels: {[(r['label'], r['dice']) for r in rows]}; {time.monotonic() - start:.1f} s")
