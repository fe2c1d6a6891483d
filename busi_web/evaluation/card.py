"""Model cards: what a model is, what it was trained and tested on, how good and how sure it is, what it is for,
and who made it a default, when and why.

:func:`build_card` reads it all from the run's folder (``params.json``,
``metrics.json``, ``acceptance.json``) and the store (the run, its acceptance
result on the current set, the default it holds, the audit of its default
changes). :func:`write_card` keeps a copy as ``model_card.json`` in the run
folder (the trainer writes it when the run ends; every default change and
acceptance evaluation writes it again). :func:`card_markdown` is the export.
:func:`provenance` is the short form every diagnosis carries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from busi_web.data.sites import dataset_names
from busi_web.evaluation.sites import sites_markdown
from busi_web.plugins import PluginRegistry, UnknownPlugin
from busi_web.store import JobStore, utc_now
from busi_web.store import run_files as art

__all__ = ["NOTICE", "build_card", "write_card", "card_markdown", "provenance", "is_demo"]

NOTICE = ("Decision support, not a diagnosis: the result must be read by a qualified clinician together with "
          "the images and the patient's history.")
INTENDED_USE = ("A second reader for breast imaging of the modality below: it proposes {classes} with a calibrated "
                "probability, and shows where the evidence lies. It does not replace a radiologist's reading, and it "
                "is not a device cleared for diagnosis.")


def intended_use(classes: list[str] | None) -> str:
    """The intended-use statement for a model of ``classes`` (its own classes, in words)."""
    names = list(classes or []) or ["a class"]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    return INTENDED_USE.format(classes=listed)


def is_demo(registry: PluginRegistry, dataset: str) -> bool:
    """Whether a model of ``dataset`` (a run's dataset label: one name, or several joined by ``+``) is a demo: a
    dataset plugin it trained on says its images are synthetic."""
    for name in dataset_names(dataset):
        try:
            if registry.dataset(name).synthetic:
                return True
        except UnknownPlugin:
            continue
    return False


def _limits(run: dict[str, Any], params: dict[str, Any], demo: bool, acceptance: dict[str, Any] | None,
            accepted_set: dict[str, Any] | None) -> list[str]:
    limits = []
    if demo:
        limits.append("DEMO: trained on synthetic images, not on scans; its answers on real images mean nothing")
    backbone = ((params.get("params") or {}).get("backbone") or {})
    if not backbone.get("pretrained_path"):
        limits.append("trained from scratch (no pretrained weights)")
    if acceptance is None:
        limits.append(f"not evaluated on the acceptance set of its modality ({run.get('modality')})")
    elif accepted_set is not None and accepted_set.get("source") != "folder":
        limits.append("its acceptance images are a share of its own dataset: it is not validated on this site's "
                      "scanners")
    train = (params.get("params") or {}).get("train") or {}
    if (train.get("resize") or 0) > (train.get("input_size") or 0):
        limits.append("classifies the centre crop of the image it is given; findings near the edges may be cut off")
    return limits


def build_card(store: JobStore, registry: PluginRegistry, run_id: int) -> dict[str, Any]:
    """The model card of run ``run_id`` as plain data (raises ``RunNotFound`` for an unknown run)."""
    run = store.get_run(run_id)
    folder = run.get("run_dir")
    params = art.read_json(folder, art.PARAMS_JSON) or {}
    metrics = art.read_json(folder, art.METRICS_JSON) or {}
    modality = run.get("modality") or "ultrasound"
    accepted_set = store.acceptance_set(modality)
    result = None if accepted_set is None else store.acceptance_result(run_id, accepted_set["id"])
    acceptance = None if result is None else {
        "set_id": accepted_set["id"], "set_name": accepted_set["name"], "source": accepted_set["source"],
        "evaluated_at": result["evaluated_at"], **result["metrics"]}
    default = store.default_model(modality)
    holds = default is not None and default["run_id"] == int(run_id)
    history = [{"time": a["time"], "user": a["user"], "action": a["action"], "modality": a["detail"].get("modality"),
                "reason": a["detail"].get("reason")}
               for a in store.audit_log(("model.default.set", "model.default.clear"), limit=100, run_id=int(run_id))]
    demo = is_demo(registry, run["dataset"])
    train = (params.get("params") or {}).get("train") or run.get("params", {}).get("train") or {}
    cal = metrics.get("calibration") or None
    test = {k: metrics.get(k) for k in ("n", "accuracy", "macro_f1", "auc")} if metrics else None
    validations = [{"id": v["id"], "dataset": v["dataset"], "n": v["n"], "created_at": v["created_at"],
                    "created_by": v["created_by"], "sites": v["metrics"], "report": v["report"]}
                   for v in store.validations(run_id)]
    return {
        "card_version": 1, "generated_at": utc_now(), "demo": demo,
        "model": {"run_id": run["id"], "name": run.get("name"), "status": run["status"], "backbone": run["backbone"],
                  "backbone_params": (params.get("params") or {}).get("backbone") or {},
                  "input_size": train.get("input_size"), "resize": train.get("resize"),
                  "classes": params.get("classes"), "modality": modality},
        "data": {"dataset": run["dataset"], "data_dir": run.get("data_dir"), "data_hash": params.get("data_hash"),
                 "dataset_params": (params.get("params") or {}).get("dataset") or {},
                 "synthetic": demo, "counts": params.get("counts"),
                 "sources": params.get("datasets") or [{"dataset": run["dataset"], "data_dir": run.get("data_dir")}],
                 "sites": params.get("sites"),
                 "split_sizes": {part: sum(c.values()) for part, c in (params.get("counts") or {}).items()},
                 "left_out_for_acceptance": params.get("acceptance_left_out")},
        "training": {"params": train, "epochs_done": run.get("epochs_done"), "kept_epoch": metrics.get("best_epoch"),
                     "chosen_by": f"{metrics.get('monitor') or train.get('monitor')} on the validation part",
                     "seconds": metrics.get("train_seconds"), "started_at": run.get("started_at"),
                     "finished_at": run.get("finished_at"), "hardware": params.get("hardware"),
                     "versions": params.get("versions")},
        "results": {"validation": metrics.get("validation"), "test": test, "acceptance": acceptance,
                    "calibration": None if not cal else {
                        "method": cal.get("method"), "temperature": cal.get("temperature"),
                        "ece_validation": [cal["val"]["ece_before"], cal["val"]["ece_after"]],
                        "ece_test": [cal["test"]["ece_before"], cal["test"]["ece_after"]]},
                    "out_of_distribution": metrics.get("ood"),
                    "operating_point": metrics.get("operating_point"), "sites": metrics.get("sites"),
                    "external_validations": validations},
        "intended_use": {"statement": intended_use(params.get("classes")), "notice": NOTICE,
                         "limits": _limits(run, params, demo, acceptance, accepted_set)},
        "promotion": {"default_of": modality if holds else None,
                      "set_by": default["set_by"] if holds else None, "set_at": default["set_at"] if holds else None,
                      "reason": default["reason"] if holds else None, "history": history},
    }


def write_card(store: JobStore, registry: PluginRegistry, run_id: int) -> dict[str, Any]:
    """Build the card and keep it as ``model_card.json`` in the run folder; returns it."""
    card = build_card(store, registry, run_id)
    folder = store.get_run(run_id).get("run_dir")
    if folder and Path(folder).is_dir():
        art.write_json(Path(folder) / art.MODEL_CARD_JSON, card)
    return card


def _pct(value: Any) -> str:
    return "—" if not isinstance(value, (int, float)) else f"{value:.3f}"


def _ci(acceptance: dict[str, Any], name: str) -> str:
    ci = (acceptance.get("ci") or {}).get(name)
    return f"{_pct(acceptance.get(name))} (95% CI {ci[0]:.3f}–{ci[1]:.3f})" if ci else _pct(acceptance.get(name))


def card_markdown(card: dict[str, Any]) -> str:
    """The card as a Markdown document."""
    m, d, t, r = card["model"], card["data"], card["training"], card["results"]
    lines = [f"# Model card: run {m['run_id']} — {m['name']}", ""]
    if card["demo"]:
        lines += ["> **DEMO MODEL** — trained on synthetic images. Not for clinical use.", ""]
    lines += [f"> {card['intended_use']['notice']}", "", "## Model",
              f"- Modality: {m['modality']}", f"- Backbone: {m['backbone']} {m['backbone_params']}",
              f"- Input: {m['input_size']} px (resized to {m['resize']}), classes: {', '.join(m['classes'] or [])}",
              "", "## Data",
              "- Datasets: " + ", ".join(f"{x['dataset']} ({x.get('data_dir') or 'generated'})"
                                         for x in d.get("sources") or [{"dataset": d["dataset"],
                                                                        "data_dir": d["data_dir"]}]),
              f"- Content hash: `{d['data_hash']}`", f"- Split sizes: {d['split_sizes']}"]
    for site, c in (d.get("sites") or {}).items():
        devices = ", ".join(f"{k} ({v})" for k, v in (c.get("devices") or {}).items())
        images = {part: sum(c[part].values()) for part in ("train", "val", "test") if part in c}
        lines.append(f"- Site {site}: {devices or 'devices unknown'}; images {images}")
    if d.get("left_out_for_acceptance"):
        lines.append(f"- Left out for the acceptance set: {d['left_out_for_acceptance'].get('images')} images")
    lines += ["", "## Training", f"- Epochs: {t['epochs_done']}, kept epoch {t['kept_epoch']} ({t['chosen_by']})",
              f"- Time: {_pct(t['seconds'])} s on {(t.get('hardware') or {}).get('device')} "
              f"({(t.get('hardware') or {}).get('cpu')})", "", "## Results", "",
              "| part | n | accuracy | macro-F1 | AUC |", "| --- | --- | --- | --- | --- |"]
    for name, part in (("validation", r.get("validation")), ("test", r.get("test"))):
        if part:
            lines.append(f"| {name} | {part.get('n', '—')} | {_pct(part.get('accuracy'))} | "
                         f"{_pct(part.get('macro_f1'))} | {_pct(part.get('auc'))} |")
    a = r.get("acceptance")
    if a:
        lines += ["", f"Acceptance set {a['set_id']} ({a['n']} images, {a['source']}):",
                  f"- macro-F1 {_ci(a, 'macro_f1')}", f"- accuracy {_ci(a, 'accuracy')}"]
        lines += [f"- {k.replace('_', ' ')} {_ci(a, k)}" for k in sorted(a) if k.startswith("sensitivity_")]
    else:
        lines += ["", "Not evaluated on an acceptance set."]
    if r.get("sites"):
        lines += ["", "Test part, per site (calibrated probabilities):", ""] + sites_markdown(r["sites"])
    op = r.get("operating_point")
    if op:
        lines += ["", f"Operating point: suspicious (consider biopsy) at p(malignant) >= {op['threshold']:.3f}, "
                      f"chosen on validation to keep a sensitivity of {op['target_sensitivity']:g} (reached "
                      f"{op['sensitivity']:.3f})."]
    for v in r.get("external_validations") or []:
        lines += ["", f"External validation {v['id']} on {v['dataset']} ({v['n']} images, {v['created_at']}, by "
                      f"{v['created_by']}):", ""] + sites_markdown(v["sites"])
    c = r.get("calibration")
    if c:
        lines += ["", f"Calibration: temperature {c['temperature']:.3f}; ECE on test {c['ece_test'][0]:.3f} before, "
                      f"{c['ece_test'][1]:.3f} after."]
    lines += ["", "## Intended use and limits", card["intended_use"]["statement"], ""]
    lines += [f"- {limit}" for limit in card["intended_use"]["limits"]]
    p = card["promotion"]
    lines += ["", "## Promotion"]
    lines.append(f"- Default {p['default_of']} model since {p['set_at']}, set by {p['set_by']}: {p['reason']}"
                 if p["default_of"] else "- Not a default model.")
    lines += [f"- {h['time']} {h['user']}: {h['action']} ({h['modality']}) — {h['reason']}" for h in p["history"]]
    return "\n".join(lines) + "\n"


def calibration_statement(cal: dict[str, Any] | None) -> str:
    """What was measured and done about calibration, in words (never "calibrated" when nothing changed)."""
    if not cal or cal.get("temperature") is None:
        return "calibration not checked for this model"
    t = float(cal["temperature"])
    before, after = (cal.get("ece_validation") or [None, None])[:2]
    if abs(t - 1.0) < 0.01:
        measured = f"ECE {before:.2f} on validation" if before is not None else "on validation"
        return f"calibration checked ({measured}): no adjustment needed"
    change = f": ECE {before:.2f} -> {after:.2f} on validation" if before is not None and after is not None else ""
    return f"probabilities softened by temperature {t:.2f}{change}"


def provenance(card: dict[str, Any]) -> dict[str, Any]:
    """What every diagnosis carries about the model that made it: a summary of its card."""
    r = card["results"]
    a = r.get("acceptance")
    return {"run_id": card["model"]["run_id"], "name": card["model"]["name"], "modality": card["model"]["modality"],
            "backbone": card["model"]["backbone"], "demo": card["demo"],
            "training_data": {"dataset": card["data"]["dataset"], "data_hash": card["data"]["data_hash"],
                              "synthetic": card["data"]["synthetic"],
                              "devices": sorted({d for c in (card["data"].get("sites") or {}).values()
                                                 for d in c.get("devices") or {} if d != "unknown"})},
            "operating_point": r.get("operating_point"),
            "acceptance": None if not a else {"set_id": a["set_id"], "n": a["n"], "macro_f1": a.get("macro_f1"),
                                              "macro_f1_ci": (a.get("ci") or {}).get("macro_f1")},
            "calibration": r.get("calibration"), "calibration_statement": calibration_statement(r.get("calibration")),
            "default_of": card["promotion"]["default_of"],
            "notice": NOTICE}
