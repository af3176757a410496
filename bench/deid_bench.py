#!/usr/bin/env python
"""De-identification benchmark: voxlake against pydicom/deid and dicognito, for speed and for leaks.

Run by ``make bench``. The corpus is real fake-PHI and test files from ``../shared/data``
(presidio-pseudo-phi, deid-data, dcm_qa_ct, pydicom's readable test files) plus a synthetic cohort
with injected PHI (``voxlake synth cohort --inject-phi``), copied with fresh Study, Series, Frame of
Reference and SOP Instance UIDs until it holds thousands of files. In one run, each contender in its
own subprocess, same input, output to a fresh folder:

* voxlake (``deidentify_files``, Basic Profile, no pixel cleaning; unlisted free text is always
  scrubbed against a per-patient deny-list) with 1 and 2 workers and ``allow_burned_in`` (a
  like-for-like header comparison: the peers write every file), plus 1 worker with the defaults,
  which screen every image they write for burned-in text and leave out the files where it may be;
* pydicom/deid 0.4 with its default recipe (``replace_identifiers``, one process, as its API runs);
* dicognito (``Anonymizer()`` with default settings, one process).

files/s = files written / the subprocess's wall seconds. Then the source corpus and each tool's output
are ingested into lakes and ``voxlake.deid.verify.verify`` (header checks, OCR off) counts the leaks,
pairing each output with its source file.

Then the adversarial PHI set (``voxlake.synth.adversarial.generate_adversarial``: one fake patient
planted in headers, free text, SR, PR, SEG, RTSTRUCT, PDF, overlays, icons and pixels) is
de-identified by voxlake (defaults, and every cleaning option where Tesseract is installed), deid and
dicognito, each in its own subprocess, and the independent detector of tests/deid/leak_detector.py
(which shares no code with voxlake.deid) looks for every planted value in each output.

The bench reports; it never fails on a target. It prints tables and rewrites the
"## De-identification" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import _common as common
from ingest_bench import _last_json, _voxlake_cmd, machine, measure, warm_cache

REPO = common.REPO
DATA = REPO.parent / "shared" / "data"
SEED_FOLDERS = ("presidio-pseudo-phi", "deid-data", "dcm_qa_ct", "pydicom/test_files")
DEFAULT_WORK = REPO / "bench" / ".work" / "deid"
SECTION = "## De-identification"
CORPUS_FORMAT = 2  # bump when the way copies are made changes
TARGET_SPEEDUP = 2.0
TARGET_SCREEN_OVERHEAD = 0.25
FOREIGN_WARN = 0.05
_COPY_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")


# --- corpus ------------------------------------------------------------------------------------


def _seed_files(work: Path, phi_patients: int) -> tuple[list[str], dict[str, int]]:
    """Every seed file pydicom reads and writes back as a composite instance; per-origin counts."""
    import pydicom

    phi = work / "seeds" / "synth-phi"
    if phi_patients and not (phi / "answer_key.json").exists():
        shutil.rmtree(phi, ignore_errors=True)
        subprocess.run([*_voxlake_cmd(), "synth", "cohort", str(phi), "--patients", str(phi_patients),
                        "--seed", "7", "--inject-phi"], check=True, capture_output=True)
    folders = [(name, DATA / name) for name in SEED_FOLDERS]
    if phi_patients:
        folders.append(("synthetic PHI", phi))
    seeds: list[str] = []
    origins: Counter[str] = Counter()
    for name, folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "DICOMDIR"):
            try:
                ds = pydicom.dcmread(path)
                if "SOPInstanceUID" not in ds or "TransferSyntaxUID" not in ds.file_meta:
                    continue
                ds.save_as(io.BytesIO(), enforce_file_format=True)
            except Exception:  # not DICOM, malformed, or not writable: not a usable seed
                continue
            seeds.append(str(path))
            origins[name] += 1
    return seeds, dict(origins)


def _write_copy(args: tuple[list[str], Path, int]) -> int:
    """Copy ``index``: every seed with its Study/Series/FoR UIDs replaced consistently and a SOP
    Instance UID of its own (pydicom's test files share some, and a lake keeps one per UID)."""
    import pydicom
    from pydicom.uid import generate_uid

    seeds, corpus, index = args
    final, tmp = corpus / f"c{index:03d}", corpus / f".c{index:03d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    new: dict[str, str] = {}
    for k, path in enumerate(seeds):
        ds = pydicom.dcmread(path)
        for keyword in _COPY_UIDS:
            if keyword in ds:
                old = str(ds.data_element(keyword).value)
                ds.data_element(keyword).value = new.setdefault(old, generate_uid())
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        # unique names: deid writes OUT/<source basename>, so names must not collide across folders
        ds.save_as(tmp / f"{index:03d}_{k:04d}.dcm", enforce_file_format=True)
    tmp.rename(final)
    return len(seeds)


def build_corpus(work: Path, copies: int, phi_patients: int) -> tuple[Path, dict[str, Any]]:
    """The corpus folder and what it holds (reused when the marker matches)."""
    seeds, origins = _seed_files(work, phi_patients)
    corpus, marker = work / "corpus", work / "corpus.json"
    want = {"format": CORPUS_FORMAT, "copies": copies, "seeds": len(seeds), "origins": origins}
    if marker.exists() and corpus.is_dir() and json.loads(marker.read_text()).get("want") == want:
        info = json.loads(marker.read_text())
        print(f"corpus: reusing {info['files']} files in {corpus}", flush=True)
        return corpus, {**info, "build_s": 0.0}
    marker.unlink(missing_ok=True)
    shutil.rmtree(corpus, ignore_errors=True)
    corpus.mkdir(parents=True)
    print(f"corpus: {copies} copies of {len(seeds)} seed files into {corpus}", flush=True)
    t0 = time.perf_counter()
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(min(copies, common.nproc())) as pool:
        files = sum(pool.imap_unordered(_write_copy, [(seeds, corpus, i) for i in range(copies)]))
    os.sync()
    seed_bytes = sum(os.path.getsize(s) for s in seeds)
    info = {"want": want, "files": files, "bytes": sum(p.stat().st_size for p in corpus.rglob("*.dcm")),
            "seed_bytes": seed_bytes}
    marker.write_text(json.dumps(info) + "\n")
    return corpus, {**info, "build_s": time.perf_counter() - t0}


def _corpus_files(corpus: Path) -> list[str]:
    return sorted(str(p) for p in corpus.rglob("*.dcm") if not p.parent.name.startswith("."))


# --- the contenders, each run in its own process -----------------------------------------------


def run_tool(tool: str, corpus: str, out: str, pairs_file: str, workers: int, allow_burned_in: bool) -> int:
    """De-identify ``corpus`` into ``out`` with ``tool``; write output → source pairs to
    ``pairs_file``; print one JSON line with the counts."""
    t0 = time.perf_counter()
    files = _corpus_files(Path(corpus))
    pairs: dict[str, str] = {}
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    if tool == "voxlake":
        from voxlake.deid.run import deidentify_files

        summary = deidentify_files(corpus, out, secret=Path(out).parent / "deid.key", workers=workers,
                                   allow_burned_in=allow_burned_in)
        for o in summary.outcomes:
            counts[o.status] += 1
            if o.status == "written":
                pairs[o.dest] = o.source
            else:
                reasons[o.reason.split(" (")[0][:90]] += 1
    elif tool == "deid":
        from deid.config import DeidRecipe
        from deid.dicom import replace_identifiers

        recipe = DeidRecipe()  # no file given: deid's own default recipe (deid/data/deid.dicom)
        for f in files:
            try:
                replace_identifiers([f], deid=recipe, save=True, output_folder=out)
            except Exception as exc:
                counts["error"] += 1
                reasons[type(exc).__name__] += 1
                continue
            counts["written"] += 1
            pairs[os.path.join(out, os.path.basename(f))] = f
    elif tool == "dicognito":
        import pydicom
        from dicognito.anonymizer import Anonymizer

        anonymizer = Anonymizer()
        for f in files:
            try:
                ds = pydicom.dcmread(f)
                anonymizer.anonymize(ds)
                dest = os.path.join(out, os.path.basename(f))
                ds.save_as(dest)
            except Exception as exc:
                counts["error"] += 1
                reasons[type(exc).__name__] += 1
                continue
            counts["written"] += 1
            pairs[dest] = f
    else:
        raise SystemExit(f"unknown tool {tool}")
    seconds = time.perf_counter() - t0
    Path(pairs_file).write_text(json.dumps(pairs))
    print(json.dumps({"files": len(files), "written": counts["written"], "excluded": counts["excluded"],
                      "errors": counts["error"] + counts["skipped"], "reasons": dict(reasons),
                      "seconds": round(seconds, 3)}))
    return 0


CONTENDERS = [  # key, label, tool, workers, allow_burned_in
    ("vox1", "voxlake, 1 worker, allow_burned_in", "voxlake", 1, True),
    ("vox2", "voxlake, 2 workers, allow_burned_in", "voxlake", 2, True),
    ("vox1-default", "voxlake, 1 worker, defaults (text screen on, burned-in risk excluded)", "voxlake", 1, False),
    ("deid", "pydicom/deid 0.4.13, default recipe, 1 process", "deid", 1, False),
    ("dicognito", "dicognito 0.19, Anonymizer(), 1 process", "dicognito", 1, False),
]
VERIFIED = ("vox1", "deid", "dicognito")


def run_contender(key: str, label: str, cmd: list[str], corpus: Path, out: Path, idle_wait: float) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    os.sync()
    warm_cache(corpus)
    waited = common.wait_for_idle(idle_wait)
    print(f"{label}: " + (f"waited {waited:.0f} s for the machine to go idle; " if waited >= 5 else "")
          + f"running {' '.join(cmd[-8:])}", flush=True)
    m = measure(cmd)
    summary = _last_json(m["stdout"])
    ok = m["rc"] == 0 and bool(summary)
    foreign = m["foreign_cpu_s"] / (m["wall"] * common.nproc())
    notes = [] if ok else [f"exit status {m['rc']}: {m['stderr'].strip().splitlines()[-1:]}"]
    if foreign > FOREIGN_WARN:
        notes.append(f"other processes kept the machine {foreign:.0%} busy during this run: its figures are "
                     "pessimistic")
    written = summary.get("written", 0)
    result = {"key": key, "label": label, "ok": ok, "wall": m["wall"], "peak_mib": m["peak_mib"],
              "cpu_s": m["cpu_s"], "foreign_share": foreign, "summary": summary, "written": written,
              "fps": written / m["wall"] if ok else None, "note": "; ".join(notes)}
    print(f"{label}: {written} written of {summary.get('files')} in {m['wall']:.1f} s = "
          f"{common.fmt(result['fps'])} files/s, peak {m['peak_mib']:.0f} MiB, CPU {m['cpu_s']:.0f} s"
          + (f" — {result['note']}" if result["note"] else ""), flush=True)
    if not ok:
        print(m["stderr"][-3000:], file=sys.stderr)
    return result


# --- the adversarial PHI set ----------------------------------------------------------------------

ALL_OPTIONS = ("clean-pixel-data", "clean-descriptors", "clean-structured-content", "clean-graphics",
               "retain-longitudinal-modified-dates")
ADVERSARIAL = [  # key, label, tool, options
    ("adv-vox", "voxlake, defaults", "voxlake", ()),
    ("adv-vox-all", "voxlake, every cleaning option", "voxlake", ALL_OPTIONS),
    ("adv-deid", "pydicom/deid 0.4.13, default recipe", "deid", ()),
    ("adv-dicognito", "dicognito 0.19, Anonymizer()", "dicognito", ()),
]
ADV_SEED = 7
_SKIP = (".json", ".jsonl")


def _output_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file() and not p.name.endswith(_SKIP))


def run_adversarial_tool(tool: str, src: str, out: str, pairs_file: str, options: str) -> int:
    """De-identify the adversarial set ``src`` into ``out`` (peers: the set's relative paths; voxlake:
    its UID paths); write output → source pairs (relative paths) to ``pairs_file``; print one JSON line.
    Written = the files the tool left in ``out``, whatever it said."""
    t0 = time.perf_counter()
    srcp, outp = Path(src), Path(out)
    files = sorted(p for p in srcp.rglob("*.dcm") if p.is_file())
    pairs: dict[str, str] = {}
    reasons: dict[str, list[str]] = {}  # why → the files
    outp.mkdir(parents=True, exist_ok=True)
    if tool == "voxlake":
        from voxlake.deid.run import deidentify_files

        opts = [o for o in options.split(",") if o]
        summary = deidentify_files(src, out, secret=outp.parent / "deid.key", options=opts)
        for o in summary.outcomes:
            if o.status == "written":
                pairs[Path(o.dest).relative_to(outp).as_posix()] = Path(o.source).relative_to(srcp).as_posix()
            else:
                reasons.setdefault(f"{o.status}: {o.reason.split(' (')[0][:90]}", []).append(
                    Path(o.source).relative_to(srcp).as_posix())
    elif tool in ("deid", "dicognito"):
        import pydicom

        if tool == "deid":
            from deid.config import DeidRecipe
            from deid.dicom import replace_identifiers

            recipe = DeidRecipe()
        else:
            from dicognito.anonymizer import Anonymizer

            anonymizer = Anonymizer()
        for f in files:
            rel = f.relative_to(srcp)
            (outp / rel.parent).mkdir(parents=True, exist_ok=True)
            try:
                if tool == "deid":
                    replace_identifiers([str(f)], deid=recipe, save=True, output_folder=str(outp / rel.parent))
                else:
                    ds = pydicom.dcmread(f)
                    anonymizer.anonymize(ds)
                    ds.save_as(outp / rel)
            except Exception as exc:  # RecursionError on the 1000-deep file, among others
                reasons.setdefault(type(exc).__name__, []).append(rel.as_posix())
                continue
            if (outp / rel).exists():
                pairs[rel.as_posix()] = rel.as_posix()
            else:
                reasons.setdefault("not written, no error", []).append(rel.as_posix())
    else:
        raise SystemExit(f"unknown tool {tool}")
    written = len(_output_files(outp))
    Path(pairs_file).write_text(json.dumps(pairs))
    print(json.dumps({"files": len(files), "written": written, "left_out": len(files) - written,
                      "reasons": dict(reasons), "seconds": round(time.perf_counter() - t0, 3)}))
    return 0


def adversarial(work: Path, wanted: set[str], secret: Path) -> dict[str, Any]:
    """Generate the set, run each wanted contender on it in its own subprocess, and score each output
    with the independent detector (OCR where Tesseract is installed)."""
    sys.path.insert(0, str(REPO))
    from tests.deid.leak_detector import find_leaks, ocr_available, survivors
    from voxlake.synth.adversarial import generate_adversarial

    root = work / "adversarial"
    shutil.rmtree(root, ignore_errors=True)
    key = generate_adversarial(root / "set", seed=ADV_SEED)
    (root / "set" / "answer_key.json").rename(root / "answer_key.json")  # the set: DICOM files only
    ocr = ocr_available()
    files = sorted(p for p in (root / "set").rglob("*.dcm"))
    categories = list(dict.fromkeys(str(row["category"]) for row in key["planted"]))
    info: dict[str, Any] = {"seed": ADV_SEED, "files": len(files), "ocr": ocr, "planted": len(key["planted"]),
                            "categories": categories, "must_survive": [str(r["value"]) for r in key["must_survive"]],
                            "runs": {}}
    for k, label, tool, options in ADVERSARIAL:
        if k not in wanted:
            continue
        if "clean-pixel-data" in options and not ocr:
            info["runs"][k] = {"key": k, "label": label, "ok": False,
                               "note": "not run: clean-pixel-data needs Tesseract, which is not installed"}
            print(f"adversarial {label}: skipped (no tesseract)", flush=True)
            continue
        run = root / k
        run.mkdir(parents=True)
        shutil.copy(secret, run / "deid.key")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--adversarial-run", tool, str(root / "set"),
               str(run / "files"), str(run / "pairs.json"), ",".join(options)]
        m = measure(cmd)
        summary = _last_json(m["stdout"])
        ok = m["rc"] == 0 and bool(summary)
        r: dict[str, Any] = {"key": k, "label": label, "ok": ok, "wall": m["wall"], "summary": summary,
                             "note": "" if ok else f"exit status {m['rc']}: {m['stderr'].strip().splitlines()[-1:]}"}
        if ok:
            pairs = json.loads((run / "pairs.json").read_text())
            t0 = time.perf_counter()
            found = find_leaks(run / "files", key, ocr=ocr)
            kept = survivors(run / "files", key)
            r["detect_s"] = time.perf_counter() - t0
            r["findings"] = [{"file": f.file, "source": pairs.get(f.file, f.file), "value": f.value,
                              "category": f.category, "how": f.how} for f in found]
            r["leak_files"] = len({f.file for f in found})
            r["leak_pairs"] = len({(f.file, f.value) for f in found})
            by_cat: dict[str, set[tuple[str, str]]] = {}
            for f in found:
                by_cat.setdefault(f.category, set()).add((f.file, f.value))
            r["by_category"] = {c: len(by_cat[c]) for c in categories if c in by_cat}
            r["by_search"] = dict(Counter(f.how.split(":")[0].split()[0] for f in found))
            r["survivors"] = kept
        else:
            print(m["stderr"][-3000:], file=sys.stderr)
        info["runs"][k] = r
        print(f"adversarial {label}: " + (f"{summary['written']} written, {summary['left_out']} left out, "
                                          f"{r['leak_files']} leaking files, {r['leak_pairs']} (file, value) pairs "
                                          f"{r['by_category']}, clinical words {r['survivors']}"
                                          if ok else r["note"]), flush=True)
    return info


ADV_HEADERS = ["contender", "written", "left out", "leaking files", "leaking (file, value) pairs",
               "planted categories that leak (pairs)", "clinical words kept"]


def adversarial_rows(adv: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in adv.get("runs", {}).values():
        if not r["ok"]:
            rows.append([r["label"], "—", "—", "—", "—", r["note"], "—"])
            continue
        s, kept = r["summary"], r["survivors"]
        cats = ", ".join(f"{c} {n}" for c, n in r["by_category"].items()) or "none"
        lost = [w for w, ok in kept.items() if not ok]
        rows.append([r["label"], f"{s['written']}", f"{s['left_out']}", f"{r['leak_files']}", f"{r['leak_pairs']}",
                     cats, f"{len(kept) - len(lost)} of {len(kept)}" + (f" (lost: {', '.join(lost)})" if lost else "")])
    return rows


def adversarial_notes(adv: dict[str, Any]) -> list[str]:
    notes = []
    for r in adv.get("runs", {}).values():
        if not r["ok"]:
            continue
        reasons = r["summary"].get("reasons") or {}
        if reasons:
            notes.append(f"{r['label']}: left out: " + "; ".join(
                f"{why} ({', '.join(files)})" for why, files in sorted(reasons.items(), key=lambda kv: -len(kv[1]))))
        found = r.get("findings") or []
        if not found:
            continue
        if r["key"].startswith("adv-vox"):  # voxlake's leaks in full
            notes.append(f"{r['label']}: LEAKS: " + "; ".join(
                f"{f['source']}: {f['value']!r} ({f['category']}) by {f['how']}" for f in found))
        else:
            by_file = Counter(f["source"].split("/")[0] for f in {(f["source"], f["value"]): f for f in found}.values())
            notes.append(f"{r['label']}: found by " + ", ".join(f"{h} {n}" for h, n in sorted(
                r["by_search"].items(), key=lambda kv: -kv[1])) + " (findings, one per file, value and search); "
                "(file, value) pairs by folder: " + ", ".join(f"{d} {n}" for d, n in sorted(by_file.items())))
    return notes


# --- leaks --------------------------------------------------------------------------------------


def _required(source: str) -> bool:
    """Whether the Basic Profile removes or replaces the attribute at ``source`` (a verify path)."""
    from pydicom.datadict import tag_for_keyword

    from voxlake.deid.profile import Action, Profile

    last = source.rsplit(".", 1)[-1].split("[")[0]
    if last.startswith("("):  # a private tag or one pydicom does not know
        group = int(last[1:5], 16)
        return group % 2 == 1 or Profile(()).action(int(last[1:5] + last[6:10], 16)) not in (None, Action.KEEP)
    tag = tag_for_keyword(last)
    return tag is not None and Profile(()).action(tag) not in (None, Action.KEEP)


def classify(leak: Any) -> str:
    """A verify leak in the bench's terms: PHI the Basic Profile removes, PHI it would keep,
    identifiers linkage, or an attribute the profile keeps that was changed (not a leak of PHI)."""
    if leak.kind == "header-value":
        return "PHI Basic removes" if _required(leak.source) else "PHI kept by Basic"
    if leak.kind in ("uid-retained", "patient-unchanged", "study-unchanged", "series-unchanged"):
        return "PHI Basic removes"  # a source UID or Patient ID left in place (Basic: U / Z)
    if leak.kind == "retained-changed":
        return "kept attribute changed"
    return "linkage"


def verify_all(work: Path, corpus: Path, outs: dict[str, Path], workers: int) -> dict[str, Any]:
    """Ingest the source and each output into lakes; verify each output (header checks)."""
    import voxlake
    from voxlake.deid.verify import verify

    lakes = work / "lakes"
    shutil.rmtree(lakes, ignore_errors=True)
    t0 = time.perf_counter()
    src = voxlake.open(str(lakes / "source"))
    src.ingest(str(corpus), workers=workers)
    results: dict[str, Any] = {}
    for key, out in outs.items():
        lake = voxlake.open(str(lakes / key))
        lake.ingest(str(out / "files"), workers=workers)
        pairs = json.loads((out / "pairs.json").read_text())
        t1 = time.perf_counter()
        report = verify(src, lake, ocr=False, pairs=pairs)
        by_kind = Counter(leak.kind for leak in report.leaks)
        by_class = Counter(classify(leak) for leak in report.leaks)
        by_source = Counter(leak.source for leak in report.leaks
                            if leak.kind == "header-value" and classify(leak) == "PHI Basic removes")
        results[key] = {"instances": report.instances, "unmatched": len(report.unmatched),
                        "leaks": len(report.leaks), "failed": report.failed, "checked": report.checked,
                        "by_kind": dict(by_kind), "by_class": dict(by_class),
                        "top_sources": by_source.most_common(8), "verify_s": time.perf_counter() - t1,
                        "uid_locations": Counter(leak.location.rsplit(".", 1)[-1] for leak in report.leaks
                                                 if leak.kind == "uid-retained").most_common(5)}
        print(f"verify {key}: {report.instances} instances, {len(report.leaks)} leaks {dict(by_class)}"
              f" in {results[key]['verify_s']:.0f} s", flush=True)
    print(f"leak checks took {time.perf_counter() - t0:.0f} s", flush=True)
    return results


# --- the report --------------------------------------------------------------------------------

HEADERS = ["contender", "written", "left out", "wall s", "files/s", "vs faster peer", "files/CPU s",
           "peak RSS MiB", "CPU s", "other load"]


def table_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    peer = max((r["fps"] for r in results if r["key"] in ("deid", "dicognito") and r["fps"]), default=None)
    rows = []
    for r in results:
        s = r["summary"]
        left = (s.get("excluded") or 0) + (s.get("errors") or 0)
        rows.append([r["label"], f"{r['written']:,}", f"{left:,}", common.fmt(r["wall"]), common.fmt(r["fps"]),
                     f"{r['fps'] / peer:.2f}x" if peer and r["fps"] else "—",
                     common.fmt(r["written"] / r["cpu_s"] if r["cpu_s"] else None), common.fmt(r["peak_mib"], 0),
                     common.fmt(r["cpu_s"]), f"{r['foreign_share']:.0%}"])
    return rows


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in rows]
    return "\n".join(out)


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])


LEAK_HEADERS = ["tool", "instances", "unmatched", "leaks", "PHI Basic removes", "PHI kept by Basic", "linkage",
                "kept attribute changed"]


def leak_rows(results: list[dict[str, Any]], leaks: dict[str, Any]) -> list[list[str]]:
    labels = {r["key"]: r["label"] for r in results}
    return [[labels.get(k, k), f"{v['instances']:,}", f"{v['unmatched']:,}", f"{v['leaks']:,}",
             *(f"{v['by_class'].get(c, 0):,}" for c in LEAK_HEADERS[4:])] for k, v in leaks.items()]


def screen_overhead(results: list[dict[str, Any]]) -> tuple[float, float, float, float | None] | None:
    """(defaults wall s per written file) / (allow_burned_in wall s per written file) − 1, the two
    per-file times in ms, and the same ratio in CPU seconds (less sensitive to other load); None unless
    both 1-worker runs wrote files."""
    by = {r["key"]: r for r in results if r["ok"] and r["written"]}
    if "vox1" not in by or "vox1-default" not in by:
        return None
    header, default = (by[k]["wall"] / by[k]["written"] for k in ("vox1", "vox1-default"))
    cpu = by["vox1"]["cpu_s"] and by["vox1-default"]["cpu_s"] / by["vox1-default"]["written"] / (
        by["vox1"]["cpu_s"] / by["vox1"]["written"]) - 1
    return default / header - 1, default * 1000, header * 1000, cpu or None


def targets(results: list[dict[str, Any]], leaks: dict[str, Any],
            adv: dict[str, Any] | None = None) -> list[tuple[str, str, bool | None]]:
    by = {r["key"]: r for r in results if r["ok"]}
    peers = [by[k] for k in ("deid", "dicognito") if k in by]
    out: list[tuple[str, str, bool | None]] = []
    faster = max(peers, key=lambda r: r["fps"]) if peers else None
    for key, workers in (("vox1", "1 worker"), ("vox2", "2 workers")):
        name = f"voxlake {workers} ≥ {TARGET_SPEEDUP:g}x the faster peer in files/s (scrubber on)"
        if key in by and faster:
            x = by[key]["fps"] / faster["fps"]
            out.append((name, f"{x:.2f}x ({faster['label'].split(',')[0]})", x >= TARGET_SPEEDUP))
        else:
            out.append((name, "not measured", None))
    vox = leaks.get("vox1")
    peer_leaks = {k: v["leaks"] for k, v in leaks.items() if k != "vox1"}
    name = "zero leaks on the corpus where the peers leak (verify, header checks)"
    if vox is None:
        out.append((name, "not measured", None))
    else:
        where = ", ".join(f"{k} {n:,}" for k, n in peer_leaks.items())
        out.append((name, f"voxlake {vox['leaks']:,} (peers: {where})", vox["leaks"] == 0 and vox["unmatched"] == 0))
    runs = (adv or {}).get("runs", {})
    name = "0 leaks on the adversarial set (voxlake default and all options)"
    parts, ok_all, measured = [], True, True
    for k in ("adv-vox", "adv-vox-all"):
        r = runs.get(k)
        if r is None or not r["ok"]:
            measured = False
            parts.append(f"{'defaults' if k == 'adv-vox' else 'all options'}: not run")
            continue
        parts.append(f"{'defaults' if k == 'adv-vox' else 'all options'}: {r['leak_pairs']} (file, value) pairs in "
                     f"{r['leak_files']} files")
        ok_all = ok_all and r["leak_pairs"] == 0
    if runs and not (adv or {}).get("ocr"):
        parts.append("no OCR: pixels not searched")
    out.append((name, "; ".join(parts) if runs else "not measured",
                (ok_all if measured else (False if not ok_all else None)) if runs else None))
    ratio = screen_overhead(results)
    name = f"text screen adds < {TARGET_SCREEN_OVERHEAD:.0%} to header-only time (per written file, 1 worker)"
    if ratio is None:
        out.append((name, "not measured", None))
    else:
        x, default_ms, header_ms, cpu = ratio
        out.append((name, f"{x:+.0%} (defaults {default_ms:.2f} ms vs allow_burned_in {header_ms:.2f} ms per "
                    "written file" + (f"; in CPU s per written file: {cpu:+.0%}" if cpu is not None else "") + ")",
                    x < TARGET_SCREEN_OVERHEAD))
    return out


def section(info: dict[str, Any], corpus: dict[str, Any], results: list[dict[str, Any]], leaks: dict[str, Any],
            total_s: float, adv: dict[str, Any] | None = None) -> str:
    want = corpus["want"]
    origins = ", ".join(f"{name} {n}" for name, n in want["origins"].items())
    lines = [
        SECTION, "",
        "Written by `bench/deid_bench.py` (`make bench`); rerun it to refresh this section.", "",
        f"- Date: {info['date']}",
        f"- Machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram_gib']:.1f} GiB RAM, Linux {info['kernel']}; "
        f"Python {info['python']}, pydicom {info['pydicom']}",
        f"- voxlake: commit `{info['commit']}`; peers from PyPI: deid {info['deid']}, dicognito {info['dicognito']}",
        f"- Corpus: {corpus['files']:,} files, {corpus['bytes'] / 2**20:,.0f} MB: {want['copies']} copies of "
        f"{want['seeds']} seed files ({corpus['seed_bytes'] / 2**20:.1f} MB) from `../shared/data` and a synthetic "
        f"cohort: {origins}. Seeds are every file of those folders that pydicom reads and writes back as a "
        "composite instance (pydicom's malformed and non-image test files drop out). The synthetic PHI set is "
        "`voxlake synth cohort --patients 2 --seed 7 --inject-phi` (fake PHI in every attribute, with an "
        "answer key; verify works from the source headers, so it finds the same values). Each copy gets fresh "
        "Study, Series, Frame of Reference and SOP Instance UIDs (consistently within the copy); every other "
        "value, the PHI included, is the seed's. Pixel data is kept and passed through.",
        f"- Bench runtime: {total_s / 60:.1f} min in all"
        + (f" (corpus written in {corpus['build_s']:.0f} s)" if corpus["build_s"] else " (corpus reused)"),
        "", "### Method", "",
        "- Header-only work: no contender cleans pixels. voxlake: `deidentify_files(CORPUS, OUT, secret=KEY, "
        "workers=N, allow_burned_in=True)`, the Basic Profile with no options. voxlake always scrubs unlisted "
        "free text (the *scrubber*: text attributes at any depth that the profile does not list) against a "
        "per-patient deny-list, gathered in a first pass over the headers of every instance of the patient, "
        "and PHI patterns, so the `allow_burned_in` rows are header-only work *with the scrubber on*. By "
        "default voxlake also screens every image it is to write for burned-in text (`voxlake/deid/screen.py`) "
        "and leaves out (status `excluded`, never written) the files where text shows or whose pixels may hold "
        "it (Burned In Annotation YES; Secondary Capture, US… not marked NO) unless pixel cleaning is chosen; "
        "the peers write every file whatever its pixels, so `allow_burned_in` is the like-for-like header "
        "comparison, the defaults row shows how many files the safe default leaves out (the *left out* "
        "column), and *text screen overhead* = (defaults wall s per written file) / (allow_burned_in wall s "
        "per written file) − 1, both with 1 worker.",
        "- pydicom/deid: `replace_identifiers([file], deid=DeidRecipe(), save=True, output_folder=OUT)` per file "
        "(`DeidRecipe()` with no file is deid's own default recipe, `deid/data/deid.dicom`). dicognito: one "
        "`Anonymizer()` with default settings; per file `dcmread`, `anonymize`, `save_as`. Both in one process, "
        "as their APIs run.",
        "- Each contender runs as its own subprocess with the corpus in the page cache, after waiting (up to "
        "`--idle-wait`) for the machine to go idle. files/s = files written / the subprocess's wall seconds "
        "(start-up and imports included); files/CPU s = files written / the CPU seconds of the process tree, "
        "less sensitive to other work on a shared machine than files/s. Peak RSS: the largest summed RSS of the process tree, sampled every "
        "0.1 s. CPU s: user + system of the tree. Other load: CPU other processes used during the run, as a "
        "share of all CPUs.",
        "- Leaks: the source corpus and each output are ingested into their own lakes, then "
        "`verify(source_lake, output_lake, ocr=False, pairs=...)` runs its header checks (pixels are out of "
        "scope for header-only work), each output file paired with its source (voxlake: its run's outcomes; "
        "peers: the output file name, which they keep). Every output is judged against the Basic Profile. "
        "The columns split verify's findings: *PHI Basic removes*: a source value of an attribute the Basic "
        "Profile removes or replaces (X/Z/D/U, private tags), or a source UID / Patient ID left in place; "
        "*PHI kept by Basic*: a value found that comes from an attribute Basic would clean rather than "
        "remove; *linkage*: studies/series/patients split or merged, broken references (deid's default recipe "
        "removes every UID, so all its studies merge into none); *kept attribute changed*: an attribute the "
        "profile keeps was changed or removed (over-removal, not a leak of PHI). A *source UID found* counts "
        "every place a value the source held in a UID attribute the profile replaces appears in the output, "
        "also when the output keeps it in an attribute the profile keeps (such as a CodingSchemeUID that the "
        "source also held elsewhere). A peer's default recipe may "
        "keep or drop some attributes on purpose: these are what verify flags against PS3.15, not a verdict "
        "on the tool's own policy.",
    ]
    adv = adv or {}
    if adv.get("runs"):
        lines.append(
            f"- Adversarial PHI set: `generate_adversarial(SET, seed={adv['seed']})` writes {adv['files']} DICOM files "
            "of one fake patient (Quentina Zyxwvut) planted everywhere a de-identifier can miss it: headers at "
            "every depth, free text in other spellings, code meanings, SR, PR, SEG, RTSTRUCT, an encapsulated "
            "PDF, overlays, icons, burned-in pixels, private and UN elements, UIDs, 8 character sets, a "
            "sequence nested 1000 levels deep; its answer key lists "
            f"{adv['planted']} planted values ({', '.join(adv['categories'])}) and the clinical words that must "
            f"survive ({', '.join(adv['must_survive'])}). Each contender de-identifies it in its own subprocess "
            "into its own folder: voxlake `deidentify_files(SET, OUT, secret=KEY)` with its defaults, and with "
            f"`options=[{', '.join(repr(o) for o in ALL_OPTIONS)}]` (needs Tesseract); deid and dicognito as "
            "above, per file, keeping the set's relative paths. Then the independent detector "
            "`tests/deid/leak_detector.py` (no code shared with `voxlake.deid`) searches every output file "
            "for every planted value: the bytes in 12 encodings, every element's text at every depth "
            "(case-, accent- and punctuation-folded), PDF text"
            + (", and Tesseract OCR of every frame, overlay and icon (`find_leaks(OUT, key, ocr=True)`)"
               if adv["ocr"] else " (Tesseract is not installed here: OCR of pixels, overlays and icons off)")
            + "; `survivors(OUT, key)` says whether each clinical word is still there. *Written*: files "
            "in the output folder; *left out*: the rest (voxlake's exclusions and errors, a peer's exceptions). "
            "pydicom cannot read `sr/nested_1000.dcm` (recursion), so the peers fail on it and it counts as not "
            "written; voxlake leaves it out with its reason. A leaking file holds at least one planted value; "
            "pairs count distinct (file, value); categories count pairs.")
    lines += ["", "### Speed", ""]
    if results:
        lines += [md_table(HEADERS, table_rows(results)), ""]
        ratio = screen_overhead(results)
        if ratio is not None:
            lines += [f"Text screen overhead: {ratio[0]:+.0%} in wall time (voxlake, 1 worker: defaults {ratio[1]:.2f} "
                      f"ms per written file, allow_burned_in {ratio[2]:.2f} ms)"
                      + (f"; {ratio[3]:+.0%} in CPU seconds per written file, which other load skews less"
                         if ratio[3] is not None else "") + ".", ""]
    else:
        lines += ["Not run.", ""]
    if leaks:
        lines += ["### Leaks found by `voxlake deid verify` (header checks)", "",
                  md_table(LEAK_HEADERS, leak_rows(results, leaks)), ""]
    for key, v in leaks.items():
        kinds = ", ".join(f"{k} {n:,}" for k, n in sorted(v["by_kind"].items(), key=lambda kv: -kv[1]))
        top = ", ".join(f"{s} {n:,}" for s, n in v["top_sources"])
        uids = ", ".join(f"{s} {n:,}" for s, n in v["uid_locations"])
        lines.append(f"- {key}: by kind: {kinds or 'none'}" + (f"; most frequent Basic-removed sources: {top}"
                                                                if top else "")
                     + (f"; source UIDs found in: {uids}" if uids else ""))
    if adv.get("runs"):
        lines += ["", "### Adversarial PHI set (independent detector)", "",
                  f"{adv['files']} files of one fake patient; each output searched for the {adv['planted']} planted "
                  "values by `tests/deid/leak_detector.py`" + (" with OCR" if adv["ocr"] else " without OCR")
                  + " (method above).", "", md_table(ADV_HEADERS, adversarial_rows(adv))]
    lines += ["", "### Targets", "", "| target | measured | |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {common.met(ok)} |" for t, m, ok in targets(results, leaks, adv)]
    notes = [r for r in results if r.get("note")] + [r for r in results if r["summary"].get("reasons")]
    adv_notes = adversarial_notes(adv)
    if notes or adv_notes:
        lines += ["", "### Notes", ""]
        for r in results:
            if r.get("note"):
                lines.append(f"- {r['label']}: {r['note']}")
            reasons = r["summary"].get("reasons") or {}
            if reasons:
                lines.append(f"- {r['label']}: left out: "
                             + "; ".join(f"{n:,}× {why}" for why, n in sorted(reasons.items(), key=lambda kv: -kv[1])))
        lines += [f"- adversarial set, {n}" for n in adv_notes]
    return "\n".join(lines) + "\n"


# --- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--copies", type=int, default=8, help="copies of the seed files (default 8)")
    p.add_argument("--phi-patients", type=int, default=2, help="synthetic PHI patients (default 2; 0: none)")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="work folder (default bench/.work/deid)")
    p.add_argument("--only", default=",".join(k for k, *_ in [*CONTENDERS, *ADVERSARIAL]),
                   help="contenders, comma-separated (speed: " + ",".join(k for k, *_ in CONTENDERS)
                   + "; adversarial set: " + ",".join(k for k, *_ in ADVERSARIAL) + ")")
    p.add_argument("--no-verify", action="store_true", help="skip the leak checks")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    p.add_argument("--idle-wait", type=float, default=120.0, help="wait up to this many seconds for idle")
    p.add_argument("--run", nargs=6, help=argparse.SUPPRESS)  # TOOL CORPUS OUT PAIRS WORKERS ALLOW
    p.add_argument("--adversarial-run", nargs=5, help=argparse.SUPPRESS)  # TOOL SET OUT PAIRS OPTIONS
    args = p.parse_args(argv)
    if args.run:
        tool, corpus_, out_, pairs_, workers_, allow = args.run
        return run_tool(tool, corpus_, out_, pairs_, int(workers_), allow == "1")
    if args.adversarial_run:
        return run_adversarial_tool(*args.adversarial_run)

    t_start = time.perf_counter()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    from importlib.metadata import version

    info = machine()
    info.update(date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), deid=version("deid"),
                dicognito=version("dicognito"))
    wanted = set(args.only.split(","))
    speed = any(k in wanted for k, *_ in CONTENDERS)
    corpus, corpus_info = build_corpus(work, args.copies, args.phi_patients) if speed else (work / "corpus", {})
    key = work / "runs" / "deid.key"
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_text("5eed" * 16)
    results, outs = [], {}
    for k, label, tool, workers, allow in CONTENDERS:
        if k not in wanted:
            continue
        out = work / "runs" / k
        cmd = [sys.executable, str(Path(__file__).resolve()), "--run", tool, str(corpus), str(out / "files"),
               str(out / "pairs.json"), str(workers), "1" if allow else "0"]
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        shutil.copy(key, out / "deid.key")  # voxlake reads OUT/../deid.key
        r = run_contender(k, label, cmd, corpus, out / "files", args.idle_wait)
        results.append(r)
        if r["ok"] and k in VERIFIED:
            outs[k] = out
    leaks = {} if args.no_verify or not outs else verify_all(work, corpus, outs, workers=min(2, common.nproc()))
    adv = adversarial(work, wanted, key) if wanted & {k for k, *_ in ADVERSARIAL} else {}
    total_s = time.perf_counter() - t_start
    if results:
        print()
        print(text_table(HEADERS, table_rows(results)))
    if leaks:
        print()
        print(text_table(LEAK_HEADERS, leak_rows(results, leaks)))
    if adv.get("runs"):
        print()
        print(text_table(ADV_HEADERS, adversarial_rows(adv)))
        for n in adversarial_notes(adv):
            print(f"note: {n}")
    print()
    for t, m, ok in targets(results, leaks, adv):
        print(f"target: {t}: {m} — {common.met(ok)}")
    print(f"bench runtime: {total_s / 60:.1f} min")
    (work / "results.json").write_text(json.dumps(
        {"machine": info, "corpus": corpus_info, "results": results, "leaks": leaks, "adversarial": adv,
         "total_s": total_s},
        indent=2, default=str) + "\n")
    if not args.no_docs and not speed:
        print(f"the {SECTION!r} section of docs/benchmarks.md not rewritten: no speed contender ran")
    elif not args.no_docs:
        common.write_section(common.DOCS, SECTION, section(info, corpus_info, results, leaks, total_s, adv))
        print(f"wrote the {SECTION!r} section of {common.DOCS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
