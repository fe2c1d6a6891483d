"""The case report of a diagnosis: a page to print (one A4 page by its print stylesheet) and a PDF with the
same content, for the user who made it."""

from __future__ import annotations

import io

import pytest
from pypdf import PdfReader

from busi_web.errors import UserError
from busi_web.report.content import case_report
from busi_web.report.keeper import ReportKeeper
from busi_web.report.pdf import latin1, report_pdf_bytes
from tests.helpers import CLINICIAN, finished_run, image_bytes, make_user_client, upload

LESION = {"found": True, "statement": "lesion outlined, 12.0 x 8.0 mm; oval, parallel, circumscribed",
          "low_confidence": False, "outline": [[1, 1], [5, 1], [5, 5]],
          "measurements": {"long_axis_mm": 12.0, "short_axis_mm": 8.0, "area_mm2": 75.4, "long_axis_px": 120,
                           "short_axis_px": 80, "area_px": 7540},
          "descriptors": {"shape": {"value": "oval", "ellipse_fit": 0.93, "rule": "..."},
                          "orientation": {"value": "parallel", "depth_width_ratio": 0.66, "rule": "..."},
                          "margin": {"value": "circumscribed", "roughness": 1.02, "rule": "..."}}}


def body(lesion=None, demo=False) -> dict:
    return {"notice": "Decision support, not a diagnosis.", "results": [{
        "filename": "case.dcm", "label": "malignant", "probabilities": {"benign": 0.2, "malignant": 0.75,
                                                                         "normal": 0.05},
        "explainer": "gradcam", "target": "malignant", "width": 300, "height": 200, "ood": None, "caution": None,
        "lesion": lesion, "dicom": {"modality": "US", "frame": 2, "frames": 3, "photometric": "MONOCHROME2"},
        "pixel_spacing_source": "PixelSpacing"}],
        "model": {"run_id": 7, "name": "outline model", "modality": "ultrasound", "backbone": "segmenting_resnet",
                  "demo": demo, "training_data": {"dataset": "busi"},
                  "acceptance": {"n": 120, "macro_f1": 0.81, "macro_f1_ci": [0.74, 0.87]},
                  "calibration": {"temperature": 1.3},
                  "calibration_statement": "probabilities softened by temperature 1.30: ECE 0.12 -> 0.05 on validation",
                  "verdict": {"accepted": True, "text": "the default ultrasound model"}}}


def pdf_text(data: bytes) -> tuple[int, str]:
    reader = PdfReader(io.BytesIO(data))
    return len(reader.pages), "\n".join(page.extract_text() for page in reader.pages)


def test_the_pdf_holds_the_report_on_one_page():
    png = image_bytes("PNG", (120, 160), rgb=True)
    report = case_report(body(LESION, demo=True), 0, "dr.who", (png, png))
    pages, text = pdf_text(report_pdf_bytes(report))
    assert pages == 1
    for words in ("busi-web case report", "dr.who", "case.dcm: malignant (75.0%)", "benign", "20.0%",
                  "Decision support, not a diagnosis.", "12.0 x 8.0 mm", "Longest diameter", "12.0 mm",
                  "75.4 mm", "oval", "ellipse fit 0.93", "not a radiologist's reading", "outline model (run 7)",
                  "macro-F1 0.810, 95% CI 0.740-0.870 on 120 images", "softened by temperature 1.30", "frame 2 of 3",
                  "DEMO MODEL", "pixel spacing from the DICOM header (PixelSpacing)",
                  "acceptance: the default ultrasound model"):
        assert words in text, words
    for raw in ("ellipse_fit", "depth_width_ratio", "pixel_spacing"):
        assert raw not in text, raw
    assert text.count("Decision support") >= 1


def test_a_report_without_a_lesion_map_and_odd_characters():
    report = case_report(body(None), 0, "anna…", (b"", b""))
    pages, text = pdf_text(report_pdf_bytes(report))
    assert pages == 1 and "Lesion" not in text and "anna..." in text
    assert latin1("≥ 3 → ok ☃") == ">= 3 -> ok ?"


def test_the_keeper_makes_a_report_once_for_its_user_within_its_budget():
    made = []
    keeper = ReportKeeper(budget=1000)

    def make():
        made.append(1)
        return case_report(body(), 0, "anna", (b"", b""))

    first = keeper.keep("anna", make, 600)
    assert keeper.get(first, "anna").label == "malignant" and keeper.get(first, "anna") is keeper.get(first, "anna")
    assert made == [1]
    assert keeper.get(first, "boss", is_admin=True).user == "anna"
    with pytest.raises(UserError) as caught:
        keeper.get(first, "bob")
    assert caught.value.status == 404 and "diagnose the image again" in str(caught.value)
    second = keeper.keep("anna", make, 600)  # over the budget: the oldest goes
    with pytest.raises(UserError):
        keeper.get(first, "anna")
    assert keeper.get(second, "anna")


def test_every_diagnosis_has_a_printable_report_and_a_pdf(app, clinician_client, admin_client):
    store = app.extensions["busi_web"].store
    finished_run(store, promote=True)
    r = clinician_client.post("/api/predict", data=upload((image_bytes(rgb=True), "left.png")))
    assert r.status_code == 200, r.get_json()
    result = r.get_json()["results"][0]
    page = clinician_client.get(f"/reports/{result['report_id']}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for words in ("left.png", result["label"], "Decision support, not a diagnosis", "clin", "Print",
                  "data:image/png;base64,", "report.css"):
        assert words in html, words
    pdf = clinician_client.get(f"/reports/{result['report_id']}.pdf")
    assert pdf.status_code == 200 and pdf.mimetype == "application/pdf"
    assert 'filename="busi-web-report-left.pdf"' in pdf.headers["Content-Disposition"]
    pages, text = pdf_text(pdf.data)
    assert pages == 1 and f"left.png: {result['label']}" in text and "clin" in text
    assert admin_client.get(f"/reports/{result['report_id']}.pdf").status_code == 200
    other = make_user_client(app, "other-clinician", CLINICIAN[1], "clinician")
    r = other.get(f"/reports/{result['report_id']}")
    assert r.status_code == 404
    r = clinician_client.get("/reports/not-a-report.pdf")
    assert r.status_code == 404 and "diagnose the image again" in r.get_data(as_text=True)


def test_the_report_prints_the_colour_scale_the_patient_and_a_withheld_answer():
    legend = {"colormap": "jet", "stops": ["#000080", "#00ff00", "#800000"],
              "meaning": "relative evidence for the explained class, scaled per image; not a probability."}
    greek = [("Patient", "ΠΑΠΑΔΟΠΟΥΛΟΣ, ΕΛΕΝΗ"), ("Patient ID", "GR-77"), ("Accession", "ACC-9")]
    answer = {**body(), "legend": legend}
    answer["results"][0] = {**answer["results"][0], "label": None, "withheld": "no reliable answer: this image is "
                            "unlike the training images", "ood": {"out_of_distribution": True}}
    report = case_report(answer, 0, "dr.who", (b"", b""), greek)
    pages, text = pdf_text(report_pdf_bytes(report))
    assert pages == 1
    for words in ("ΠΑΠΑΔΟΠΟΥΛΟΣ, ΕΛΕΝΗ", "GR-77", "ACC-9", "case.dcm: no reliable answer", "not a probability",
                  "low", "high", "no class is given", "unlike the images the model was trained on"):
        assert words in text, words
    assert "case.dcm: malignant" not in text


def test_the_report_page_shows_the_colour_scale_without_inline_style(app, clinician_client):
    store = app.extensions["busi_web"].store
    finished_run(store, promote=True)
    r = clinician_client.post("/api/predict", data=upload((image_bytes(rgb=True), "left.png")))
    result = r.get_json()["results"][0]
    html = clinician_client.get(f"/reports/{result['report_id']}").get_data(as_text=True)
    legend = html.split('id="report-legend"')[1].split("</div>")[0]
    assert "stop-color" in legend and "not a probability" in legend and "style=" not in legend
