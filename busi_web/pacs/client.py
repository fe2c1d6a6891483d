"""One DICOMweb endpoint, asked through dicomweb-client: search studies and instances (QIDO-RS), fetch an
instance (WADO-RS), store new instances (STOW-RS).

Each call turns the ways a PACS fails into a :class:`~busi_web.errors.UserError` naming the endpoint:
unreachable (502), too slow (504), credentials refused (502: the clinician's own login is fine, the
server's is not), an instance no longer there (404), a storage refusal (502, saying what was stored, if
anything). Messages never quote a UID or a patient attribute.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import UID

from busi_web.dicom.reading import syntax_name
from busi_web.errors import UserError
from busi_web.pacs.endpoints import Endpoint

STUDY_FIELDS = ("StudyDate", "StudyTime", "StudyDescription", "ModalitiesInStudy", "AccessionNumber", "PatientName",
                "PatientID", "PatientBirthDate", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
INSTANCE_FIELDS = ("SeriesDescription", "SeriesNumber", "InstanceNumber", "Modality", "SOPClassUID", "Rows",
                   "Columns", "NumberOfFrames")


class PacsError(UserError):
    """A PACS did not do what was asked (502 unless said otherwise)."""

    status = 502


@dataclass(frozen=True)
class Stored:
    """What a STOW-RS request stored, and what the PACS refused (SOP class names, never UIDs)."""

    stored: list[str]
    refused: list[str]


def value(item: dict[str, Any], keyword: str) -> Any:
    """The first value of ``keyword`` in a DICOM JSON object (QIDO-RS answer), or ``None``."""
    first = (values(item, keyword) or [None])[0]
    if isinstance(first, dict) and "Alphabetic" in first:
        return first["Alphabetic"]
    return first


def values(item: dict[str, Any], keyword: str) -> list[Any]:
    """Every value of ``keyword`` in a DICOM JSON object."""
    tag = tag_for_keyword(keyword)
    return list((item.get(f"{tag:08X}") or {}).get("Value") or []) if tag is not None else []


class Pacs:
    """The DICOMweb client of one :class:`Endpoint`."""

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        session = requests.Session()
        session.verify = endpoint.verify
        if endpoint.auth == "basic":
            session.auth = (endpoint.username or "", endpoint.password or "")
        headers = {"Authorization": f"Bearer {endpoint.token}"} if endpoint.auth == "bearer" else None
        self.client = DICOMwebClient(endpoint.url, session=session, headers=headers, timeout=endpoint.timeout)
        # One attempt per request: dicomweb-client's own retries (five, with growing waits, on any exception)
        # turned a PACS that is down into a 30 s wait and a silent one into 45 s. An answer now comes within the
        # endpoint's timeout (10 s by default), and the clinician decides whether to try again.
        self.client.set_http_retry_params(retry=False)

    @contextmanager
    def _asking(self, what: str, searching: bool = False) -> Iterator[None]:
        """Turn the ways a request fails into a :class:`PacsError`; ``searching``: the request was a search of a
        collection, where a 404 means the URL is not a DICOMweb service, not that something is gone."""
        name, server = self.endpoint.name, self.endpoint.public()["server"]
        try:
            yield
        except requests.exceptions.Timeout:
            raise PacsError(f"PACS {name} ({server}) did not answer within {self.endpoint.timeout:g} s while {what}; "
                            "try again, or ask an administrator to check the PACS", 504) from None
        except requests.exceptions.SSLError:
            raise PacsError(f"PACS {name} ({server}): its TLS certificate was not accepted while {what}; an "
                            "administrator sets verify (a CA bundle) in PACS_SERVERS") from None
        except requests.exceptions.ConnectionError:
            raise PacsError(f"PACS {name} cannot be reached at {server} while {what}; check that it is running and "
                            "reachable from the busi-web server (PACS_SERVERS)") from None
        except requests.exceptions.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            if code in (401, 403):
                raise PacsError(f"PACS {name} refused busi-web's credentials (HTTP {code}) while {what}; an "
                                "administrator corrects the username and password or token in PACS_SERVERS") from None
            if code == 404 and searching:
                raise PacsError(f"{server} answered HTTP 404 to a DICOMweb search while {what}: it does not look like "
                                f"a DICOMweb service. An administrator checks PACS {name}'s url in PACS_SERVERS: it is "
                                "the DICOMweb root (e.g. http://pacs:8042/dicom-web)") from None
            if code == 404:
                raise PacsError(f"PACS {name} no longer has what was asked for while {what}; search the studies "
                                "again", 404) from None
            raise PacsError(f"PACS {name} answered HTTP {code} while {what}; try again, or ask an administrator "
                            "to look at the PACS's log") from None
        except (ValueError, KeyError, TypeError) as exc:  # an answer that is not DICOM JSON or multipart
            raise PacsError(f"PACS {name} sent an answer busi-web cannot read while {what} "
                            f"({type(exc).__name__}); is {server} a DICOMweb root (url in PACS_SERVERS)?") from None

    def studies(self, *, date_from: str | None = None, date_to: str | None = None, modality: str | None = None,
                accession: str | None = None, patient_id: str | None = None, limit: int = 50
                ) -> list[dict[str, Any]]:
        """QIDO-RS studies (DICOM JSON), newest first as the PACS orders them; dates are ``YYYYMMDD``."""
        filters: dict[str, Any] = {}
        if date_from or date_to:
            filters["StudyDate"] = f"{date_from or ''}-{date_to or ''}"
        if modality:
            filters["ModalitiesInStudy"] = modality
        if accession:
            filters["AccessionNumber"] = accession
        if patient_id:
            filters["PatientID"] = patient_id
        with self._asking("searching studies", searching=True):
            return self.client.search_for_studies(search_filters=filters, fields=list(STUDY_FIELDS), limit=limit)

    def instances(self, study_uid: str) -> list[dict[str, Any]]:
        """QIDO-RS instances of one study (DICOM JSON)."""
        with self._asking("listing a study's instances"):
            return self.client.search_for_instances(study_instance_uid=study_uid, fields=list(INSTANCE_FIELDS))

    def retrieve(self, study_uid: str, series_uid: str, instance_uid: str) -> bytes:
        """WADO-RS: one instance as a DICOM Part 10 file. An instance in a transfer syntax this server cannot
        write (JPEG XL, say) is asked for again uncompressed, which a PACS that transcodes answers; one that does
        not gets a 400 that names the encoding and what to do."""
        with self._asking("fetching an instance"):
            ds = self.client.retrieve_instance(study_uid, series_uid, instance_uid)
        try:
            return _part10(ds)
        except ValueError:
            syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "unknown")
        try:
            with self._asking("fetching an instance uncompressed"):
                plain = self.client.retrieve_instance(study_uid, series_uid, instance_uid, media_types=(
                    ("application/dicom", "1.2.840.10008.1.2.1"),))
            if not _holds_native_pixels(plain):  # relabelled, not decoded: the same compressed bytes
                raise ValueError("not transcoded")
            return _part10(plain)
        except (PacsError, ValueError):
            raise UserError(f"PACS {self.endpoint.name} holds this instance encoded as {syntax_name(syntax)}, which "
                            "this server cannot decode, and did not send it uncompressed; ask the PACS "
                            "administrator to store or transcode it as uncompressed, JPEG, JPEG-LS, JPEG 2000 or "
                            "RLE", 400) from None

    def store(self, datasets: Sequence[Dataset]) -> Stored:
        """STOW-RS ``datasets`` in one request, then a QIDO-RS check that the PACS holds them. Raises
        :class:`PacsError` when it refused or dropped any of them, saying which were stored anyway."""
        names = {str(ds.SOPInstanceUID): _kind(ds) for ds in datasets}
        for ds in datasets:  # the PACS keeps what it is sent: a Part 10 file, preamble included
            if getattr(ds, "preamble", None) is None:
                ds.preamble = b"\0" * 128
        try:
            with self._asking("storing the results"):
                answer = self.client.store_instances(list(datasets))
        except PacsError as exc:
            raise PacsError(f"{exc} Nothing was stored.", exc.status) from None
        stored = [names.get(str(item.get("ReferencedSOPInstanceUID")), "an object")
                  for item in answer.get("ReferencedSOPSequence", [])]
        refused = [names.get(str(item.get("ReferencedSOPInstanceUID")), "an object")
                   for item in answer.get("FailedSOPSequence", [])]
        if not refused and len(stored) == len(datasets):
            # A PACS may answer "stored" for what a filter of its own then dropped (Orthanc does): ask it.
            held = self.held(datasets)
            refused = [names[uid] for uid in names if uid not in held]
            stored = [names[uid] for uid in names if uid in held]
        if refused or len(stored) < len(datasets):
            kept = f"stored: {', '.join(stored)}" if stored else "nothing was stored"
            raise PacsError(f"PACS {self.endpoint.name} refused to store {', '.join(refused) or 'the results'} "
                            f"({kept}); ask an administrator whether busi-web may write to this PACS")
        return Stored(stored=stored, refused=refused)

    def held(self, datasets: Sequence[Dataset]) -> set[str]:
        """Which of ``datasets`` (by SOP instance UID) the PACS holds now (QIDO-RS in each one's study)."""
        held: set[str] = set()
        studies = {str(ds.StudyInstanceUID) for ds in datasets}
        with self._asking("checking what was stored"):
            for study in studies:
                for item in self.client.search_for_instances(study_instance_uid=study, fields=["SOPInstanceUID"]):
                    held.add(str(value(item, "SOPInstanceUID")))
        return held


def _holds_native_pixels(ds: Dataset) -> bool:
    """Whether ``ds``'s pixel data is as long as uncompressed frames of its size must be (a PACS that cannot
    transcode may send the compressed bytes under an uncompressed label)."""
    try:
        frame = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * \
            max(1, int(ds.get("BitsAllocated", 8) or 8)) // 8
        return len(ds.PixelData) >= frame
    except (AttributeError, TypeError, ValueError):
        return False


def _part10(ds: Dataset) -> bytes:
    """``ds`` as a Part 10 file; ``ValueError`` when its transfer syntax is one pydicom cannot write."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _kind(ds: Dataset) -> str:
    return UID(str(ds.SOPClassUID)).name
