"""Fixtures of the browser tests: the studies, the server under test (a *target*), Debian's chromium.

The target is voxlake's own server (``voxlake serve``) when ``voxlake.server.app.create_app`` exists,
else Orthanc with its DICOMweb plugin behind the same OHIF (see harness.py); ``VOXLAKE_VIEWER_TARGET=
orthanc|voxlake`` chooses. Screenshots go to ``$VOXLAKE_ARTIFACTS/viewer/<target>/`` (default: a
temporary folder, printed in the test report header).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CT_SERIES, need
from tests.viewer import harness

ARTIFACTS_ENV = "VOXLAKE_ARTIFACTS"
TARGET_ENV = "VOXLAKE_VIEWER_TARGET"


def target_name() -> str:
    chosen = os.environ.get(TARGET_ENV)
    if chosen:
        return chosen
    return "voxlake" if harness.voxlake_server_available() is None else "orthanc"


def pytest_report_header() -> str:
    why = harness.voxlake_server_available()
    return f"viewer tests target: {target_name()}" + (f" ({why})" if why else "")


@pytest.fixture(scope="session")
def viewer_studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, harness.Study]:
    """The real 134-slice CT, a small synthetic CT with its DICOM SEG, and 24 slices of the real CT
    with the SEG of voxlake's ct-tissue model."""
    ct = harness.study_of("ct", sorted(need(CT_SERIES).glob("*.dcm")))
    if ct.slices != 134:
        pytest.skip(f"test data incomplete: {CT_SERIES} has {ct.slices} CT slices, not 134")
    pytest.importorskip("highdicom", reason="the SEG phantom needs the synth extra")
    phantom = harness.phantom_study(tmp_path_factory.mktemp("phantom"))
    pytest.importorskip("scipy", reason="the ct-tissue SEG needs the ai extra")
    ai = harness.ct_tissue_study(tmp_path_factory.mktemp("ai"), ct.files)
    return {"ct": ct, "phantom": phantom, "ai": ai}


@pytest.fixture(scope="session")
def target(viewer_studies: dict[str, harness.Study], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[harness.Target]:
    from voxlake.errors import MissingExtraError
    from voxlake.server.viewer import find_ohif_dist

    name = target_name()
    try:
        find_ohif_dist()
    except MissingExtraError as exc:
        pytest.skip(str(exc))
    if name == "orthanc" and not (harness.ORTHANC.exists() and harness.DICOMWEB_PLUGIN.exists()):
        pytest.skip(f"Orthanc or its DICOMweb plugin not installed ({harness.DICOMWEB_PLUGIN}): run `make viewer`")
    if name == "voxlake" and (why := harness.voxlake_server_available()):
        pytest.skip(why)
    server = harness.start_target(name, tmp_path_factory.mktemp(f"target-{name}"), viewer_studies.values())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = Path(os.environ[ARTIFACTS_ENV]) if os.environ.get(ARTIFACTS_ENV) else tmp_path_factory.mktemp("artifacts")
    out = base / "viewer" / target_name()
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One chromium for the session (fresh profile), as a Playwright browser context."""
    if harness.chromium_path() is None:
        pytest.skip("Debian's chromium not installed: run `make viewer`")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    with sync_api.sync_playwright() as pw, harness.browser_context(pw, tmp_path_factory.mktemp("chromium")) as ctx:
        yield ctx


@pytest.fixture
def page(browser: Any, target: harness.Target, artifacts: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A new tab; on failure, a screenshot of it and the servers' log tails are kept."""
    tab = browser.new_page()
    tab.set_default_timeout(90_000)
    try:
        yield tab
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            tab.screenshot(path=str(artifacts / f"FAILED-{request.node.name}.png"))
            (artifacts / f"FAILED-{request.node.name}.log").write_text(target.log_tail())
        tab.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
