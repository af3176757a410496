"""De-identification (DICOM PS3.15 Annex E): profiles as data, keyed and consistent replacements,
an audit of every action.

>>> from voxlake.deid import Profile, Secret, deidentify_file
>>> deidentify_file("in.dcm", "out.dcm", profile=Profile(["clean-descriptors"]),
...                 secret=Secret.read("deid.key"))  # doctest: +SKIP

Submodules load pydicom; importing this package does not (names resolve on first use).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Action",
    "AuditEntry",
    "DeidSummary",
    "DeidentificationError",
    "Deidentified",
    "Deidentifier",
    "FileOutcome",
    "Option",
    "Profile",
    "Recipe",
    "Secret",
    "deidentify_file",
    "deidentify_files",
    "deidentify_lake",
]

_WHERE = {
    "Action": "profile", "Option": "profile", "Profile": "profile", "Recipe": "profile",
    "Secret": "keys", "DeidentificationError": "errors",
    "AuditEntry": "header", "Deidentified": "header", "Deidentifier": "header",
    "DeidSummary": "run", "FileOutcome": "run", "deidentify_file": "run", "deidentify_files": "run",
    "deidentify_lake": "run",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"voxlake.deid.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'voxlake.deid' has no attribute {name!r}")
