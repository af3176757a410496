"""The de-identification secret and what is derived from it: UIDs, patient pseudonyms, date offsets.

Everything is an HMAC-SHA256 of the original value under a key derived from the user's secret, so
the same input gives the same output on any machine, process or Spark executor without shared state,
and nobody without the secret can recompute (or check a guess of) an original value. There is no
default key: a de-identification without a secret the user holds would be reversible by anyone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from voxlake.deid.errors import DeidentificationError

__all__ = ["MIN_SECRET_BYTES", "Secret"]

MIN_SECRET_BYTES = 32
_HOW = "create one with: openssl rand -hex 32 > deid.key (and keep it out of the research lake)"


@dataclass(frozen=True, slots=True)
class Secret:
    """A de-identification key. Build with :meth:`read` (a key file) or :meth:`from_bytes`."""

    key: bytes

    def __repr__(self) -> str:
        return "Secret(<hidden>)"

    @classmethod
    def from_bytes(cls, material: bytes, *, source: str = "secret") -> Secret:
        material = material.strip()
        if len(material) < MIN_SECRET_BYTES:
            raise DeidentificationError(
                f"{source} is too short ({len(material)} bytes; at least {MIN_SECRET_BYTES}): {_HOW}"
            )
        return cls(hashlib.sha256(b"voxlake-deid-v1\0" + material).digest())

    @classmethod
    def read(cls, path: str | Path | None) -> Secret:
        """Read the key file; a clear error when it is missing, unreadable or too short."""
        if path is None:
            raise DeidentificationError(f"a secret file is required (--secret-file); {_HOW}")
        path = Path(path)
        try:
            material = path.read_bytes()
        except FileNotFoundError:
            raise DeidentificationError(f"secret file not found: {path}; {_HOW}") from None
        except OSError as exc:
            raise DeidentificationError(f"cannot read secret file {path}: {exc.strerror or exc}") from None
        return cls.from_bytes(material, source=f"secret file {path}")

    def _mac(self, purpose: str, value: str) -> bytes:
        return hmac.new(self.key, f"{purpose}\0{value}".encode(), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """A ``2.25.`` UID (PS3.5 B.2) from a UUID whose 122 free bits are the keyed HMAC of the
        original (RFC 9562 version 8, "custom")."""
        b = bytearray(self._mac("uid", original.strip().rstrip("\0"))[:16])
        b[6] = (b[6] & 0x0F) | 0x80
        b[8] = (b[8] & 0x3F) | 0x80
        return f"2.25.{int.from_bytes(b, 'big')}"

    def patient_id(self, original: str) -> str:
        """A 16-character pseudonym for a Patient ID (LO)."""
        return base64.b32encode(self._mac("patient-id", original.strip())[:10]).decode()

    def date_offset(self, patient: str) -> timedelta:
        """How far back this patient's dates and times move: 1 to 10 years, plus a time of day, so
        that times change too."""
        mac = self._mac("date-offset", patient.strip())
        days = 365 + int.from_bytes(mac[:4], "big") % (3653 - 365)
        seconds = int.from_bytes(mac[4:8], "big") % 86400
        return timedelta(days=days, seconds=seconds)

    def fingerprint(self, value: str) -> str:
        """A keyed hash that names a source value (e.g. a source SOP Instance UID) in the audit
        without disclosing it: only the secret's holder can link it back."""
        return self._mac("audit", value).hex()[:32]
