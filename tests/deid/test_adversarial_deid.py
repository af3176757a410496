"""voxlake's de-identification against the adversarial PHI set, scored by the independent detector
(tests/deid/leak_detector.py, which shares no code with voxlake.deid): no planted value survives in
the default output nor with every cleaning option, clinical words do, references still resolve, the
run goes on past the files it cannot clean, and dciodvfy finds no error the source did not have."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

from tests.deid.leak_detector import find_leaks, ocr_available, survivors
from voxlake.deid.run import FOLDER_AUDIT, deidentify_files
from voxlake.synth.adversarial import generate_adversarial

pytestmark = pytest.mark.filterwarnings("ignore:VR lookup failed")  # the planted unknown element, read as UN
ALL_OPTIONS = ["clean-pixel-data", "clean-descriptors", "clean-structured-content", "clean-graphics",
               "retain-longitudinal-modified-dates"]


@pytest.fixture(scope="module")
def adversarial(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Path]:
    root = tmp_path_factory.mktemp("adversarial-deid")
    key = generate_adversarial(root / "set", seed=11)
    secret = root / "deid.key"
    secret.write_text("00112233445566778899aabbccddeeff" * 2 + "\n")
    return root / "set", key, secret


@pytest.fixture(scope="module")
def default_run(adversarial, tmp_path_factory):
    src, _key, secret = adversarial
    out = tmp_path_factory.mktemp("default-out")
    return out, deidentify_files(src, out, secret=secret)


@pytest.fixture(scope="module")
def all_options_run(adversarial, tmp_path_factory):
    if not ocr_available():
        pytest.skip("clean-pixel-data needs tesseract (make deid-tools)")
    src, _key, secret = adversarial
    out = tmp_path_factory.mktemp("all-options-out")
    return out, deidentify_files(src, out, secret=secret, options=ALL_OPTIONS)


def _leaks(folder: Path, key: dict) -> list[str]:
    return [f"{Path(f.file).name}: {f.value!r} by {f.how}" for f in find_leaks(folder, key, ocr=ocr_available())]


def test_default_output_holds_no_planted_value(adversarial, default_run):
    _src, key, _secret = adversarial
    out, summary = default_run
    assert summary.errors == 0, summary.to_dict()["problems"]
    assert summary.written >= 25
    assert _leaks(out, key) == []


def test_default_leaves_out_what_it_cannot_clean_with_reasons(default_run):
    _out, summary = default_run
    reasons = {o.source.split("/")[-2] + "/" + o.source.split("/")[-1]: o.reason
               for o in summary.outcomes if o.status == "excluded"}
    # the flag says NO or nothing, the pixels say otherwise: the screen finds the text
    assert "text found in the pixels" in reasons["ct/ct_001.dcm"]
    assert "text found in the pixels" in reasons["ct/ct_002.dcm"]
    assert "encapsulated document" in reasons["doc/report_pdf.dcm"]
    assert "nested" in reasons["sr/nested_1000.dcm"]


def test_every_cleaning_option_output_holds_no_planted_value(adversarial, all_options_run):
    _src, key, _secret = adversarial
    out, summary = all_options_run
    assert summary.errors == 0, summary.to_dict()["problems"]
    assert summary.written >= 35  # the burned-in images are cleaned, not left out
    assert _leaks(out, key) == []


def test_clinical_words_survive(adversarial, default_run):
    _src, key, _secret = adversarial
    out, _summary = default_run
    found = survivors(out, key)
    assert found and all(found.values()), found


def test_references_still_resolve(adversarial, default_run):
    """Every reference points at a written instance, or at one left out on purpose (by its keyed UID)."""
    from voxlake.deid.keys import Secret

    _src, _key, secret = adversarial
    out, summary = default_run
    key = Secret.read(secret)
    left_out = {key.uid(str(pydicom.dcmread(o.source, stop_before_pixels=True).SOPInstanceUID))
                for o in summary.outcomes if o.status == "excluded" and "nested" not in o.reason}
    sops, refs = set(), []
    for path in out.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        sops.add(str(ds.SOPInstanceUID))
        sops.add(str(ds.StudyInstanceUID))  # an RT Referenced Study names its study as an instance
        stack = [ds]
        while stack:
            for elem in stack.pop():
                if elem.keyword == "ReferencedSOPInstanceUID":
                    refs.append((ds.Modality, str(elem.value)))
                elif elem.VR == "SQ":
                    stack.extend(elem.value)
    assert {m for m, _ in refs} >= {"SEG", "PR", "SR", "RTSTRUCT"}
    assert [r for r in refs if r[1] not in sops | left_out] == []
    assert [r for r in refs if r[1] in sops]  # most do resolve in the output


def test_the_folder_audit_pairs_outputs_with_sources_without_phi(adversarial, default_run):
    _src, key, _secret = adversarial
    out, summary = default_run
    text = (out / FOLDER_AUDIT).read_text()
    rows = [json.loads(line) for line in text.splitlines()]
    assert len(rows) == summary.files
    assert {r["status"] for r in rows} >= {"written", "excluded"}
    assert all(r["source_sha256"] for r in rows if r["status"] == "written")
    assert "Zyxwvut" not in text and key["identity"]["id"]["mrn"] not in text and "/set/" not in text


@pytest.mark.slow
def test_dciodvfy_finds_no_new_error(adversarial, default_run):
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy is not installed (make dicom-tools)")
    _src, _key, _secret = adversarial
    _out, summary = default_run

    def errors(path: str) -> set[str]:
        run = subprocess.run(["dciodvfy", "-new", path], capture_output=True, text=True, timeout=60)
        lines = (run.stdout + run.stderr).splitlines()
        # the message without values: the same defect reads the same in source and output
        return {line.split(" - ")[1] if " - " in line else line for line in lines if line.startswith("Error")}

    new = {}
    for o in summary.outcomes:
        if o.status == "written":
            added = errors(o.dest) - errors(o.source)
            if added:
                new[o.source.split("/")[-1]] = sorted(added)
    assert new == {}
