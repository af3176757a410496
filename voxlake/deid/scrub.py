"""Free text without PHI: a patient's identifiers in every spelling, and what reads as PHI anywhere.

De-identification keeps the words of descriptions, code meanings, SR TEXT items, labels and
presentation text (``Heart``, ``Liver``, ``Lung_R`` survive) and masks, with ``*``:

* **the deny-list** (:class:`Identity`): the values of the patient's own identifying attributes,
  gathered from every instance of the patient in the run (names, IDs, birth date, addresses, phone
  numbers, e-mails, institutions, physicians), in every spelling: each name part on its own and the
  parts in any order ("Quentina Zyxwvut", "ZYXWVUT, QUENTINA"), an initial next to a masked name
  ("Q. Zyxwvut"), case and accents folded (``Zyxwvüt`` = ``zyxwvut``), ideographic and phonetic
  groups matched inside words (a Japanese name written without its caret), the digit runs of IDs
  and phone numbers whatever their separators ("MRN884422", "884-422");
* **patterns** (:func:`phi_spans`): dates in the usual numeric and written forms (shifted by the
  patient's offset, in the same form, when longitudinal dates are kept), phone numbers, e-mail and
  web addresses, US social security numbers, street addresses, a title followed by a name ("Dr.
  Brennan", "Mrs. Zyxwvut"), a foreign name in Chinese or Japanese script (its parts joined by a
  middle dot), and digit runs of 6 or more (record numbers).

The deny-list is exact (after folding); the patterns are deliberately wide where text is free and
never touch words without digits except after a title or in an address.
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime

__all__ = ["MASK", "MAX_TEXT", "Identity", "Scrubber", "fold", "phi_spans"]

MASK = "*"
MAX_TEXT = 1_000_000
"""Characters of one value the scrubber reads; a longer value (no real description or report comes
near) is replaced whole, so one element cannot hold a run's CPU."""
_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september",
           "october", "november", "december")
_MON = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
# (regex, kind). Overlapping spans merge. Names and street addresses are case-sensitive (a capital
# after a title or a house number); the rest ignore case.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p, f), k) for p, k, f in (
    (r"(?<![\w.+-])[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,8}", "email", re.I),
    (r"\b(?:https?://|www\.)\S{1,2048}", "url", re.I),
    (r"(?<!\d)\d{3}-\d{2}-\d{4}(?!\d)", "ssn", 0),
    (r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)\s?|\d{2,4}[\s.-])\d{2,4}[\s.-]\d{3,4}"
     r"(?:\s*(?:x|ext\.?)\s*\d+)?(?!\d)", "phone", re.I),
    (r"(?<!\d)(?:19|20)\d{2}[-/.](?:0?[1-9]|1[0-2])[-/.](?:0?[1-9]|[12]\d|3[01])(?!\d)", "date", 0),
    (r"(?<!\d)(?:0?[1-9]|[12]\d|3[01])[-/.](?:0?[1-9]|[12]\d|3[01])[-/.](?:\d{4}|\d{2})(?!\d)", "date", 0),
    (r"(?<!\d)(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(?!\d)", "date", 0),
    (rf"\b\d{{1,2}}(?:st|nd|rd|th)?[\s-]{{1,3}}{_MON}[\s,-]{{1,3}}\d{{2,4}}\b", "date", re.I),
    (rf"\b{_MON}\s{{1,3}}\d{{1,2}}(?:st|nd|rd|th)?,?\s{{1,3}}\d{{4}}\b", "date", re.I),
    (rf"\b\d{{1,2}}{_MON}\d{{2,4}}\b", "date", re.I),
    (r"\b\d{1,6}\s{1,3}(?:[A-Z][\w'.-]{0,40}\s{1,3}){1,4}(?i:street|st|avenue|ave|road|rd|drive|dr|lane|ln|boulevard|"
     r"blvd|court|ct|way|place|pl|terrace|parkway|pkwy|highway|hwy|square|sq|allee|stra(?:ss|\u00df)e)\b\.?",
     "address", 0),
    # a title and a name; "MR BRAIN", "DR CHEST", "MS LESIONS" are a modality or a disease, so an
    # upper-case title needs its period, and a title without one a name in mixed case
    (r"\b(?:Dr|DR|Mr|MR|Mrs|MRS|Ms|MS|Miss|Mx|Prof|PROF|Rev|REV|Mme|Mlle)\.\s{1,3}"
     r"(?:[A-Z][\w'-]{0,40}\.?\s{1,3}){0,2}[A-Z][\w'-]{1,40}", "name", 0),
    (r"\b(?:Dr|Mr|Mrs|Ms|Miss|Mx|Prof|Sir|Dame|Rev|Herr|Frau|Mme|Mlle)\s{1,3}"
     r"(?:[A-Z][a-z][\w'-]{0,40}\.?\s{1,3}){0,2}[A-Z][a-z][\w'-]{0,40}", "name", 0),
    # a foreign name written in Chinese or Japanese joins its parts with a middle dot
    (r"[\u3400-\u9fff]{1,8}[\u00b7\u30fb\u2027\uff65][\u3400-\u9fff]{1,10}", "name", 0),
    (r"[\u30a0-\u30ff]{1,12}[\u00b7\u30fb\u2027\uff65][\u30a0-\u30ff]{1,12}", "name", 0),
    (r"(?<![\d.])\d{6,}(?![\d.])", "number", 0),
))
_INITIAL = re.compile(r"(?<![\w*])[A-Z]\.?\s{0,3}(?=\*)|(?<=\*),?\s{0,3}[A-Z]\.(?!\w)")


def fold(text: str) -> str:
    """Lower case without accents (NFKD, combining marks dropped; ß → ss)."""
    text = unicodedata.normalize("NFKD", text)
    return "".join(c for c in text if not unicodedata.combining(c)).casefold()


def _cjk(text: str) -> bool:
    return any(unicodedata.east_asian_width(c) in ("W", "F") for c in text)


def phi_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, kind) of what reads as PHI in ``text`` by pattern alone, without overlaps."""
    spans = []
    for regex, kind in _PATTERNS:
        for m in regex.finditer(text):
            if kind == "phone" and sum(c.isdigit() for c in m.group(0)) < 7:
                continue
            spans.append((m.start(), m.end(), kind))
    return _merge(spans)


def _merge(spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    out: list[tuple[int, int, str]] = []
    for s, e, k in sorted(spans, key=lambda x: (x[0], -x[1])):
        if out and s < out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e, out[-1][2])
            continue
        out.append((s, e, k))
    return out


def _parse_date(text: str) -> tuple[date, str] | None:
    """A date written in free text and a strftime format that writes it the same way."""
    t = text.strip()
    for fmt in ("%Y%m%d", "%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d", "%m/%d/%Y", "%d.%m.%Y", "%m-%d-%Y",
                "%d/%m/%Y", "%m/%d/%y", "%d.%m.%y", "%d %B %Y", "%B %d, %Y", "%B %d %Y", "%d %b %Y",
                "%b %d, %Y", "%b %d %Y", "%d-%b-%Y", "%d%b%Y", "%d-%B-%Y", "%b. %d, %Y"):
        try:
            return datetime.strptime(t, fmt).date(), fmt
        except ValueError:
            continue
    return None


@dataclass
class Identity:
    """The deny-list of one patient: terms gathered with :meth:`add_name`, :meth:`add_id`,
    :meth:`add_text`, :meth:`add_date` (from every instance of the patient), matched by
    :class:`Scrubber`. Picklable, so it travels to worker processes and Spark executors."""

    words: set[str] = field(default_factory=set)  # folded words (3+ characters), matched as words
    infixes: set[str] = field(default_factory=set)  # folded CJK strings, matched anywhere
    digits: set[str] = field(default_factory=set)  # digit runs (4+), matched with non-digit neighbours
    dates: set[date] = field(default_factory=set)

    def add_name(self, value: str) -> None:
        """A PN value (``Family^Given^Middle^Prefix^Suffix``, groups separated by ``=``) or a name
        written as text."""
        for group in str(value).split("="):
            for part in re.split(r"[\^,\s]+", group):
                part = part.strip(" .'-")
                if not part:
                    continue
                if _cjk(part):
                    if len(part) >= 2:
                        self.infixes.add(fold(part))
                    continue
                for w in [*re.split(r"[-']", part), part, re.sub(r"[-']", "", part)]:
                    if len(w) >= 3 and not w.isdigit():
                        self.words.add(fold(w))
                self._digits(part)
            # short parts ("Wu", "Li") are too common to mask alone: the whole name is, in any order
            parts = [fold(p.strip(" .'-")) for p in group.split("^")[:2] if p.strip(" .'-")]
            if len(parts) == 2 and not any(_cjk(p) for p in parts) and min(len(p) for p in parts) < 3:
                family, given = parts
                self.words.update({f"{family} {given}", f"{given} {family}", f"{family}, {given}",
                                   f"{family},{given}", f"{given}, {family}"})

    def add_id(self, value: str) -> None:
        """An identifier (Patient ID, accession number, SSN...): the whole value and its digit runs."""
        v = str(value).strip()
        if not v:
            return
        if len(v) >= 3 and not _cjk(v):
            self.words.add(fold(v))
        self._digits(v)
        # an ID's separators may change ("884-422"): its digits together count too
        joined = "".join(c for c in v if c.isdigit())
        if len(joined) >= 4:
            self.digits.add(joined)

    def add_text(self, value: str) -> None:
        """Identifying text (an address, an institution, a phone number, an e-mail): each line or
        comma-separated part, each long word and each digit run."""
        v = str(value).strip()
        if not v:
            return
        for part in re.split(r"[,;\n\r^]+", v):
            part = part.strip()
            if len(part) >= 4 and not part.isdigit():
                self.words.add(fold(part))
            for w in re.split(r"\s+", part):
                w = w.strip(".,()")
                if len(w) >= 4 and any(c.isalpha() for c in w) and w.lower() not in _COMMON:
                    self.words.add(fold(w))
        self._digits(v)
        joined = "".join(c for c in v if c.isdigit())
        if 7 <= len(joined) <= 15 and re.fullmatch(r"[\d\s()+.\-x]+", v):  # a phone number
            self.digits.add(joined)

    def add_date(self, value: str) -> None:
        """A DA (or the date of a DT) value."""
        with contextlib.suppress(ValueError):
            self.dates.add(datetime.strptime(str(value).strip()[:8], "%Y%m%d").date())

    def _digits(self, value: str) -> None:
        self.digits.update(d for d in re.findall(r"\d+", value) if len(d) >= 4)

    def update(self, other: Identity) -> None:
        self.words |= other.words
        self.infixes |= other.infixes
        self.digits |= other.digits
        self.dates |= other.dates

    def __bool__(self) -> bool:
        return bool(self.words or self.infixes or self.digits or self.dates)

    def date_strings(self) -> set[str]:
        """The deny-listed dates in the spellings free text uses."""
        out = set()
        for d in self.dates:
            out |= {f"{d:%Y%m%d}", f"{d:%Y-%m-%d}", f"{d:%m/%d/%Y}", f"{d:%d/%m/%Y}", f"{d:%d.%m.%Y}",
                    f"{d:%Y/%m/%d}", f"{d:%m-%d-%Y}", f"{d:%d-%m-%Y}", f"{d.day} {d:%B} {d.year}",
                    f"{d:%B} {d.day}, {d.year}", f"{d.day} {d:%b} {d.year}", f"{d:%d-%b-%Y}", f"{d:%d%b%Y}"}
        return out


# Words of addresses and institutions that are not identifying on their own.
_COMMON = frozenset({
    "street", "road", "avenue", "drive", "lane", "court", "place", "suite", "floor", "hospital", "clinic",
    "center", "centre", "medical", "university", "regional", "general", "department", "radiology", "imaging",
    "diagnostic", "health", "care", "institute", "nuclear", "medicine", "service", "saint", "royal", "city",
    "county", "north", "south", "east", "west", "usa", "united", "states", "kingdom", "germany", "france",
    "with", "from", "that", "this", "have", "home", "work", "mobile", "phone", "email",
})


class Scrubber:
    """Masks an :class:`Identity` and the PHI :data:`patterns <phi_spans>` in text.

    ``shift`` (a function of a date) moves dates found in text instead of masking them, written the
    way they were (Retain Longitudinal Temporal Information with Modified Dates); a deny-listed date
    is always moved or masked.
    """

    def __init__(self, identity: Identity | None = None, *, shift: Callable[[date], date] | None = None) -> None:
        ident = identity or Identity()
        self.identity = ident
        self.shift = shift
        words = sorted(ident.words | {fold(s) for s in ident.date_strings()}, key=len, reverse=True)
        # "_" separates words here ("ZYXWVUT_Q" in a CS value holds the name)
        self._words = (re.compile("|".join(rf"(?<![^\W_]){re.escape(w)}(?![^\W_])" for w in words))
                       if words else None)
        infixes = sorted(ident.infixes, key=len, reverse=True)
        self._infixes = re.compile("|".join(re.escape(w) for w in infixes)) if infixes else None
        digits = sorted(ident.digits, key=len, reverse=True)
        self._digits = re.compile("|".join(rf"(?<!\d){d}(?!\d)" for d in digits)) if digits else None

    def spans(self, text: str, *, patterns: bool = True) -> list[tuple[int, int, str]]:
        """(start, end, kind) of the PHI in ``text``: deny-listed terms, and with ``patterns`` the
        pattern matches."""
        spans: list[tuple[int, int, str]] = []
        if text.isascii():  # folding keeps every position: no index to map back
            folded = text.lower()
            for regex in (self._words, self._infixes):
                if regex is not None:
                    spans += [(m.start(), m.end(), "identity") for m in regex.finditer(folded)]
        else:
            folded, index = _fold_with_index(text)
            for regex in (self._words, self._infixes):
                if regex is not None:
                    spans += [(index[m.start()], index[m.end()], "identity") for m in regex.finditer(folded)]
        if self._digits is not None:
            spans += [(m.start(), m.end(), "identity") for m in self._digits.finditer(text)]
            # digits written with separators inside ("884 422", "884-422")
            spans += self._spaced_digits(text)
        if patterns:
            spans += phi_spans(text)
        return _merge(spans)

    def _spaced_digits(self, text: str) -> list[tuple[int, int, str]]:
        out = []
        for m in re.finditer(r"(?<![\d])\d[\d\s().+-]{3,40}\d(?!\d)", text):
            digits = "".join(c for c in m.group(0) if c.isdigit())
            if digits in self.identity.digits:
                out.append((m.start(), m.end(), "identity"))
        return out

    def scrub(self, text: str, *, patterns: bool = True, mask: str = MASK) -> str:
        """``text`` with its PHI replaced by ``mask`` (dates moved when a shift is set). Text longer
        than :data:`MAX_TEXT` is replaced whole: scrubbing costs about 2 s a million characters."""
        if not text:
            return text
        if len(text) > MAX_TEXT:
            return mask
        spans = self.spans(text, patterns=patterns)
        if not spans:
            return text
        out, last = [], 0
        for s, e, kind in spans:
            out.append(text[last:s])
            out.append(self._replacement(text[s:e], kind, mask))
            last = e
        out.append(text[last:])
        result = "".join(out)
        return _INITIAL.sub("", result) if mask == MASK and MASK in result else result

    def _replacement(self, found: str, kind: str, mask: str) -> str:
        if self.shift is not None and kind in ("date", "identity"):
            parsed = _parse_date(found)
            if parsed is not None:
                d, fmt = parsed
                moved = self.shift(d)
                if d not in self.identity.dates:
                    return moved.strftime(fmt)
        return mask

    def contains(self, text: str) -> bool:
        """Whether ``text`` holds a deny-listed term (patterns not counted)."""
        return bool(self.spans(text, patterns=False))


def _fold_with_index(text: str) -> tuple[str, list[int]]:
    """The folded text and, for each of its positions (and its end), the position in ``text``."""
    out: list[str] = []
    index: list[int] = []
    for i, c in enumerate(text):
        f = fold(c)
        out.append(f)
        index.extend([i] * len(f))
    index.append(len(text))
    return "".join(out), index


def words_of(values: Iterable[str]) -> set[str]:
    """Folded words of ``values`` (for look-alike checks)."""
    return {fold(w) for v in values for w in re.findall(r"\w{3,}", v)}
