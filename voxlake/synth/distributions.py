"""Header distributions of real archives, for sampling synthetic ones.

The numbers come from the Imaging Data Commons index (PyPI ``idc-index-data``), reduced by
``scripts/derive_idc_distributions.py`` to ``data/idc_distributions.json``, which ships with voxlake,
so sampling needs neither the package nor the network. :func:`load` reads it once; everything is
immutable, and every sample takes the caller's ``numpy.random.Generator``, so a seed fixes the draws.

>>> from voxlake.synth import rng
>>> ct = load().modality("CT")
>>> ct.manufacturers.sample(rng(7, "doc"))  # doctest: +SKIP
'GE MEDICAL SYSTEMS'
"""

from __future__ import annotations

import bisect
import functools
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any

RESOURCE = "data/idc_distributions.json"


@dataclass(frozen=True)
class Categorical:
    """Frequencies of the most common values; ``other`` lumps the rest, ``missing`` the empty ones."""

    top: Mapping[str, float]
    other: float
    missing: float

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Categorical:
        return cls(MappingProxyType(dict(d["top"])), float(d["other"]), float(d["missing"]))

    def frequency(self, value: str | None) -> float:
        return self.missing if value is None else self.top.get(value, 0.0)

    def sample(self, rng: Any, *, allowed: Collection[str | None] | None = None, missing: bool = True) -> str | None:
        """One value (``None`` for missing), in proportion to its frequency among the candidates.

        The lumped ``other`` mass has no value to give, so it is left out and the rest renormalised;
        ``allowed`` restricts the candidates (``None`` in it admits missing), ``missing=False`` drops
        missing. Raises ValueError when no candidate has any mass.
        """
        values: list[str | None] = [v for v in self.top if allowed is None or v in allowed]
        if missing and (allowed is None or None in allowed):
            values.append(None)
        weights = [self.frequency(v) for v in values]
        total = sum(weights)
        if total <= 0:
            raise ValueError(f"no value with any frequency among {sorted(map(str, allowed or values))}")
        return values[int(rng.choice(len(values), p=[w / total for w in weights]))]


@dataclass(frozen=True)
class Quantiles:
    """A distribution known by ``(probability, value)`` points, sampled by interpolating its inverse CDF."""

    points: tuple[tuple[float, float], ...]

    @classmethod
    def from_json(cls, pairs: list[list[float]]) -> Quantiles:
        return cls(tuple((float(p), float(v)) for p, v in pairs))

    def quantile(self, p: float) -> float:
        probs = [q for q, _ in self.points]
        i = min(max(bisect.bisect_right(probs, p), 1), len(probs) - 1)
        (p0, v0), (p1, v1) = self.points[i - 1], self.points[i]
        return v0 if p1 == p0 else v0 + (v1 - v0) * (p - p0) / (p1 - p0)

    def sample(self, rng: Any) -> float:
        return self.quantile(float(rng.random()))


@dataclass(frozen=True)
class ModalityDistributions:
    """What a real archive's series of one Modality look like."""

    Modality: str
    series: int
    studies: int
    body_parts: Categorical
    manufacturers: Categorical
    models: Mapping[str, Categorical]
    photometric_interpretations: Categorical
    transfer_syntaxes: Categorical
    instances_per_series: Quantiles
    series_per_study: Quantiles

    def sample_model(self, rng: Any, manufacturer: str | None) -> str | None:
        """A ManufacturerModelName seen with this Manufacturer, or None where the archive had none."""
        models = self.models.get(manufacturer or "")
        if models is None or not models.top:
            return None
        return models.sample(rng, missing=False)


@dataclass(frozen=True)
class IdcDistributions:
    source: Mapping[str, Any]
    modalities_of_series: Categorical
    modalities_of_studies: Categorical
    patient_sex: Categorical
    age_years: Quantiles
    by_modality: Mapping[str, ModalityDistributions]

    @property
    def version(self) -> str:
        """The idc-index-data version the numbers were derived from."""
        return str(self.source["version"])

    def modality(self, modality: str) -> ModalityDistributions:
        try:
            return self.by_modality[modality]
        except KeyError:
            raise ValueError(f"modality must be one of {', '.join(self.by_modality)}, not {modality!r}") from None


def _modality(name: str, d: Mapping[str, Any]) -> ModalityDistributions:
    return ModalityDistributions(
        Modality=name,
        series=int(d["series"]),
        studies=int(d["studies"]),
        body_parts=Categorical.from_json(d["BodyPartExamined"]),
        manufacturers=Categorical.from_json(d["Manufacturer"]),
        models=MappingProxyType({m: Categorical.from_json(c) for m, c in d["ManufacturerModelName"].items()}),
        photometric_interpretations=Categorical.from_json(d["PhotometricInterpretation"]),
        transfer_syntaxes=Categorical.from_json(d["TransferSyntaxUID"]),
        instances_per_series=Quantiles.from_json(d["instances_per_series"]),
        series_per_study=Quantiles.from_json(d["series_per_study"]),
    )


def parse(data: Mapping[str, Any]) -> IdcDistributions:
    """The distributions held by the JSON document ``data`` (as the derivation script writes it)."""
    return IdcDistributions(
        source=MappingProxyType(dict(data["source"])),
        modalities_of_series=Categorical.from_json(data["Modality"]["series"]),
        modalities_of_studies=Categorical.from_json(data["Modality"]["studies"]),
        patient_sex=Categorical.from_json(data["patients"]["PatientSex"]),
        age_years=Quantiles.from_json(data["patients"]["age_years_per_study"]),
        by_modality=MappingProxyType({m: _modality(m, d) for m, d in data["modalities"].items()}),
    )


def read_json() -> dict[str, Any]:
    """The shipped JSON document, as written by ``scripts/derive_idc_distributions.py``."""
    return json.loads(resources.files("voxlake.synth").joinpath(RESOURCE).read_text(encoding="utf-8"))


@functools.cache
def load() -> IdcDistributions:
    """The shipped distributions, read once (they are immutable)."""
    return parse(read_json())
