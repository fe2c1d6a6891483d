"""The objects busi-web writes into a study: a Secondary Capture with the answer under the picture, a TID 1500
Structured Report with the outline as a polyline on the source frame, and an Encapsulated PDF."""

from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from busi_web.dicom.writing import Answer, encapsulated_pdf, secondary_capture, structured_report
from tests.dicom_phantoms import PATIENT_ID, instance, phantom, to_bytes

LESION = {"found": True, "low_confidence": True, "statement": "lesion outlined",
          "outline": [[40, 30], [60, 30], [60, 50], [40, 50]],
          "measurements": {"long_axis_mm": None, "short_axis_mm": None, "area_mm2": None, "long_axis_px": 20.0,
                           "short_axis_px": 10.0, "area_px": 400.0},
          "descriptors": {"shape": {"value": "oval"}, "orientation": {"value": "parallel"},
                          "margin": {"value": "circumscribed"}}}


def items(ds, found=None):
    """Every content item of an SR, depth first."""
    found = [] if found is None else found
    for item in ds.get("ContentSequence", []):
        found.append(item)
        items(item, found)
    return found


def reread(ds):
    return pydicom.dcmread(io.BytesIO(to_bytes(ds)))


def test_the_report_holds_the_outline_measurements_and_finding():
    source = instance(np.stack([phantom(seed=k) for k in range(3)]))
    answer = Answer("benign", {"benign": 0.7, "malignant": 0.2, "normal": 0.1}, LESION, "outline model", 9,
                    frame=2, frames=3, scale=0.5)
    sr = reread(structured_report(source, answer))
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.PatientID == PATIENT_ID
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID and sr.SeriesDescription == "busi-web outline model (run 9)"
    content = items(sr)
    region = next(i for i in content if i.ValueType == "SCOORD")
    assert region.GraphicType == "POLYLINE"
    points = np.asarray(region.GraphicData, dtype=float).reshape(-1, 2)
    assert points.tolist() == [[80, 60], [120, 60], [120, 100], [80, 100], [80, 60]]  # source pixels, closed
    image = region.ContentSequence[0].ReferencedSOPSequence[0]
    assert image.ReferencedSOPInstanceUID == source.SOPInstanceUID and image.ReferencedFrameNumber == 2
    numbers = {i.ConceptNameCodeSequence[0].CodeMeaning: (i.MeasuredValueSequence[0].NumericValue,
                                                          i.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
                                                          .CodeValue) for i in content if i.ValueType == "NUM"}
    assert numbers["Long axis"] == (40.0, "{pixel}") and numbers["Short axis"] == (20.0, "{pixel}")
    assert numbers["Area"] == (1600.0, "{pixel}2") and numbers["Probability of benign"] == (70.0, "%")
    codes_found = {(i.ConceptNameCodeSequence[0].CodeMeaning, i.ConceptCodeSequence[0].CodeMeaning)
                   for i in content if i.ValueType == "CODE"}
    assert ("busi-web class", "benign") in codes_found and ("BI-RADS shape", "oval") in codes_found
    assert ("Outline confidence", "low") in codes_found
    assert ("Finding", codes.SCT.Lesion.meaning) in codes_found  # the finding type of the group: a lesion outlined
    assert [name for name, _ in codes_found].count("Finding") == 1  # listed once
    assert any(i.get("TextValue") == "busi-web finding 1" for i in content)


def test_no_lesion_refers_to_the_image_and_spacing_gives_mm():
    source = instance(phantom(), modality="MG")
    lesion = dict(LESION, measurements=dict(LESION["measurements"], long_axis_mm=2.0, short_axis_mm=1.0,
                                            area_mm2=4.0))
    sr = reread(structured_report(source, Answer("malignant", {"malignant": 0.9, "benign": 0.1}, lesion, "m", 1)))
    content = items(sr)
    assert {(i.ConceptNameCodeSequence[0].CodeMeaning, i.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
             .CodeValue) for i in content if i.ValueType == "NUM" and "axis" in i.ConceptNameCodeSequence[0]
            .CodeMeaning} == {("Long axis", "mm"), ("Short axis", "mm")}
    assert "Mammography" in str(sr.ConceptNameCodeSequence[0].CodeMeaning) or "Mammography" in str(sr)
    plain = reread(structured_report(source, Answer("normal", {"normal": 0.8, "benign": 0.2}, None, "m", 1)))
    assert not [i for i in items(plain) if i.ValueType == "SCOORD"]
    found = {(i.ConceptNameCodeSequence[0].CodeMeaning, i.ConceptCodeSequence[0].CodeMeaning)
             for i in items(plain) if i.ValueType == "CODE"}
    assert ("Finding", codes.SCT.Breast.meaning) in found and ("Finding", codes.SCT.Lesion.meaning) not in found
    assert source.SOPInstanceUID in str(plain)  # the group still refers to the source image


def test_secondary_capture_and_pdf():
    source = instance(phantom())
    answer = Answer("normal", {"normal": 0.8, "benign": 0.2}, None, "m", 3, notice="Decision support only.")
    picture = np.full((96, 96, 3), 120, np.uint8)
    sc = reread(secondary_capture(source, picture, answer))
    pixels = sc.pixel_array
    assert pixels.shape[1] == 96 and pixels.shape[0] > 96 and (pixels[:96] == 120).all()
    assert pixels[96:].max() == 255  # the text band
    assert sc.BurnedInAnnotation == "YES" and sc.SourceImageSequence[0].ReferencedSOPInstanceUID == \
        source.SOPInstanceUID and sc.StudyInstanceUID == source.StudyInstanceUID
    pdf = reread(encapsulated_pdf(source, b"%PDF-1.4 minimal", answer))
    assert pdf.EncapsulatedDocument.rstrip(b"\0") == b"%PDF-1.4 minimal" and pdf.PatientID == PATIENT_ID
    assert pdf.Modality == "DOC" and pdf.SeriesDescription == "busi-web m (run 3)"
