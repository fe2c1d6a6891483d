"""Command line for using a model: ``predict`` (images to probabilities and overlays) and ``evaluate``."""

from __future__ import annotations

import json
from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext

from busi_web.cli.common import RUN_ID, parse_params, services, user_errors
from busi_web.diagnosis.active import serving_run
from busi_web.diagnosis.record import diagnosis_row
from busi_web.diagnosis.scanner import scanner_check
from busi_web.diagnosis.uploads import decode_upload, modality_of
from busi_web.errors import UserError
from busi_web.evaluation.card import NOTICE, build_card, provenance
from busi_web.explain.render import fast_png
from busi_web.model.shown import WITHHELD
from busi_web.report.content import operating_text
from busi_web.store.acceptance import check_modality


@click.command("predict")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--run", "run_id", type=RUN_ID, help="Use this run's best model (default: the modality's default).")
@click.option("--modality", help="Whose default model answers (default: ultrasound, or the only modality with one).")
@click.option("--explainer", default="gradcam", show_default=True, help="An explainer (`busi-web plugins` lists them).")
@click.option("--explainer-param", "explainer_params", multiple=True, metavar="KEY=VALUE",
              help="A parameter of the explainer, e.g. batch_size=8 for scorecam. Repeatable.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for overlay PNGs.")
@click.option("--alpha", default=0.5, show_default=True, type=click.FloatRange(0, 1), help="Heatmap opacity.")
@click.option("--frame", type=click.IntRange(1, 100_000), help="Which frame (1-based) of multi-frame DICOM files.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
@user_errors
def predict_command(images: tuple[str, ...], run_id: int | None, modality: str | None, explainer: str,
                    explainer_params: tuple[str, ...], out_dir: str, alpha: float, frame: int | None,
                    as_json: bool) -> None:
    """Classify IMAGES (PNG, JPEG, BMP, TIFF or DICOM) with a heatmap: probabilities on stdout, overlays in
    --out, and which model answered. A DICOM file's modality picks the default model, and its pixel spacing
    gives lesion sizes in mm."""
    svc = services()
    params = svc.registry.explainer(explainer).validate(parse_params(explainer_params, "--explainer-param"))
    uploads = []
    for image_path in images:
        with open(image_path, "rb") as stream:
            uploads.append(decode_upload(stream, image_path, int(current_app.config["MAX_IMAGE_PIXELS"]),
                                         frame=frame))
    served = serving_run(svc.store, run_id, modality_of(uploads, check_modality(modality) if modality else None))
    predictor = svc.predictor(served)
    model = {**provenance(build_card(svc.store, svc.registry, served)), "verdict": svc.verdict(served)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results, preds = [], []
    for image_path, upload in zip(images, uploads, strict=True):
        try:
            pred = predictor.predict_batch([upload.image], explainer=explainer, explainer_params=params,
                                           regions=[upload.scan_region])[0]
        except ValueError as exc:  # the image or the explainer's choice does not suit this model
            raise UserError(f"{image_path}: {exc}") from None
        preds.append(pred)
        scanner = None if upload.dicom is None else scanner_check(
            upload.dicom.manufacturer, upload.dicom.model_name, model["training_data"]["devices"])
        overlay_path = out / f"{Path(image_path).stem}_{explainer}.png"
        # Without a usable map (map_note says why) the picture is the image alone.
        overlay_path.write_bytes(pred.overlay_png(alpha=alpha) if pred.heatmap is not None else
                                 fast_png(pred.picture()))
        results.append({"image": image_path, "label": pred.shown_label, "withheld": WITHHELD if pred.withheld else None,
                        "probabilities": pred.probabilities,
                        "overlay": str(overlay_path), "caution": pred.caution, "ood": pred.ood,
                        "lesion": pred.lesion_info(upload.spacing_mm), "map_note": pred.map_note,
                        "operating_point": None if pred.withheld else pred.operating,
                        "scanner": scanner, "dicom": None if upload.dicom is None else upload.dicom.describe()})
    # Every path that diagnoses writes the same audit row (the command line's user is "cli").
    svc.store.audit_many("diagnose", user="cli", run_id=served, rows=[
        diagnosis_row(upload, pred, model, current_app.config["SECRET_KEY"], lesion=r["lesion"],
                      scanner=r["scanner"], extra={"path": "cli"})
        for upload, pred, r in zip(uploads, preds, results, strict=True)])
    if as_json:
        click.echo(json.dumps({"model": model, "notice": NOTICE, "results": results}, indent=2))
    else:
        demo = " [DEMO: trained on synthetic images]" if model["demo"] else ""
        click.echo(f"model: run {model['run_id']} ({model['name']}), {model['modality']}{demo}")
        for r in results:
            probs = "  ".join(f"{k} {v:.3f}" for k, v in r["probabilities"].items())
            if r["withheld"]:
                click.echo(f"{r['image']}: {r['withheld']}  (probabilities, not an answer: {probs})  -> {r['overlay']}")
            else:
                click.echo(f"{r['image']}: {r['label']}  ({probs})  -> {r['overlay']}")
            if r["operating_point"]:
                click.echo(f"  {operating_text(r['operating_point'])}")
            if r["scanner"] and r["scanner"]["message"]:
                click.echo(f"  scanner {r['scanner']['model_name']}: {r['scanner']['message']}")
            if r["ood"] and r["ood"]["out_of_distribution"]:
                click.echo(f"  warning: unlike the images this model was trained on (score {r['ood']['score']:.2f}, "
                           f"threshold {r['ood']['threshold']:.2f}); do not rely on this result")
            if r["caution"]:
                click.echo(f"  caution: {r['caution']}")
            if r["map_note"]:
                click.echo(f"  no heatmap: {r['map_note']}")
            if r["lesion"]:
                click.echo(f"  {r['lesion']['statement']}")
        click.echo(NOTICE)


@click.command("evaluate")
@click.option("--run", "run_id", required=True, type=RUN_ID, help="The run whose best model is evaluated.")
@click.option("--data-dir", type=click.Path(),
              help="Folder of images in the dataset's layout (default: the run's own folder for its dataset, "
                   "else DATA_DIRS).")
@click.option("--dataset", help="Dataset plugin that reads the folder (default: the run's dataset).")
@click.option("--part", type=click.Choice(["train", "val", "test"]),
              help="Only this part of the run's own split (for the folder the run was trained on).")
@click.option("--explainers", default="", help="Comma-separated explainers (default: every registered one).")
@click.option("--max-maps", "max_maps", multiple=True, metavar="N|EXPLAINER=N",
              help="Map at most N images (spread evenly) per explainer, or for one explainer, e.g. scorecam=20 "
                   "(Score-CAM takes seconds per image on a CPU). Every image is still classified.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Dataset parameter. Repeatable.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@with_appcontext
@user_errors
def evaluate_command(run_id: int, data_dir: str | None, dataset: str | None, part: str | None, explainers: str,
                     max_maps: tuple[str, ...], params: tuple[str, ...], device: str) -> None:
    """Accuracy, macro-F1, AUC, confusion matrix, heatmap localisation and a shortcut check of run ID's model;
    for a model that outlines lesions also Dice, IoU, its map's pointing game and false lesions on normal images.

    The report (report.md, report.json, PNGs) goes into the run's folder under
    evaluations/ and shows on the run's page. An explainer that fails is skipped, and the report says why.
    """
    from busi_web.evaluation.evaluate import evaluate_run  # imports torch: not at CLI start

    svc = services()
    run = svc.store.get_run(run_id)
    dataset = dataset or run["dataset"]
    if data_dir is None:  # the run's own folder for its own dataset, else the configured one
        data_dir = (run.get("data_dir") if dataset == run["dataset"] else None) or \
            (current_app.config.get("DATA_DIRS") or {}).get(dataset)
    dataset_params = parse_params(params) or None
    report = evaluate_run(Path(run["run_dir"]), data_dir, dataset, registry=svc.registry, part=part,
                          explainers=[e.strip() for e in explainers.split(",") if e.strip()] or None,
                          dataset_params=dataset_params, max_maps=_max_maps(max_maps),
                          device=device, log=lambda m: click.echo(m, err=True))
    c = report["classification"]
    auc = "n/a" if c["auc"] is None else f"{c['auc']:.4f}"
    click.echo(f"{c['n']} images: accuracy {c['accuracy']:.4f}, macro-F1 {c['macro_f1']:.4f}, AUC {auc}")
    for site, m in report["sites"].items():
        op = m.get("operating_point")
        at = (f"; at the operating point (p(malignant) >= {op['threshold']:.3f}) sensitivity "
              f"{_num(op['sensitivity'])}, specificity {_num(op['specificity'])}") if op else ""
        click.echo(f"site {site} ({m['n']} images): accuracy {_num(m['accuracy'])}, macro-F1 {_num(m['macro_f1'])}, "
                   f"benign-vs-malignant AUC {_num(m['auc_bm'])}, ECE {_num(m['ece'])}, flagged out of distribution "
                   f"{_num(m.get('ood_flagged_share'))} (of the wrong answers {_num(m.get('wrong_flagged_share'))})"
                   + at)
    recorded = svc.record_validation(run_id, report, by="cli", dataset_params=dataset_params)
    if recorded is not None:
        click.echo(f"recorded as external validation {recorded['id']} of run {run_id} (data it never trained on)")
    seg = report.get("segmentation")
    if seg and seg["n_lesion"]:
        normals = (f"; false lesions {seg['false_lesion_rate']:.3f} of {seg['n_normal']} normal images "
                   f"({seg['false_confident_rate']:.3f} confident)") if seg["n_normal"] else ""
        click.echo(f"outline    Dice {seg['dice']:.3f}  IoU {seg['iou']:.3f}  pointing {seg['pointing']:.3f}  "
                   f"({seg['n_lesion']} lesions){normals}")
    for name, s in report["localisation"].items():
        if s["n"]:
            click.echo(f"{name:<10} pointing {s['pointing']:.3f}  energy {s['energy']:.3f}  IoU {s['iou']:.3f}  "
                       f"(chance {s['chance']:.3f}, {s['n']} lesions)"
                       + ("  LOOKS AT MARKS" if report["shortcuts"][name]["flagged"] else ""))
    for name, why in (report.get("skipped") or {}).items():
        click.echo(f"{name:<10} skipped: {why}")
    click.echo(f"report: {Path(report['folder']) / 'report.md'}")


def _num(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"


def _max_maps(values: tuple[str, ...]) -> int | dict[str, int] | None:
    """``("20",)`` caps every explainer; ``("scorecam=20", ...)`` caps the ones named."""
    if not values:
        return None
    per: dict[str, int] = {}
    for value in values:
        name, _, number = value.rpartition("=")
        try:
            n = int(number)
        except ValueError:
            raise UserError(f"--max-maps expects N or EXPLAINER=N, got {value!r}") from None
        if not name:
            return n
        per[name.strip()] = n
    return per


COMMANDS = [predict_command, evaluate_command]
