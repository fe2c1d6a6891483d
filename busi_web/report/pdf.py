"""The case report as a one-page A4 PDF, drawn with fpdf2 (pure Python, no browser or system fonts needed).

The text is set in DejaVu Sans, which matplotlib (a dependency) ships, so that any patient's name prints as
it is written (Greek, Cyrillic, accents). Where that font cannot be found, the core Helvetica font is used,
which covers Latin-1 only: other characters are then written as their nearest Latin-1 spelling."""

from __future__ import annotations

import io
from pathlib import Path

from fpdf import FPDF

from busi_web.report.content import CaseReport

SPELLED = {"…": "...", "–": "-", "—": "-", "’": "'", "‘": "'", "“": '"', "”": '"', "≥": ">=", "≤": "<=", "→": "->"}
WIDTH = 186  # mm between the margins of an A4 page


def latin1(text: object) -> str:
    """``text`` as Latin-1 (what the core fonts can draw)."""
    out = "".join(SPELLED.get(c, c) for c in str(text))
    return out.encode("latin-1", "replace").decode("latin-1")


def _fonts() -> dict[str, Path] | None:
    """DejaVu Sans (regular, bold, oblique) from matplotlib's data, or ``None`` when it is not there."""
    try:
        import matplotlib  # only to find its bundled fonts, when a report is drawn

        folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    except Exception:  # noqa: BLE001 - any failure here only means: use the core font
        return None
    files = {"": folder / "DejaVuSans.ttf", "B": folder / "DejaVuSans-Bold.ttf", "I": folder / "DejaVuSans-Oblique.ttf"}
    return files if all(f.is_file() for f in files.values()) else None


class _Report(FPDF):
    """An A4 page whose ``font`` is DejaVu Sans when present (any script), else Helvetica (Latin-1)."""

    def __init__(self) -> None:
        super().__init__(format="A4")
        fonts = _fonts()
        self.unicode = fonts is not None
        if fonts is not None:
            for style, path in fonts.items():
                self.add_font("DejaVu", style, str(path))
        self.face = "DejaVu" if self.unicode else "Helvetica"

    def words(self, value: object) -> str:
        """``value`` as the font can draw it."""
        return "".join(SPELLED.get(c, c) for c in str(value)) if self.unicode else latin1(value)


def _rows(pdf: _Report, rows: list[tuple[str, ...]], widths: tuple[int, ...]) -> None:
    pdf.set_font(pdf.face, size=9)
    for row in rows:
        for text, width in zip(row, widths, strict=False):
            pdf.cell(width, 5, pdf.words(text), border="B")
        pdf.ln(5)


def report_pdf_bytes(report: CaseReport) -> bytes:
    """``report`` as PDF bytes: one page when the lesion tables are short, as they are."""
    pdf = _Report()
    pdf.set_margins(12, 12, 12)
    pdf.set_auto_page_break(True, 12)
    pdf.set_title(pdf.words(report.title))
    pdf.set_creator("busi-web")
    pdf.add_page()
    pdf.set_font(pdf.face, "B", 16)
    pdf.cell(120, 8, pdf.words(report.title))
    pdf.set_font(pdf.face, size=9)
    pdf.cell(66, 8, pdf.words(f"{report.made_at} - {report.user}"), align="R")
    pdf.ln(9)
    if report.identifiers:
        _rows(pdf, [(name, value) for name, value in report.identifiers], (40, 146))
        pdf.ln(1)
    pdf.set_font(pdf.face, "B", 9)
    pdf.set_fill_color(255, 243, 205)
    pdf.multi_cell(WIDTH, 5, pdf.words(report.notice), border=1, fill=True)
    pdf.ln(1)
    for warning in report.warnings:
        pdf.set_text_color(170, 0, 0)
        pdf.multi_cell(WIDTH, 5, pdf.words(warning))
    pdf.set_text_color(0, 0, 0)
    top = pdf.get_y() + 1
    side = 90
    for k, (png, caption) in enumerate(((report.original_png, "Image"), (report.picture_png, report.explained))):
        if png:
            pdf.image(io.BytesIO(png), x=12 + k * (side + 6), y=top, w=side, h=side, keep_aspect_ratio=True)
        pdf.set_xy(12 + k * (side + 6), top + side + 1)
        pdf.set_font(pdf.face, size=8)
        pdf.cell(side, 4, pdf.words(caption), align="C")
    below = top + side + 7
    if report.legend:
        stops = report.legend["stops"]
        step = 60 / len(stops)
        pdf.set_xy(12, below)
        pdf.set_font(pdf.face, size=7)
        pdf.cell(8, 4, "low")
        for k, colour in enumerate(stops):
            pdf.set_fill_color(*(int(colour[i:i + 2], 16) for i in (1, 3, 5)))
            pdf.rect(20 + k * step, below + 0.5, step + 0.1, 3, style="F")
        pdf.set_xy(81, below)
        pdf.cell(8, 4, "high")
        pdf.set_xy(12, below + 4.5)
        pdf.multi_cell(WIDTH, 3.5, pdf.words(f"Colour: {report.legend['meaning']}"))
        below = pdf.get_y() + 1
    pdf.set_xy(12, below)
    pdf.set_font(pdf.face, "B", 13)
    if report.withheld:
        pdf.cell(WIDTH, 7, pdf.words(f"{report.filename}: no reliable answer"))
        pdf.ln(8)
        pdf.set_font(pdf.face, size=9)
        pdf.multi_cell(WIDTH, 5, pdf.words(f"{report.withheld.capitalize()}: no class is given. The probabilities "
                                           "below are not an answer."))
    else:
        pdf.cell(WIDTH, 7, pdf.words(f"{report.filename}: {report.label} ({100 * report.probabilities[0][1]:.1f}%)"))
        pdf.ln(8)
    _rows(pdf, [(name, f"{100 * p:.1f}%") for name, p in report.probabilities], (60, 30))
    if report.operating:
        pdf.ln(1)
        pdf.set_font(pdf.face, "B", 10)
        pdf.multi_cell(WIDTH, 5, pdf.words(report.operating))
    if report.lesion_statement:
        pdf.ln(2)
        pdf.set_font(pdf.face, "B", 10)
        pdf.cell(WIDTH, 6, "Lesion")
        pdf.ln(6)
        pdf.set_font(pdf.face, size=9)
        pdf.multi_cell(WIDTH, 5, pdf.words(report.lesion_statement))
        _rows(pdf, report.measurements, (60, 40))
        if report.descriptors:
            pdf.ln(1)
            _rows(pdf, [(name.capitalize(), value, numbers) for name, value, numbers in report.descriptors],
                  (30, 40, 116))
        pdf.set_font(pdf.face, "I", 8)
        pdf.multi_cell(WIDTH, 4, "Measured on the model's predicted outline, not a radiologist's reading.")
    pdf.ln(2)
    pdf.set_font(pdf.face, "B", 10)
    pdf.cell(WIDTH, 6, "Image and model")
    pdf.ln(6)
    pdf.set_font(pdf.face, size=9)
    for line in report.image_lines + report.model_lines():
        pdf.multi_cell(WIDTH, 5, pdf.words(line))
    return bytes(pdf.output())
