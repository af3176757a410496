"""Active learning: which series should a person label next?

Three strategies, as MONAI Label names them:

* ``first``: the first candidate, oldest indexed first (a fixed order: a team works through a list).
* ``random``: drawn at random, weighted toward candidates not served recently: weight 1 for a
  series never served, ``age / (age + recent_seconds)`` for one served ``age`` seconds ago, so two
  annotators asking at once rarely get the same case.
* ``uncertainty``: the candidate the model is least sure about: the mean entropy of its softmax,
  averaged over test-time flips (identity, left-right, front-back), inside what it calls
  foreground, at the model's working grid. Flips need no dropout layers in the network, and
  disagreement between flipped predictions is where a correction teaches most. Scores are kept
  per series and model version in ``al_scores``, so a series is scored once per version; a call
  scores at most ``sample`` unscored candidates (drawn at random) and picks among all scored ones.

A candidate is a series the selection (SQL over ``instances``, default CT) holds that has no
``final`` label yet (the ``labels`` table, when it exists). Every answer is appended to
``al_served`` (series, strategy, score, time), which is what ``random`` weighs against.

>>> case = next_case(voxlake.open("./lake"), "uncertainty", model="phantom-organs@champion")  # doctest: +SKIP
>>> case.SeriesInstanceUID, case.score  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from voxlake.ai import tables
from voxlake.errors import InvalidArgumentError, QueryError, VoxlakeError

if TYPE_CHECKING:
    from voxlake.lake.lake import Lake

__all__ = ["STRATEGIES", "NextCase", "NoCandidateError", "candidates", "flip_entropy", "next_case"]

STRATEGIES = ("first", "random", "uncertainty")


class NoCandidateError(VoxlakeError):
    """Every selected series already has a final label (or none is selected)."""


@dataclass(frozen=True)
class NextCase:
    """The series to label next, and why."""

    SeriesInstanceUID: str
    StudyInstanceUID: str
    strategy: str
    candidates: int
    score: float | None = None
    model: str | None = None
    model_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"SeriesInstanceUID": self.SeriesInstanceUID, "StudyInstanceUID": self.StudyInstanceUID,
                "strategy": self.strategy, "candidates": self.candidates, "score": self.score,
                "model": self.model, "model_version": self.model_version}


def candidates(lake: Lake, where: str = "Modality = 'CT'") -> list[tuple[str, str]]:
    """(Series, Study) of the selected series without a ``final`` label, oldest indexed first."""
    rows = lake.sql("SELECT SeriesInstanceUID, any_value(StudyInstanceUID), min(indexed_at) AS t FROM instances "
                    f"WHERE SeriesInstanceUID IS NOT NULL AND ({where}) GROUP BY 1 ORDER BY t, 1").fetchall()
    labelled = _query_set(lake, "SELECT DISTINCT SeriesInstanceUID FROM labels WHERE status = 'final'")
    return [(series, study) for series, study, _t in rows if series not in labelled]


def next_case(lake: Lake, strategy: str = "random", *, where: str = "Modality = 'CT'", model: Any = None,
              registry: Any = None, sample: int = 4, recent_seconds: float = 3600.0, seed: int | None = None,
              now: float | None = None) -> NextCase:
    """The series to label next by ``strategy`` (one of :data:`STRATEGIES`); recorded in ``al_served``.
    ``model`` (a network model, or a registry spec) is needed by ``uncertainty`` only."""
    if strategy not in STRATEGIES:
        raise InvalidArgumentError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    found = candidates(lake, where)
    if not found:
        raise NoCandidateError(f"no series left to label: every series selected by {where!r} has a final label")
    now = time.time() if now is None else now
    rng = np.random.default_rng(seed)
    score = name = version = None
    if strategy == "first":
        series, study = found[0]
    elif strategy == "random":
        weights = _recency_weights(lake, [s for s, _ in found], now, recent_seconds)
        series, study = found[int(rng.choice(len(found), p=weights / weights.sum()))]
    else:
        if model is None:
            raise InvalidArgumentError("strategy uncertainty needs a model (e.g. phantom-organs@champion)")
        if isinstance(model, str):
            from voxlake.ai.registry import Registry

            model = (registry if registry is not None else Registry()).load(model)
        if not hasattr(model, "logits_at_grid"):
            raise InvalidArgumentError(f"model {model.name}:{model.version} gives no probabilities; uncertainty "
                                       "needs a network model (kind network, e.g. phantom-organs)")
        name, version = model.name, str(model.version)
        scores = _scores(lake, model, [s for s, _ in found], sample, rng)
        series = max(scores, key=lambda s: (scores[s], s))
        study = dict(found)[series]
        score = scores[series]
    tables.append(lake.uri, "al_served", [{
        "SeriesInstanceUID": series, "StudyInstanceUID": study, "strategy": strategy, "score": score,
        "model": name, "model_version": version, "time": datetime.fromtimestamp(now, UTC)}])
    return NextCase(series, study, strategy, len(found), score, name, version)


def flip_entropy(model: Any, volume: Any) -> float:
    """Mean entropy (nats) of the flip-averaged softmax inside the predicted foreground, at the
    model's working grid; needs a model with ``logits_at_grid(volume, flips)`` (voxlake networks)."""
    import torch

    logits = model.logits_at_grid
    probabilities = None
    flips: tuple[tuple[int, ...], ...] = ((), (3,), (2,))  # (labels, k, j, i): none, left-right, front-back
    for dims in flips:
        p = torch.softmax(logits(volume, dims), dim=0)
        probabilities = p if probabilities is None else probabilities + p
    assert probabilities is not None
    probabilities /= len(flips)
    entropy = -(probabilities * torch.log(probabilities.clamp_min(1e-8))).sum(0)
    foreground = probabilities.argmax(0) > 0
    return float(entropy[foreground].mean()) if bool(foreground.any()) else 0.0


def _scores(lake: Lake, model: Any, series: list[str], sample: int, rng: np.random.Generator) -> dict[str, float]:
    """Scores of the candidates this model version has scored, after scoring up to ``sample`` more."""
    from voxlake.ai.volume import load_series

    key = f"model = {_quote(model.name)} AND model_version = {_quote(str(model.version))}"
    known = dict(_query(lake, f"SELECT SeriesInstanceUID, max(score) FROM al_scores WHERE {key} GROUP BY 1"))
    todo = [s for s in series if s not in known]
    if todo and sample > 0:
        picked = [todo[i] for i in sorted(rng.choice(len(todo), size=min(sample, len(todo)), replace=False))]
        rows = []
        for uid in picked:
            error = None
            try:
                value = flip_entropy(model, load_series(lake, uid))
            except Exception as exc:  # an unreadable series is no candidate; the reason is kept
                value, error = float("nan"), f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
            rows.append({"SeriesInstanceUID": uid, "model": model.name, "model_version": str(model.version),
                         "score": value, "error": error, "time": datetime.now(UTC)})
            known[uid] = value
        tables.append(lake.uri, "al_scores", rows)
    scored = {s: v for s, v in known.items() if s in set(series) and not np.isnan(v)}
    if not scored:
        raise NoCandidateError("no candidate could be scored for uncertainty (see al_scores)")
    return scored


def _recency_weights(lake: Lake, series: list[str], now: float, recent_seconds: float) -> np.ndarray:
    last = dict(_query(lake, "SELECT SeriesInstanceUID, max(epoch(time)) FROM al_served GROUP BY 1"))
    ages = np.clip(np.array([now - float(last[s]) if s in last else np.inf for s in series]), 0.0, None)
    weights = np.ones(len(series))
    served = np.isfinite(ages)
    weights[served] = ages[served] / (ages[served] + recent_seconds)
    return weights + 1e-9


def _query(lake: Lake, sql: str) -> list[tuple[Any, ...]]:
    try:
        return lake.sql(sql).fetchall()
    except QueryError:  # the table does not exist yet
        return []


def _query_set(lake: Lake, sql: str) -> set[str]:
    return {r[0] for r in _query(lake, sql)}


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
