"""Case reports: ``GET /reports/<id>`` (a page to print: one A4 page with a print stylesheet) and
``GET /reports/<id>.pdf`` (the same report as a PDF download). Each result of a diagnosis carries its
``report_id``; the server keeps the newest reports while it runs (:mod:`busi_web.report.keeper`), for the user
who made them (and admins)."""

from __future__ import annotations

import base64

from flask import Blueprint, Response, render_template

from busi_web.report.pdf import report_pdf_bytes
from busi_web.services import services_of
from busi_web.web.auth import current_user

bp = Blueprint("reports", __name__)


def _report(report_id: str):
    return services_of().reports.get(report_id, current_user.name, current_user.is_admin)


@bp.get("/reports/<report_id>")
def page(report_id: str):
    """The case report as a printable page."""
    report = _report(report_id)
    images = {name: "data:image/png;base64," + base64.b64encode(png).decode("ascii")
              for name, png in (("original", report.original_png), ("picture", report.picture_png)) if png}
    return render_template("pages/report.html", page="report", report=report, images=images, report_id=report_id)


@bp.get("/reports/<report_id>.pdf")
def pdf(report_id: str):
    """The case report as a PDF download."""
    report = _report(report_id)
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in report.filename.rsplit(".", 1)[0])[:60]
    return Response(report_pdf_bytes(report), mimetype="application/pdf",
                    headers={"Content-Disposition": f'attachment; filename="busi-web-report-{name or "image"}.pdf"'})
