"""The PS3.15 Table E.1-1 data, the options and how combined codes resolve."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO, need
from voxlake.deid.profile import CID_7050, TABLE, Action, Option, Profile, Recipe, resolve_code
from voxlake.errors import InvalidArgumentError

STANDARD = REPO.parent / "shared" / "standards" / "confidentiality_profile_attributes.json"
# the shared JSON's key for each of our option columns
COLUMNS = {
    Option.RETAIN_SAFE_PRIVATE: "rtnSafePrivOpt", Option.RETAIN_UIDS: "rtnUIDsOpt",
    Option.RETAIN_DEVICE_IDENTITY: "rtnDevIdOpt", Option.RETAIN_INSTITUTION_IDENTITY: "rtnInstIdOpt",
    Option.RETAIN_PATIENT_CHARACTERISTICS: "rtnPatCharsOpt",
    Option.RETAIN_LONGITUDINAL_FULL_DATES: "rtnLongFullDatesOpt",
    Option.RETAIN_LONGITUDINAL_MODIFIED_DATES: "rtnLongModifDatesOpt", Option.CLEAN_DESCRIPTORS: "cleanDescOpt",
    Option.CLEAN_STRUCTURED_CONTENT: "cleanStructContOpt", Option.CLEAN_GRAPHICS: "cleanGraphOpt",
}


def _key(tag: str) -> str:
    return "private" if "ODD" in tag.upper() else tag.strip("()").replace(",", "").lower()


def test_table_agrees_with_the_standard_for_all_621_attributes_and_every_column():
    rows = json.loads(need(STANDARD).read_text(encoding="utf-8"))
    assert len(rows) == 621 == len(TABLE)
    for r in rows:
        ours = TABLE[_key(r["tag"])]
        assert ours.name == r["name"]
        assert ours.in_std_comp_iod == (r["stdCompIOD"] == "Y"), r["name"]
        assert ours.basic == r["basicProfile"], r["name"]
        for option, column in COLUMNS.items():
            assert ours.options.get(option, "") == r.get(column, ""), (r["name"], option)
    assert set(COLUMNS) == set(Option) - {Option.CLEAN_PIXEL_DATA, Option.CLEAN_RECOGNIZABLE_VISUAL_FEATURES}


@pytest.mark.parametrize(("code", "iod_type", "expected"), [
    ("X/Z", 3, "X"), ("X/Z", 2, "Z"), ("X/Z", None, "Z"),
    ("X/D", 3, "X"), ("X/D", 1, "D"), ("X/D", None, "D"),
    ("Z/D", 2, "Z"), ("Z/D", 1, "D"), ("Z/D", 3, "Z"),
    ("X/Z/D", 3, "X"), ("X/Z/D", 2, "Z"), ("X/Z/D", 1, "D"), ("X/Z/D", None, "D"),
    ("X/Z/U*", 3, "X"), ("X/Z/U*", 2, "Z"), ("X/Z/U*", 1, "U"), ("X/Z/U*", None, "U"),
    ("K", None, "K"), ("U", 3, "U"),
])
def test_combined_codes_resolve_by_type_and_to_the_strictest_type_when_unknown(code, iod_type, expected):
    assert resolve_code(code, iod_type) == Action(expected)


def test_basic_profile_actions():
    p = Profile()
    assert p.action(0x00100010) is Action.ZERO  # Patient's Name
    assert p.action(0x00081030) is Action.REMOVE  # Study Description
    assert p.action(0x0020000D) is Action.UID  # Study Instance UID
    assert p.action(0x00100020) is Action.DUMMY  # Patient ID: a keyed pseudonym
    assert p.action(0x00080080) is Action.REMOVE  # Institution Name: X/Z/D, Type 3 everywhere
    assert p.action(0x00081140) is Action.UID  # Referenced Image Sequence: type unknown → U
    assert p.action(0x60023000) is Action.REMOVE  # Overlay Data in any 60xx group
    assert p.action(0x50001000) is Action.REMOVE  # curves
    assert p.action(0x00280010) is None  # Rows: not in the Table, kept


def test_options_change_the_action_of_their_column():
    assert Profile(["retain-longitudinal-modified-dates"]).action(0x00080020) is Action.CLEAN
    assert Profile(["retain-longitudinal-full-dates"]).action(0x00080020) is Action.KEEP
    assert Profile(["clean-descriptors"]).action(0x00081030) is Action.CLEAN
    assert Profile(["retain-uids"]).action(0x0020000D) is Action.KEEP
    assert Profile(["retain-patient-characteristics"]).action(0x00101010) is Action.KEEP
    assert Profile(["retain-institution-identity"]).action(0x00080080) is Action.KEEP
    assert Profile(["retain-device-identity"]).action(0x00181000) is Action.KEEP
    # two options disagree (Calibration Date: K for device identity, C for modified dates): C wins
    both = Profile(["retain-device-identity", "retain-longitudinal-modified-dates"])
    assert both.action(0x0014407E) is Action.CLEAN


def test_wrong_and_conflicting_options_are_refused_with_the_valid_ones():
    with pytest.raises(InvalidArgumentError, match="clean-descriptors"):
        Profile(["clean-descriptor"])
    with pytest.raises(InvalidArgumentError, match="choose one"):
        Profile(["retain-longitudinal-full-dates", "retain-longitudinal-modified-dates"])


def test_a_recipe_overrides_any_attribute(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text('options: [clean-descriptors]\nactions:\n  PatientAge: K\n  "(0008,0080)": Z\n'
                    'safe_private:\n  - "0019,GEMS_ACQU_01,24"\n')
    recipe = Recipe.read(path)
    p = Profile(recipe=recipe)
    assert p.action(0x00101010) is Action.KEEP
    assert p.action(0x00080080) is Action.ZERO
    assert Option.CLEAN_DESCRIPTORS in p.options
    with pytest.raises(InvalidArgumentError, match="not a DICOM keyword"):
        Recipe.from_mapping({"actions": {"NoSuchKeyword": "X"}})


def test_the_method_codes_are_cid_7050():
    p = Profile(["retain-longitudinal-modified-dates", "clean-descriptors"])
    assert p.method_codes() == [("113100", "Basic Application Confidentiality Profile"),
                                ("113105", "Clean Descriptors Option"),
                                ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")]
    assert len(CID_7050) == 13
    assert len(p.method_text()) <= 64
