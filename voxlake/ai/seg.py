"""A model's label map as a DICOM Segmentation (PS3.3 A.51): BINARY, one segment per label present,
in the source study, referencing the source instances and frames the volume was built from.

Transfer syntax: Explicit VR Little Endian by default. OHIF's SEG loader (dcmjs) and every PACS read
native 1-bit frames; voxlake's WADO-RS transcodes only between native syntaxes; a BINARY SEG
compresses only with JPEG 2000 (1-bit frames), which browsers decode slowly or not at all. Pass
``transfer_syntax=JPEG2000Lossless`` for archives where size matters (6.2 MB → 0.33 MB for 134 slices).

Segment codes (PS3.16 CID 7150 category, CID 7151/7166 type) come from :data:`SEGMENT_CODES` for the
``ct-tissue`` names, from :data:`voxlake.synth.phantom.ORGANS` for the ``phantom-organs`` names (the
same table the phantoms' truth SEGs use), else a generic "Tissue".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from voxlake import __version__ as VERSION
from voxlake.errors import InvalidArgumentError, VoxlakeError

if TYPE_CHECKING:
    from pydicom import Dataset

    from voxlake.ai.volume import Volume

__all__ = ["SEGMENT_CODES", "EmptySegmentationError", "SegmentCode", "encode", "label_counts", "present_labels",
           "segment_code", "segmentation", "segmentation_file", "values_present"]

MANUFACTURER = "voxlake"
#: Transfer syntaxes a BINARY SEG can be written in without loss (see the module docstring).
TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, JPEG2000Lossless)


class EmptySegmentationError(VoxlakeError):
    """The label map holds none of the model's labels: there is no segment to write."""


@dataclass(frozen=True)
class SegmentCode:
    """What a SEG says a segment is: category (CID 7150), type (CID 7151/7166), optional laterality
    modifier (CID 244) and a display colour (RGB)."""

    category: Code
    property_type: Code
    colour: tuple[int, int, int]
    modifier: Code | None = None


_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
_TISSUE = Code("85756007", "SCT", "Tissue")

#: The ``ct-tissue`` labels. Types from CID 7166 (Common Tissue Segmentation Types) and CID 7151.
SEGMENT_CODES: dict[str, SegmentCode] = {
    "body": SegmentCode(_STRUCTURE, Code("38266002", "SCT", "Entire body"), (177, 122, 101)),
    "lung": SegmentCode(_STRUCTURE, Code("39607008", "SCT", "Lung"), (197, 165, 145)),
    "bone": SegmentCode(_TISSUE, Code("3138006", "SCT", "Bone"), (241, 214, 145)),
    "fat": SegmentCode(_TISSUE, Code("55603005", "SCT", "Adipose tissue"), (230, 220, 70)),
    "muscle": SegmentCode(_TISSUE, Code("91727004", "SCT", "Muscle"), (192, 104, 88)),
}
_GENERIC = SegmentCode(_TISSUE, _TISSUE, (128, 174, 128))
_PALETTE = ((128, 174, 128), (111, 184, 210), (216, 101, 79), (221, 130, 101), (144, 238, 144),
            (220, 245, 20), (78, 63, 0), (255, 250, 220))


def segment_code(name: str, index: int = 0) -> SegmentCode:
    """The codes of a label name: voxlake's table, then the phantom organs, else generic "Tissue"
    (``index`` picks a palette colour so unknown labels stay distinguishable)."""
    if name in SEGMENT_CODES:
        return SEGMENT_CODES[name]
    from voxlake.synth.phantom import ORGANS

    for organ in ORGANS.values():
        if organ.name == name:
            return SegmentCode(organ.category, organ.property_type, organ.colour, organ.modifier)
    return SegmentCode(_GENERIC.category, _GENERIC.property_type, _PALETTE[index % len(_PALETTE)])


def present_labels(label_map: np.ndarray, labels: dict[int, str]) -> list[int]:
    """The label values of ``labels`` that occur in ``label_map``, ascending."""
    found = set(values_present(label_map))
    return [v for v in sorted(labels) if v > 0 and v in found]


def values_present(label_map: np.ndarray) -> list[int]:
    """The values that occur in a non-negative integer label map, ascending. Below 64 (every model
    here), one bit per value OR-reduced a chunk at a time: a fifth of the time of a histogram."""
    if label_map.size == 0:
        return []
    top = int(label_map.max())
    if top >= 64:
        return np.flatnonzero(label_counts(label_map)).tolist()
    dtype = np.uint16 if top < 16 else np.uint32 if top < 32 else np.uint64
    flat = label_map.reshape(-1)
    seen = dtype(0)
    for start in range(0, flat.size, _CHUNK):
        seen |= np.bitwise_or.reduce(np.left_shift(dtype(1), flat[start:start + _CHUNK], dtype=dtype))
    return [v for v in range(top + 1) if (int(seen) >> v) & 1]


#: Voxels per chunk of :func:`label_counts` (its intp copy stays in cache).
_CHUNK = 1 << 20


def label_counts(label_map: np.ndarray, minlength: int = 0) -> np.ndarray:
    """Voxels per label value (index = value) of a non-negative integer label map: ``np.bincount``
    a chunk at a time, since bincount casts its input to intp, which for a CT's uint8 map would be an
    8x copy of the volume (280 MB for 512x512x134). A third of the time of ``np.unique``, which sorts."""
    flat = label_map.reshape(-1)
    counts = np.zeros(minlength, np.int64)
    for start in range(0, flat.size, _CHUNK):
        chunk = np.bincount(flat[start:start + _CHUNK], minlength=minlength)
        if chunk.size > counts.size:
            chunk[:counts.size] += counts
            counts = chunk
        else:
            counts[:chunk.size] += chunk
    return counts


def check_label_map(volume: Volume, label_map: np.ndarray, labels: dict[int, str]) -> None:
    """Raise :class:`InvalidArgumentError` unless ``label_map`` fits ``volume`` and ``labels``."""
    series = volume.SeriesInstanceUID
    if tuple(label_map.shape) != tuple(volume.shape):
        raise InvalidArgumentError(f"series {series}: label map shape {tuple(label_map.shape)} differs from "
                                   f"the volume's {tuple(volume.shape)}")
    if not np.issubdtype(label_map.dtype, np.integer):
        raise InvalidArgumentError(f"series {series}: label map must hold integers, not {label_map.dtype}")
    if label_map.size and np.issubdtype(label_map.dtype, np.signedinteger) and label_map.min() < 0:
        raise InvalidArgumentError(f"series {series}: label map has negative values")


def segmentation(volume: Volume, label_map: np.ndarray, labels: dict[int, str], *, model_name: str,
                 model_version: str, series_number: int = 900, transfer_syntax: str = ExplicitVRLittleEndian,
                 algorithm_family: Code | None = None, series_instance_uid: str | None = None,
                 sop_instance_uid: str | None = None, present: Sequence[int] | None = None) -> Dataset:
    """The SEG of ``label_map`` (shape of ``volume``, values of ``labels``; 0 background).

    Segments are numbered 1, 2, … in the order of the label values present (PS3.3 C.8.20.2 wants
    them consecutive); each keeps its label name as SegmentLabel and TrackingID. Raises
    :class:`EmptySegmentationError` when no label is present and :class:`InvalidArgumentError` for
    a label map that does not fit the volume or an unsupported transfer syntax. ``present``: the
    label values that occur, when the caller has counted them already (one pass over the map less).

    >>> seg = segmentation(volume, model.predict(volume), model.labels,  # doctest: +SKIP
    ...                    model_name=model.name, model_version=model.version)
    """
    import highdicom as hd

    args = _arguments(volume, label_map, labels, model_name=model_name, model_version=model_version,
                      series_number=series_number, transfer_syntax=transfer_syntax,
                      algorithm_family=algorithm_family, series_instance_uid=series_instance_uid,
                      sop_instance_uid=sop_instance_uid, present=present)
    return hd.seg.Segmentation(**args)


def segmentation_file(volume: Volume, label_map: np.ndarray, labels: dict[int, str], *, model_name: str,
                      model_version: str, series_number: int = 900, transfer_syntax: str = ExplicitVRLittleEndian,
                      algorithm_family: Code | None = None, series_instance_uid: str | None = None,
                      sop_instance_uid: str | None = None,
                      present: Sequence[int] | None = None) -> tuple[Dataset, bytes]:
    """The SEG of :func:`segmentation` as a DICOM file, byte for byte ``encode(segmentation(...))``,
    with its header (the dataset without frames or per-frame items, for its UIDs).

    highdicom builds one Dataset for each frame's functional groups: about 8 nested datasets per
    frame, 2,000 frames for 12 organs on 300 slices, most of the SEG's cost. Here highdicom builds
    the SEG of the union of the segments instead: one frame per plane that holds any segment, with
    every attribute, the planes' order and dimension indices and each plane's per-frame item. A
    segment's frame on a plane has that plane's item with its segment number as the first
    DimensionIndexValues and its own SegmentIdentificationSequence (which a one-segment SEG keeps in
    the shared groups, with DimensionOrganizationType 3D); so the per-frame items are written as
    bytes from the plane items' encodings, and the frames are packed as highdicom packs them. The
    tests hold it to highdicom's bytes (same UIDs and clock) on several kinds of data. An
    uncompressed transfer syntax and single-frame sources only; anything else, or a plane item not
    as expected, goes through :func:`segmentation` and :func:`encode`."""
    import highdicom as hd

    args = _arguments(volume, label_map, labels, model_name=model_name, model_version=model_version,
                      series_number=series_number, transfer_syntax=transfer_syntax,
                      algorithm_family=algorithm_family, series_instance_uid=series_instance_uid,
                      sop_instance_uid=sop_instance_uid, present=present)
    frames = args["pixel_array"]
    descriptions = args["segment_descriptions"]
    sources = args["source_images"]
    fast = (transfer_syntax == ExplicitVRLittleEndian and len(sources) == frames.shape[0]
            and len({str(ds.SOPInstanceUID) for ds in sources}) == len(sources))
    if fast:
        union = hd.seg.Segmentation(**(args | {"pixel_array": (frames > 0).view(np.uint8),
                                               "segment_descriptions": descriptions[:1]}))
        data = _expand(union, frames, sources, descriptions)
        if data is not None:
            return union, data
    seg = hd.seg.Segmentation(**args)
    return seg, encode(seg)


def _cache_iod_lookups() -> None:
    """Cache highdicom's ``is_attribute_in_iod``: it asks of every source image whether its SOP class
    allows multiple frames, a walk through the standard's module tables each time (0.7 ms; 0.2 s for
    300 sources), and the answer depends on the arguments only. Exceptions (an unknown SOP class)
    are not cached."""
    import functools

    from highdicom import _standard_utils as standard

    lookup = getattr(standard, "is_attribute_in_iod", None)
    if lookup is None or getattr(lookup, "voxlake_cached", False):
        return

    @functools.lru_cache(maxsize=4096)
    def cached(attribute: str, sop_class_uid: str, exclude: tuple[str, ...] | None) -> bool:
        return lookup(attribute, sop_class_uid, None if exclude is None else list(exclude))

    def is_attribute_in_iod(attribute: str, sop_class_uid: str,
                            exclude_path_elements: Sequence[str] | None = None) -> bool:
        return cached(attribute, str(sop_class_uid),
                      None if exclude_path_elements is None else tuple(exclude_path_elements))

    is_attribute_in_iod.voxlake_cached = True  # type: ignore[attr-defined]
    standard.is_attribute_in_iod = is_attribute_in_iod


def _arguments(volume: Volume, label_map: np.ndarray, labels: dict[int, str], *, model_name: str,
               model_version: str, series_number: int, transfer_syntax: str, algorithm_family: Code | None,
               series_instance_uid: str | None, sop_instance_uid: str | None,
               present: Sequence[int] | None) -> dict[str, Any]:
    """highdicom ``Segmentation``'s arguments for the SEG of :func:`segmentation`."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    _cache_iod_lookups()
    if transfer_syntax not in TRANSFER_SYNTAXES:
        valid = ", ".join(f"{ts.keyword} ({ts})" for ts in TRANSFER_SYNTAXES)
        raise InvalidArgumentError(f"transfer_syntax must be one of {valid}; got {transfer_syntax!r}")
    check_label_map(volume, label_map, labels)
    if present is None:
        present = present_labels(label_map, labels)
    present = sorted(v for v in present if v > 0 and v in labels)
    if not present:
        raise EmptySegmentationError(f"series {volume.SeriesInstanceUID}: model {model_name} "
                                     f"{model_version} found none of its labels {sorted(labels.values())}")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model_name[:64], version=str(model_version)[:64],
        family=algorithm_family or codes.cid7162.ArtificialIntelligence)
    descriptions = []
    for number, value in enumerate(present, start=1):
        name = labels[value]
        code = segment_code(name, number - 1)
        desc = hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64], segmented_property_category=code.category,
            segmented_property_type=code.property_type, algorithm_type="AUTOMATIC",
            algorithm_identification=algorithm, tracking_uid=generate_uid(), tracking_id=name[:64],
            display_color=hd.color.CIELabColor.from_rgb(*code.colour))
        if code.modifier is not None:
            desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept(code.modifier.value, code.modifier.scheme_designator, code.modifier.meaning)]
        descriptions.append(desc)
    top = int(label_map.max())
    if label_map.dtype == np.uint8 and present == list(range(1, len(present) + 1)) and top <= len(present):
        segments = label_map  # the values are the segment numbers already (ct-tissue, the phantoms)
    else:
        lut = np.zeros(top + 1, np.uint8)
        lut[present] = np.arange(1, len(present) + 1, dtype=np.uint8)
        segments = lut[label_map]
    frames, sources = _source_order(volume, segments)
    return {"source_images": sources, "pixel_array": np.ascontiguousarray(frames), "segmentation_type": "BINARY",
            "segment_descriptions": descriptions, "series_instance_uid": series_instance_uid or generate_uid(),
            "series_number": series_number, "sop_instance_uid": sop_instance_uid or generate_uid(),
            "instance_number": 1, "manufacturer": MANUFACTURER, "manufacturer_model_name": model_name[:64],
            "software_versions": f"voxlake {VERSION}", "device_serial_number": "0",
            "content_description": f"{model_name} {model_version} segmentation"[:64],
            "content_label": _cs(model_name), "content_creator_name": "voxlake^ai",
            "series_description": f"SEG {model_name} {model_version}"[:64], "transfer_syntax_uid": transfer_syntax}


#: DimensionIndexValues [1, ...] as Explicit VR Little Endian encodes it: a segment's frame has its number.
_DIMENSION_INDEX = b"\x20\x00\x57\x91UL\x08\x00\x01\x00\x00\x00"
_ITEM = b"\xfe\xff\x00\xe0"


def _expand(union: Dataset, frames: np.ndarray, sources: list[Any], descriptions: list[Any]) -> bytes | None:
    """The file of the full SEG from the SEG of the union of its segments (see
    :func:`segmentation_file`); None when the union's items are not as expected."""
    import struct

    from pydicom import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    if len(descriptions) == 1:  # the union is the SEG
        data = encode(union)
        union["PerFrameFunctionalGroupsSequence"].value = []
        del union.PixelData
        return data
    items = union.get("PerFrameFunctionalGroupsSequence")
    shared = (union.get("SharedFunctionalGroupsSequence") or [None])[0]
    # one segment: highdicom puts its SegmentIdentificationSequence in the shared groups; with
    # several, each frame's item has its own, the item's last element (tag 0062,000A sorts last)
    if (not items or shared is None or "SegmentIdentificationSequence" not in shared
            or union["PerFrameFunctionalGroupsSequence"].is_undefined_length):
        return None
    plane_of = {str(ds.SOPInstanceUID): index for index, ds in enumerate(sources)}
    encoder = _SequenceEncoder(union.get("SpecificCharacterSet") or "iso8859")
    planes, bodies = [], []
    try:
        for item in items:
            if "SegmentIdentificationSequence" in item or getattr(item, "is_undefined_length_sequence_item", False):
                return None
            [derivation] = item.DerivationImageSequence
            [source] = derivation.SourceImageSequence
            planes.append(plane_of[str(source.ReferencedSOPInstanceUID)])
            data = encoder.item(item)
            if data[:4] != _ITEM or data.count(_DIMENSION_INDEX) != 1:
                return None
            bodies.append(data[8:])
        count = len(descriptions)
        identification = []
        for number in range(1, count + 1):
            holder = Dataset()
            holder.SegmentIdentificationSequence = DicomSequence([Dataset()])
            holder.SegmentIdentificationSequence[0].ReferencedSegmentNumber = number
            identification.append(encoder.element(holder["SegmentIdentificationSequence"]))
    except (_Unsupported, KeyError, ValueError, AttributeError):
        return None
    # which segment holds which plane
    holds = _segments_per_plane(frames, planes, count)
    # frames in highdicom's order: by segment, then by plane; 1-bit pixels packed as one stream
    # (frame by frame when a frame is a whole number of bytes, which is the same stream)
    aligned = frames[0].size % 8 == 0
    body, packed, bits = [], [], []
    for number in range(1, count + 1):
        dimension = _DIMENSION_INDEX[:8] + struct.pack("<L", number)
        segment = identification[number - 1]
        for row, plane in enumerate(planes):
            if holds[row, number - 1]:
                item = bodies[row].replace(_DIMENSION_INDEX, dimension) + segment
                body.append(_ITEM + struct.pack("<L", len(item)) + item)
                mask = frames[plane] == number
                if aligned:
                    packed.append(np.packbits(mask, bitorder="little").tobytes())
                else:
                    bits.append(mask)
    pixel_data = b"".join(packed) if aligned else np.packbits(np.stack(bits), bitorder="little").tobytes()
    if len(pixel_data) % 2:
        pixel_data += b"0"  # as highdicom pads
    joined = b"".join(body)
    sequence = struct.pack("<HH2sHL", 0x5200, 0x9230, b"SQ", 0, len(joined)) + joined
    # the header: the full SEG's attributes, no per-frame items (they are in the bytes only)
    union.SegmentSequence = descriptions
    del shared.SegmentIdentificationSequence
    if "DimensionOrganizationType" in union:  # highdicom says 3D of one segment's frames only
        del union.DimensionOrganizationType
    union.NumberOfFrames = len(body)
    union.PixelData = pixel_data
    data = _with_per_frame(union, sequence)
    del union.PixelData
    return data


def _segments_per_plane(frames: np.ndarray, planes: list[int], count: int) -> np.ndarray:
    """(len(planes), count) booleans: which segment (1 .. count) each plane holds. One bit per segment
    OR-reduced over the plane: a quarter of the time of a histogram (which copies the plane to intp)."""
    if count >= 64:
        return np.stack([np.bincount(frames[p].reshape(-1), minlength=count + 1)[1:count + 1] > 0 for p in planes])
    dtype = np.uint16 if count < 16 else np.uint32 if count < 32 else np.uint64
    one = dtype(1)
    seen = np.array([np.bitwise_or.reduce(np.left_shift(one, frames[p], dtype=dtype), axis=None) for p in planes],
                    dtype=dtype)
    return (seen[:, None] >> np.arange(1, count + 1, dtype=dtype)[None, :]) & one > 0


def _source_order(volume: Volume, frames: np.ndarray) -> tuple[np.ndarray, list[Any]]:
    """The frames in the order highdicom pairs them with source images: one per single-frame
    instance in ``headers`` order (the volume's own), or, for one multi-frame instance, by frame
    number (so each SEG frame references the source frame it was computed from)."""
    headers = list(volume.headers)
    if len(headers) == len(volume.sources):
        return frames, headers
    numbers = [frame for _, frame in volume.sources]
    n_frames = int(getattr(headers[0], "NumberOfFrames", 1) or 1) if len(headers) == 1 else -1
    if n_frames != len(numbers) or sorted(numbers) != list(range(1, n_frames + 1)):
        raise InvalidArgumentError(
            f"series {volume.SeriesInstanceUID}: a SEG needs one single-frame instance per slice, or one "
            f"multi-frame instance all of whose frames are slices; got {len(headers)} instances for "
            f"{len(numbers)} slices")
    ordered = np.empty_like(frames)
    ordered[np.asarray(numbers) - 1] = frames
    return ordered, headers


def _cs(text: str) -> str:
    """A Code String (CS, 16 characters: capitals, digits, space, underscore) from a model name."""
    return re.sub(r"[^A-Z0-9_ ]", "_", text.upper())[:16] or "SEGMENTATION"


_PER_FRAME = 0x52009230  # PerFrameFunctionalGroupsSequence
_PIXEL_DATA = b"\xe0\x7f\x10\x00"


def encode(seg: Dataset) -> bytes:
    """``seg`` as a DICOM file (Part 10, what ``seg.save_as(buffer, enforce_file_format=True)`` writes,
    byte for byte), several times faster for a SEG of many frames.

    pydicom spends most of a SEG's save on the Per-Frame Functional Groups: one item per frame, each
    of ~8 nested datasets, every one walked for ambiguous VRs and charsets. Here pydicom writes the
    file with that sequence emptied, and the sequence is encoded separately: its items framed as
    pydicom frames them (explicit lengths unless an item or sequence says undefined), each distinct
    leaf element (a source UID, a position, a segment number: they repeat across frames) encoded once
    by pydicom's own element writer. Anything this does not handle (implicit VR or big endian, a raw
    or ambiguous-VR element in the sequence) falls back to pydicom's save."""
    from pydicom.filebase import DicomBytesIO

    def plain() -> bytes:
        buffer = DicomBytesIO()
        seg.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    syntax = getattr(getattr(seg, "file_meta", None), "TransferSyntaxUID", None)
    if _PER_FRAME not in seg or syntax is None or syntax.is_implicit_VR or not syntax.is_little_endian:
        return plain()
    element = seg[_PER_FRAME]
    encodings = seg.get("SpecificCharacterSet") or "iso8859"
    try:
        encoded = _SequenceEncoder(encodings).element(element)
    except _Unsupported:
        return plain()
    items = element.value
    try:
        data = _with_per_frame(seg, encoded)
    finally:
        element.value = items
    return plain() if data is None else data


def _with_per_frame(ds: Dataset, encoded: bytes) -> bytes | None:
    """``ds`` as a Part 10 file with ``encoded`` (the bytes of a PerFrameFunctionalGroupsSequence
    element) in place of its per-frame items: pydicom writes the file with the sequence emptied, and
    the bytes go where the empty sequence is. Leaves the sequence empty; None when the empty sequence
    cannot be found once before Pixel Data."""
    from pydicom.filebase import DicomBytesIO

    ds[_PER_FRAME].value = []
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    placeholder = b"\x00\x52\x30\x92SQ\x00\x00\x00\x00\x00\x00"
    at = data.find(placeholder)
    end = data.find(_PIXEL_DATA, at)
    if at < 0 or end < 0 or data.find(placeholder, at + 1, end) >= 0:
        return None
    return data[:at] + encoded + data[at + len(placeholder):]


class _Unsupported(Exception):
    """An element :class:`_SequenceEncoder` leaves to pydicom."""


class _SequenceEncoder:
    """Explicit VR little endian encoding of a sequence element as pydicom's ``write_data_element``
    writes it, with leaf elements cached by (tag, VR, value)."""

    def __init__(self, encodings: Any) -> None:
        from pydicom.charset import convert_encodings

        self.encodings = convert_encodings(encodings)
        self.leaves: dict[tuple[Any, ...], bytes] = {}

    def element(self, elem: Any) -> bytes:
        import struct

        if elem.is_raw or len(elem.VR or "") != 2:
            raise _Unsupported(elem.tag)
        if elem.VR != "SQ":
            return self.leaf(elem)
        body = b"".join(self.item(ds) for ds in elem.value)
        head = struct.pack("<HH2sHL", elem.tag.group, elem.tag.element, b"SQ", 0,
                           0xFFFFFFFF if elem.is_undefined_length else len(body))
        return head + body + (b"\xfe\xff\xdd\xe0\x00\x00\x00\x00" if elem.is_undefined_length else b"")

    def item(self, ds: Any) -> bytes:
        import struct

        if "SpecificCharacterSet" in ds:
            raise _Unsupported("SpecificCharacterSet in an item")
        body = b"".join(self.element(ds.get_item(tag)) for tag in sorted(ds.keys())
                        if not (tag.element == 0 and tag.group > 6))
        if getattr(ds, "is_undefined_length_sequence_item", False):
            return struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + body + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
        return struct.pack("<HHL", 0xFFFE, 0xE000, len(body)) + body

    def leaf(self, elem: Any) -> bytes:
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import write_data_element

        value = elem.value
        key = (elem.tag, elem.VR, type(value), repr(value)) if not isinstance(value, bytes | bytearray) else None
        if key is not None and key in self.leaves:
            return self.leaves[key]
        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = True, False
        write_data_element(buffer, elem, self.encodings)
        data = buffer.getvalue()
        if key is not None:
            self.leaves[key] = data
        return data
