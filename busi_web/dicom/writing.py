"""The DICOM objects busi-web writes back into a study: a Secondary Capture of the picture, a Structured
Report of the finding, and the case report as an Encapsulated PDF.

Each object is a new series of the source instance's study (new series and instance UIDs; the patient and
study modules are the source's), with a series description that names busi-web and the model. They are made
from the answer of a diagnosis (plain JSON values), never from the model itself.

* :func:`secondary_capture` (highdicom ``SCImage``): the overlay with the lesion outline, and a band of text
  under it (label, probabilities, lesion size, the decision-support notice). Burned In Annotation is YES.
* :func:`structured_report` (highdicom, TID 1500 Measurement Report in a Comprehensive SR): the device that
  answered (busi-web and the model), the procedure, and one measurement group: the lesion outline as a
  polyline on the source image (and frame), its long and short axes and area (mm when the spacing is known,
  else pixels), the class and each class probability, and the BI-RADS descriptors. When no lesion is
  outlined the group holds the class and the probabilities and references the source image. Concepts that
  have no standard code use the private scheme ``99BUSIWEB``.
* :func:`encapsulated_pdf` (pydicom): Encapsulated PDF Storage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import cv2
import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

SCHEME = "99BUSIWEB"  # private coding scheme for concepts without a standard code
MANUFACTURER = "busi-web"
SC_SERIES, SR_SERIES, PDF_SERIES = 9901, 9902, 9903
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
PIXEL_UNIT = hd.sr.CodedConcept("{pixel}", "UCUM", "pixel")
SQUARE_PIXEL_UNIT = hd.sr.CodedConcept("{pixel}2", "UCUM", "square pixel")
PROCEDURES = {"US": codes.SCT.UltrasonographyOfBreast, "MG": codes.SCT.Mammography}
IMPLEMENTATION_UID = generate_uid(entropy_srcs=["busi-web implementation class"])  # the same on every start


def concept(value: str, meaning: str | None = None) -> hd.sr.CodedConcept:
    """A concept of busi-web's private coding scheme."""
    return hd.sr.CodedConcept(value[:16], SCHEME, meaning or value)


@dataclass
class Answer:
    """What is written back: one result of ``/api/predict`` (label, probabilities, lesion) and the model, with
    everything the page shows beside it.

    ``scale`` is the answer's pixels per source pixel (outlines are written in the source's pixels);
    ``frame`` the 1-based frame that was diagnosed. ``label`` is ``None`` when the class is withheld (an image
    unlike the training images). ``warnings`` are the page's: out of distribution, demo model, not accepted,
    caution, unseen scanner. ``verdict`` is the model's acceptance verdict, ``operating`` the operating point's
    verdict in words, ``confirmed_by`` who confirmed a write-back despite a demo model or a withheld class.
    """

    label: str | None
    probabilities: dict[str, float]
    lesion: dict[str, Any] | None
    model_name: str
    run_id: int
    frame: int = 1
    frames: int = 1
    scale: float = 1.0
    notice: str = ""
    warnings: list[str] = field(default_factory=list)
    verdict: str = ""
    operating: str | None = None
    demo: bool = False
    confirmed_by: str | None = None

    @property
    def description(self) -> str:
        """The series description: busi-web and the model (at most 64 characters, as DICOM allows)."""
        return f"busi-web {self.model_name} (run {self.run_id})"[:64]

    def summary(self) -> str:
        """One line: the class and its probability (or that none is given), and the lesion's size when one was
        outlined."""
        if self.label is None:
            return "no reliable answer: the image is unlike the training images"
        text = f"{self.label} {100 * self.probabilities.get(self.label, 0):.0f}%"
        lesion = self.lesion or {}
        if lesion.get("found"):
            m = lesion["measurements"]
            size = (f"{m['long_axis_mm']:.1f} x {m['short_axis_mm']:.1f} mm" if m.get("long_axis_mm") is not None
                    else f"{m['long_axis_px']:.0f} x {m['short_axis_px']:.0f} px")
            text += f"; lesion {size}"
        return text

    def lines(self) -> list[str]:
        """Everything a reader of the PACS must see with the picture, as short lines."""
        out = [f"busi-web: {self.summary()}"]
        if self.operating:
            out.append(self.operating)
        out += [f"WARNING: {w}" for w in self.warnings]
        out.append(f"model {self.model_name} (run {self.run_id}){' [DEMO]' if self.demo else ''}: {self.verdict}")
        if self.confirmed_by:
            out.append(f"written despite the warnings, confirmed by {self.confirmed_by}")
        out.append(self.notice or "Decision support only; not a diagnosis.")
        return out

    def uid(self, source: Dataset, kind: str) -> str:
        """A UID for object ``kind`` (``sc``, ``sr``, ``pdf``, or its series) made from the source instance, the
        frame and the model: writing the same result back again gives the same UIDs, so the PACS never holds it
        twice."""
        return generate_uid(entropy_srcs=["busi-web", str(source.SOPInstanceUID), str(self.frame), str(self.run_id),
                                          kind])


def _now() -> tuple[str, str]:
    now = datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def _wrap(line: str, width: int, scale: float) -> list[str]:
    """``line`` cut into pieces that fit ``width`` pixels at font ``scale`` (at word boundaries when it can)."""
    words, out, current = line.split(" "), [], ""
    for word in words:
        trial = f"{current} {word}".strip()
        if cv2.getTextSize(trial, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] <= width - 8 or not current:
            current = trial
        else:
            out.append(current)
            current = word
    out.append(current)
    # A single word wider than the picture: cut it by characters.
    fitted = []
    for piece in out:
        while cv2.getTextSize(piece, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > width - 8 and len(piece) > 1:
            cut = max(1, int(len(piece) * (width - 8) / cv2.getTextSize(piece, cv2.FONT_HERSHEY_SIMPLEX, scale,
                                                                        1)[0][0]))
            fitted.append(piece[:cut])
            piece = piece[cut:]
        fitted.append(piece)
    return fitted


def captioned(picture: np.ndarray, lines: list[str]) -> np.ndarray:
    """``picture`` (RGB ``uint8``) with a black band of white text lines under it, each wrapped to the
    picture's width so that nothing is cut off."""
    width = picture.shape[1]
    scale = max(0.35, min(1.0, width / 900))
    height = int(26 * scale) + 4
    wrapped = [piece for line in lines for piece in _wrap(line, width, scale)]
    band = np.zeros((height * len(wrapped) + 6, width, 3), np.uint8)
    for k, line in enumerate(wrapped):
        cv2.putText(band, line, (4, height * (k + 1)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return np.concatenate([picture, band], axis=0)


def secondary_capture(source: Dataset, picture: np.ndarray, answer: Answer) -> Dataset:
    """A Secondary Capture of ``picture`` (RGB ``uint8``: the overlay and outline) with the answer written under
    it, in a new series of ``source``'s study."""
    image = captioned(np.ascontiguousarray(picture[..., :3]), answer.lines())
    sc = hd.sc.SCImage.from_ref_dataset(
        source, pixel_array=image, photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
        patient_orientation=("A", "F"), series_instance_uid=answer.uid(source, "sc series"), series_number=SC_SERIES,
        sop_instance_uid=answer.uid(source, "sc"), instance_number=1, manufacturer=MANUFACTURER)
    # highdicom asks for an orientation; the picture has the source's, and an ultrasound image often none
    # (Patient Orientation is type 2: empty means unknown).
    sc.PatientOrientation = source.get("PatientOrientation", "")
    sc.SeriesDescription = answer.description
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = f"busi-web heatmap and lesion outline of frame {answer.frame}"[:1024]
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    if answer.frames > 1:
        ref.ReferencedFrameNumber = answer.frame
    sc.SourceImageSequence = [ref]
    return sc


def _measurements(answer: Answer) -> list[hd.sr.Measurement]:
    out = [hd.sr.Measurement(name=concept(f"P-{name}", f"Probability of {name}"), value=round(100 * p, 2),
                             unit=codes.UCUM.Percent) for name, p in answer.probabilities.items()]
    lesion = answer.lesion or {}
    if lesion.get("found"):
        m = lesion["measurements"]
        mm = m.get("long_axis_mm") is not None
        for name, key in ((codes.SCT.LongAxis, "long_axis"), (codes.SCT.ShortAxis, "short_axis")):
            value = m[f"{key}_mm"] if mm else m[f"{key}_px"] / answer.scale
            out.append(hd.sr.Measurement(name=name, value=round(float(value), 2),
                                         unit=codes.UCUM.Millimeter if mm else PIXEL_UNIT))
        area = m["area_mm2"] if mm else m["area_px"] / answer.scale ** 2
        out.append(hd.sr.Measurement(name=codes.SCT.Area, value=round(float(area), 2),
                                     unit=codes.UCUM.SquareMillimeter if mm else SQUARE_PIXEL_UNIT))
    return out


def _evaluations(answer: Answer) -> list[hd.sr.QualitativeEvaluation]:
    # The class is busi-web's own concept ("Finding" is already the group's finding type).
    klass = concept(answer.label) if answer.label is not None else concept("withheld", "no reliable answer")
    out = [hd.sr.QualitativeEvaluation(name=concept("class", "busi-web class"), value=klass)]
    if answer.operating:
        suspicious = answer.operating.startswith("Suspicious")
        out.append(hd.sr.QualitativeEvaluation(
            name=concept("operating point", "Biopsy threshold"),
            value=concept("suspicious", "suspicious: consider biopsy") if suspicious
            else concept("below", "below the biopsy threshold")))
    for w in answer.warnings:
        out.append(hd.sr.QualitativeEvaluation(name=concept("warning", "Warning"), value=concept(_key(w), w[:64])))
    out.append(hd.sr.QualitativeEvaluation(name=concept("acceptance", "Model acceptance"),
                                           value=concept(_key(answer.verdict), answer.verdict[:64] or "unknown")))
    if answer.confirmed_by:
        out.append(hd.sr.QualitativeEvaluation(
            name=concept("confirmed", "Written despite warnings"),
            value=concept("confirmed", f"confirmed by {answer.confirmed_by}"[:64])))
    lesion = answer.lesion or {}
    for name, descriptor in (lesion.get("descriptors") or {}).items():
        out.append(hd.sr.QualitativeEvaluation(name=concept(name, f"BI-RADS {name}"),
                                               value=concept(descriptor["value"])))
    if lesion.get("found") and lesion.get("low_confidence"):
        out.append(hd.sr.QualitativeEvaluation(name=concept("confidence", "Outline confidence"),
                                               value=concept("low")))
    return out


def _key(text: str) -> str:
    """A short code value for a private concept: the text's first words, at most 16 characters."""
    return (re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "none")[:16]


def structured_report(source: Dataset, answer: Answer) -> Dataset:
    """A TID 1500 Measurement Report of ``answer`` about ``source`` (see the module's notes)."""
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name="busi-web", manufacturer_name=MANUFACTURER,
            model_name=f"{answer.model_name} (run {answer.run_id})"[:64]))
    context = hd.sr.ObservationContext(observer_device_context=device)
    algorithm = hd.sr.AlgorithmIdentification(name="busi-web", version=str(answer.run_id))
    frames = [answer.frame] if answer.frames > 1 else None
    tracking = hd.sr.TrackingIdentifier(uid=answer.uid(source, "sr finding"), identifier="busi-web finding 1")
    lesion = answer.lesion or {}
    # The finding is a lesion only when one is outlined and shown; otherwise the report is about the breast.
    finding = codes.SCT.Lesion if lesion.get("found") else codes.SCT.Breast
    common = dict(tracking_identifier=tracking, finding_type=finding, algorithm_id=algorithm,
                  measurements=_measurements(answer), qualitative_evaluations=_evaluations(answer))
    if lesion.get("found") and len(lesion.get("outline") or []) >= 3:
        points = np.asarray(lesion["outline"] + lesion["outline"][:1], dtype=np.float64) / answer.scale
        region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=points,
                                   source_image=hd.sr.SourceImageForRegion.from_source_image(
                                       source, referenced_frame_numbers=frames))
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(referenced_region=region, **common)
    else:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(
                source, referenced_frame_numbers=frames)], **common)
    modality = str(source.get("Modality", "US"))
    report = hd.sr.MeasurementReport(observation_context=context,
                                     procedure_reported=PROCEDURES.get(modality, codes.SCT.UltrasonographyOfBreast),
                                     imaging_measurements=[group])
    sr = hd.sr.ComprehensiveSR(evidence=[source], content=report, series_instance_uid=answer.uid(source, "sr series"),
                               series_number=SR_SERIES, sop_instance_uid=answer.uid(source, "sr"), instance_number=1,
                               manufacturer=MANUFACTURER, is_complete=True)
    sr.SeriesDescription = answer.description
    return sr


def encapsulated_pdf(source: Dataset, pdf: bytes, answer: Answer, title: str = "busi-web case report") -> Dataset:
    """The case report ``pdf`` as an Encapsulated PDF instance in a new series of ``source``'s study."""
    ds = Dataset()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        if keyword in source:
            ds[keyword] = source[keyword]
        else:
            setattr(ds, keyword, "")  # type 2: present, empty
    # The patient's name keeps its characters: the source's character set, else UTF-8.
    ds.SpecificCharacterSet = source.get("SpecificCharacterSet") or "ISO_IR 192"
    day, time = _now()
    ds.SOPClassUID, ds.SOPInstanceUID = ENCAPSULATED_PDF, answer.uid(source, "pdf")
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = answer.uid(source, "pdf series"), PDF_SERIES, 1
    ds.Modality, ds.ConversionType, ds.Manufacturer = "DOC", "WSD", MANUFACTURER
    ds.SeriesDescription = answer.description
    ds.ContentDate, ds.ContentTime, ds.AcquisitionDateTime = day, time, day + time
    ds.DocumentTitle, ds.MIMETypeOfEncapsulatedDocument = title, "application/pdf"
    ds.BurnedInAnnotation = "YES"
    ds.ConceptNameCodeSequence = []
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf)
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = "BUSI_WEB_1"
    ds.file_meta = meta
    return ds
