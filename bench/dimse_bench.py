#!/usr/bin/env python
"""DIMSE benchmark: voxlake's C-STORE SCP against Orthanc, and C-FIND latency on a large lake.

Run by ``make bench``. In one run it measures:

(a) C-STORE: DCMTK's ``storescu`` sends the same ``--instances`` CT instances (default 2,000: the
    first files of the ingest bench's corpus, copies of the real 134-slice CT series with fresh
    UIDs) to ``python -m voxlake.net`` (fresh lake) and to Orthanc (default configuration apart
    from its ports and folders; fresh storage), over 1 association and over 4 (4 ``storescu``
    processes at once, each sending a quarter). instances/s is instances over the wall time from
    the start of the first ``storescu`` to the exit of the last. For voxlake also the time until
    all of them are committed to the lake's tables (``SELECT count(*) FROM instances``, polled).
(b) C-FIND: a lake of ``--find-instances`` header-only instances (default 100,000, made with
    ``generate_scale`` and ingested; kept under the work folder for the next run) served by
    ``python -m voxlake.net``; study-level Study Root C-FINDs from pynetdicom over one open
    association (association set-up not counted), each query type repeated, median and p95; the
    same SQL run directly with ``lake.sql``, and the same queries to Orthanc holding the same files
    (uploaded once through its REST API and kept under the work folder).

The bench reports; it never fails on a target. It prints a table and rewrites the "## DIMSE"
section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import _common as common  # shared sampling, idle wait, machine facts, docs section

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest_bench as ib  # the shared corpus, idle wait and machine description

REPO = ib.REPO
DEFAULT_WORK = REPO / "bench" / ".work"
DOCS = common.DOCS
SECTION = "## DIMSE"
ORTHANC = Path("/usr/sbin/Orthanc")
STORESCU = shutil.which("storescu") or "storescu"
FIND_FORMAT = 1  # bump when the way the C-FIND lake is made changes
TARGET_FIND_MS = 50.0
FIND_REPS = 20
FOREIGN_WARN = ib.FOREIGN_WARN


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check: Any, what: str, deadline: float = 60.0) -> Any:
    end = time.monotonic() + deadline
    while True:
        try:
            result = check()
        except Exception:
            result = None
        if result:
            return result
        if time.monotonic() > end:
            raise RuntimeError(f"timed out after {deadline:.0f} s waiting for {what}")
        time.sleep(0.05)


# --- the corpus --------------------------------------------------------------------------------


def corpus_files(work: Path, n: int) -> list[str]:
    """The first ``n`` files (sorted) of the ingest bench's corpus, or of a corpus of our own."""
    corpus = work / "corpus"
    if not corpus.is_dir() or ib._count_files(corpus) < n:
        corpus, _, _ = ib.build_corpus(work / "dimse", n)  # its own folder: never trims the ingest corpus
    files: list[str] = []
    for root, dirs, names in os.walk(corpus):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(os.path.join(root, f) for f in sorted(names) if not f.startswith("."))
        if len(files) >= n:
            break
    return files[:n]


def warm(files: list[str]) -> int:
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            total += len(fh.read())
    return total


# --- the servers -------------------------------------------------------------------------------


class Voxlake:
    """``python -m voxlake.net`` on a lake, in a subprocess."""

    label = "voxlake"
    ae_title = "VOXLAKE"

    def __init__(self, lake: Path, log: Path) -> None:
        self.lake = lake
        self.port = free_port()
        self.log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "voxlake.net", "--lake", str(lake), "--port", str(self.port)],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if "listening" not in line:
            raise RuntimeError(f"voxlake did not start (see {log})")

    def count(self) -> int:
        import voxlake

        try:
            return int(voxlake.open(str(self.lake)).sql("SELECT count(*) FROM instances").fetchall()[0][0])
        except voxlake.LakeNotFoundError:
            return 0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Orthanc:
    """Orthanc with its built-in defaults, apart from ports, folders and the REST API's access."""

    label = "Orthanc"
    ae_title = "ORTHANC"

    def __init__(self, root: Path, *, allow_find: bool = False) -> None:
        self.http_port, self.port = free_port(), free_port()
        config = {
            "Name": "voxlake-bench",
            "StorageDirectory": str(root / "storage"),
            "IndexDirectory": str(root / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.port,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
            # C-FIND from an AE it does not know (its default refuses them).
            **({"DicomAlwaysAllowFind": True} if allow_find else {}),
        }
        (root / "orthanc.json").write_text(json.dumps(config))
        self.log = open(root / "orthanc.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(ORTHANC), str(root / "orthanc.json")], stdout=self.log, stderr=self.log
        )
        _wait(lambda: self.proc.poll() is None and self.get("/system"), "Orthanc's REST API")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=60) as response:
            return json.loads(response.read())

    def count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# --- (a) C-STORE -------------------------------------------------------------------------------


def _cpu(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def store_run(target: str, files: list[str], conc: int, work: Path, idle_wait: float) -> dict[str, Any]:
    """Send ``files`` to a fresh ``target`` over ``conc`` associations (``conc`` storescu processes)."""
    root = Path(tempfile.mkdtemp(prefix=f"dimse-{target}-", dir=work))
    label = f"{'voxlake' if target == 'voxlake' else 'Orthanc'}, {conc} association{'s' if conc > 1 else ''}"
    result: dict[str, Any] = {"target": target, "conc": conc, "label": label, "instances": len(files)}
    server: Voxlake | Orthanc
    try:
        server = Voxlake(root / "lake", root / "voxlake.log") if target == "voxlake" else Orthanc(root)
        os.sync()
        warm(files)
        waited = common.wait_for_idle(idle_wait)
        print(
            f"{label}: "
            + (f"waited {waited:.0f} s for the machine to go idle; " if waited >= 5 else "")
            + "sending",
            flush=True,
        )
        q = -(-len(files) // conc)
        chunks = [files[i * q : (i + 1) * q] for i in range(conc)]
        cpu0, busy0 = _cpu(server.proc.pid), common.busy_cpu_s()
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen(
                [STORESCU, "-aet", "BENCH", "-aec", server.ae_title, "127.0.0.1", str(server.port), *chunk],
                stdout=subprocess.DEVNULL,
                stderr=open(root / f"storescu{i}.log", "wb"),  # noqa: SIM115
            )
            for i, chunk in enumerate(chunks)
        ]
        rcs = [p.wait() for p in procs]
        wall = time.perf_counter() - t0
        kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_cpu = _cpu(server.proc.pid) - cpu0
        scu_cpu = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
        foreign = max(0.0, common.busy_cpu_s() - busy0 - server_cpu - scu_cpu)
        result.update(
            wall=wall,
            rcs=rcs,
            server_cpu_s=server_cpu,
            scu_cpu_s=scu_cpu,
            foreign_share=foreign / (wall * common.nproc()),
        )
        committed = None
        if target == "voxlake":
            _wait(lambda: server.count() >= len(files), "the lake to hold every instance", 600)
            committed = time.perf_counter() - t0
        result["committed_s"] = committed
        result["stored"] = server.count()
        server.stop()
        result["ok"] = all(rc == 0 for rc in rcs) and result["stored"] == len(files)
        note = (
            "" if result["ok"] else f"storescu exit statuses {rcs}; {result['stored']} of {len(files)} stored"
        )
        if result["foreign_share"] > FOREIGN_WARN:
            busy = f"other processes kept the machine {result['foreign_share']:.0%} busy during this run"
            note = f"{note}; {busy}" if note else busy
        result["note"] = note
        print(
            f"{label}: {wall:.1f} s, {len(files) / wall:.1f} instances/s"
            + (f", all committed after {committed:.1f} s" if committed else "")
            + f"; server CPU {server_cpu:.1f} s, storescu CPU {scu_cpu:.1f} s"
            + (f" — {note}" if note else ""),
            flush=True,
        )
    except Exception as exc:  # a failed contender is reported, not fatal
        result.update(ok=False, wall=None, note=f"{type(exc).__name__}: {exc}")
        print(f"{label}: failed: {exc}", flush=True)
        with_server = locals().get("server")
        if with_server is not None and with_server.proc.poll() is None:
            with_server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return result


# --- (b) C-FIND --------------------------------------------------------------------------------


def find_lake(work: Path, instances: int) -> tuple[Path, float]:
    """A lake of ``instances`` header-only instances (reused when a previous run made it)."""
    import voxlake
    from voxlake.synth.scale import generate_scale

    base = work / "dimse" / "find"
    marker = base / "made.json"
    wanted = {"format": FIND_FORMAT, "instances": instances, "source": str(ib.SOURCE_SERIES)}
    lake = base / "lake"
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        print(f"C-FIND lake: reusing {lake}", flush=True)
        return lake, 0.0
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    t0 = time.perf_counter()
    print(f"C-FIND lake: writing {instances:,} header-only instances", flush=True)
    generate_scale(base / "files", instances=instances, source=ib.SOURCE_SERIES, workers=2)
    print(f"C-FIND lake: ingesting ({time.perf_counter() - t0:.0f} s so far)", flush=True)
    summary = voxlake.open(str(lake)).ingest(str(base / "files"), workers=2, sha256=False)
    if summary.indexed != instances:
        print(f"warning: ingested {summary.indexed} of {instances}", flush=True)
    marker.write_text(json.dumps(wanted) + "\n")
    return lake, time.perf_counter() - t0


def _queries(lake: Any) -> list[tuple[str, dict[str, Any]]]:
    """(name, matching keys) for each query type, with values taken from the lake."""
    pid, name = lake.sql(
        "SELECT PatientID, PatientName FROM instances ORDER BY PatientID LIMIT 1"
    ).fetchall()[0]
    family = str(name).split("^")[0]
    (mid,) = lake.sql("SELECT median(StudyDate) FROM instances").fetchall()[0]
    mid = mid if isinstance(mid, dt.date) else dt.date.fromisoformat(str(mid)[:10])
    low, high = mid - dt.timedelta(days=15), mid + dt.timedelta(days=15)
    return [
        ("PatientID exact", {"PatientID": pid}),
        ("PatientName wildcard", {"PatientName": family[:2] + "*"}),
        ("StudyDate range (31 days)", {"StudyDate": f"{low:%Y%m%d}-{high:%Y%m%d}"}),
        ("universal (all studies)", {}),
    ]


RETURN_KEYS = (
    "StudyInstanceUID",
    "PatientID",
    "PatientName",
    "StudyDate",
    "StudyDescription",
    "AccessionNumber",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedInstances",
)


def _identifier(keys: dict[str, Any]) -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for kw in RETURN_KEYS:
        setattr(ds, kw, keys.get(kw, ""))
    return ds


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, dt.date):
        return f"DATE '{value.isoformat()}'"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, int | float):
        return repr(value)
    raise TypeError(f"no SQL literal for {type(value).__name__}")


def _inline(sql: str, params: list[Any]) -> str:
    """The statement with its ``?`` placeholders replaced by literals (none occur in its text)."""
    parts = sql.split("?")
    if len(parts) != len(params) + 1:
        raise ValueError("placeholder count does not match the parameters")
    return parts[0] + "".join(_literal(p) + rest for p, rest in zip(params, parts[1:], strict=True))


def _stats(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"median_ms": statistics.median(s) * 1000, "p95_ms": s[max(0, -(-95 * len(s) // 100) - 1)] * 1000}


def _find_latencies(port: int, called_ae: str, queries: list[tuple[str, dict[str, Any]]],
                    lake: Any = None) -> list[dict[str, Any]]:
    """Each query sent ``FIND_REPS + 1`` times over one association (the first not counted): its
    matches and latency; with ``lake``, also the server's own SQL through ``lake.sql``."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    from voxlake.net import qr
    from voxlake.net._tuning import no_delay, skip_unlogged_identifiers

    ae = AE(ae_title="BENCH")
    ae.add_requested_context(FIND)
    # Nagle off and no identifier pretty-printing for a silent log, as DCMTK's findscu and
    # voxlake's own SCU have it (voxlake/net/_tuning.py).
    skip_unlogged_identifiers()
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae, evt_handlers=[(evt.EVT_CONN_OPEN, no_delay)])
    if not assoc.is_established:
        raise RuntimeError(f"no association with {called_ae} for C-FIND")
    out = []
    try:
        for name, keys in queries:
            ds = _identifier(keys)
            sql = None
            if lake is not None:
                q = qr.build_find(ds, qr.Model.STUDY_ROOT)
                sql = _inline(q.sql, q.params)
            times, sql_times, matches, statuses = [], [], 0, set()
            for rep in range(FIND_REPS + 1):  # the first is a warm-up, not counted
                t0 = time.perf_counter()
                n = 0
                for status, _ident in assoc.send_c_find(ds, FIND):
                    code = getattr(status, "Status", None)
                    if code == 0xFF00:
                        n += 1
                    else:
                        statuses.add(code)
                took = time.perf_counter() - t0
                if rep:
                    times.append(took)
                matches = n
                if sql is not None:
                    t0 = time.perf_counter()
                    rows = lake.sql(sql).fetchall()
                    if rep:
                        sql_times.append(time.perf_counter() - t0)
                    if len(rows) != n:
                        print(f"warning: {name}: C-FIND {n} matches, SQL {len(rows)} rows", flush=True)
            entry = {
                "name": name,
                "keys": {k: str(v) for k, v in keys.items()},
                "matches": matches,
                "statuses": sorted(f"0x{c:04X}" for c in statuses if c is not None),
                "find": _stats(times),
            }
            if sql_times:
                entry["sql"] = _stats(sql_times)
            out.append(entry)
            print(
                f"  {called_ae} {name}: {matches} matches; C-FIND median {entry['find']['median_ms']:.1f} ms, "
                f"p95 {entry['find']['p95_ms']:.1f} ms"
                + (f"; lake.sql median {entry['sql']['median_ms']:.1f} ms" if sql_times else ""),
                flush=True,
            )
    finally:
        assoc.release()
    return out


def orthanc_find_storage(work: Path, files: list[str], threads: int = 4) -> Path:
    """Orthanc's storage with the C-FIND lake's files (REST uploads; reused when a marker says so)."""
    root = work / "dimse" / "find" / "orthanc"
    marker = root / "loaded.json"
    wanted = {"format": FIND_FORMAT, "files": len(files)}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        print(f"C-FIND: reusing Orthanc's storage in {root}", flush=True)
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    server = Orthanc(root)
    try:
        print(f"C-FIND: uploading {len(files):,} files to Orthanc (REST, {threads} threads)", flush=True)
        _sent, failed, seconds = common.post_instances(f"http://127.0.0.1:{server.http_port}", files, threads)
        stored = server.count()
    finally:
        server.stop()
    print(f"C-FIND: Orthanc stored {stored:,} instances in {seconds:.0f} s ({failed} failed)", flush=True)
    if stored == len(files):
        marker.write_text(json.dumps(wanted) + "\n")
    return root


def find_run(work: Path, instances: int, idle_wait: float, orthanc: bool) -> dict[str, Any]:
    import voxlake

    lake_path, build_s = find_lake(work, instances)
    lake = voxlake.open(str(lake_path))
    (n_inst, n_studies) = lake.sql(
        "SELECT count(*), count(DISTINCT StudyInstanceUID) FROM instances"
    ).fetchall()[0]
    queries = _queries(lake)
    out: dict[str, Any] = {"instances": n_inst, "studies": n_studies, "build_s": build_s, "reps": FIND_REPS}
    server = Voxlake(lake_path, work / "dimse" / "find" / "voxlake.log")
    try:
        waited = common.wait_for_idle(idle_wait)
        print(
            f"C-FIND on {n_inst:,} instances, {n_studies:,} studies"
            + (f" (waited {waited:.0f} s for the machine to go idle)" if waited >= 5 else ""),
            flush=True,
        )
        busy0, cpu0, t_all = common.busy_cpu_s(), _cpu(server.proc.pid), time.perf_counter()
        out["queries"] = _find_latencies(server.port, "VOXLAKE", queries, lake)
        wall = time.perf_counter() - t_all
        foreign = max(
            0.0, common.busy_cpu_s() - busy0 - (_cpu(server.proc.pid) - cpu0) - (time.process_time())
        )  # the bench's own CPU is in process_time: a rough bound
        out["foreign_share"] = foreign / (wall * common.nproc())
    finally:
        server.stop()
    if orthanc:
        try:
            files = sorted(str(p) for p in (work / "dimse" / "find" / "files").rglob("*") if p.is_file())
            root = orthanc_find_storage(work, files)
            peer = Orthanc(root, allow_find=True)
            try:
                common.wait_for_idle(idle_wait)
                out["orthanc"] = _find_latencies(peer.port, "ORTHANC", queries)
            finally:
                peer.stop()
        except Exception as exc:  # reported; voxlake's figures stand
            print(f"C-FIND on Orthanc failed: {type(exc).__name__}: {exc}", flush=True)
    return out


# --- the report --------------------------------------------------------------------------------


STORE_HEADERS = [
    "target",
    "associations",
    "instances",
    "wall s",
    "instances/s",
    "all committed s",
    "server CPU s",
    "storescu CPU s",
    "other load",
]
FIND_HEADERS = [
    "query (study level)",
    "matches",
    "voxlake median ms",
    "voxlake p95 ms",
    "Orthanc median ms",
    "Orthanc p95 ms",
    "lake.sql median ms",
]
#: Selective queries: a page of results at most. The universal query answers every study.
SELECTIVE_MAX_MATCHES = 100


def store_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            r["target"],
            str(r["conc"]),
            f"{r['instances']:,}",
            common.fmt(r.get("wall")),
            common.fmt(r["instances"] / r["wall"] if r.get("wall") else None),
            common.fmt(r.get("committed_s")),
            common.fmt(r.get("server_cpu_s")),
            common.fmt(r.get("scu_cpu_s")),
            f"{r['foreign_share']:.0%}" if "foreign_share" in r else "—",
        ]
        for r in results
    ]


def find_rows(find: dict[str, Any] | None) -> list[list[str]]:
    if not find:
        return []
    peer = {q["name"]: q for q in find.get("orthanc") or []}
    rows = []
    for q in find["queries"]:
        o = peer.get(q["name"])
        matches = f"{q['matches']:,}" + ("" if not o or o["matches"] == q["matches"] else f" (Orthanc {o['matches']:,})")
        rows.append([
            q["name"],
            matches,
            common.fmt(q["find"]["median_ms"]),
            common.fmt(q["find"]["p95_ms"]),
            common.fmt(o["find"]["median_ms"]) if o else "—",
            common.fmt(o["find"]["p95_ms"]) if o else "—",
            common.fmt(q["sql"]["median_ms"]) if "sql" in q else "—",
        ])
    return rows


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    out = [
        "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    out += [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    return "\n".join(out)


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])


def targets(store: list[dict[str, Any]], find: dict[str, Any] | None) -> list[tuple[str, str, bool | None]]:
    out: list[tuple[str, str, bool | None]] = []
    by = {(r["target"], r["conc"]): r for r in store if r.get("ok")}
    for conc in (1, 4):
        v, o = by.get(("voxlake", conc)), by.get(("orthanc", conc))
        what = f"voxlake ≥ Orthanc in instances/s, {conc} association{'s' if conc > 1 else ''}"
        if v and o:
            ratio = o["wall"] / v["wall"]
            out.append((what, f"{ratio:.2f}x Orthanc", ratio >= 1.0))
        else:
            out.append((what, "not measured", None))
    if find:
        selective = [q for q in find["queries"] if q["matches"] <= SELECTIVE_MAX_MATCHES]
        worst = max(selective, key=lambda q: q["find"]["p95_ms"])
        out.append(
            (
                f"C-FIND study queries under {TARGET_FIND_MS:g} ms at {find['instances']:,} instances (p95; "
                f"selective queries, up to {SELECTIVE_MAX_MATCHES} matches)",
                f"worst p95 {worst['find']['p95_ms']:.1f} ms ({worst['name']}, {worst['matches']} matches)",
                worst["find"]["p95_ms"] < TARGET_FIND_MS,
            )
        )
        peer = {q["name"]: q for q in find.get("orthanc") or []}
        for q in find["queries"]:
            o = peer.get(q["name"])
            if o:
                ratio = o["find"]["median_ms"] / q["find"]["median_ms"]
                out.append((f"C-FIND faster than Orthanc: {q['name']}", f"{ratio:.2f}x Orthanc (median)",
                            ratio >= 1.0))
    else:
        out.append((f"C-FIND study queries under {TARGET_FIND_MS:g} ms", "not measured", None))
    return out


def section(
    info: dict[str, Any],
    n: int,
    corpus_mib: float,
    store: list[dict[str, Any]],
    find: dict[str, Any] | None,
    total_s: float,
) -> str:
    lines = [
        SECTION,
        "",
        "Written by `bench/dimse_bench.py` (`make bench`); rerun it to refresh this section.",
        "",
        f"- Date: {info['date']}",
        f"- Machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram_gib']:.1f} GiB RAM, Linux {info['kernel']}; "
        f"Python {info['python']}, pydicom {info['pydicom']}; {info['storescu']}; {info['orthanc']}",
        f"- voxlake: commit `{info['commit']}`",
        f"- Bench runtime: {total_s / 60:.1f} min in all",
        "",
        "### Method",
        "",
        f"- C-STORE: the same {n:,} CT instances ({corpus_mib:.0f} MiB; the first files of the ingest bench's "
        "corpus: copies of the real 134-slice CT series, 512×512, with fresh UIDs) sent by DCMTK `storescu` "
        "(default options) to `python -m voxlake.net --lake FRESH` (default options: durable landing, a commit "
        "every 2 s) and to Orthanc (its built-in defaults apart from ports, folders, no plugins; fresh storage), "
        "on this machine over loopback. 1 association: one `storescu` with every file; 4: four `storescu` "
        "processes at once, each with a quarter. wall s: from the start of the first `storescu` to the exit of "
        "the last (each file is acknowledged before the next is sent); instances/s = instances / wall s. "
        "all committed s: for voxlake, from the same start until `SELECT count(*) FROM instances` shows every "
        "instance (polled every 50 ms). Files in the page cache before each run; the bench waits (up to "
        "`--idle-wait`) for the machine to go idle first.",
        "- Durability: voxlake answers Success only after the file is written, fsynced, linked to its name and "
        "its folder fsynced. Orthanc ≥ 1.7.4 fsyncs each file of its storage area by default "
        "(`SyncStorageArea: true`) and records it in its SQLite index before answering. Under strace, 50 "
        "stores made 53 `fdatasync` calls in Orthanc (one per file: neither its folders nor, per instance, "
        "its SQLite index are synced) and 104 `fsync` calls in voxlake (file and folder).",
        "- server CPU s: user + system CPU of the server process during the sends; storescu CPU s: of the "
        "`storescu` processes; other load: CPU other processes used, as a share of the machine.",
    ]
    if find:
        lines.append(
            f"- C-FIND: a lake of {find['instances']:,} header-only instances in {find['studies']:,} studies "
            "(`generate_scale` from the CT series, then `ingest`), served by `python -m voxlake.net`; "
            "and the same files uploaded to Orthanc (REST `POST /instances`; its defaults apart from ports, "
            "folders and `DicomAlwaysAllowFind: true`, without which it refuses C-FIND from an unknown AE). "
            "pynetdicom sends Study Root, STUDY level C-FINDs over one open association (set-up not counted; "
            "TCP_NODELAY and no identifier logging on the client, as DCMTK's `findscu` has them), "
            f"each query type once to warm up and then {find['reps']} times, timed from the request to the "
            "final response with every match received. Return keys: " + ", ".join(RETURN_KEYS) + ". "
            "lake.sql: the same SQL statement the server builds, with its parameters inlined, through "
            "`lake.sql(...).fetchall()` in the bench process. Keys: "
            + "; ".join(f"{q['name']}: {q['keys'] or 'none'}" for q in find["queries"])
            + ". The 50 ms target is judged on the selective queries; the universal one returns every "
            "study, one C-FIND response each, and is compared with Orthanc instead."
        )
    lines += ["", "### C-STORE", "", md_table(STORE_HEADERS, store_rows(store))]
    if find:
        lines += [
            "",
            f"### C-FIND at {find['instances']:,} instances",
            "",
            md_table(FIND_HEADERS, find_rows(find)),
        ]
    lines += ["", "### Targets", "", "| target | measured | |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {common.met(ok)} |" for t, m, ok in targets(store, find)]
    notes = [f"- {r['label']}: {r['note']}" for r in store if r.get("note")]
    if find and find.get("foreign_share", 0) > FOREIGN_WARN:
        notes.append(f"- C-FIND: other processes kept the machine {find['foreign_share']:.0%} busy")
    if notes:
        lines += ["", "### Notes", "", *notes]
    return "\n".join(lines) + "\n"


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    except OSError:
        return "not installed"
    return next((line.strip().strip("$").strip() for line in out.splitlines() if line.strip()), "unknown")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--instances", type=int, default=2000, help="CT instances to send (default 2,000)")
    p.add_argument("--find-instances", type=int, default=100_000, help="instances in the C-FIND lake")
    p.add_argument(
        "--associations", default="1,4", help="concurrent associations, comma-separated (default 1,4)"
    )
    p.add_argument("--skip-orthanc", action="store_true", help="do not send to Orthanc")
    p.add_argument("--skip-store", action="store_true", help="do not run the C-STORE part")
    p.add_argument("--skip-find", action="store_true", help="do not run the C-FIND part")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="work folder (default bench/.work)")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    p.add_argument(
        "--idle-wait",
        type=float,
        default=120.0,
        help="before each run, wait up to this many seconds for the machine to go idle (default 120)",
    )
    args = p.parse_args(argv)

    t_start = time.perf_counter()
    work = args.work.resolve()
    (work / "dimse").mkdir(parents=True, exist_ok=True)
    info = ib.machine()
    info["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    info["storescu"] = _version([STORESCU, "--version"])
    info["orthanc"] = _version([str(ORTHANC), "--version"]) if ORTHANC.exists() else "Orthanc not installed"
    print(
        f"voxlake commit {info['commit']}; {info['nproc']} CPUs ({info['cpu']}); {info['storescu']}; "
        f"{info['orthanc']}",
        flush=True,
    )
    store: list[dict[str, Any]] = []
    corpus_mib = 0.0
    if not args.skip_store:
        files = corpus_files(work, args.instances)
        corpus_mib = warm(files) / 2**20
        targets_ = ["voxlake"] + ([] if args.skip_orthanc or not ORTHANC.exists() else ["orthanc"])
        for conc in (int(c) for c in args.associations.split(",") if c.strip()):
            for target in targets_:
                store.append(store_run(target, files, conc, work / "dimse", args.idle_wait))
    find = None
    if not args.skip_find:
        try:
            find = find_run(work, args.find_instances, args.idle_wait,
                            orthanc=not args.skip_orthanc and ORTHANC.exists())
        except Exception as exc:  # reported; the C-STORE figures are still written
            print(f"C-FIND: failed: {type(exc).__name__}: {exc}", flush=True)

    total_s = time.perf_counter() - t_start
    print()
    if store:
        print(text_table(STORE_HEADERS, store_rows(store)))
        print()
    if find:
        print(f"C-FIND at {find['instances']:,} instances ({find['studies']:,} studies)")
        print(text_table(FIND_HEADERS, find_rows(find)))
        print()
    for t, m, ok in targets(store, find):
        print(f"target: {t}: {m} — {common.met(ok)}")
    print(f"bench runtime: {total_s / 60:.1f} min")
    (work / "dimse" / "results.json").write_text(
        json.dumps({"machine": info, "store": store, "find": find, "total_s": total_s}, indent=2, default=str)
        + "\n"
    )
    if not args.no_docs:
        common.write_section(DOCS, SECTION, section(info, args.instances, corpus_mib, store, find, total_s))
        print(f"wrote the {SECTION!r} section of {DOCS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
