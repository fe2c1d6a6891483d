"""The case report as a one-page A4 PDF, drawn with fpdf2 (pure Python, no browser or system fonts needed).

The core Helvetica font covers Latin-1; other characters are written as their nearest Latin-1 spelling."""

from __future__ import annotations

import io

from fpdf import FPDF

from busi_web.report.content import CaseReport

SPELLED = {"…": "...", "–": "-", "—": "-", "’": "'", "‘": "'", "“": '"', "”": '"', "≥": ">=", "≤": "<=", "→": "->"}
WIDTH = 186  # mm between the margins of an A4 page


def latin1(text: object) -> str:
    """``text`` as Latin-1 (what the core fonts can draw)."""
    out = "".join(SPELLED.get(c, c) for c in str(text))
    return out.encode("latin-1", "replace").decode("latin-1")


def _rows(pdf: FPDF, rows: list[tuple[str, ...]], widths: tuple[int, ...]) -> None:
    pdf.set_font("Helvetica", size=9)
    for row in rows:
        for text, width in zip(row, widths, strict=False):
            pdf.cell(width, 5, latin1(text), border="B")
        pdf.ln(5)


def report_pdf_bytes(report: CaseReport) -> bytes:
    """``report`` as PDF bytes: one page when the lesion tables are short, as they are."""
    pdf = FPDF(format="A4")
    pdf.set_margins(12, 12, 12)
    pdf.set_auto_page_break(True, 12)
    pdf.set_title(latin1(report.title))
    pdf.set_creator("busi-web")
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(120, 8, latin1(report.title))
    pdf.set_font("Helvetica", size=9)
    pdf.cell(66, 8, latin1(f"{report.made_at} - {report.user}"), align="R")
    pdf.ln(9)
    pdf.set_font("Helvetica", "B", 9)
    pdf.set_fill_color(255, 243, 205)
    pdf.multi_cell(WIDTH, 5, latin1(report.notice), border=1, fill=True)
    pdf.ln(1)
    for warning in report.warnings:
        pdf.set_text_color(170, 0, 0)
        pdf.multi_cell(WIDTH, 5, latin1(warning))
    pdf.set_text_color(0, 0, 0)
    top = pdf.get_y() + 1
    side = 90
    for k, (png, caption) in enumerate(((report.original_png, "Image"), (report.picture_png, report.explained))):
        if png:
            pdf.image(io.BytesIO(png), x=12 + k * (side + 6), y=top, w=side, h=side, keep_aspect_ratio=True)
        pdf.set_xy(12 + k * (side + 6), top + side + 1)
        pdf.set_font("Helvetica", size=8)
        pdf.cell(side, 4, latin1(caption), align="C")
    pdf.set_xy(12, top + side + 7)
    pdf.set_font("Helvetica", "B", 13)
    if report.withheld:
        pdf.cell(WIDTH, 7, latin1(f"{report.filename}: no reliable answer"))
        pdf.ln(8)
        pdf.set_font("Helvetica", size=9)
        pdf.multi_cell(WIDTH, 5, latin1(f"{report.withheld.capitalize()}: no class is given. The probabilities below "
                                        "are not an answer."))
    else:
        pdf.cell(WIDTH, 7, latin1(f"{report.filename}: {report.label} ({100 * report.probabilities[0][1]:.1f}%)"))
        pdf.ln(8)
    _rows(pdf, [(name, f"{100 * p:.1f}%") for name, p in report.probabilities], (60, 30))
    if report.operating:
        pdf.ln(1)
        pdf.set_font("Helvetica", "B", 10)
        pdf.multi_cell(WIDTH, 5, latin1(report.operating))
    if report.lesion_statement:
        pdf.ln(2)
        pdf.set_font("Helvetica", "B", 10)
        pdf.cell(WIDTH, 6, "Lesion")
        pdf.ln(6)
        pdf.set_font("Helvetica", size=9)
        pdf.multi_cell(WIDTH, 5, latin1(report.lesion_statement))
        _rows(pdf, report.measurements, (60, 40))
        if report.descriptors:
            pdf.ln(1)
            _rows(pdf, [(name.capitalize(), value, numbers) for name, value, numbers in report.descriptors],
                  (30, 40, 116))
        pdf.set_font("Helvetica", "I", 8)
        pdf.multi_cell(WIDTH, 4, "Measured on the model's predicted outline, not a radiologist's reading.")
    pdf.ln(2)
    pdf.set_font("Helvetica", "B", 10)
    pdf.cell(WIDTH, 6, "Image and model")
    pdf.ln(6)
    pdf.set_font("Helvetica", size=9)
    for line in report.image_lines + report.model_lines():
        pdf.multi_cell(WIDTH, 5, latin1(line))
    return bytes(pdf.output())
