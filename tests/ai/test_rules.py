"""Series-selection rules: the JSON format, its errors, and SQL selection over a real lake
holding 20 slices of the abdominal CT (axial, 3 mm, 'PANCREAS DI, iDose (3)') and the 28-slice
GE head CT (tilted; 'Head' series of one file each)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA, need
from voxlake.ai.errors import RulesError
from voxlake.ai.rules import Orientation, Rule, load_rules, select_series
from voxlake.errors import InvalidArgumentError


@pytest.fixture(scope="module")
def lake(tmp_path_factory, ct_series: Path):
    import voxlake

    head = need(SHARED_DATA / "dcm_qa_ct" / "In" / "GE")
    root = tmp_path_factory.mktemp("rules")
    archive = root / "in" / "ct.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(ct_series.iterdir())[:20]:
            zf.write(p, p.name)
        for p in sorted(head.glob("*.dcm")):
            zf.write(p, "head/" + p.name)
    lake = voxlake.open(str(root / "lake"))
    lake.ingest(str(archive.parent), workers=1)
    return lake


def _uids(matches, rule):
    return {m.SeriesInstanceUID for m in matches if m.rule == rule}


def test_rules_load_from_a_file_with_every_condition(tmp_path: Path):
    path = tmp_path / "rules.json"
    path.write_text(
        json.dumps(
            {
                "selections": [
                    {
                        "name": "abdomen",
                        "conditions": {
                            "Modality": "CT",
                            "SeriesDescription": "(?i)pancreas",
                            "SliceThickness": [1, None],
                            "orientation": "axial",
                            "min_instances": 10,
                        },
                    },
                    {"name": "all"},
                ]
            }
        )
    )
    rules = load_rules(path)
    assert rules == [
        Rule("abdomen", "CT", "(?i)pancreas", (1, None), Orientation.AXIAL, 10),
        Rule("all"),
    ]


@pytest.mark.parametrize(
    ("conditions", "message"),
    [
        ({"Modalty": "CT"}, r"selection 'r': unknown condition\(s\) \['Modalty'\]"),
        ({"SeriesDescription": "(unclosed"}, "SeriesDescription is not a valid regular expression"),
        ({"SliceThickness": [5, 1]}, r"SliceThickness must be \[min, max\]"),
        ({"SliceThickness": 3}, r"SliceThickness must be \[min, max\]"),
        ({"orientation": "oblique"}, "orientation must be one of axial, coronal, sagittal, got 'oblique'"),
        ({"min_instances": 0}, "min_instances must be a positive integer"),
        ({"Modality": 3}, "Modality must be a string"),
    ],
)
def test_a_bad_condition_is_rejected_naming_the_selection_and_field(conditions, message):
    with pytest.raises(RulesError, match=message) as e:
        load_rules({"selections": [{"name": "r", "conditions": conditions}]})
    assert isinstance(e.value, InvalidArgumentError)


def test_a_bad_document_is_rejected(tmp_path: Path):
    with pytest.raises(RulesError, match="'selections' must be a list"):
        load_rules({"rules": []})
    with pytest.raises(RulesError, match="selection 0 needs a non-empty 'name'"):
        load_rules({"selections": [{"conditions": {}}]})
    with pytest.raises(RulesError, match="names must be unique"):
        load_rules({"selections": [{"name": "a"}, {"name": "a"}]})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(RulesError, match=r"bad\.json: not JSON"):
        load_rules(bad)


def test_select_series_applies_each_condition_in_sql(lake):
    ct = lake.sql("SELECT DISTINCT SeriesInstanceUID FROM instances WHERE SeriesDescription LIKE 'PANCREAS%'")
    ct_uid = ct.fetchall()[0][0]
    all_uids = {r[0] for r in lake.sql("SELECT SeriesInstanceUID FROM series").fetchall()}
    assert len(all_uids) >= 2
    matches = select_series(
        lake,
        {
            "selections": [
                {"name": "everything"},
                {"name": "pancreas", "conditions": {"SeriesDescription": "(?i)pancreas", "Modality": "ct"}},
                {"name": "thick", "conditions": {"SliceThickness": [2.5, 3.5], "orientation": "axial"}},
                {"name": "thin", "conditions": {"SliceThickness": [None, 1.0]}},
                {"name": "many", "conditions": {"min_instances": 20}},
                {"name": "too-many", "conditions": {"min_instances": 21, "SeriesDescription": "PANCREAS"}},
                {"name": "coronal", "conditions": {"orientation": "coronal"}},
                {"name": "mr", "conditions": {"Modality": "MR"}},
            ]
        },
    )
    assert _uids(matches, "everything") == all_uids
    assert _uids(matches, "pancreas") == {ct_uid}
    assert ct_uid in _uids(matches, "thick")
    assert ct_uid not in _uids(matches, "thin")
    assert ct_uid in _uids(matches, "many")
    assert _uids(matches, "too-many") == set()
    assert _uids(matches, "coronal") == set() and _uids(matches, "mr") == set()
    hit = next(m for m in matches if m.rule == "pancreas")
    assert (hit.Modality, hit.instances, hit.orientation) == ("CT", 20, "axial")
