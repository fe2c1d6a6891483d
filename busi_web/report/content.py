"""What a case report says, built once from a diagnosis answer so that the HTML page, the PDF and the
Encapsulated PDF in the PACS all say the same thing."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any


@dataclass
class CaseReport:
    """One image's diagnosis, ready to print. ``original_png`` and ``picture_png`` are PNG bytes: the image, and
    the heatmap overlay with the lesion outline (or the image with the outline)."""

    title: str
    made_at: str  # ISO 8601, UTC
    user: str
    filename: str
    label: str
    probabilities: list[tuple[str, float]]  # highest first
    model: dict[str, Any]  # name, run, modality, backbone, training data, acceptance, calibration, demo
    notice: str
    explained: str
    warnings: list[str] = field(default_factory=list)
    operating: str | None = None  # the operating point's verdict in words ("Suspicious: consider biopsy ...")
    withheld: str | None = None  # why no class is given (an image unlike the training images)
    identifiers: list[tuple[str, str]] = field(default_factory=list)  # a DICOM case's patient and study: printed only
    legend: dict[str, Any] | None = None  # the heatmap's colour scale: {"stops": ["#rrggbb", ...], "meaning": ...}
    lesion_statement: str | None = None
    measurements: list[tuple[str, str]] = field(default_factory=list)  # (name, value with unit)
    descriptors: list[tuple[str, str, str]] = field(default_factory=list)  # (name, value, the number behind it)
    image_lines: list[str] = field(default_factory=list)  # size, DICOM description, spacing
    original_png: bytes = field(default=b"", repr=False)
    picture_png: bytes = field(default=b"", repr=False)

    @property
    def size_bytes(self) -> int:
        return len(self.original_png) + len(self.picture_png) + 4096

    def model_lines(self) -> list[str]:
        """The model card's summary as short lines."""
        m = self.model
        lines = [f"{m.get('name')} (run {m.get('run_id')}), {m.get('modality')} model, backbone {m.get('backbone')}"]
        data = m.get("training_data") or {}
        lines.append(f"trained on {data.get('dataset')}" + (" (synthetic images: a demo model)" if m.get("demo")
                                                             else ""))
        acc = m.get("acceptance")
        if acc and acc.get("macro_f1") is not None:
            ci = acc.get("macro_f1_ci")
            ci_text = f", 95% CI {ci[0]:.3f}-{ci[1]:.3f}" if ci else ""
            lines.append(f"acceptance set: macro-F1 {acc['macro_f1']:.3f}{ci_text} on {acc.get('n')} images")
        else:
            lines.append("not evaluated on an acceptance set")
        if m.get("calibration_statement"):
            lines.append(m["calibration_statement"])
        if m.get("verdict"):
            lines.append(f"acceptance: {m['verdict']['text']}")
        return lines


# The numbers behind the descriptors, and where a pixel spacing came from, in words (never the keys).
NUMBER_WORDS = {"ellipse_fit": "ellipse fit", "axis_ratio": "axis ratio", "solidity": "solidity",
                "depth_width_ratio": "depth / width ratio", "roughness": "margin roughness"}
SPACING_SOURCES = {"pixel_spacing": "as entered with the image"}


def _mm_or_px(m: dict[str, Any], key: str, squared: bool = False) -> str:
    mm = m.get(f"{key}_mm2" if squared else f"{key}_mm")
    px = m.get(f"{key}_px")
    if mm is not None:
        return f"{mm:.1f} mm²" if squared else f"{mm:.1f} mm"
    return f"{px:.0f} px²" if squared else f"{px:.0f} px"


def operating_text(op: dict[str, Any] | None) -> str | None:
    """The operating point's verdict as a sentence (``None`` for a model without one)."""
    if not op:
        return None
    head = "Suspicious: consider biopsy" if op["suspicious"] else "Below the biopsy threshold"
    target = op.get("target_sensitivity")
    return (f"{head}: p(malignant) {100 * op['p_malignant']:.1f}% against the threshold {100 * op['threshold']:.1f}%"
            + (f", chosen to keep a sensitivity of {target:g} for malignancy on the model's validation images."
               if target is not None else "."))


def warnings_of(body: dict[str, Any], index: int) -> list[str]:
    """The warnings that go with result ``index`` of a ``/api/predict`` answer wherever it is shown, printed or
    written to the PACS: an image unlike the training images, a demo model, a model that is not accepted, a
    caution about the heatmap, a scanner the training data did not include."""
    result, model = body["results"][index], body["model"]
    out = []
    if (result.get("ood") or {}).get("out_of_distribution"):
        out.append("This image is unlike the images the model was trained on: no class is given; do not rely on it.")
    if model.get("demo"):
        out.append("DEMO MODEL: trained on synthetic images; not for clinical use.")
    verdict = model.get("verdict") or {}
    if verdict and not verdict.get("accepted"):
        out.append(f"Model {verdict.get('text')}.")
    if result.get("caution"):
        out.append(f"Caution: {result['caution']}.")
    scanner = result.get("scanner") or {}
    if scanner.get("message"):
        name = " ".join(x for x in (scanner.get("manufacturer"), scanner.get("model_name")) if x)
        out.append(f"Scanner {name}: {scanner['message']}.")
    return out


def case_report(body: dict[str, Any], index: int, user: str, pictures: tuple[bytes, bytes],
                identifiers: list[tuple[str, str]] | None = None) -> CaseReport:
    """The report of result ``index`` of a ``/api/predict`` answer ``body``, made for ``user``;
    ``pictures`` are ``(original PNG, overlay-and-outline PNG)``; ``identifiers`` the patient and study of a
    DICOM case (printed on the report, kept nowhere else)."""
    result = body["results"][index]
    probs = sorted(result["probabilities"].items(), key=lambda kv: -kv[1])
    explained = (f"{result['explainer']} heatmap for class {result['target']}" if result.get("explainer")
                 else "no heatmap")
    report = CaseReport(
        title="busi-web case report", made_at=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), user=user,
        filename=result["filename"], label=result["label"] or "no reliable answer", probabilities=probs,
        model=body["model"], notice=body["notice"], explained=explained, original_png=pictures[0],
        picture_png=pictures[1], withheld=result.get("withheld"), identifiers=list(identifiers or []),
        legend=body.get("legend") if result.get("explainer") else None)
    report.warnings = warnings_of(body, index)
    report.operating = operating_text(result.get("operating_point"))
    report.image_lines.append(f"{result['width']} x {result['height']} px as analysed")
    dicom = result.get("dicom")
    if dicom:
        frame = f", frame {dicom['frame']} of {dicom['frames']}" if dicom["frames"] > 1 else ""
        report.image_lines.append(f"DICOM {dicom.get('modality') or ''}{frame}; {dicom['photometric']}")
    if result.get("pixel_spacing_source"):
        source = result["pixel_spacing_source"]
        report.image_lines.append(f"pixel spacing {SPACING_SOURCES.get(source, f'from the DICOM header ({source})')}")
    lesion = result.get("lesion")
    if lesion:
        report.lesion_statement = lesion["statement"]
        if lesion.get("found"):
            m = lesion["measurements"]
            report.measurements = [("Longest diameter", _mm_or_px(m, "long_axis")),
                                   ("Perpendicular diameter", _mm_or_px(m, "short_axis")),
                                   ("Area", _mm_or_px(m, "area", squared=True))]
            for name, d in lesion["descriptors"].items():
                numbers = ", ".join(f"{NUMBER_WORDS.get(k, k.replace('_', ' '))} {v}" for k, v in d.items()
                                    if k not in ("value", "rule"))
                report.descriptors.append((name, d["value"], numbers))
    return report
