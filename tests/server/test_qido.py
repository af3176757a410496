"""QIDO-RS (PS3.18 10.6) against a real server, driven by dicomweb-client; the expected answers come
from the lake's own SQL views."""

from __future__ import annotations

from typing import Any

import pytest

from tests.server.conftest import rows, value, values

STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
pytestmark = pytest.mark.slow


def study_uids(lake: Any, where: str = "true") -> set[str]:
    return {r[0] for r in lake.sql(f"SELECT DISTINCT StudyInstanceUID FROM instances WHERE StudyInstanceUID "
                                   f"IS NOT NULL AND ({where})").fetchall()}


def found(results: list[dict[str, Any]], tag: str = STUDY_UID) -> set[str]:
    return set(values(results, tag))


def test_search_for_studies_without_filters_returns_every_study(client: Any, lake: Any) -> None:
    assert found(client.search_for_studies()) == study_uids(lake)


def test_study_results_carry_the_default_attributes_of_ps3_18(client: Any, lake: Any, server: Any) -> None:
    [study] = client.search_for_studies(search_filters={"PatientID": "99000"})
    uid = value(study, STUDY_UID)
    for keyword_tag in ("00080005", "00080020", "00080030", "00080050", "00080056", "00080061", "00081190",
                        "00100010", "00100020", "00100030", "00100040", "0020000D", "00200010",
                        "00201206", "00201208"):
        assert keyword_tag in study, keyword_tag
    # dicomweb-client sends ``Host: 127.0.0.1`` without the port; the URL follows the Host header.
    assert value(study, "00081190") == f"http://127.0.0.1/dicomweb/studies/{uid}"
    assert study["00080061"]["Value"] == ["CT", "SEG"]
    [(n_series, n_instances)] = lake.sql("SELECT count(DISTINCT SeriesInstanceUID), count(*) FROM instances "
                                         f"WHERE StudyInstanceUID = '{uid}'").fetchall()
    assert value(study, "00201206") == n_series and value(study, "00201208") == n_instances
    assert value(study, "00080020") == "20030417" and value(study, "00080030") == "104607"


def test_exact_match_by_keyword_and_by_tag(client: Any, lake: Any) -> None:
    by_keyword = client.search_for_studies(search_filters={"PatientID": "98890234"})
    by_tag = client.search_for_studies(search_filters={"00100020": "98890234"})
    assert found(by_keyword) == found(by_tag) == study_uids(lake, "PatientID = '98890234'")
    assert len(by_keyword) == len(study_uids(lake, "PatientID = '98890234'")) > 1


def test_wildcards_star_and_question_mark_person_names_case_insensitive(client: Any, lake: Any) -> None:
    assert found(client.search_for_studies(search_filters={"PatientName": "doe*"})) == study_uids(
        lake, "PatientName ILIKE 'doe%'")
    assert found(client.search_for_studies(search_filters={"PatientName": "Doe^Pete?"})) == study_uids(
        lake, "PatientName = 'Doe^Peter'")
    assert found(client.search_for_studies(search_filters={"StudyDescription": "*Brain*"})) == study_uids(
        lake, "StudyDescription LIKE '%Brain%'")


def test_date_ranges_closed_and_open_ended(client: Any, lake: Any) -> None:
    assert found(client.search_for_studies(search_filters={"StudyDate": "20030101-20031231"})) == study_uids(
        lake, "StudyDate BETWEEN DATE '2003-01-01' AND DATE '2003-12-31'")
    assert found(client.search_for_studies(search_filters={"StudyDate": "-20011231"})) == study_uids(
        lake, "StudyDate <= DATE '2001-12-31'")
    assert found(client.search_for_studies(search_filters={"StudyDate": "20150101-"})) == study_uids(
        lake, "StudyDate >= DATE '2015-01-01'")
    assert found(client.search_for_studies(search_filters={"StudyDate": "20030417"})) == study_uids(
        lake, "StudyDate = DATE '2003-04-17'")


def test_time_range_upper_bound_includes_what_it_abbreviates(client: Any, lake: Any) -> None:
    results = client.search_for_studies(search_filters={"StudyTime": "1000-1046"})
    assert found(results) == study_uids(lake, "StudyTime >= '10:00' AND substr(StudyTime, 1, 5) <= '10:46'")
    assert "1.2.392.200103.20080913.113635.0.2009.6.22.21.43.10.22941.1" in found(results)


def test_uid_lists_comma_or_backslash_separated(client: Any, lake: Any) -> None:
    some = sorted(study_uids(lake))[:3]
    assert found(client.search_for_studies(search_filters={"StudyInstanceUID": ",".join(some)})) == set(some)
    assert found(client.search_for_studies(search_filters={"StudyInstanceUID": "\\".join(some)})) == set(some)


def test_modalities_in_study_and_relational_modality(client: Any, lake: Any) -> None:
    with_seg = study_uids(lake, "StudyInstanceUID IN (SELECT StudyInstanceUID FROM instances WHERE Modality='SEG')")
    assert found(client.search_for_studies(search_filters={"ModalitiesInStudy": "SEG"})) == with_seg
    assert found(client.search_for_studies(search_filters={"Modality": "SEG"})) == with_seg
    either = study_uids(lake, "StudyInstanceUID IN (SELECT StudyInstanceUID FROM instances "
                              "WHERE Modality IN ('SEG', 'RTDOSE'))")
    assert found(client.search_for_studies(search_filters={"ModalitiesInStudy": "SEG,RTDOSE"})) == either


def test_fuzzymatching_matches_a_prefix_of_any_name_component(client: Any, lake: Any) -> None:
    assert client.search_for_studies(search_filters={"PatientName": "pet"}) == []
    fuzzy = client.search_for_studies(search_filters={"PatientName": "pet"}, fuzzymatching=True)
    assert found(fuzzy) == study_uids(lake, "PatientName = 'Doe^Peter'")
    assert found(client.search_for_studies(search_filters={"PatientName": "DOE"}, fuzzymatching=True)) == \
        study_uids(lake, "PatientName ILIKE 'doe^%'")


def test_includefield_several_comma_lists_and_all(client: Any, http: Any) -> None:
    [study] = client.search_for_studies(search_filters={"PatientID": "99000"},
                                        fields=["InstitutionName", "00080062"])
    assert "00080080" in study and study["00080062"]["Value"] == ["1.2.840.10008.5.1.4.1.1.2",
                                                                  "1.2.840.10008.5.1.4.1.1.66.4"]
    body = http.get("/studies", params=[("PatientID", "99000"), ("includefield", "PatientAge,StudyID"),
                                        ("includefield", "InstitutionName")]).json()
    assert {"00101010", "00200010", "00080080"} <= set(body[0])
    everything = http.get("/instances", params={"PatientID": "99000", "Modality": "CT",
                                                "includefield": "all"}).json()
    assert {"00180050", "00280030", "00200032", "00080070"} <= set(everything[0])


def test_includefield_of_an_attribute_the_catalog_lacks_reads_the_header(client: Any) -> None:
    results = client.search_for_instances(search_filters={"PatientID": "99000", "Modality": "CT"},
                                          fields=["ImageType", "KVP"])
    assert results and all(ds["00080008"]["Value"][0] == "ORIGINAL" for ds in results)
    assert all("00180060" in ds for ds in results)


def test_the_study_list_query_of_ohif_is_answered_from_the_catalog_alone(
        http: Any, lake: Any, server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """OHIF 3 asks for StudyDescription, Modality, ReferringPhysicianName and PatientBirthDate at
    study level: none of them may cost a header read per study."""
    def no_header_reads(sops: list[str]) -> dict[str, str]:
        raise AssertionError(f"read the headers of {len(sops)} instances")

    monkeypatch.setattr(server.app.state.catalog, "meta", no_header_reads)
    fields = "00081030,00080060,00080090,00100030"  # as OHIF 3.13 sends them
    response = http.get("/studies", params={"PatientName": "lestrade", "includefield": fields,
                                        "limit": "101", "fuzzymatching": "true"})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = {uid: (referring, modalities) for uid, referring, modalities in lake.sql(
        "SELECT StudyInstanceUID, ReferringPhysicianName, ModalitiesInStudy FROM studies "
        "WHERE PatientName ILIKE 'lestrade%'").fetchall()}
    assert expected and len(body) == len(expected)
    for study in body:
        referring, modalities = expected[value(study, STUDY_UID)]
        assert value(study, "00080090") == referring == "Moriarty^James"
        assert study["00080060"] == {"vr": "CS"}  # a series attribute: no one value for a study
        assert study["00080061"]["Value"] == modalities.split("\\")
        assert {"00081030", "00100030"} <= set(study)


def test_series_and_instance_levels_at_every_path(client: Any, lake: Any) -> None:
    study = "1.2.392.200103.20080913.113635.0.2009.6.22.21.43.10.22941.1"
    series = client.search_for_series(study_instance_uid=study)
    expected_series = {r[0] for r in lake.sql("SELECT DISTINCT SeriesInstanceUID FROM instances "
                                              f"WHERE StudyInstanceUID = '{study}'").fetchall()}
    assert found(series, SERIES_UID) == expected_series and {value(s, "00080060") for s in series} == {"CT", "SEG"}
    ct = next(s for s in series if value(s, "00080060") == "CT")
    assert value(ct, "00201209") == 3
    ct_uid = value(ct, SERIES_UID)
    in_series = client.search_for_instances(study_instance_uid=study, series_instance_uid=ct_uid)
    assert [value(i, "00200013") for i in in_series] == sorted(value(i, "00200013") for i in in_series)
    assert len(in_series) == 3 and all(value(i, "00280010") == 512 for i in in_series)
    assert len(client.search_for_instances(study_instance_uid=study)) == len(rows(lake, f"StudyInstanceUID = '{study}'"))
    all_mr = client.search_for_series(search_filters={"Modality": "MR"})
    expected = {r[0] for r in lake.sql("SELECT DISTINCT SeriesInstanceUID FROM instances WHERE Modality='MR'")
                .fetchall()}
    assert found(all_mr, SERIES_UID) == expected
    assert all(STUDY_UID in s and "00100020" in s for s in all_mr)  # study attributes across studies
    seg = client.search_for_instances(search_filters={"SOPClassUID": "1.2.840.10008.5.1.4.1.1.66.4"})
    assert found(seg, SOP_UID) == {r[0] for r in lake.sql(
        "SELECT SOPInstanceUID FROM instances WHERE SOPClassUID = '1.2.840.10008.5.1.4.1.1.66.4'").fetchall()}
    assert all(value(i, "00081190").endswith(f"/instances/{value(i, SOP_UID)}") for i in seg)


def test_limit_and_offset_page_a_stable_order_with_a_warning_while_more_remain(http: Any, lake: Any) -> None:
    total = len(study_uids(lake))
    pages, offset, warnings = [], 0, []
    while True:
        response = http.get("/studies", params={"limit": 7, "offset": offset})
        if response.status_code == 204:
            break
        page = response.json()
        pages += values(page, STUDY_UID)
        warnings.append(response.headers.get("warning"))
        offset += len(page)
    assert len(pages) == total and set(pages) == study_uids(lake)
    assert all("additional results" in (w or "") for w in warnings[:-1])
    assert total % 7 == 0 or warnings[-1] is None
    again = http.get("/studies", params={"limit": 7, "offset": 7}).json()
    assert values(again, STUDY_UID) == pages[7:14]


def test_no_match_is_204_no_content_and_an_empty_list_for_clients(http: Any, client: Any) -> None:
    response = http.get("/studies", params={"PatientID": "nobody-has-this"})
    assert response.status_code == 204 and response.content == b""
    assert client.search_for_studies(search_filters={"PatientID": "nobody-has-this"}) == []


@pytest.mark.parametrize(("params", "reason"), [
    ({"StudyDate": "2003-13-45"}, "not a DA"),
    ({"StudyDate": "yesterday"}, "not a DA"),
    ({"NotAnAttribute": "x"}, "not a DICOM keyword"),
    ({"limit": "-1"}, "non-negative"),
    ({"offset": "ten"}, "non-negative"),
    ({"fuzzymatching": "maybe"}, "true or false"),
    ({"includefield": "Nonsense"}, "includefield"),
    ({"InstanceNumber": "one"}, "not a number"),
])
def test_bad_query_parameters_are_400_with_the_reason(http: Any, params: dict[str, str], reason: str) -> None:
    response = http.get("/studies", params=params)
    assert response.status_code == 400
    assert reason in response.json()["reason"]


def test_unsupported_media_type_is_406(http: Any) -> None:
    assert http.get("/studies", headers={"Accept": "application/dicom+xml"}).status_code == 406
    assert http.get("/studies", headers={"Accept": "application/json"}).status_code == 200


def test_sequence_keys_are_ignored_with_a_warning(http: Any) -> None:
    response = http.get("/studies", params={"PatientID": "99000", "00081110.00081155": "1.2.3"})
    assert response.status_code == 200 and "not supported" in response.headers["warning"]
