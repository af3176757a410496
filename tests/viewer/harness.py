"""What the browser tests and the viewer benchmark share: the servers under test, the browser, the image checks.

A *target* is a web origin serving OHIF with its DICOMweb data under ``/dicomweb``, holding the same
studies: voxlake's own server (``voxlake serve``: OHIF mounted by :func:`voxlake.server.viewer.mount_viewer`)
or the peer it is compared with, Orthanc with its DICOMweb plugin behind :func:`orthanc_proxy_app` (the
same OHIF, the same ``app-config.js``, ``/dicomweb`` forwarded to Orthanc's ``/dicom-web``). Every server
runs in its own process on loopback ports, started from a JSON config and stopped by us, never as a service.

The proxy also runs as ``python -m tests.viewer.harness proxy --upstream URL --port N`` (from the repository root).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DEADLINE = 120.0
# Flags measured to work for OHIF on these machines (../shared/notes/ohif-headless.md): WebGL2 on SwiftShader.
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-quic",
]
VIEWPORT = {"width": 1280, "height": 900}
# In-page probe of OHIF's first viewport: a 2D canvas that cornerstone copies each rendered frame into.
# Returns null while blank (one grey level), else a small signature of what is shown.
CANVAS_PROBE = """() => {
  const canvas = document.querySelector('.cornerstone-canvas');
  if (!canvas || !canvas.width || !canvas.height) return null;
  const ctx = canvas.getContext('2d', {willReadFrequently: true});
  if (!ctx) return null;
  const {data} = ctx.getImageData(0, 0, canvas.width, canvas.height);
  let lo = 255, hi = 0, sum = 0, n = 0;
  for (let i = 0; i < data.length; i += 4 * 97) {
    const v = (data[i] + data[i + 1] + data[i + 2]) / 3;
    lo = Math.min(lo, v); hi = Math.max(hi, v); sum += v; n++;
  }
  return hi - lo > 16 ? {t: performance.now(), mean: sum / n, spread: hi - lo} : null;
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], Any], what: str, deadline: float = DEADLINE) -> Any:
    """Poll ``check`` until it returns something true; OSError counts as not yet."""
    end = time.monotonic() + deadline
    while True:
        with suppress(OSError):
            if result := check():
                return result
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {deadline:.0f} s waiting for {what}")
        time.sleep(0.1)


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status == 200


def stop_process(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the studies ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Study:
    """One study every target holds: where its files are and what the viewer should show."""

    name: str
    files: tuple[Path, ...]
    StudyInstanceUID: str
    slices: int  # CT instances


def study_of(name: str, files: Iterable[Path]) -> Study:
    import pydicom

    files = tuple(sorted(files))
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    uids = {h.StudyInstanceUID for h in headers}
    if len(uids) != 1:
        raise ValueError(f"{name}: expected one study, found {len(uids)}")
    return Study(name, files, uids.pop(), sum(h.Modality == "CT" for h in headers))


def phantom_study(out: Path, *, slices: int = 24, rows: int = 256, seed: int = 7) -> Study:
    """A small synthetic CT with its DICOM SEG (12 organs), made by voxlake's phantom generator."""
    from voxlake.synth.phantom import generate_phantoms

    case = generate_phantoms(out, cases=1, seed=seed, rows=rows, columns=rows, slices=slices,
                             slice_thickness=5.0).cases[0]
    return study_of("phantom", [*case.ct_files, case.seg_path])


def ct_tissue_study(out: Path, ct_files: Iterable[Path], *, first: int = 55, slices: int = 24) -> Study:
    """Slices of the real CT (copied with fresh UIDs: a study of its own) and the DICOM SEG that
    voxlake's ``ct-tissue`` model makes of them (voxlake.ai: volume, model, SEG)."""
    import pydicom
    from pydicom.uid import generate_uid

    from voxlake.ai.seg import segmentation
    from voxlake.ai.tissue import CTTissueModel
    from voxlake.ai.volume import volume_from_datasets

    out.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    datasets, files = [], []
    for i, f in enumerate(sorted(ct_files)[first:first + slices]):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID, ds.PatientName = "VXAI-001", "AI^TISSUE"
        files.append(out / f"ct-{i:03d}.dcm")
        ds.save_as(files[-1])
        datasets.append(ds)
    volume = volume_from_datasets(datasets)
    model = CTTissueModel()
    seg = segmentation(volume, model.predict(volume), model.labels, model_name=model.name,
                       model_version=model.version)
    files.append(out / "seg.dcm")
    seg.save_as(files[-1])
    return study_of("ai", files)


# --- targets ----------------------------------------------------------------------------------------


@dataclass
class Target:
    """A running origin serving OHIF and DICOMweb; ``stop()`` ends every process it started."""

    name: str
    url: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            stop_process(proc)

    def log_tail(self, chars: int = 4000) -> str:
        return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-chars:]}" for p in self.logs if p.exists())


def voxlake_server_available() -> str | None:
    """None when voxlake's DICOMweb server (``voxlake.server.app.create_app``) exists, else why not."""
    try:
        from voxlake.server import app
    except ImportError as exc:
        return f"voxlake's DICOMweb server is not there yet ({exc})"
    if not hasattr(app, "create_app"):
        return "voxlake.server.app has no create_app yet"
    return None


def start_voxlake(work: Path, studies: Iterable[Study]) -> Target:
    """Ingest the studies' files into a fresh lake and run ``voxlake serve`` on it."""
    work.mkdir(parents=True, exist_ok=True)
    lake, log = work / "lake", work / "voxlake-serve.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for study in studies:
        src = work / "sources" / study.name
        src.mkdir(parents=True, exist_ok=True)
        for f in study.files:  # links: the lake indexes them in place
            with suppress(FileExistsError):
                (src / f"{f.parent.name}-{f.name}").symlink_to(f)
        subprocess.run([sys.executable, "-m", "voxlake", "ingest", str(src), "--lake", str(lake), "--workers", "1",
                        "--json"], check=True, capture_output=True, env=env, cwd=REPO)
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "voxlake", "serve", "--lake", str(lake), "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    target = Target("voxlake", f"http://127.0.0.1:{port}", [proc], [log])
    _wait_target(target)
    return target


def start_orthanc(work: Path, studies: Iterable[Study]) -> Target:
    """Orthanc with its DICOMweb plugin (default settings apart from ports and folders), the studies
    uploaded through its REST API, and OHIF in front of it through :func:`orthanc_proxy_app`."""
    work.mkdir(parents=True, exist_ok=True)
    http_port = free_port()
    config = {
        "Name": "voxlake-viewer-peer",
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"),
        "HttpPort": http_port,
        "DicomPort": free_port(),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (work / "orthanc.json").write_text(json.dumps(config, indent=2))
    orthanc_log, proxy_log = work / "orthanc.log", work / "proxy.log"
    with open(orthanc_log, "wb") as out:
        orthanc = subprocess.Popen([str(ORTHANC), str(work / "orthanc.json")], stdout=out, stderr=subprocess.STDOUT)
    target = Target("orthanc", "", [orthanc], [orthanc_log, proxy_log])
    try:
        upstream = f"http://127.0.0.1:{http_port}"
        wait_for(lambda: orthanc.poll() is None and http_ok(upstream + "/system"), "Orthanc's REST API")
        for study in studies:
            for f in study.files:
                request = urllib.request.Request(upstream + "/instances", data=f.read_bytes(), method="POST")
                with urllib.request.urlopen(request, timeout=120) as response:
                    response.read()
        port = free_port()
        with open(proxy_log, "wb") as out:
            target.processes.append(subprocess.Popen(
                [sys.executable, "-m", "tests.viewer.harness", "proxy", "--upstream", upstream, "--port", str(port)],
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO))
        target.url = f"http://127.0.0.1:{port}"
        _wait_target(target)
    except BaseException:
        target.stop()
        raise
    return target


def _wait_target(target: Target) -> None:
    def up() -> bool:
        if any(p.poll() is not None for p in target.processes):
            raise RuntimeError(f"{target.name} exited early:\n{target.log_tail()}")
        return http_ok(target.url + "/app-config.js") and http_ok(target.url + "/dicomweb/studies?limit=1")

    try:
        wait_for(up, f"{target.name} at {target.url}")
    except BaseException:
        target.stop()
        raise


def start_target(name: str, work: Path, studies: Iterable[Study]) -> Target:
    if name == "voxlake":
        return start_voxlake(work, studies)
    if name == "orthanc":
        return start_orthanc(work, studies)
    raise ValueError(f"target must be one of voxlake, orthanc; got {name!r}")


# --- the Orthanc proxy ------------------------------------------------------------------------------

_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
        "proxy-authenticate", "host", "content-length", "content-encoding", "accept-encoding"}


def orthanc_proxy_app(upstream: str, *, dist: Path | None = None, root: str = "/dicom-web") -> Any:
    """OHIF (mounted as voxlake mounts it) with ``/dicomweb/…`` forwarded to ``upstream + root``.

    ``…/thumbnail`` becomes ``…/rendered``, which Orthanc has. The backend is asked for identity
    encoding (it must not gzip what the browser did not ask for), responses stream through, and JSON
    bodies have Orthanc's own base URL (in BulkDataURIs) rewritten to the origin the browser used.
    """
    import httpx
    from fastapi import FastAPI
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse

    from voxlake.server.viewer import find_ohif_dist, mount_viewer

    client = httpx.AsyncClient(base_url=upstream, timeout=300, limits=httpx.Limits(max_connections=64))
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    async def forward(request: Request) -> Response:
        path, query = request.path_params["path"], request.url.query or None
        if path.endswith("/thumbnail"):  # Orthanc's plugin (1.7) has none; its rendered refuses ?accept=
            path, query = path.removesuffix("/thumbnail") + "/rendered", None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers["accept-encoding"] = "identity"
        req = client.build_request(request.method, f"{root}/{path}", params=query,
                                   headers=headers, content=await request.body())
        r = await client.send(req, stream=True)
        out = {k: v for k, v in r.headers.items() if k.lower() not in _HOP}
        if "json" in r.headers.get("content-type", ""):
            body = await r.aread()
            await r.aclose()
            origin = f"{request.url.scheme}://{request.url.netloc}"
            body = body.replace(f"{upstream}{root}".encode(), f"{origin}/dicomweb".encode())
            return Response(body, status_code=r.status_code, headers=out)
        return StreamingResponse(r.aiter_raw(), status_code=r.status_code, headers=out,
                                 background=BackgroundTask(r.aclose))

    app.router.add_route("/dicomweb/{path:path}", forward, methods=["GET", "POST", "HEAD", "DELETE"])
    mount_viewer(app, dist=dist or find_ohif_dist(), dicomweb_root="/dicomweb")
    return app


# --- the browser ------------------------------------------------------------------------------------


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def browser_context(playwright: Any, tmp: Path) -> Iterator[Any]:
    """Debian's chromium with a fresh profile (a cold browser: empty HTTP cache) and its config in ``tmp``."""
    executable = chromium_path()
    if executable is None:
        raise FileNotFoundError("chromium not found: run `make viewer`")
    profile, config = tmp / "profile", tmp / "xdg-config"
    for d in (profile, config):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    context = playwright.chromium.launch_persistent_context(
        str(profile), executable_path=executable, headless=True, args=CHROMIUM_FLAGS,
        env={**os.environ, "XDG_CONFIG_HOME": str(config)}, viewport=VIEWPORT)
    try:
        yield context
    finally:
        context.close()


def wait_for_image(page: Any, timeout_s: float = 90.0, *, differs_from: dict[str, float] | None = None) -> dict:
    """Wait, polling in the page every animation frame, until the first viewport shows a non-blank image
    (optionally a different one from ``differs_from``); returns the probe with ``t`` = performance.now()."""
    if differs_from is None:
        handle = page.wait_for_function(f"({CANVAS_PROBE})()", polling="raf", timeout=timeout_s * 1000)
    else:
        previous = json.dumps(differs_from)
        handle = page.wait_for_function(
            f"(() => {{ const p = ({CANVAS_PROBE})(), q = {previous};"
            " return p && Math.abs(p.mean - q.mean) + Math.abs(p.spread - q.spread) > 0.5 ? p : null; })()",
            polling="raf", timeout=timeout_s * 1000)
    return handle.json_value()


def screenshot_array(page: Any, path: Path, selector: str | None = None) -> Any:
    """Save a PNG screenshot (of ``selector``'s element, or the page) and return it as an RGB array."""
    import numpy as np
    from PIL import Image
    from playwright.sync_api import Error

    path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(20):  # OHIF replaces the viewport's element when it changes viewport type
        try:
            (page.locator(selector).first if selector else page).screenshot(path=str(path), timeout=10_000)
            break
        except Error:
            if attempt == 19:
                raise
            page.wait_for_timeout(250)
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def wait_for_overlay(page: Any, selector: str, path: Path, attempts: int = 60) -> Any:
    """Screenshots of ``selector`` until coloured (segment) pixels appear; the last one is kept."""
    for _ in range(attempts):
        shot = screenshot_array(page, path, selector)
        if coloured_fraction(shot) > 0.05:
            return shot
        page.wait_for_timeout(500)
    return shot


def is_non_blank(rgb: Any) -> bool:
    """More than a few grey levels, over a real part of the image (not a cursor or one line of text)."""
    grey = rgb.mean(axis=2)
    return float(grey.std()) > 8.0 and float((grey > grey.min() + 32).mean()) > 0.02


def coloured_fraction(rgb: Any, *, min_chroma: int = 40, margin: float = 0.2) -> float:
    """Share of clearly coloured pixels (max - min channel: not the greyscale CT, so overlay) in the
    centre of the image; the ``margin`` left out on each side holds OHIF's coloured text and toasts."""
    import numpy as np

    h, w = rgb.shape[:2]
    rgb = rgb[int(h * margin):int(h * (1 - margin)), int(w * margin):int(w * (1 - margin))]
    chroma = rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2).astype(np.int16)
    return float((chroma >= min_chroma).mean())


# --- python -m tests.viewer.harness proxy ---------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.viewer.harness")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("proxy", help="serve OHIF with /dicomweb forwarded to Orthanc's /dicom-web")
    p.add_argument("--upstream", required=True)
    p.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    import uvicorn

    uvicorn.run(orthanc_proxy_app(args.upstream), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
