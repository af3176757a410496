"""Which series to label next: the first unlabelled one, a random one that was not served recently, or
the one the model is least sure about; series with a final label are never proposed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

import voxlake

pytest.importorskip("monai")
pytest.importorskip("highdicom")

import torch

from voxlake.ai import tables
from voxlake.ai.active import NoCandidateError, flip_entropy, next_case
from voxlake.errors import InvalidArgumentError


@pytest.fixture()
def lake(tmp_path: Path) -> voxlake.Lake:
    """Three small phantom CT series, ingested one after the other (so their order is known)."""
    from voxlake.synth.phantom import generate_phantoms

    generate_phantoms(tmp_path / "phantoms", cases=3, seed=3, rows=32, columns=32, slices=(12, 14),
                      slice_thickness=(5.0, 5.0))
    lake = voxlake.open(str(tmp_path / "lake"))
    for case in sorted((tmp_path / "phantoms").glob("case-*")):
        lake.ingest(str(case / "ct"), workers=0)
    return lake


def _series(lake: voxlake.Lake) -> list[str]:
    return [r[0] for r in lake.sql("SELECT SeriesInstanceUID FROM instances GROUP BY 1 "
                                   "ORDER BY min(indexed_at), 1").fetchall()]


def _final_label(lake: voxlake.Lake, series: str) -> None:
    tables.append(lake.uri, "labels", [{"SeriesInstanceUID": series, "status": "final", "label": "liver",
                                        "label_version": 2, "time": datetime.now(UTC)}])


class Stub:
    """A network-like model whose logits are confident on one series and split on the others."""

    name, version, labels = "stub", "1", {1: "organ"}

    def __init__(self, unsure: str) -> None:
        self.unsure = unsure
        self.calls = 0

    def logits_at_grid(self, volume, flip=()):
        self.calls += 1
        logits = torch.zeros((2, 4, 4, 4))
        logits[1] = 0.1 if volume.SeriesInstanceUID == self.unsure else 8.0  # foreground everywhere
        return logits


def test_first_proposes_the_oldest_series_without_a_final_label(lake):
    series = _series(lake)
    assert next_case(lake, "first").SeriesInstanceUID == series[0]
    _final_label(lake, series[0])
    case = next_case(lake, "first")
    assert (case.SeriesInstanceUID, case.candidates) == (series[1], 2)
    served = lake.sql("SELECT SeriesInstanceUID, strategy FROM al_served ORDER BY time").fetchall()
    assert served == [(series[0], "first"), (series[1], "first")]


def test_random_avoids_what_was_just_served(lake):
    series = _series(lake)
    now = 1_000_000.0
    first = next_case(lake, "random", seed=1, now=now).SeriesInstanceUID
    second = next_case(lake, "random", seed=1, now=now + 1).SeriesInstanceUID
    third = next_case(lake, "random", seed=1, now=now + 2).SeriesInstanceUID
    assert {first, second, third} == set(series)  # same seed, yet three different cases: recency weighs


def test_uncertainty_proposes_the_series_the_model_is_least_sure_about_and_scores_each_once(lake):
    series = _series(lake)
    model = Stub(unsure=series[1])
    case = next_case(lake, "uncertainty", model=model, sample=10)
    assert case.SeriesInstanceUID == series[1] and case.score == pytest.approx(np.log(2), abs=0.01)
    assert model.calls == 3 * 3  # three flips per series
    again = next_case(lake, "uncertainty", model=model, sample=10)
    assert again.SeriesInstanceUID == series[1] and model.calls == 9  # scores come from al_scores
    assert lake.sql("SELECT count(*) FROM al_scores").fetchall() == [(3,)]


def test_uncertainty_of_a_real_network_is_a_finite_entropy(lake):
    from voxlake.ai.network import NetworkConfig, PhantomOrgansModel, build_network
    from voxlake.ai.volume import load_series

    torch.manual_seed(0)
    config = NetworkConfig(labels={1: "body", 2: "liver"}, spacing=(8.0, 8.0, 8.0), channels=(4, 8),
                           roi=(16, 16, 16))
    model = PhantomOrgansModel(build_network(config), config, name="tiny", version="1")
    value = flip_entropy(model, load_series(lake, _series(lake)[0]))
    assert 0.0 <= value <= np.log(3) + 1e-6


def test_uncertainty_needs_a_model_that_gives_probabilities(lake):
    from voxlake.ai.tissue import CTTissueModel

    with pytest.raises(InvalidArgumentError, match="needs a model"):
        next_case(lake, "uncertainty")
    with pytest.raises(InvalidArgumentError, match="gives no probabilities"):
        next_case(lake, "uncertainty", model=CTTissueModel())


def test_an_unknown_strategy_and_a_fully_labelled_lake_are_clear_errors(lake):
    with pytest.raises(InvalidArgumentError, match="strategy must be one of first, random, uncertainty"):
        next_case(lake, "entropy")
    for series in _series(lake):
        _final_label(lake, series)
    with pytest.raises(NoCandidateError, match="no series left to label"):
        next_case(lake, "random")


def test_the_cli_names_the_next_case_and_syncs_labels(lake, capsys):
    import json

    from voxlake.cli.main import main

    series = _series(lake)
    assert main(["labels", "next", "--lake", lake.uri, "--strategy", "first", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["SeriesInstanceUID"] == series[0]
    assert main(["labels", "sync", "--lake", lake.uri]) == 0
    assert "0 SEGs synced" in capsys.readouterr().out
    assert main(["labels", "next", "--lake", lake.uri, "--modality", "CT'"]) == 1
    assert "--modality must be a DICOM modality" in capsys.readouterr().err
