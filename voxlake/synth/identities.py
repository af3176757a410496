"""Fake identities for synthetic PHI: patients, clinicians and institutions that look real and are not.

A patient's identity comes from the seed and a key (the cohort's PatientID), so every file of the
patient, written by any process, carries the same one. Names come in the forms archives use (PN
with ideographic and phonetic groups for Japanese names, "Given Family", "FAMILY, Given", with
prefixes and suffixes; some outside ASCII); numbers come from ranges kept for fiction where one
exists (555-01xx phone numbers, 9xx social security numbers, example.org mail); the institutions
are fictional.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from voxlake.synth import rng

__all__ = [
    "INSTITUTION_COUNT",
    "FakeInstitution",
    "FakePatient",
    "FakePerson",
    "PersonName",
    "ascii_fold",
    "choice",
    "digits",
    "fake_institution",
    "fake_patient",
]

_FAMILY = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Wilson", "Anderson", "Taylor", "Moore", "Jackson", "Thompson", "White", "Harris",
    "Clark", "Lewis", "Robinson", "Walker", "Young", "Allen", "Wright", "Hill", "Campbell", "Mitchell",
    "Carter", "Evans", "Turner", "Parker", "Collins", "Edwards", "Stewart", "O'Brien", "McDonald",
    "Van der Berg", "Smith-Jones", "Okafor", "Kowalski", "Hartley", "Lindqvist", "Brennan",
)
_FAMILY_NON_ASCII = (
    "Müller", "Schäfer", "Groß", "Wójcik", "Łukaszewicz", "Núñez", "Peña", "Lefèvre", "Øvergård",
    "Sánchez", "Dvořák", "Ólafsdóttir", "Nguyễn", "Çelik",
)
_GIVEN = {
    "F": ("Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Susan", "Jessica", "Sarah", "Karen",
          "Nancy", "Margaret", "Emily", "Michelle", "Dorothy", "Olivia", "Emma", "Grace", "Anne-Marie"),
    "M": ("James", "John", "Robert", "Michael", "William", "David", "Richard", "Joseph", "Thomas",
          "Charles", "Daniel", "Matthew", "Anthony", "Mark", "Steven", "Paul", "Andrew", "Jean-Luc"),
}
_GIVEN_NON_ASCII = {
    "F": ("Zoë", "Hélène", "Åsa", "Małgorzata", "Inés", "Björg", "Renée"),
    "M": ("Jürgen", "José", "Łukasz", "Søren", "Jérôme", "Đức", "Ömer"),
}
# (alphabetic, ideographic, phonetic), as PS3.5 6.2.1.2 Japanese names.
_JA_FAMILY = (("Yamada", "山田", "やまだ"), ("Tanaka", "田中", "たなか"), ("Suzuki", "鈴木", "すずき"))
_JA_GIVEN = {
    "F": (("Hanako", "花子", "はなこ"), ("Yuki", "由紀", "ゆき")),
    "M": (("Tarou", "太郎", "たろう"), ("Hiroshi", "博", "ひろし")),
}
_PATIENT_PREFIX = {"F": ("Mrs.", "Ms.", "Rev."), "M": ("Mr.", "Rev.")}
_PATIENT_SUFFIX = ("Jr.", "Sr.", "II", "III")

# Fictional institutions: name, address, country, department, short code.
_INSTITUTIONS = (
    ("St. Aurelia Regional Medical Center", "1200 Harbor View Road, Port Alden, ME 04011, USA", "US",
     "Department of Radiology", "SAR"),
    ("Mercy Lakeside Hospital", "85 Lakeshore Drive, Millbrook, WI 53021, USA", "US",
     "Diagnostic Imaging", "MLH"),
    ("Westbrook University Hospital", "400 College Avenue, Westbrook, CA 95039, USA", "US",
     "Radiology and Nuclear Medicine", "WUH"),
    ("Städtisches Klinikum Elmsberg", "Lindenallee 42, 34117 Elmsberg, Germany", "DE",
     "Institut für Radiologie", "SKE"),
    ("Hôpital Saint-Lucien", "17 rue des Tanneurs, 69002 Lucienville, France", "FR",
     "Service d'imagerie médicale", "HSL"),
    ("Royal Fenmoor Infirmary", "Fen Road, Fenmoor FM7 4QX, United Kingdom", "UK",
     "Radiology Department", "RFI"),
)
INSTITUTION_COUNT = len(_INSTITUTIONS)
_STREETS = {
    "US": (("Maple", "Oak", "Cedar", "Elm", "Willow", "Lakeview", "Hillcrest", "Sunset"),
           ("Street", "Avenue", "Road", "Lane", "Drive", "Court")),
    "DE": (("Lindenstraße", "Goethestraße", "Am Mühlbach", "Schillerplatz", "Birkenweg"), ()),
    "FR": (("rue des Lilas", "avenue Jean-Jaurès", "boulevard Voltaire", "impasse du Moulin"), ()),
    "UK": (("High Street", "Church Lane", "Mill Road", "Station Road", "Orchard Close"), ()),
}
_TOWNS = {
    "US": (("Port Alden", "ME", 4), ("Millbrook", "WI", 53), ("Westbrook", "CA", 95), ("Fairview", "OR", 97)),
    "DE": (("Elmsberg", "", 34), ("Nordheim", "", 37), ("Altenau", "", 38)),
    "FR": (("Lucienville", "", 69), ("Saint-Aubin-sur-Loire", "", 45), ("Montclair", "", 13)),
    "UK": (("Fenmoor", "FM", 7), ("Ashby Marsh", "AM", 3), ("Kingsholt", "KH", 12)),
}


@dataclass(frozen=True)
class PersonName:
    """A person's name and the ways archives write it."""

    family: str
    given: str
    middle: str = ""
    prefix: str = ""
    suffix: str = ""
    ideographic: str = ""
    phonetic: str = ""

    def dicom(self, *, upper: bool = True) -> str:
        """PN value: ``FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX`` with ideographic and phonetic groups."""
        parts = [self.family, self.given, self.middle, self.prefix, self.suffix]
        while parts and not parts[-1]:
            parts.pop()
        alphabetic = "^".join(parts)
        groups = [alphabetic.upper() if upper else alphabetic]
        if self.ideographic:
            groups += [self.ideographic, self.phonetic]
        return "=".join(groups)

    def natural(self) -> str:
        """``Dr. John Q. Doe Jr.``, as in letters and comments."""
        middle = self.middle[0] + "." if self.middle else ""
        return " ".join(p for p in (self.prefix, self.given, middle, self.family, self.suffix) if p)

    def comma(self) -> str:
        """``DOE, John Q.``, as in lists and RIS screens."""
        middle = f" {self.middle[0]}." if self.middle else ""
        return f"{self.family.upper()}, {self.given}{middle}"

    def overlay(self) -> str:
        """``DOE, JOHN`` in ASCII, as modalities burn it into images (their fonts lack accents)."""
        return ascii_fold(f"{self.family}, {self.given}".upper())


@dataclass(frozen=True)
class FakePerson:
    """A clinician or technologist of an institution."""

    name: PersonName
    upper: bool
    npi: str
    phone: str
    email: str

    @property
    def pn(self) -> str:
        return self.name.dicom(upper=self.upper)


@dataclass(frozen=True)
class FakeInstitution:
    """A fictional hospital with its staff and scanners."""

    index: int
    name: str
    address: str
    country: str
    department: str
    code: str
    phone: str
    physicians: tuple[FakePerson, ...]
    operators: tuple[FakePerson, ...]
    stations: tuple[tuple[str, str], ...]  # (StationName, DeviceSerialNumber)


@dataclass(frozen=True)
class FakePatient:
    """One patient's fake identity; every file of the patient carries the same one."""

    name: PersonName
    upper: bool
    sex: str
    birth_date: date
    patient_id: str
    institution: int
    other_id: str
    other_issuer: str
    ssn: str
    address: str
    phones: tuple[str, ...]
    email: str
    alias: PersonName | None
    mother_birth_name: PersonName | None

    @property
    def pn(self) -> str:
        return self.name.dicom(upper=self.upper)


def ascii_fold(text: str) -> str:
    """``text`` in ASCII, as modalities whose fonts lack accents write it (Groß -> Gross)."""
    text = text.translate(str.maketrans({"Ø": "O", "ø": "o", "Ł": "L", "ł": "l", "ß": "ss", "Đ": "D",
                                         "đ": "d", "Æ": "AE", "æ": "ae"}))
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def choice(r: Any, options: tuple[Any, ...]) -> Any:
    """One of ``options``, drawn with the Generator ``r``."""
    return options[int(r.integers(len(options)))]


def digits(r: Any, n: int) -> str:
    """``n`` random decimal digits."""
    return "".join(str(d) for d in r.integers(0, 10, size=n))


def _phone(r: Any, country: str) -> str:
    """A phone number in a range kept for fiction where the country has one; under 16 characters, as
    pydicom flags a last value of 16 once padded."""
    if country == "US":
        return f"+1 {choice(r, ('207', '414', '510', '541'))} 555 01{digits(r, 2)}"
    if country == "DE":
        return f"0561 23125{digits(r, 3)}"
    if country == "FR":
        return f"01 99 00 {digits(r, 2)} {digits(r, 2)}"
    return f"020 7946 0{digits(r, 3)}"


def _address(r: Any, country: str) -> str:
    streets, suffixes = _STREETS[country]
    street, (town, region, prefix) = choice(r, streets), choice(r, _TOWNS[country])
    number = int(r.integers(1, 2400 if country == "US" else 120))
    if country == "US":
        return f"{number} {street} {choice(r, suffixes)}, {town}, {region} {prefix:02d}{digits(r, 3)}"
    if country == "DE":
        return f"{street} {number}, {prefix}{digits(r, 3)} {town}"
    if country == "FR":
        return f"{number} {street}, {prefix}{digits(r, 3)} {town}"
    return f"{number} {street}, {town} {region}{prefix} {digits(r, 1)}{choice(r, ('AB', 'QX', 'RT', 'LE'))}"


def _email(name: PersonName, domain: str) -> str:
    local = ascii_fold(f"{name.given}.{name.family}").lower()
    return re.sub(r"[^a-z0-9.]", "", local) + f"@{domain}"


def _person_name(r: Any, sex: str, *, non_ascii: bool) -> PersonName:
    if non_ascii and r.random() < 0.25:
        family, given = choice(r, _JA_FAMILY), choice(r, _JA_GIVEN[sex])
        return PersonName(family[0], given[0], ideographic=f"{family[1]}^{given[1]}",
                          phonetic=f"{family[2]}^{given[2]}")
    family = choice(r, _FAMILY_NON_ASCII if non_ascii else _FAMILY)
    given = choice(r, _GIVEN_NON_ASCII[sex] if non_ascii and r.random() < 0.6 else _GIVEN[sex])
    return PersonName(family, given, _middle(r, sex))


def _middle(r: Any, sex: str) -> str:
    """No middle name, an initial, or a whole one."""
    draw = r.random()
    return "" if draw < 0.6 else choice(r, tuple("ABCDEJKLMRST")) if draw < 0.85 else choice(r, _GIVEN[sex])


def _staff(r: Any, domain: str, country: str, *, physician: bool) -> FakePerson:
    name = _person_name(r, choice(r, ("F", "M")), non_ascii=r.random() < 0.15)
    if physician:
        prefix, suffix = choice(r, (("Dr.", ""), ("", "MD"), ("Dr.", "PhD"), ("", "")))
    else:
        prefix, suffix = "", choice(r, ("", "", "RT"))
    name = PersonName(name.family, name.given, name.middle, prefix, suffix, name.ideographic, name.phonetic)
    return FakePerson(name, bool(r.random() < 0.6), "1" + digits(r, 9), _phone(r, country),
                      _email(name, domain))


@functools.cache
def fake_institution(seed: int, index: int) -> FakeInstitution:
    """Fictional institution ``index`` (0-5): its name is fixed; its staff and stations come from
    the seed."""
    name, address, country, department, code = _INSTITUTIONS[index % len(_INSTITUTIONS)]
    r = rng(seed, "phi-institution", index)
    domain = f"{code.lower()}.example.org"
    physicians = tuple(_staff(r, domain, country, physician=True) for _ in range(8))
    operators = tuple(_staff(r, domain, country, physician=False) for _ in range(4))
    stations = tuple(
        (f"{modality}{int(r.integers(1, 10)):02d}_{code}", choice(r, ("SN", "", "S/N ")) + digits(r, 6))
        for modality in ("CT", "MR", "US", "CR")
    )
    return FakeInstitution(index, name, address, country, department, code, _phone(r, country),
                           physicians, operators, stations)


def fake_patient(seed: int, key: str, *, sex: str | None = None, non_ascii_fraction: float = 0.2) -> FakePatient:
    """The fake identity of the patient ``key`` (e.g. the cohort's PatientID): the same arguments
    give the same identity; ``sex`` ("M" or "F") keeps names and the cohort's PatientSex agreeing."""
    r = rng(seed, "phi-patient", key)
    sex = sex if sex in ("M", "F") else choice(r, ("F", "M"))
    name = _person_name(r, sex, non_ascii=bool(r.random() < non_ascii_fraction))
    if not name.ideographic and r.random() < 0.15:
        prefix = choice(r, _PATIENT_PREFIX[sex]) if r.random() < 0.5 else ""
        suffix = choice(r, _PATIENT_SUFFIX) if sex == "M" and not prefix else ""
        name = PersonName(name.family, name.given, name.middle, prefix, suffix)
    institution = int(r.integers(len(_INSTITUTIONS)))
    country = _INSTITUTIONS[institution][2]
    birth = date(1935, 1, 1) + timedelta(days=int(r.integers(0, 365 * 60)))
    number = int(r.integers(10**5, 10**7))
    patient_id = choice(r, (f"{number:08d}", f"E{number:07d}", f"MRN-{number:07d}"))
    other = int(r.integers(1, len(_INSTITUTIONS)))
    other_index = (institution + other) % len(_INSTITUTIONS)
    phones = tuple(_phone(r, country) for _ in range(int(r.integers(1, 3))))
    alias = PersonName(name.family, choice(r, ("Jo", "Bobby", "Liz", "Sam", "Max", "Kit"))) if r.random() < 0.3 else None
    mother = (
        PersonName(choice(r, _FAMILY), choice(r, _GIVEN["F"]), _middle(r, "F"))
        if r.random() < 0.3 else None
    )
    return FakePatient(
        name=name,
        upper=bool(r.random() < 0.7),
        sex=sex,
        birth_date=birth,
        patient_id=patient_id,
        institution=institution,
        other_id=f"{_INSTITUTIONS[other_index][4]}{digits(r, 7)}",
        other_issuer=f"{_INSTITUTIONS[other_index][4]} MRN",
        ssn=f"{int(r.integers(900, 1000))}-{digits(r, 2)}-{digits(r, 4)}",  # 9xx: never issued
        address=_address(r, country),
        phones=phones,
        email=_email(name, choice(r, ("example.com", "example.net", "example.org"))),
        alias=alias,
        mother_birth_name=mother,
    )
