"""Batch segmentation over a lake: select series (SQL or rules), skip those a model version has
already done, and for each one load the volume, predict, and record the SEG, statistics and meshes.

One bad series never stops a batch: its error goes to ``segment_errors`` (series, model, version,
error class, message) and the batch goes on. "Done" means a ``segment_stats`` row for the series
and the model version (the commit point of :func:`voxlake.ai.outputs.record`), so an interrupted
batch resumes where it stopped.

>>> summary = segment(voxlake.open("./lake"), model="ct-tissue")  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from voxlake.errors import InvalidArgumentError, QueryError, VoxlakeError

if TYPE_CHECKING:
    from voxlake.ai.model import SegmentationModel
    from voxlake.lake.lake import Lake

__all__ = ["SegmentSummary", "SeriesOutcome", "segment", "segment_series"]


class ModelOutputError(VoxlakeError):
    """A model returned a label map that does not fit its volume or its declared labels."""


@dataclass(frozen=True)
class SeriesOutcome:
    """One series: ``status`` ``segmented`` or ``error``; seconds per step (``load``, ``predict``,
    ``record``) and the SEG written."""

    SeriesInstanceUID: str
    status: str
    error_class: str = ""
    message: str = ""
    SEG: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    volumes_ml: dict[str, float] = field(default_factory=dict)


@dataclass
class SegmentSummary:
    model: str
    model_version: str
    selected: int = 0
    already_done: int = 0
    segmented: int = 0
    errors: int = 0
    seconds: float = 0.0
    outcomes: list[SeriesOutcome] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "model_version": self.model_version, "selected": self.selected,
            "already_done": self.already_done, "segmented": self.segmented, "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "series": [{"SeriesInstanceUID": o.SeriesInstanceUID, "status": o.status, "SEG": o.SEG or None,
                        "error": f"{o.error_class}: {o.message}" if o.error_class else None,
                        "seconds": {k: round(v, 3) for k, v in o.timings.items()},
                        "volumes_ml": o.volumes_ml}
                       for o in self.outcomes],
        }


def segment_series(lake: Lake, series_instance_uid: str, model: SegmentationModel, *, nifti: bool = False,
                   meshes: bool = True) -> SeriesOutcome:
    """Segment one series and record the outputs; raises on any problem (see :func:`segment`)."""
    from voxlake.ai.outputs import commit, local_root

    prepared, timings, volumes = _compute(lake, local_root(lake), series_instance_uid, model, nifti=nifti,
                                          meshes=meshes)
    t0 = time.perf_counter()
    result = commit(lake, prepared)
    timings["record"] += time.perf_counter() - t0
    return SeriesOutcome(series_instance_uid, "segmented", SEG=result.SOPInstanceUID, timings=timings,
                         volumes_ml=volumes)


def _compute(lake: Lake, root: Any, series_instance_uid: str, model: SegmentationModel, *, nifti: bool,
             meshes: bool) -> tuple[Any, dict[str, float], dict[str, float]]:
    """Everything of a series' run but the commits: the checks, the volume, the prediction and the
    outputs (:func:`voxlake.ai.outputs.prepare`); returns them with seconds per step."""
    import numpy as np

    from voxlake.ai.outputs import prepare
    from voxlake.ai.seg import values_present
    from voxlake.ai.volume import load_series, series_index

    t0 = time.perf_counter()
    index = series_index(lake, series_instance_uid)
    modalities = getattr(model, "modalities", ("CT",))
    if modalities:  # before reading any pixels
        found = {r["Modality"] for r in index}
        if not found <= set(modalities):
            shown = ", ".join(sorted(str(m) for m in found)) or "not in the lake"
            raise InvalidArgumentError(f"series {series_instance_uid} is {shown}; model {model.name} segments "
                                       f"{', '.join(modalities)}")
    volume = load_series(lake, series_instance_uid, index=index)
    t1 = time.perf_counter()
    label_map = np.asarray(model.predict(volume))
    t2 = time.perf_counter()
    if label_map.shape != volume.shape:
        raise ModelOutputError(f"model {model.name}:{model.version} returned shape {label_map.shape} for series "
                               f"{series_instance_uid} of shape {volume.shape}")
    if np.issubdtype(label_map.dtype, np.signedinteger) and label_map.size and label_map.min() < 0:
        raise ModelOutputError(f"model {model.name}:{model.version} returned negative labels for series "
                               f"{series_instance_uid}")
    if not np.issubdtype(label_map.dtype, np.integer):
        raise ModelOutputError(f"model {model.name}:{model.version} returned {label_map.dtype} labels for series "
                               f"{series_instance_uid}; a label map holds integers")
    found = values_present(label_map)
    undeclared = sorted(set(found) - {0} - set(model.labels))
    if undeclared:
        raise ModelOutputError(f"model {model.name}:{model.version} returned labels {undeclared} it does not "
                               f"declare (declared: {sorted(model.labels)})")
    prepared = prepare(root, volume, label_map, model.labels, model_name=model.name, model_version=model.version,
                       nifti=nifti, meshes=meshes, present=found)
    t3 = time.perf_counter()
    volumes = {r["label"]: float(r["volume_ml"]) for r in prepared.stats}
    return prepared, {"load": t1 - t0, "predict": t2 - t1, "record": t3 - t2}, volumes


def _selected(lake: Lake, where: str | None, rules: Any) -> list[str]:
    if rules is not None:
        from voxlake.ai.rules import select_series

        return sorted({m.SeriesInstanceUID for m in select_series(lake, rules)})
    rows = lake.sql("SELECT DISTINCT SeriesInstanceUID FROM instances WHERE SeriesInstanceUID IS NOT NULL "
                    f"AND ({where or 'TRUE'}) ORDER BY 1").fetchall()
    return [r[0] for r in rows]


def _done(lake: Lake, model: SegmentationModel) -> set[str]:
    try:
        rows = lake.sql("SELECT DISTINCT SeriesInstanceUID FROM segment_stats WHERE model = "
                        f"'{model.name.replace(chr(39), chr(39) * 2)}' AND model_version = "
                        f"'{str(model.version).replace(chr(39), chr(39) * 2)}'").fetchall()
    except QueryError:  # no segment_stats table yet
        return set()
    return {r[0] for r in rows}


def segment(lake: Lake, *, model: str | SegmentationModel = "ct-tissue", where: str | None = "Modality = 'CT'",
            rules: Any = None, registry: Any = None, redo: bool = False, nifti: bool = False,
            meshes: bool = True, engine: str = "local", spark_master: str | None = None,
            on_start: Callable[[int], None] | None = None,
            progress: Callable[[SeriesOutcome], None] | None = None) -> SegmentSummary:
    """Segment the series that ``where`` (SQL over ``instances``) or ``rules`` (a rules document,
    :mod:`voxlake.ai.rules`) selects with ``model`` (a :class:`SegmentationModel`, or a registry
    spec such as ``ct-tissue`` or ``phantom-organs@champion``). Series already done by that model
    version are skipped unless ``redo``.

    ``engine="spark"``: each series is loaded, predicted and its outputs computed in a Spark task
    (:func:`_compute`, the local engine's own function), and the driver commits each as it comes
    back, so the lake sees the same commits in the same form. A registry spec is resolved to one
    version on the driver and loaded once per executor process; a model object travels pickled."""
    if engine not in ("local", "spark"):
        raise InvalidArgumentError(f"engine must be local or spark; got {engine!r}")
    spec = None
    if isinstance(model, str):
        from voxlake.ai.registry import Registry

        registry = registry if registry is not None else Registry()
        model = registry.load(model)
        spec = (registry.uri, f"{model.name}:{model.version}")
    from voxlake.ai.outputs import commit, local_root, record_error

    root = local_root(lake)
    start = time.perf_counter()
    summary = SegmentSummary(model.name, str(model.version))
    selected = _selected(lake, where, rules)
    done = set() if redo else _done(lake, model)
    todo = [s for s in selected if s not in done]
    summary.selected, summary.already_done = len(selected), len(selected) - len(todo)
    if on_start is not None:
        on_start(len(todo))
    if engine == "spark":
        computed = _spark_compute(lake.uri, str(root), todo, spec or model, nifti, meshes, spark_master)
    else:
        computed = (_attempt(lake, root, series, model, nifti, meshes) for series in todo)
    for series, prepared, timings, volumes, error in computed:
        if error is None:
            try:
                t0 = time.perf_counter()
                seg = commit(lake, prepared).SOPInstanceUID
                timings["record"] += time.perf_counter() - t0
                outcome = SeriesOutcome(series, "segmented", SEG=seg, timings=timings, volumes_ml=volumes)
            except Exception as exc:  # the SEG could not be ingested
                error = _error(exc)
        if error is not None:  # one series never stops the batch; the error is recorded
            outcome = SeriesOutcome(series, "error", *error)
            record_error(lake, series, model.name, str(model.version), *error)
            summary.errors += 1
        else:
            summary.segmented += 1
        summary.outcomes.append(outcome)
        if progress is not None:
            progress(outcome)
    summary.seconds = time.perf_counter() - start
    return summary


_Computed = tuple[str, Any, dict[str, float], dict[str, float], tuple[str, str] | None]


def _error(exc: BaseException) -> tuple[str, str]:
    text = str(exc).strip()
    return type(exc).__name__, text.splitlines()[0] if text else type(exc).__name__


def _attempt(lake: Lake, root: Any, series: str, model: SegmentationModel, nifti: bool,
             meshes: bool) -> _Computed:
    """:func:`_compute` for one series, its exception caught as (class name, first line)."""
    try:
        prepared, timings, volumes = _compute(lake, root, series, model, nifti=nifti, meshes=meshes)
    except Exception as exc:
        return series, None, {}, {}, _error(exc)
    return series, prepared, timings, volumes, None


def _spark_compute(lake_uri: str, root: str, todo: list[str], model: Any, nifti: bool, meshes: bool,
                   master: str | None) -> Any:
    """Results of :func:`_attempt` per series, computed by Spark tasks, in ``todo`` order."""
    if not todo:
        return iter(())
    from voxlake.ingest.engines.spark import spark_session

    sc = spark_session(master).sparkContext
    slices = max(1, min(len(todo), sc.defaultParallelism))
    task = _SparkTask(lake_uri, root, model, nifti, meshes)
    return sc.parallelize(todo, slices).mapPartitions(task).toLocalIterator()


@dataclass(frozen=True)
class _SparkTask:
    """What an executor needs: the lake, and the model as (registry URI, ``name:version``) or pickled."""

    lake_uri: str
    root: str
    model: Any
    nifti: bool
    meshes: bool

    def __call__(self, series: Any) -> Any:
        import voxlake

        lake = voxlake.open(self.lake_uri)
        model = _executor_model(self.model)
        for uid in series:
            yield _attempt(lake, self.root, uid, model, self.nifti, self.meshes)


_EXECUTOR_MODELS: dict[tuple[str, str], Any] = {}


def _executor_model(model: Any) -> Any:
    """A registry spec loaded once per executor process (a network takes seconds to load)."""
    if not isinstance(model, tuple):
        return model
    if model not in _EXECUTOR_MODELS:
        from voxlake.ai.registry import Registry

        _EXECUTOR_MODELS.clear()
        _EXECUTOR_MODELS[model] = Registry(model[0]).load(model[1])
    return _EXECUTOR_MODELS[model]
