"""PS3.15 E.3.2 Clean Recognizable Visual Features Option: which instances may show the patient.

voxlake does not deface (that needs the whole series and a face model), so under this option it
writes only what cannot show recognizable visual features and leaves out, with the reason from
:func:`visual_features_risk`, every instance that may. The rules, in order:

1. Recognizable Visual Features (0028,0302) NO: the source declares it; nothing to clean.
2. No Pixel Data (nor Float / Double Float Pixel Data): nothing to see (SR, presentation states...).
3. Recognizable Visual Features YES, photographs (VL Photographic and Video Photographic Image
   Storage, Modality XC: external cameras see faces, bodies, tattoos) and ophthalmic photographs
   (Ophthalmic Photography 8 and 16 bit, Modality OP: a retina identifies a person): a reason.
4. CT, MR, PT and NM of the head: a volume of the head can be rendered into a face (E.3.2 note 3).
   Head means a Body Part Examined among the head and neck terms of PS3.16 Annex L (whole body
   included), or a word such as head, brain, face, neck, orbit, sinus, skull or cranial (a few in
   German, French, Spanish and Italian too) in Body Part Examined, Study or Series Description,
   Protocol Name or Anatomic Region Sequence (whole words, any case; "HEADFIRST", "head first" and
   "HFS" are patient positions, and the head of the pancreas or the femoral neck are not the
   patient's head).
5. CT, MR, PT and NM that name no body region at all: a reason too ("body region unknown"). Whoever
   chose this option chose to be safe, so a volume that might be a head is treated as one.
6. Everything else (CT of the abdomen, radiographs, ultrasound, mammography...): no reason.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["visual_features_risk"]

_PHOTO_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.4.1": "Video Photographic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.5.1": "Ophthalmic Photography 8 Bit Image",
    "1.2.840.10008.5.1.4.1.1.77.1.5.2": "Ophthalmic Photography 16 Bit Image",
}
_PHOTO_MODALITIES = {"XC": "external-camera photograph", "OP": "ophthalmic photograph"}
_VOLUME_MODALITIES = frozenset({"CT", "MR", "PT", "NM"})

# PS3.16 Annex L Body Part Examined defined terms of the head and neck, and those that include them.
_HEAD_BODY_PARTS = frozenset({
    "HEAD", "HEADNECK", "BRAIN", "SKULL", "FACE", "NECK", "SCALP", "INTRACRANIAL", "FONTANEL",
    "CEREBELLUM", "CEREBHEMISPHERE", "THALAMUS", "SELLA", "CHOROIDPLEXUS", "LATVENTRICLE",
    "3RDVENTRICLE", "4THVENTRICLE", "CIRCLEOFWILLIS",
    "ORBIT", "EYE", "EYELID", "CORNEA", "SCLERA", "OPTICCANAL", "EAR", "EAC", "IAC", "MASTOID",
    "NOSE", "ENDONASAL", "NASOPHARYNX", "ENDONASOPHARYNYX", "PHARYNX", "HYPOPHARYNX", "PHARYNXLARYNX",
    "LARYNX", "MOUTH", "TONGUE", "CHEEK", "JAW", "TMJ", "MANDIBLE", "MAXILLA", "ZYGOMA",
    "PAROTID", "SUBMANDIBULAR", "THYROID", "PARATHYROID", "CSPINE", "CTSPINE",
    "CAROTID", "CCA", "ICA", "ECA", "BULB", "ACA", "MCA", "PCA", "ANTCOMMA", "POSCOMMA", "CEREBRALA",
    "BASILARA", "VERTEBRALA", "FACIALA", "LINGUALA", "OPHTHALMICA", "LACRIMALA",
    "NECKCHEST", "NECKCHESTABDOMEN", "NECKCHESTABDPELV", "WHOLEBODY",
})
# Words that name the head (or a volume that holds it), a few of them in German, French, Spanish and
# Italian; "head" not followed by "first" (a patient position).
_HEAD_WORDS = re.compile(
    r"(?<![a-z0-9])(?:head(?![\s_-]*first)|heads|headneck|brain|brainstem|face|facial|neck|orbits?|orbital|"
    r"sinus|sinuses|skull|cranial|cranium|intracranial|cerebral|cerebellum|maxillofacial|mandible|maxilla|jaw|"
    r"tmj|nose|nasal|ears?|iac|mastoid|pituitary|sella|carotids?|willis|stroke|neuro|dental|h&n|h\+n|"
    r"whole[\s_-]*body|total[\s_-]*body|wb|kopf|sch(?:a|ae|\u00e4)del|hirn|gehirn|hals|cr(?:a|\u00e2)ne|"
    r"t(?:e|\u00ea)te|cerveau|cabeza|cr(?:a|\u00e1)neo|cerebro|testa|cranio)(?![a-z0-9])")
# "Head" and "neck" of other organs: the head of the pancreas, the femoral neck.
_OTHER_HEADS = re.compile(
    r"(?:pancrea\w*|femor\w*|femur|humer\w*|radial|fibular|bladder)[\s_-]+(?:head|neck)|"
    r"(?:head|neck)[\s_-]+of[\s_-]+(?:the[\s_-]+)?(?:pancreas|femur|humerus|radius|fibula|bladder)")
# Words that name some other body region: with them, the region is known and it is not the head.
_REGION_WORDS = re.compile(
    r"(?<![a-z0-9])(?:chest|thorax|thoracic|lungs?|pulmonary|heart|cardiac|coronary|aorta|aortic|breasts?|"
    r"abdomen|abdominal|abd|pelvis|pelvic|liver|hepatic|pancreas|pancreatic|kidneys?|renal|spleen|"
    r"stomach|bowel|colon|rectum|bladder|prostate|uterus|ovary|spine|spinal|lumbar|sacrum|"
    r"shoulder|arm|humerus|humeral|elbow|wrist|hand|fingers?|hip|femur|femoral|knee|leg|ankle|foot|feet|extremity|limb)(?![a-z0-9])")


def _text(value: Any) -> str:
    return str(value or "").strip()


def _texts(ds: Any) -> list[tuple[str, str]]:
    """(attribute, value) of every attribute that may name the body region."""
    texts = [(k, _text(ds.get(k))) for k in ("BodyPartExamined", "StudyDescription", "SeriesDescription",
                                             "ProtocolName")]
    texts += [("AnatomicRegionSequence", _text(item.get("CodeMeaning")))
              for item in ds.get("AnatomicRegionSequence", None) or ()]
    return [(k, v) for k, v in texts if v]


def visual_features_risk(ds: Any) -> str:
    """"" when the pydicom Dataset ``ds`` cannot show recognizable visual features of the patient,
    else a one-line reason (see the module's rules)."""
    flag = _text(ds.get("RecognizableVisualFeatures")).upper()
    if flag == "NO":
        return ""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        return ""
    if flag == "YES":
        return "Recognizable Visual Features is YES"
    sop_class, modality = _text(ds.get("SOPClassUID")), _text(ds.get("Modality")).upper()
    if sop_class in _PHOTO_SOP_CLASSES:
        return f"a {_PHOTO_SOP_CLASSES[sop_class]} may show the patient's face or body"
    if modality in _PHOTO_MODALITIES:
        return f"an {_PHOTO_MODALITIES[modality]} (Modality {modality}) may show the patient"
    if modality not in _VOLUME_MODALITIES:
        return ""
    texts = _texts(ds)
    body_part = _text(ds.get("BodyPartExamined")).upper().replace(" ", "").replace("_", "")
    for keyword, value in texts:
        if (keyword == "BodyPartExamined" and body_part in _HEAD_BODY_PARTS) or _HEAD_WORDS.search(
                _OTHER_HEADS.sub(" ", value.lower())):
            return f"a {modality} volume that holds the head ({keyword} {value!r}) can be rendered into a face"
    if not any(k == "BodyPartExamined" or _REGION_WORDS.search(v.lower()) for k, v in texts):
        return (f"body region unknown: a {modality} volume with no Body Part Examined nor a description that "
                f"names a region may be of the head")
    return ""
