"""Keeping patient data out of busi-web: keyed digests of the UIDs, and de-identified copies of a file.

* :func:`uid_digests` is what the audit keeps of a DICOM instance: an HMAC (SHA-256, keyed with the app's
  secret) of its study, series and instance UIDs, so that rows about one study can be found together
  while the UIDs themselves, which a PACS can resolve to a patient, are never stored.
* :func:`quiet` keeps the DICOM libraries' warnings, which quote attribute values such as a patient's name,
  out of the server's log while a file is read or an object is made.
* :func:`deidentified` applies the DICOM basic application-level confidentiality profile (PS3.15 E.1) to a
  whole dataset before ``STORE_UPLOADS`` keeps it: dicognito replaces names, IDs, addresses, equipment and
  UIDs with consistent made-up values and shifts dates; the free-text and private attributes the profile
  removes are removed here. Text burned into the pixels is not touched: a file whose Burned In Annotation is
  not ``NO`` is not marked Patient Identity Removed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from dicognito.anonymizer import Anonymizer
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

# Attributes the basic profile removes (X) that dicognito leaves: descriptions and comments written by
# people, and patient characteristics.
REMOVED = (
    "AdditionalPatientHistory", "AdmittingDiagnosesDescription", "Allergies", "CountryOfResidence",
    "DerivationDescription", "DeviceSerialNumber", "EthnicGroup", "ImageComments", "InstitutionalDepartmentName",
    "MedicalAlerts", "OtherPatientNames", "PatientAge", "PatientBirthTime", "PatientComments",
    "PatientMotherBirthName", "PatientSize", "PatientWeight", "PerformedProcedureStepDescription",
    "ProtocolName", "ReasonForStudy", "RegionOfResidence", "RequestAttributesSequence",
    "RequestedProcedureDescription", "SeriesDescription", "StudyDescription",
)
PROFILE = ("113100", "DCM", "Basic Application Confidentiality Profile")
log = logging.getLogger(__name__)
# pydicom and highdicom log (besides warning) with attribute values in the text: never into the server's log.
for _name in ("pydicom", "highdicom"):
    logging.getLogger(_name).setLevel(logging.ERROR)
UID_KEYS = (("study", "StudyInstanceUID"), ("series", "SeriesInstanceUID"), ("instance", "SOPInstanceUID"))


@contextmanager
def quiet() -> Iterator[None]:
    """Build DICOM objects without letting the libraries' warnings reach the server's log: highdicom's and
    pydicom's warnings quote attribute values (a single-component patient or physician name, for one), which
    must never be written there. What they said is logged as a count and the warning classes only."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    if caught:
        kinds = sorted({w.category.__name__ for w in caught})
        log.info("building DICOM objects: %d library warning(s) kept out of the log (%s)", len(caught),
                 ", ".join(kinds))


def keyed_digest(key: bytes | str, text: str) -> str:
    """The first 32 hex digits of an HMAC-SHA256 of ``text`` under ``key``: the same text and key, the same
    digest; without the key, no way back to the text."""
    secret = key.encode() if isinstance(key, str) else key
    return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()[:32]


def uid_digests(ds: Dataset, key: bytes | str) -> dict[str, str | None]:
    """``{"study", "series", "instance"}``: the :func:`keyed_digest` of each UID (``None`` when the file has
    none)."""
    out: dict[str, str | None] = {}
    for name, keyword in UID_KEYS:
        uid = str(ds.get(keyword, "") or "").strip()
        out[name] = keyed_digest(key, uid) if uid else None
    return out


def identifiers(ds: Dataset) -> list[tuple[str, str]]:
    """Who and what a DICOM instance is about, for a printed case report only (never stored, logged or sent in
    an answer): the patient's name, ID and birth date, the accession number, the study's date and description."""
    out = []
    for label, keyword in (("Patient", "PatientName"), ("Patient ID", "PatientID"),
                           ("Birth date", "PatientBirthDate"), ("Accession", "AccessionNumber"),
                           ("Study date", "StudyDate"), ("Study", "StudyDescription")):
        text = str(ds.get(keyword, "") or "").strip()
        if keyword == "PatientName":
            text = ", ".join(p for p in (x.strip() for x in text.split("^")[:2]) if p)
        elif keyword.endswith("Date") and len(text) == 8 and text.isdigit():
            text = f"{text[:4]}-{text[4:6]}-{text[6:]}"
        if text:
            out.append((label, text))
    return out


def deidentified(ds: Dataset) -> Dataset:
    """``ds`` de-identified in place by the basic profile (see the module's notes); returns it."""
    Anonymizer().anonymize(ds)
    for keyword in REMOVED:
        if keyword in ds:
            del ds[keyword]
    ds.remove_private_tags()
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = PROFILE
    ds.DeidentificationMethodCodeSequence = Sequence([code])
    return ds
