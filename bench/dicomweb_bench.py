#!/usr/bin/env python
"""DICOMweb benchmark: ``voxlake serve`` against Orthanc with its DICOMweb plugin, on the same data.

Run by ``make bench`` (needs ``make viewer`` for the plugin). For each size in ``--sizes`` (default
10,000 and 100,000 instances) a data set is made once and kept under ``bench/.work/dicomweb`` (a marker
file says what was made): ``generate_scale`` header-only copies of the real 134-slice CT series (size
minus 300 instances), plus one real series of 300 CT instances with pixels (the 134 slices copied with
fresh UIDs). voxlake ingests the files in place; Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``,
default settings apart from ports, folders and the plugin; SQLite index) is started on loopback and gets
the same files through its REST API (``POST /instances``, several threads); both load times are
measured. Then, each server freshly started, over HTTP with httpx:

1. QIDO-RS study search as OHIF 3's study list sends it (``limit=101&offset=0&fuzzymatching=…&
   includefield=00081030,00080060,00080090,00100030``), with a PatientName wildcard (``*abc*``, as OHIF
   sends a typed name) and with a 31-day StudyDate range: median and p95 after a warm-up;
2. the series metadata of the 300-instance series: the first call after start (cold), then median/p95;
3. every frame of the 300-instance series (``frames/1`` of each instance, ``Accept: multipart/related;
   type="application/octet-stream"; transfer-syntax=*``), sequentially and with 4 concurrent clients:
   frames/s and MB/s.

With ``--million``, voxlake alone also at 1,000,000 instances (QIDO and series metadata). ``--quick``
runs small sizes to check the script works (and does not touch docs/benchmarks.md). The bench reports;
it never fails on a target. It prints tables and rewrites the "## DICOMweb" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import _common as common  # shared sampling, idle wait, machine facts, docs section

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dimse_bench as db  # free ports, waiting, stats and tables
import ingest_bench as ib  # the real CT series and the machine description

REPO = common.REPO
DOCS = common.DOCS
SECTION = "## DICOMweb"
DEFAULT_WORK = REPO / "bench" / ".work"
SOURCE_SERIES = ib.SOURCE_SERIES
ORTHANC = db.ORTHANC
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DATA_FORMAT = 1  # bump when the way the data sets are made changes
CT_INSTANCES = 300
TARGET_QIDO_MS = 50.0
MILLION = 1_000_000
FOREIGN_WARN = ib.FOREIGN_WARN
FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
JSON_ACCEPT = "application/dicom+json"
# OHIF 3.13.2's study list (extensions/default DicomWebDataSource qido.js mapParams): these include
# fields, limit 101, offset 0, and fuzzymatching as the data source's supportsFuzzyMatching says (true in
# the app-config voxlake serves: voxlake/server/viewer.py). A typed name becomes *name* (supportsWildcard).
OHIF_INCLUDEFIELD = "00081030,00080060,00080090,00100030"
OHIF_FUZZY = "true"
CLIENTS = 4
JS_SAFE = "-_.!~*'()"  # what encodeURIComponent leaves as it is


def ohif_query(name: str | None = None, date_range: str | None = None) -> str:
    """The query string of OHIF's study-list request: its parameters in its order, each value encoded as
    dicomweb-client does (JavaScript's encodeURIComponent: ``*`` stays, ``,`` becomes ``%2C``). Orthanc's
    plugin does not decode ``%2A``, so a client that escapes ``*`` gets no wildcard matches from it."""
    from urllib.parse import quote

    params = [("PatientName", f"*{name}*")] if name else []
    params += [("limit", "101"), ("offset", "0"), ("fuzzymatching", OHIF_FUZZY),
               ("includefield", OHIF_INCLUDEFIELD)]
    if date_range:
        params.append(("StudyDate", date_range))
    return "&".join(f"{k}={quote(v, safe=JS_SAFE)}" for k, v in params)


# --- the data ----------------------------------------------------------------------------------


def _marker_ok(marker: Path, wanted: dict[str, Any]) -> dict[str, Any] | None:
    if not marker.exists():
        return None
    made = json.loads(marker.read_text())
    return made if all(made.get(k) == v for k, v in wanted.items()) else None


def ensure_ct300(work: Path) -> dict[str, Any]:
    """The 300-instance CT series with pixels: the real 134 slices cycled, each copy with fresh UIDs, one
    new patient, study, series and frame of reference, InstanceNumber 1..300 and positions 3 mm apart."""
    import pydicom
    from pydicom.uid import generate_uid

    base = work / "ct300"
    marker = base / "made.json"
    wanted = {"format": DATA_FORMAT, "source": str(SOURCE_SERIES), "instances": CT_INSTANCES}
    made = _marker_ok(marker, wanted)
    if made:
        return made
    shutil.rmtree(base, ignore_errors=True)
    (base / "files").mkdir(parents=True)
    slices = [pydicom.dcmread(p) for p in sorted(SOURCE_SERIES.glob("*.dcm"))]
    slices.sort(key=lambda d: -float(d.ImagePositionPatient[2]))
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    z0 = float(slices[0].ImagePositionPatient[2])
    step = float(slices[0].get("SliceThickness") or 3.0)
    sops: list[str] = []
    for i in range(CT_INSTANCES):
        ds = slices[i % len(slices)].copy()
        sop = generate_uid()
        ds.PatientID, ds.PatientName = "VXDW-CT300", "BENCH^CT300"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        if "FrameOfReferenceUID" in ds:
            ds.FrameOfReferenceUID = frame
        ds.SeriesDescription = "voxlake bench 300-slice CT"
        ds.InstanceNumber = i + 1
        x, y, _ = ds.ImagePositionPatient
        ds.ImagePositionPatient = [x, y, round(z0 - i * step, 3)]
        if "SliceLocation" in ds:
            ds.SliceLocation = round(z0 - i * step, 3)
        ds.save_as(base / "files" / f"{i + 1:03d}.dcm")
        sops.append(sop)
    made = {**wanted, "study": study, "series": series, "sops": sops,
            "frame_bytes": len(slices[0].PixelData), "files": str(base / "files")}
    marker.write_text(json.dumps(made))
    return made


def ensure_lake(work: Path, n: int, ct: dict[str, Any]) -> dict[str, Any]:
    """``n - 300`` header-only generate_scale instances plus the CT series, ingested into a lake (reused)."""
    import voxlake
    from voxlake.synth.scale import generate_scale

    base = work / f"n{n}"
    marker = base / "made.json"
    wanted = {"format": DATA_FORMAT, "instances": n, "source": str(SOURCE_SERIES), "ct_series": ct["series"]}
    made = _marker_ok(marker, wanted)
    if made:
        print(f"{n:,}: reusing the files and lake in {base}", flush=True)
        return made
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    scale, lake = base / "scale", base / "lake"
    t0 = time.perf_counter()
    print(f"{n:,}: writing {n - CT_INSTANCES:,} header-only instances (generate_scale)", flush=True)
    generate_scale(scale, instances=n - CT_INSTANCES, source=SOURCE_SERIES, workers=common.nproc())
    gen_s = time.perf_counter() - t0
    os.sync()
    print(f"{n:,}: generated in {gen_s:.0f} s; voxlake ingest (default options, {common.nproc()} workers)",
          flush=True)
    t1 = time.perf_counter()
    runs = [voxlake.open(str(lake)).ingest(src, workers=common.nproc()) for src in (ct["files"], str(scale))]
    ingest_s = time.perf_counter() - t1
    count = voxlake.open(str(lake)).sql("SELECT count(*) FROM instances").fetchall()[0][0]
    errors = sum(int(getattr(r, "errors", 0) or 0) for r in runs)
    print(f"{n:,}: ingested {count:,} instances in {ingest_s:.0f} s ({errors} errors)", flush=True)
    made = {**wanted, "scale": str(scale), "lake": str(lake), "generate_s": gen_s, "ingest_s": ingest_s,
            "lake_instances": int(count), "ingest_errors": errors,
            "made_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
    marker.write_text(json.dumps(made))
    return made


def list_files(folder: str) -> list[str]:
    out: list[str] = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        out.extend(os.path.join(root, f) for f in sorted(names) if not f.startswith("."))
    return out


def choose_queries(lake_path: str) -> list[dict[str, Any]]:
    """The three study searches: OHIF's list; a PatientName wildcard and a 31-day StudyDate range built
    from the lake's middle study (deterministic for a given data set)."""
    import voxlake

    lake = voxlake.open(lake_path)
    row = lake.sql(
        "SELECT PatientName, StudyDate FROM studies WHERE PatientName IS NOT NULL AND StudyDate IS NOT NULL "
        "ORDER BY StudyInstanceUID LIMIT 1 OFFSET (SELECT count(*) // 2 FROM studies)"
    ).fetchall()
    name, day = (row[0][0], row[0][1]) if row else ("A", dt.date(2015, 1, 1))
    letters = "".join(c for c in str(name) if c.isalpha())[:3].lower() or "a"
    lo, hi = day - dt.timedelta(days=15), day + dt.timedelta(days=15)
    rng = f"{lo:%Y%m%d}-{hi:%Y%m%d}"
    return [
        {"name": "OHIF study list", "query": ohif_query()},
        {"name": f"PatientName *{letters}*", "query": ohif_query(name=letters)},
        {"name": "StudyDate range (31 days)", "query": ohif_query(date_range=rng)},
    ]


# --- the servers -------------------------------------------------------------------------------


class Server:
    def __init__(self, name: str, proc: subprocess.Popen[bytes], base: str, log: Path, log_fh: Any) -> None:
        self.name, self.proc, self.base, self.log, self._log_fh = name, proc, base, log, log_fh
        self.ready_s = 0.0

    def cpu_s(self) -> float:
        return db._cpu(self.proc.pid)

    def rss_mib(self) -> float:
        import psutil

        try:
            return psutil.Process(self.proc.pid).memory_info().rss / 2**20
        except psutil.Error:
            return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_fh.close()


def _http_ok(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=600, headers={"Accept": JSON_ACCEPT}).status_code == 200
    except httpx.HTTPError:
        return False


def _ready(server: Server, url: str, deadline: float) -> None:
    t0 = time.perf_counter()

    def up() -> bool:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited early (see {server.log})")
        return _http_ok(url)

    try:
        db._wait(up, f"{server.name} at {url}", deadline)
    except BaseException:
        server.stop()
        raise
    server.ready_s = time.perf_counter() - t0


def start_voxlake(lake: str, log: Path) -> Server:
    """``voxlake serve --lake LAKE --port P --no-viewer``; ready when QIDO answers (catalog loaded)."""
    port = db.free_port()
    fh = open(log, "wb")  # noqa: SIM115 - closed in stop()
    proc = subprocess.Popen(
        [sys.executable, "-m", "voxlake", "serve", "--lake", lake, "--port", str(port), "--no-viewer"],
        stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    server = Server("voxlake", proc, f"http://127.0.0.1:{port}/dicomweb", log, fh)
    _ready(server, server.base + "/studies?limit=1", 1800)
    return server


def orthanc_config(root: Path) -> dict[str, Any]:
    return {
        "Name": "voxlake-dicomweb-bench",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),  # SQLite, the default index
        "HttpPort": db.free_port(),
        "DicomPort": db.free_port(),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }


def start_orthanc(root: Path) -> tuple[Server, str]:
    """Orthanc with its DICOMweb plugin on loopback, storage and SQLite index under ``root``; the server
    and its REST root."""
    root.mkdir(parents=True, exist_ok=True)
    config = orthanc_config(root)
    (root / "orthanc.json").write_text(json.dumps(config, indent=2))
    log = root / "orthanc.log"
    fh = open(log, "ab")  # noqa: SIM115 - closed in stop()
    proc = subprocess.Popen([str(ORTHANC), str(root / "orthanc.json")], stdout=fh, stderr=subprocess.STDOUT)
    rest = f"http://127.0.0.1:{config['HttpPort']}"
    server = Server("Orthanc", proc, rest + "/dicom-web", log, fh)
    _ready(server, rest + "/system", 600)
    _ready(server, server.base + "/studies?limit=1", 1800)
    return server, rest


def load_orthanc(work: Path, n: int, ct: dict[str, Any], data: dict[str, Any], threads: int,
                 limit_s: float) -> dict[str, Any]:
    """Orthanc's storage for size ``n``: the same files uploaded by ``POST /instances`` from ``threads``
    threads, the CT series first (reused from an earlier run when its marker matches)."""
    import httpx

    root = work / f"n{n}" / "orthanc"
    marker = root / "loaded.json"
    wanted = {"format": DATA_FORMAT, "instances": n, "ct_series": ct["series"], "threads": threads}
    made = _marker_ok(marker, wanted)
    if made and (made["complete"] or made.get("limit_s") == limit_s):
        print(f"{n:,}: reusing Orthanc's storage in {root} ({made['stored']:,} instances)", flush=True)
        return made
    shutil.rmtree(root, ignore_errors=True)
    files = list_files(ct["files"]) + list_files(data["scale"])
    server, rest = start_orthanc(root)
    print(f"{n:,}: uploading {len(files):,} files to Orthanc (POST /instances, {threads} threads)", flush=True)
    try:
        sent, failed, load_s = common.post_instances(rest, files, threads, limit_s=limit_s)
        stored = int(httpx.get(rest + "/statistics", timeout=600).json()["CountInstances"])
    finally:
        server.stop()
    stopped = sent < len(files)
    du = sum(f.stat().st_size for f in (root / "storage").rglob("*") if f.is_file())
    made = {**wanted, "files": len(files), "sent": sent, "failed": failed, "stored": stored,
            "complete": not stopped and stored == len(files), "load_s": load_s, "limit_s": limit_s,
            "storage_mib": du / 2**20, "loaded_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
    marker.write_text(json.dumps(made))
    print(f"{n:,}: Orthanc stored {stored:,} instances in {load_s:.0f} s ({stored / load_s:.0f}/s)"
          + ("" if made["complete"] else f"; stopped at the {limit_s:.0f} s load limit"), flush=True)
    return made


# --- measuring ---------------------------------------------------------------------------------


def _stats(samples: list[float]) -> dict[str, float]:
    return db._stats(samples) if samples else {"median_ms": float("nan"), "p95_ms": float("nan")}


def _timed(client: Any, url: str, **kw: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    r = client.get(url, **kw)
    _ = r.content
    return time.perf_counter() - t0, r


def multipart_first(r: Any) -> bytes:
    """The payload of the first part of a multipart/related response."""
    ctype = r.headers.get("content-type", "")
    boundary = next((p.split("=", 1)[1].strip().strip('"') for p in ctype.split(";")
                     if p.strip().lower().startswith("boundary=")), "")
    if not boundary:
        return b""
    parts = r.content.split(b"--" + boundary.encode())
    if len(parts) < 2 or b"\r\n\r\n" not in parts[1]:
        return b""
    body = parts[1].split(b"\r\n\r\n", 1)[1]
    return body[:-2] if body.endswith(b"\r\n") else body


def fetch_frames(base: str, ct: dict[str, Any], clients: int) -> dict[str, Any]:
    """Every frame of the CT series, by ``clients`` concurrent clients (each its own connection)."""
    import httpx

    urls = [f"{base}/studies/{ct['study']}/series/{ct['series']}/instances/{sop}/frames/1" for sop in ct["sops"]]
    chunks = [urls[i::clients] for i in range(clients)]
    pool_clients = [httpx.Client(timeout=600, headers={"Accept": FRAME_ACCEPT}) for _ in range(clients)]
    totals = [[0, 0, 0] for _ in range(clients)]  # frames ok, bytes, failures

    def work(k: int) -> None:
        for url in chunks[k]:
            r = pool_clients[k].get(url)
            if r.status_code == 200:
                totals[k][0] += 1
                totals[k][1] += len(r.content)
            else:
                totals[k][2] += 1

    try:
        t0 = time.perf_counter()
        if clients == 1:
            work(0)
        else:
            threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        wall = time.perf_counter() - t0
    finally:
        for c in pool_clients:
            c.close()
    frames, nbytes, failed = (sum(t[i] for t in totals) for i in range(3))
    return {"clients": clients, "frames": frames, "bytes": nbytes, "failed": failed, "wall_s": wall,
            "fps": frames / wall, "mbps": nbytes / 1e6 / wall}


def measure(server: Server, ct: dict[str, Any], queries: list[dict[str, Any]], reps: dict[str, int],
            frames: bool, idle_wait: float) -> dict[str, Any]:
    import httpx

    out: dict[str, Any] = {"ready_s": server.ready_s, "qido": [], "notes": []}
    waited = common.wait_for_idle(idle_wait)
    if waited >= 5:
        print(f"  waited {waited:.0f} s for the machine to go idle", flush=True)
    cpu0, busy0, own0, t_all = server.cpu_s(), common.busy_cpu_s(), time.process_time(), time.perf_counter()
    with httpx.Client(timeout=600) as client:
        # 2. series metadata: the first call after the server started is the cold one
        url = f"{server.base}/studies/{ct['study']}/series/{ct['series']}/metadata"
        took, r = _timed(client, url, headers={"Accept": JSON_ACCEPT})
        n_meta = len(r.json()) if r.status_code == 200 else 0
        if r.status_code != 200 or n_meta != CT_INSTANCES:
            out["notes"].append(f"series metadata: status {r.status_code}, {n_meta} instances")
        times = []
        for _ in range(reps["meta"]):
            t, r = _timed(client, url, headers={"Accept": JSON_ACCEPT})
            times.append(t)
        out["meta"] = {"cold_ms": took * 1000, **_stats(times), "bytes": len(r.content), "instances": n_meta}
        print(f"  {server.name}: series metadata ({n_meta} instances, {len(r.content) / 1e6:.1f} MB): cold "
              f"{took * 1000:.0f} ms, median {out['meta']['median_ms']:.1f} ms, p95 {out['meta']['p95_ms']:.1f} ms",
              flush=True)
        # 1. QIDO-RS study search
        for q in queries:
            times, statuses, matches = [], set(), 0
            for rep in range(reps["warmup"] + reps["qido"]):
                t, r = _timed(client, f"{server.base}/studies?{q['query']}", headers={"Accept": JSON_ACCEPT})
                statuses.add(r.status_code)
                if rep >= reps["warmup"]:
                    times.append(t)
                matches = len(r.json()) if r.status_code == 200 and r.content else 0
            entry = {"name": q["name"], "query": q["query"], "matches": matches,
                     "statuses": sorted(statuses), **_stats(times)}
            out["qido"].append(entry)
            if statuses - {200, 204}:
                out["notes"].append(f"QIDO {q['name']}: statuses {sorted(statuses)}")
            print(f"  {server.name}: QIDO {q['name']}: {matches} studies; median {entry['median_ms']:.1f} ms, "
                  f"p95 {entry['p95_ms']:.1f} ms", flush=True)
        # 3. frames: check the first against the file's Pixel Data, then sequential and concurrent passes
        if frames:
            import pydicom

            sop0 = ct["sops"][0]
            r = client.get(f"{server.base}/studies/{ct['study']}/series/{ct['series']}/instances/{sop0}/frames/1",
                           headers={"Accept": FRAME_ACCEPT})
            expected = pydicom.dcmread(os.path.join(ct["files"], "001.dcm")).PixelData
            out["frame_check"] = r.status_code == 200 and multipart_first(r) == expected
            out["frame_content_type"] = r.headers.get("content-type", "")
            if not out["frame_check"]:
                out["notes"].append(f"frame 1 of the first instance: status {r.status_code}, payload does not "
                                    "match the file's Pixel Data")
            out["frames"] = []
            for clients in (1, CLIENTS):
                passes = [fetch_frames(server.base, ct, clients) for _ in range(reps["frames"])]
                best = sorted(passes, key=lambda p: p["wall_s"])[len(passes) // 2]  # the median pass
                out["frames"].append(best)
                if best["failed"]:
                    out["notes"].append(f"frames, {clients} client(s): {best['failed']} failed")
                print(f"  {server.name}: frames, {clients} client(s): {best['frames']} in {best['wall_s']:.2f} s, "
                      f"{best['fps']:.0f} frames/s, {best['mbps']:.0f} MB/s", flush=True)
    wall = time.perf_counter() - t_all
    server_cpu = server.cpu_s() - cpu0
    foreign = max(0.0, common.busy_cpu_s() - busy0 - server_cpu - (time.process_time() - own0))
    out.update(wall_s=wall, server_cpu_s=server_cpu, foreign_share=foreign / (wall * common.nproc()),
               rss_mib=server.rss_mib())
    if out["foreign_share"] > FOREIGN_WARN:
        out["notes"].append(f"other processes kept the machine {out['foreign_share']:.0%} busy")
    return out


def run_size(work: Path, n: int, ct: dict[str, Any], args: argparse.Namespace, reps: dict[str, int],
             orthanc: bool) -> dict[str, Any]:
    data = ensure_lake(work, n, ct)
    queries = choose_queries(data["lake"])
    res: dict[str, Any] = {"instances": n, "data": data, "queries": [q["name"] for q in queries],
                           "query_strings": {q["name"]: q["query"] for q in queries},
                           "frames": orthanc or n < MILLION}
    print(f"{n:,}: voxlake serve", flush=True)
    try:
        server = start_voxlake(data["lake"], work / f"n{n}" / "voxlake-serve.log")
        try:
            print(f"  voxlake: ready in {server.ready_s:.1f} s", flush=True)
            res["voxlake"] = measure(server, ct, queries, reps, res["frames"], args.idle_wait)
        finally:
            server.stop()
    except Exception as exc:  # a failed contender is reported, not fatal
        res["voxlake"] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"  voxlake: failed: {exc}", flush=True)
    if orthanc:
        try:
            res["orthanc_load"] = load_orthanc(work, n, ct, data, args.orthanc_threads, args.orthanc_load_limit)
            print(f"{n:,}: Orthanc", flush=True)
            server, _ = start_orthanc(work / f"n{n}" / "orthanc")
            try:
                print(f"  Orthanc: ready in {server.ready_s:.1f} s", flush=True)
                res["orthanc"] = measure(server, ct, queries, reps, True, args.idle_wait)
            finally:
                server.stop()
        except Exception as exc:
            res["orthanc"] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"  Orthanc: failed: {exc}", flush=True)
    return res


# --- the report --------------------------------------------------------------------------------


def _ok(r: dict[str, Any], key: str) -> dict[str, Any] | None:
    v = r.get(key)
    return v if v and "error" not in v else None


def load_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in results:
        d, n = r["data"], r["instances"]
        v = _ok(r, "voxlake")
        rows.append([f"{n:,}", "voxlake ingest", f"{d['lake_instances']:,}", common.fmt(d["ingest_s"]),
                     common.fmt(d["lake_instances"] / d["ingest_s"], 0),
                     common.fmt(v["ready_s"] if v else None), common.fmt(v["rss_mib"] if v else None, 0)])
        ol, o = r.get("orthanc_load"), _ok(r, "orthanc")
        if ol:
            rows.append([f"{n:,}", f"Orthanc POST /instances, {ol['threads']} threads"
                         + ("" if ol["complete"] else f" (stopped at {ol['limit_s']:.0f} s)"),
                         f"{ol['stored']:,}", common.fmt(ol["load_s"]), common.fmt(ol["stored"] / ol["load_s"], 0),
                         common.fmt(o["ready_s"] if o else None), common.fmt(o["rss_mib"] if o else None, 0)])
    return rows


LOAD_HEADERS = ["size", "load", "instances", "load s", "instances/s", "server ready s", "server RSS MiB"]
QIDO_HEADERS = ["instances", "query", "voxlake studies", "voxlake median ms", "voxlake p95 ms",
                "Orthanc studies", "Orthanc median ms", "Orthanc p95 ms"]
META_HEADERS = ["instances", "target", "cold ms", "median ms", "p95 ms", "MB"]
FRAME_HEADERS = ["instances", "target", "clients", "frames", "frames/s", "MB/s"]


def qido_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in results:
        v, o = _ok(r, "voxlake"), _ok(r, "orthanc")
        for i, name in enumerate(r["queries"]):
            vq = v["qido"][i] if v else None
            oq = o["qido"][i] if o else None
            rows.append([f"{r['instances']:,}", name,
                         str(vq["matches"]) if vq else "—", common.fmt(vq and vq["median_ms"]),
                         common.fmt(vq and vq["p95_ms"]),
                         str(oq["matches"]) if oq else "—", common.fmt(oq and oq["median_ms"]),
                         common.fmt(oq and oq["p95_ms"])])
    return rows


def meta_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in results:
        for key, label in (("voxlake", "voxlake"), ("orthanc", "Orthanc")):
            m = _ok(r, key)
            if m:
                rows.append([f"{r['instances']:,}", label, common.fmt(m["meta"]["cold_ms"]),
                             common.fmt(m["meta"]["median_ms"]), common.fmt(m["meta"]["p95_ms"]),
                             common.fmt(m["meta"]["bytes"] / 1e6, 2)])
    return rows


def frame_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in results:
        for key, label in (("voxlake", "voxlake"), ("orthanc", "Orthanc")):
            m = _ok(r, key)
            for f in (m or {}).get("frames", []):
                rows.append([f"{r['instances']:,}", label, str(f["clients"]), f"{f['frames']:,}",
                             common.fmt(f["fps"]), common.fmt(f["mbps"])])
    return rows


def targets(results: list[dict[str, Any]], big: int | None) -> list[tuple[str, str, bool | None]]:
    out: list[tuple[str, str, bool | None]] = []
    at_m = next((r for r in results if r["instances"] >= MILLION and _ok(r, "voxlake")), None)
    what = f"QIDO study search p95 under {TARGET_QIDO_MS:g} ms at 1,000,000 instances (worst of the 3 queries)"
    if at_m:
        worst = max(at_m["voxlake"]["qido"], key=lambda q: q["p95_ms"])
        out.append((what, f"{worst['p95_ms']:.1f} ms ({worst['name']}, {at_m['instances']:,} instances)",
                    worst["p95_ms"] < TARGET_QIDO_MS))
    else:
        out.append((what, "not measured (run with --million)", None))
    both = [r for r in results if _ok(r, "voxlake") and _ok(r, "orthanc")]
    cmp = next((r for r in both if r["instances"] == big), both[-1] if both else None)
    if not cmp:
        out.append(("voxlake faster than Orthanc on every operation", "not measured", None))
        return out
    v, o, n = cmp["voxlake"], cmp["orthanc"], cmp["instances"]
    ol = cmp.get("orthanc_load") or {}
    held = "" if ol.get("complete", True) else f"; Orthanc held only {ol.get('stored', 0):,} instances"
    for vq, oq in zip(v["qido"], o["qido"], strict=True):
        out.append((f"faster than Orthanc at {n:,}: QIDO {vq['name']} (median)",
                    f"{vq['median_ms']:.1f} vs {oq['median_ms']:.1f} ms{held}", vq["median_ms"] < oq["median_ms"]))
    for key, label in (("cold_ms", "series metadata, cold"), ("median_ms", "series metadata (median)")):
        out.append((f"faster than Orthanc at {n:,}: {label}",
                    f"{v['meta'][key]:.1f} vs {o['meta'][key]:.1f} ms{held}", v["meta"][key] < o["meta"][key]))
    for vf, of in zip(v.get("frames", []), o.get("frames", []), strict=False):
        c = vf["clients"]
        out.append((f"faster than Orthanc at {n:,}: frames, {c} client{'s' if c > 1 else ''}",
                    f"{vf['fps']:.0f} vs {of['fps']:.0f} frames/s{held}", vf["fps"] > of["fps"]))
    return out


def _n(k: int, one: str, many: str | None = None) -> str:
    return f"{k} {one if k == 1 else (many or one + 's')}"


def section(info: dict[str, Any], results: list[dict[str, Any]], reps: dict[str, int], total_s: float,
            big: int | None, threads: int, extra_notes: list[str]) -> str:
    lines = [
        SECTION,
        "",
        "Written by `bench/dicomweb_bench.py` (`make bench`); rerun it to refresh this section.",
        "",
        f"- Date: {info['date']}",
        f"- Machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram_gib']:.1f} GiB RAM, Linux {info['kernel']}; "
        f"Python {info['python']}, pydicom {info['pydicom']}, httpx {info['httpx']}; {info['orthanc']}, "
        f"orthanc-dicomweb {info['dicomweb_plugin']}",
        f"- voxlake: commit `{info['commit']}`",
        f"- Bench runtime: {total_s / 60:.1f} min in all (data made in earlier runs reused; the Notes say "
        "when)",
        "",
        "### Method",
        "",
        f"- Data, per size: `generate_scale` header-only copies (size − {CT_INSTANCES} instances) of the real "
        "134-slice CT series (pancreatic-ct-cbct-seg), plus one real 300-instance CT series with pixels (the "
        "134 slices cycled, each copy with fresh Study/Series/SOP/Frame of Reference UIDs, 512×512, 16-bit, "
        "Implicit VR Little Endian, 0.5 MB per frame). voxlake: `Lake.ingest` of both folders (default "
        "options: files indexed in place, SHA-256 on). Orthanc 1.10 + DICOMweb plugin (Debian packages, "
        "default settings apart from ports, folders and the plugin; SQLite index, storage on the same disk): "
        f"the same files by `POST /instances` from {threads} threads, the CT series first. Both on loopback; "
        "each server freshly started for its measurements (server ready s: from start until QIDO answers; "
        "server RSS: after the measurements).",
        "- Client: httpx in one Python process on the same machine (one keep-alive connection per client); "
        "times from the request to the last byte of the body.",
        f"- QIDO-RS `/studies` as OHIF 3.13.2's study list sends it: `limit=101&offset=0&fuzzymatching="
        f"{OHIF_FUZZY}&includefield={OHIF_INCLUDEFIELD}` (its mapParams; fuzzymatching as voxlake's app-config "
        "sets `supportsFuzzyMatching`), `Accept: application/dicom+json`; PatientName: a typed name as OHIF "
        "sends it with `supportsWildcard` (`*abc*`: the first letters of the middle study's patient name); "
        "StudyDate: a 31-day range around the middle study's date. "
        f"{_n(reps['warmup'], 'warm-up request')}, then {reps['qido']}: median and p95. studies: results returned.",
        f"- Series metadata (`/studies/{{s}}/series/{{se}}/metadata` of the 300-instance series): cold is the "
        f"first request after the server started (files in the page cache); then {reps['meta']} more, median "
        "and p95.",
        f"- Frames: `frames/1` of each of the 300 instances with `Accept: {FRAME_ACCEPT}`; 1 client: one after "
        f"the other; {CLIENTS} clients: {CLIENTS} threads, each its own connection and a quarter of the "
        f"instances. {_n(reps['frames'], 'pass', 'passes')} each, the median one reported; MB/s counts response bodies. "
        "The first frame is checked against the file's Pixel Data byte for byte.",
        "- The bench waits (up to `--idle-wait`) for the machine to go idle before each server's measurements "
        "and notes any where other processes took over 5%; client and server share the machine's CPUs.",
        "- Query strings (each size's own names and dates): "
        + "; ".join(f"{r['instances']:,}: " + ", ".join(f"`/studies?{q}`" for q in r["query_strings"].values())
                    for r in results) + ".",
        "",
        "### Load",
        "",
        db.md_table(LOAD_HEADERS, load_rows(results)),
        "",
        "### QIDO-RS study search",
        "",
        db.md_table(QIDO_HEADERS, qido_rows(results)),
        "",
        "### Series metadata, 300 instances",
        "",
        db.md_table(META_HEADERS, meta_rows(results)),
        "",
        "### Frames, 300-instance series",
        "",
        db.md_table(FRAME_HEADERS, frame_rows(results)),
        "",
        "### Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
    ]
    lines += [f"| {t} | {m} | {common.met(ok)} |" for t, m, ok in targets(results, big)]
    notes = list(extra_notes)
    for r in results:
        d = r["data"]
        notes.append(f"- {r['instances']:,}: generate_scale {d['generate_s']:.0f} s, voxlake ingest "
                     f"{d['ingest_s']:.0f} s (made {d['made_at']})")
        ol = r.get("orthanc_load")
        if ol:
            notes.append(f"- {r['instances']:,}: Orthanc loaded {ol['stored']:,} of {ol['files']:,} files in "
                         f"{ol['load_s']:.0f} s ({ol['storage_mib']:.0f} MiB stored; loaded {ol['loaded_at']})"
                         + ("" if ol["complete"] else f", stopped at the {ol['limit_s']:.0f} s load limit")
                         + (f"; {ol['failed']} uploads failed" if ol["failed"] else ""))
        v, o = _ok(r, "voxlake"), _ok(r, "orthanc")
        if v and o:
            notes += [f"- {r['instances']:,}: {vq['name']}: voxlake returned {vq['matches']} studies, Orthanc "
                      f"{oq['matches']}" for vq, oq in zip(v["qido"], o["qido"], strict=True)
                      if vq["matches"] != oq["matches"]]
        for key, label in (("voxlake", "voxlake"), ("orthanc", "Orthanc")):
            m = r.get(key) or {}
            if "error" in m:
                notes.append(f"- {r['instances']:,}, {label}: failed: {m['error']}")
            notes += [f"- {r['instances']:,}, {label}: {x}" for x in m.get("notes", [])]
    if notes:
        lines += ["", "### Notes", "", *notes]
    return "\n".join(lines) + "\n"


def _pkg_version(name: str) -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True,
                             timeout=30).stdout
    except OSError:
        return "unknown"
    return out.strip() or "not installed"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,100000",
                   help="instances per data set, comma-separated, both servers (default 10000,100000)")
    p.add_argument("--million", action="store_true", help="voxlake alone also at 1,000,000 instances")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 2,000 instances (and 5,000 for --million), few repetitions, no docs")
    p.add_argument("--skip-orthanc", action="store_true", help="measure voxlake only")
    p.add_argument("--prepare", action="store_true",
                   help="only make the data sets (files, lakes, Orthanc's storage) that a later run reuses; "
                   "measure nothing")
    p.add_argument("--orthanc-threads", type=int, default=4, help="upload threads for Orthanc (default 4)")
    p.add_argument("--orthanc-load-limit", type=float, default=3600.0,
                   help="stop uploading to Orthanc after this many seconds per size (default 3600)")
    p.add_argument("--reps", type=int, default=50, help="QIDO repetitions per query (default 50)")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="work folder (default bench/.work)")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    p.add_argument("--idle-wait", type=float, default=120.0,
                   help="before each server's measurements, wait up to this many seconds for the machine to "
                   "go idle (default 120)")
    args = p.parse_args(argv)

    t_start = time.perf_counter()
    work = (args.work.resolve() / "dicomweb")
    work.mkdir(parents=True, exist_ok=True)
    sizes = [2000] if args.quick else [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    solo = ([5000] if args.quick else [MILLION]) if args.million else []
    reps = ({"warmup": 1, "qido": 10, "meta": 5, "frames": 1} if args.quick
            else {"warmup": 3, "qido": args.reps, "meta": 20, "frames": 3})
    import httpx

    info = ib.machine()
    info["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    info["httpx"] = httpx.__version__
    info["orthanc"] = db._version([str(ORTHANC), "--version"]) if ORTHANC.exists() else "Orthanc not installed"
    info["dicomweb_plugin"] = _pkg_version("orthanc-dicomweb")
    with_orthanc = not args.skip_orthanc and ORTHANC.exists() and DICOMWEB_PLUGIN.exists()
    notes: list[str] = []
    if not with_orthanc and not args.skip_orthanc:
        notes.append("- Orthanc or its DICOMweb plugin is not installed (`make viewer`): voxlake alone")
    print(f"voxlake commit {info['commit']}; {info['nproc']} CPUs ({info['cpu']}); {info['orthanc']}, "
          f"orthanc-dicomweb {info['dicomweb_plugin']}; sizes {sizes}" + (f", voxlake alone {solo}" if solo else ""),
          flush=True)
    ct = ensure_ct300(work)
    if args.prepare:
        for n in sizes + solo:
            data = ensure_lake(work, n, ct)
            if with_orthanc and n in sizes:
                load_orthanc(work, n, ct, data, args.orthanc_threads, args.orthanc_load_limit)
        print(f"data sets ready in {(time.perf_counter() - t_start) / 60:.1f} min; nothing measured")
        return 0
    results = [run_size(work, n, ct, args, reps, with_orthanc) for n in sizes]
    results += [run_size(work, n, ct, args, reps, False) for n in solo]
    total_s = time.perf_counter() - t_start
    big = max(sizes) if sizes else None

    print()
    for title, headers, rows in (("Load", LOAD_HEADERS, load_rows(results)),
                                 ("QIDO-RS study search", QIDO_HEADERS, qido_rows(results)),
                                 ("Series metadata", META_HEADERS, meta_rows(results)),
                                 ("Frames", FRAME_HEADERS, frame_rows(results))):
        if rows:
            print(title)
            print(db.text_table(headers, rows))
            print()
    for t, m, ok in targets(results, big):
        print(f"target: {t}: {m} — {common.met(ok)}")
    print(f"bench runtime: {total_s / 60:.1f} min")
    (work / ("results-quick.json" if args.quick else "results.json")).write_text(
        json.dumps({"machine": info, "results": results, "total_s": total_s}, indent=2, default=str) + "\n")
    text = section(info, results, reps, total_s, big, args.orthanc_threads, notes)
    if args.quick:  # figures from a smoke test never reach the docs
        (work / "section-quick.md").write_text(text)
        print(f"wrote the section a full run would write to {work / 'section-quick.md'}")
    elif not args.no_docs:
        common.write_section(DOCS, SECTION, text)
        print(f"wrote the {SECTION!r} section of {DOCS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
