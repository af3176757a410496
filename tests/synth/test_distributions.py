"""The IDC distributions shipped for the generators: a documented source, frequencies that add up,
and sampling that a seed fixes."""

from __future__ import annotations

import pytest

from voxlake.synth import rng
from voxlake.synth.distributions import Categorical, Quantiles, load, read_json


def categoricals(d: dict) -> list[tuple[str, dict]]:
    """Every ``{"top", "other", "missing"}`` object in the JSON, with where it is."""
    found, stack = [], [("", d)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, dict):
            if {"top", "other", "missing"} <= node.keys():
                found.append((where, node))
            stack.extend((f"{where}/{k}", v) for k, v in node.items())
    return found


def test_the_json_names_the_idc_index_data_version_and_derivation_date() -> None:
    source = read_json()["source"]
    assert source["package"] == "idc-index-data"
    assert source["version"].count(".") == 2 and source["derived"][:2] == "20"
    assert load().version == source["version"]


def test_every_frequency_table_sums_to_one() -> None:
    tables = categoricals(read_json())
    assert len(tables) > 20
    for where, t in tables:
        if t["n"]:
            assert sum(t["top"].values()) + t["other"] + t["missing"] == pytest.approx(1, abs=1e-4), where


def test_the_generated_modalities_have_sections_with_monotone_quantiles() -> None:
    d = load()
    for modality in ("CT", "MR", "CR", "DX", "US"):
        q = d.modality(modality).instances_per_series
        values = [v for _, v in q.points]
        assert values == sorted(values) and q.points[0][0] == 0 and q.points[-1][0] == 1
    with pytest.raises(ValueError, match="modality must be one of CT, MR"):
        d.modality("PT")


def test_sampling_is_fixed_by_the_seed_and_respects_allowed_values() -> None:
    c = Categorical({"A": 0.6, "B": 0.3}, other=0.05, missing=0.05)
    draws = [c.sample(rng(1, "t", i)) for i in range(300)]
    assert draws == [c.sample(rng(1, "t", i)) for i in range(300)]
    assert set(draws) == {"A", "B", None}
    assert {c.sample(rng(2, i), allowed={"B", None}) for i in range(50)} <= {"B", None}
    assert {c.sample(rng(2, i), missing=False) for i in range(50)} <= {"A", "B"}
    with pytest.raises(ValueError):
        c.sample(rng(3), allowed={"Z"})


def test_quantiles_interpolate_the_inverse_cdf() -> None:
    q = Quantiles(((0.0, 1.0), (0.5, 10.0), (1.0, 20.0)))
    assert (q.quantile(0.0), q.quantile(0.25), q.quantile(0.75), q.quantile(1.0)) == (1.0, 5.5, 15.0, 20.0)
