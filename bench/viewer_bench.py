#!/usr/bin/env python
"""Viewer benchmark: OHIF opening the real 134-slice CT, served by voxlake and by Orthanc, same run.

Run by ``make bench`` (needs ``make viewer``). Both targets hold the same CT and serve the same OHIF with the
same generated ``app-config.js`` (tests/viewer/harness.py): ``voxlake serve`` on a fresh lake, and Orthanc
with its DICOMweb plugin behind a small proxy that gives it the same origin layout. Debian's chromium,
headless (SwiftShader WebGL), driven by Playwright. Each repetition, for each target in turn, with a new
browser (fresh profile, empty cache):

- cold: navigation to ``/viewer?StudyInstanceUIDs=…`` until the first viewport shows a non-blank image;
- reload: the same page reloaded (bundles in the browser's cache), until the first image again;
- click: from the study list, already open with the CT's row selected, the click on "Basic Viewer"
  until the first image (OHIF navigates inside the page).

First image: an in-page probe, every animation frame, of the viewport's canvas (more than one grey level);
times in the page's own clock (``performance.now()``). Medians over ``--reps``. Without voxlake's server
(``voxlake.server.app``), Orthanc alone is measured. Writes the "## Viewer" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import _common as common

REPO = common.REPO
sys.path.insert(0, str(REPO))
from tests.viewer import harness  # noqa: E402  (the targets and the browser, shared with the tests)

SECTION = "## Viewer"
DEFAULT_WORK = REPO / "bench" / ".work"
CT_SERIES = REPO.parent / "shared" / "data" / "pancreatic-ct-cbct-seg_pyvista" / "series"
CT_PATIENT = "Pancreas-CT-CB_001"
TARGET_CLICK_RATIO = 0.70  # issue 4: voxlake's click-to-first-image at most 70% of Orthanc's
KINDS = ("cold", "reload", "click")


def measure(pw: Any, target: harness.Target, study: harness.Study, tmp: Path) -> dict[str, float]:
    """One repetition on one target: seconds to the first image, cold, on reload, and on click."""
    out: dict[str, float] = {}
    with harness.browser_context(pw, tmp) as ctx:
        page = ctx.new_page()
        page.set_default_timeout(120_000)
        page.goto(f"{target.url}/viewer?StudyInstanceUIDs={study.StudyInstanceUID}")
        out["cold"] = harness.wait_for_image(page, 120)["t"] / 1000  # since this document's navigation start
        page.reload()
        out["reload"] = harness.wait_for_image(page, 120)["t"] / 1000
        page.goto(target.url + "/")
        page.get_by_text(CT_PATIENT, exact=True).click()
        button = page.get_by_role("button", name="Basic Viewer")
        button.wait_for()
        page.wait_for_timeout(500)  # let the list settle (its series query) as a user's pause would
        t0 = page.evaluate("performance.now()")
        button.click()
        out["click"] = (harness.wait_for_image(page, 120)["t"] - t0) / 1000
    return out


def run(targets: list[str], reps: int, work: Path, idle_wait: float) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    study = harness.study_of("ct", sorted(CT_SERIES.glob("*.dcm")))
    servers: dict[str, harness.Target] = {}
    samples: dict[str, dict[str, list[float]]] = {t: {k: [] for k in KINDS} for t in targets}
    try:
        for name in targets:
            t0 = time.perf_counter()
            servers[name] = harness.start_target(name, work / name, [study])
            print(f"{name}: serving at {servers[name].url} ({time.perf_counter() - t0:.1f} s to load the CT)",
                  flush=True)
        with sync_playwright() as pw:
            for name in targets:  # warm-up: server caches, the page cache of both
                measure(pw, servers[name], study, work / "browser")
            for rep in range(reps):
                for name in targets if rep % 2 == 0 else reversed(targets):  # alternate who goes first
                    common.wait_for_idle(idle_wait)
                    got = measure(pw, servers[name], study, work / "browser")
                    for k in KINDS:
                        samples[name][k].append(got[k])
                    print(f"rep {rep + 1}/{reps} {name}: " + ", ".join(f"{k} {got[k]:.2f} s" for k in KINDS),
                          flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return {"study": {"instances": study.slices, "StudyInstanceUID": study.StudyInstanceUID},
            "reps": reps, "samples": samples,
            "median": {t: {k: statistics.median(v) for k, v in s.items()} for t, s in samples.items()}}


def click_target(result: dict[str, Any]) -> tuple[str, bool | None]:
    med = result["median"]
    if "voxlake" not in med or "orthanc" not in med:
        return "needs both voxlake and Orthanc in the same run", None
    ratio = med["voxlake"]["click"] / med["orthanc"]["click"]
    return f"{ratio:.0%} of Orthanc's ({med['voxlake']['click']:.2f} s vs {med['orthanc']['click']:.2f} s)", \
        ratio <= TARGET_CLICK_RATIO


def rows(result: dict[str, Any]) -> list[list[str]]:
    out = []
    for name, s in result["samples"].items():
        cells = [f"{statistics.median(v):.2f} ({min(v):.2f}–{max(v):.2f})" for v in (s[k] for k in KINDS)]
        out.append([{"voxlake": "voxlake (`voxlake serve`)", "orthanc": "Orthanc + DICOMweb plugin"}[name], *cells])
    return out


HEADERS = ["server", "click in study list → first image, s", "cold navigation → first image, s",
           "reload → first image, s"]


def _reorder(row: list[str]) -> list[str]:
    return [row[0], row[3], row[1], row[2]]  # click first: the figure with a target


def section(info: dict[str, Any], result: dict[str, Any], total_s: float, missing: str | None) -> str:
    verdict, ok = click_target(result)
    lines = [
        SECTION, "",
        "Written by `bench/viewer_bench.py` (`make bench`); rerun it to refresh this section.", "",
        f"- Date: {info['date']}",
        f"- Machine: {info['nproc']} CPUs ({info['cpu']}), Linux {info['kernel']}, Python {info['python']}; "
        f"{info['chromium']} (headless, SwiftShader WebGL) driven by Playwright {info['playwright']}; "
        f"OHIF {info['ohif']} (the unminified npm build); {info['orthanc']}",
        f"- voxlake: commit `{info['commit']}`",
        f"- Bench runtime: {total_s / 60:.1f} min in all", "",
        "### Method", "",
        f"- The real {result['study']['instances']}-slice CT (512×512, `../shared/data/pancreatic-ct-cbct-seg_pyvista`) "
        "in each server: ingested into a fresh lake served by `voxlake serve`, and uploaded to Orthanc (REST "
        "`POST /instances`; defaults apart from ports and folders; DICOMweb plugin enabled) behind a local "
        "proxy (httpx + uvicorn, identity encoding, BulkDataURIs rewritten to its origin; Orthanc's missing "
        "`/thumbnail` mapped to `/rendered`). Both serve the same OHIF files and the same generated "
        "`app-config.js` (`voxlake/server/viewer.py`), on loopback, on this machine, at the same time.",
        "- Each repetition and server: a new chromium with a fresh profile. cold: navigation to "
        "`/viewer?StudyInstanceUIDs=…` until the first non-blank image; reload: that page reloaded; click: "
        "on the study list (opened fresh, the CT's row selected, 0.5 s pause), the click on \"Basic Viewer\" "
        "until the first image. First image: an in-page probe of the viewport canvas every animation frame, "
        "timed in the page's clock. One warm-up round is not counted; the servers alternate going first; "
        f"medians (min–max) of {result['reps']} repetitions.", "",
        "### Time to the first image", "",
        _md_table(HEADERS, [_reorder(r) for r in rows(result)]), "",
        "### Target", "",
        "| target | measured | |", "|---|---|---|",
        f"| click in the study list → first image ≤ 70% of Orthanc's | {verdict} | {common.met(ok)} |",
    ]
    if missing:
        lines += ["", "### Notes", "", f"- voxlake not measured: {missing}."]
    return "\n".join(lines) + "\n"


def _md_table(headers: list[str], body: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
                      *("| " + " | ".join(r) + " |" for r in body)])


def machine() -> dict[str, Any]:
    import importlib.metadata as md

    from voxlake.server.viewer import OHIF_VERSION

    def version(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "unknown"

    commit = common.git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = bool(common.git("status", "--porcelain", "--", "voxlake"))
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": common.nproc(), "cpu": common.cpu_model(), "kernel": platform.release(),
        "python": platform.python_version(), "playwright": md.version("playwright"), "ohif": OHIF_VERSION,
        "chromium": version([harness.chromium_path() or "chromium", "--version"]),
        "orthanc": version([str(harness.ORTHANC), "--version"]) + " with orthanc-dicomweb "
        + version(["dpkg-query", "-W", "-f=${Version}", "orthanc-dicomweb"]),
        "commit": commit + (" (with uncommitted changes under voxlake/)" if dirty else ""),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5, help="repetitions per server (default 5)")
    p.add_argument("--targets", default="voxlake,orthanc", help="servers to measure (default voxlake,orthanc)")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="work folder (default bench/.work)")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    p.add_argument("--idle-wait", type=float, default=30.0,
                   help="before each measurement, wait up to this many seconds for the machine to go idle")
    args = p.parse_args(argv)

    if not CT_SERIES.is_dir():
        print(f"viewer bench: skipped, the CT is not at {CT_SERIES}")
        return 0
    if harness.chromium_path() is None:
        print("viewer bench: skipped, Debian's chromium is not installed (make viewer)")
        return 0
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    missing = harness.voxlake_server_available()
    if missing and "voxlake" in targets:
        print(f"viewer bench: voxlake not measured: {missing}", flush=True)
        targets.remove("voxlake")
    if not (harness.ORTHANC.exists() and harness.DICOMWEB_PLUGIN.exists()) and "orthanc" in targets:
        print("viewer bench: Orthanc or its DICOMweb plugin is not installed (make viewer)", flush=True)
        targets.remove("orthanc")
    if not targets:
        return 0
    work = (args.work / "viewer").resolve()
    t_start = time.perf_counter()
    info = machine()
    result = run(targets, args.reps, work, args.idle_wait)
    total_s = time.perf_counter() - t_start
    print()
    print(_md_table(HEADERS, [_reorder(r) for r in rows(result)]))
    verdict, ok = click_target(result)
    print(f"target: click → first image ≤ 70% of Orthanc's: {verdict} — {common.met(ok)}")
    (work / "results.json").write_text(json.dumps({"machine": info, **result, "total_s": total_s}, indent=2) + "\n")
    if not args.no_docs:
        common.write_section(common.DOCS, SECTION, section(info, result, total_s, missing))
        print(f"wrote the {SECTION!r} section of {common.DOCS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
