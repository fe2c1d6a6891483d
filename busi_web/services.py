"""The per-app services and how the web and the command line reach them.

:func:`make_services` builds, once per app, the objects a serving process
shares between its threads: the plugin registry, the store, the job runner
(trainer processes), the model cache and the micro-batcher. Nothing starts
here: threads and processes start on first use, or in :func:`start_services`,
which a serving process (``wsgi.py``) calls once.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask, current_app

from busi_web.data.sites import Source, dataset_label
from busi_web.diagnosis.active import checkpoint_for
from busi_web.diagnosis.answering import AnsweringCache
from busi_web.diagnosis.batching import MicroBatcher
from busi_web.diagnosis.cache import PredictorCache
from busi_web.errors import UserError
from busi_web.evaluation.acceptance import choose_images, score_and_keep
from busi_web.evaluation.card import build_card, is_demo, provenance, write_card
from busi_web.evaluation.operating import refit_operating_point
from busi_web.model.operating_point import DEFAULT_SENSITIVITY
from busi_web.model.predictor import Predictor
from busi_web.pacs.endpoints import Endpoint, endpoints_from
from busi_web.pacs.handles import Handles
from busi_web.plugins import PluginRegistry
from busi_web.report.keeper import ReportKeeper
from busi_web.store import JobStore
from busi_web.store import run_files as art
from busi_web.store.acceptance import check_modality, check_sensitivity
from busi_web.training.params import prepare_run_params
from busi_web.training.runner import JobRunner

log = logging.getLogger(__name__)

EXTENSION = "busi_web"

# The small default run a newcomer gets on first start: learns the phantoms in a couple of minutes on 2 CPU cores.
FIRST_RUN: dict[str, Any] = {
    "name": "first-start demo (phantom, tiny CNN)",
    "backbone": "tiny_cnn",
    "dataset": "phantom",
    "train": {"epochs": 8, "batch_size": 16, "lr": 2e-3, "optimizer": "adamw", "input_size": 112, "resize": 128,
              "patience": 100},
    "backbone_params": {},
    "dataset_params": {"size": 128, "per_class": 60, "seed": 0},
}


@dataclass
class Services:
    """What one app's requests and commands share (one per app, in ``app.extensions["busi_web"]``)."""

    registry: PluginRegistry
    store: JobStore
    runner: JobRunner
    predictors: PredictorCache
    batcher: MicroBatcher
    pacs: dict[str, Endpoint] = field(default_factory=dict)  # PACS_SERVERS, checked at start
    handles: Handles = field(default_factory=lambda: Handles(secrets.token_bytes(32)))
    reports: ReportKeeper = field(default_factory=ReportKeeper)  # case reports of the newest diagnoses
    answering: AnsweringCache = field(init=False)  # which model answers, kept per model generation

    def __post_init__(self) -> None:
        self.answering = AnsweringCache(self.store, self.verdict, self.provenance)

    def provenance(self, run_id: int) -> dict[str, Any]:
        """What every diagnosis carries about run ``run_id``'s model: the summary of its card."""
        return provenance(build_card(self.store, self.registry, run_id))

    def predictor(self, run_id: int | None = None, modality: str | None = None) -> Predictor:
        """The loaded model of run ``run_id``, or of ``modality``'s default (reloaded when that changes)."""
        return self.predictors.get(checkpoint_for(self.store, run_id, modality))

    def submit_run(self, backbone: str, dataset: str | Sequence[Source], *, train: Mapping[str, Any] | None = None,
                   backbone_params: Mapping[str, Any] | None = None,
                   dataset_params: Mapping[str, Any] | None = None, data_dir: str | None = None,
                   name: str | None = None, user: str | None = None, first_start: bool = False) -> dict[str, Any]:
        """Validate everything, insert a queued run and hand it to the runner. Raises on bad input, storing
        nothing (see :func:`~busi_web.training.params.prepare_run_params`).

        ``dataset``: one dataset's name (with ``dataset_params`` and ``data_dir``), or several sources for a run
        that trains on several sites at once.
        ``first_start``: the demo run of a new instance, which becomes its modality's default when it finishes
        and there is none (the one run that may; it is labelled a demo wherever it shows).
        """
        params = prepare_run_params(self.registry, backbone, dataset, train=train or {},
                                    backbone_params=backbone_params or {}, dataset_params=dataset_params or {},
                                    data_dir=data_dir)
        names = [dataset] if isinstance(dataset, str) else [d["dataset"] for d in params["datasets"]]
        self._check_trainable(backbone, names)
        if first_start:
            params["first_start"] = True
        label = dataset_label(names)
        run = self.store.create_run(backbone, label, params, name=name, data_dir=data_dir if len(names) == 1 else None,
                                    created_by=user, modality=self.registry.dataset(names[0]).modality)
        self.store.audit("run.start", user=user, run_id=run["id"], backbone=backbone, dataset=label)
        self.runner.submit(run["id"])
        return run

    def _check_trainable(self, backbone: str, datasets: Sequence[str]) -> None:
        """Refuse a run whose backbone or dataset the trainer process will not have: it loads the installed plugins
        (and ``ALLOWED_PLUGINS``), not those registered in this process only (``busi_web.testing``)."""
        missing = [(kind, name) for kind, names in (("backbones", [backbone]), ("datasets", datasets))
                   for name in names if self.registry.in_process_only(kind, name)]
        if missing:
            kind, name = missing[0]
            owner = self.registry.owner_of(kind, name)
            raise UserError(f"{kind[:-1]} {name!r} comes from plugin {owner!r}, registered in this process only; the "
                            "trainer runs in a process of its own and loads installed plugins. Install the plugin "
                            "(pip install -e it while developing), or train in this process with "
                            "busi_web.testing.train_tiny", 400, {kind[:-1]: "not installed"})

    # -- which model answers: defaults and the acceptance gate (web and command line alike) ---------------------
    def set_default(self, run_id: int, *, by: str | None, reason: str | None, modality: str | None = None
                    ) -> dict[str, Any]:
        """Make run ``run_id`` the default of its modality (``modality``, when given, must be it); the gate
        applies (409 listing the failures). The model cards of the new and the previous default follow."""
        run = self.store.get_run(run_id)
        own = run.get("modality") or "ultrasound"
        if modality is not None and modality != own:
            raise UserError(f"run {run_id} is a {own} model; it cannot answer for {modality}", 409,
                            {"run_id": f"not a {modality} model"})
        previous = self.store.default_model(own)
        default = self.store.set_default(run_id, by=by, reason=reason)
        write_card(self.store, self.registry, run_id)
        if previous is not None and previous["run_id"] != run_id:
            write_card(self.store, self.registry, previous["run_id"])
        return default

    def clear_default(self, modality: str, *, by: str | None, reason: str | None) -> None:
        """Clear ``modality``'s default (with a reason); its model card follows."""
        previous = self.store.default_model(check_modality(modality))
        self.store.clear_default(modality, by=by, reason=reason)
        if previous is not None:
            write_card(self.store, self.registry, previous["run_id"])

    def verdict(self, run_id: int) -> dict[str, Any]:
        """Whether run ``run_id``'s model is accepted to answer clinicians: ``{"accepted", "text"}``.

        Accepted: the default of its modality (an administrator's act), or a model that passes its modality's
        floors with a valid score on the current acceptance set. A modality without floors accepts its default
        only; a demo model is never accepted unless it is the default."""
        run = self.store.get_run(run_id)
        modality = run.get("modality") or "ultrasound"
        default = self.store.default_model(modality)
        demo = is_demo(self.registry, run["dataset"])
        if default is not None and default["run_id"] == int(run_id):
            return {"accepted": True, "text": f"the default {modality} model" + (" (a demo)" if demo else "")}
        if demo:
            return {"accepted": False, "text": "not accepted: a demo model, trained on synthetic images"}
        if not self.store.modality_settings(modality)["floors"]:
            return {"accepted": False, "text": f"not accepted: {modality} has no acceptance floors, so only its "
                                               "default answers clinicians"}
        failures = self.store.gate_failures(int(run_id), modality)
        if failures:
            return {"accepted": False, "text": "not accepted: " + "; ".join(failures)}
        return {"accepted": True, "text": f"passes the {modality} acceptance gate"}

    def modalities(self) -> list[str]:
        """Every modality a dataset plugin declares or the store knows (from runs, defaults and acceptance sets)."""
        known = {s.modality for s in self.registry.datasets.values()}
        known |= {d["modality"] for d in self.store.list_defaults()} | {s["modality"] for s in
                                                                        self.store.acceptance_sets()}
        known |= {r.get("modality") or "ultrasound" for r in self.store.list_runs()}
        return sorted(known)

    def modality_classes(self, modality: str) -> list[str]:
        """The class names met in ``modality``: its acceptance set's and its finished models' (what a floor
        ``sensitivity_<class>`` may name)."""
        found: list[str] = []
        accepted = self.store.acceptance_set(modality)
        for item in (accepted or {}).get("items") or []:
            if item["label"] not in found:
                found.append(item["label"])
        for run in self.store.list_runs(status="finished"):
            if (run.get("modality") or "ultrasound") == modality:
                params = art.read_json(run.get("run_dir"), art.PARAMS_JSON) or {}
                found += [c for c in params.get("classes") or [] if c not in found]
        return found

    def update_settings(self, modality: str, *, by: str | None, auto_promote: bool | None = None,
                        floors: Mapping[str, Any] | None = None, operating_sensitivity: float | None = None
                        ) -> dict[str, Any]:
        """Change ``modality``'s settings (see :meth:`JobStore.update_modality_settings`), refusing a modality
        nobody declares and a floor on a class the modality has never had, with the valid names."""
        check_modality(modality)
        known = self.modalities()
        if modality not in known:
            raise UserError(f"there is no modality {modality!r}; the modalities are {', '.join(known)}", 404,
                            {"modality": f"one of {', '.join(known)}"})
        if floors is not None and isinstance(floors, Mapping):
            classes = self.modality_classes(modality)
            valid = ["accuracy", "auc", "ece", "macro_f1", *(f"sensitivity_{c}" for c in classes)]
            wrong = [k for k in floors if k not in valid]
            if wrong:
                hint = "" if classes else (" (no sensitivity floor yet: no model or acceptance set of "
                                           f"{modality} names its classes)")
                raise UserError(f"unknown floor {', '.join(map(repr, wrong))} for {modality}; the floors are "
                                f"{', '.join(valid)}{hint}", 400, {"floors": f"one of {', '.join(valid)}"})
        return self.store.update_modality_settings(modality, by=by, auto_promote=auto_promote,
                                                   floors=None if floors is None else dict(floors),
                                                   operating_sensitivity=operating_sensitivity)

    def models_overview(self) -> dict[str, Any]:
        """Every modality (declared by a dataset plugin, or known to the store) with its default, settings and
        acceptance set; every finished run with its modality, ``demo``, its result on its modality's current
        acceptance set (``acceptance``: the metrics, or ``None``) and ``gate_failures``."""
        store = self.store
        defaults = {d["modality"]: d for d in store.list_defaults()}
        sets = {s["modality"]: s for s in store.acceptance_sets()}
        names = sorted({s.modality for s in self.registry.datasets.values()} | set(defaults) | set(sets))
        modalities = [{"modality": m, "default": defaults.get(m), "settings": store.modality_settings(m),
                       "acceptance_set": sets.get(m)} for m in names]
        models = []
        for run in store.list_runs(status="finished"):
            modality = run.get("modality") or "ultrasound"
            accepted = sets.get(modality)
            result = None if accepted is None else store.acceptance_result(run["id"], accepted["id"])
            models.append({**run, "modality": modality, "demo": is_demo(self.registry, run["dataset"]),
                           "acceptance": None if result is None else result["metrics"],
                           "gate_failures": store.gate_failures(run["id"], modality)})
        return {"modalities": modalities, "models": models}

    def define_acceptance(self, modality: str, *, source: str, dataset: str, data_dir: str | None,
                          dataset_params: Mapping[str, Any] | None = None, share: float | None = None, seed: int = 0,
                          name: str | None = None, by: str | None) -> dict[str, Any]:
        """Record ``modality``'s acceptance set, chosen by :func:`~busi_web.evaluation.acceptance.choose_images`
        (the row without its items, plus ``images``, the count)."""
        check_modality(modality)
        values = self.registry.dataset(dataset).validate(dict(dataset_params or {}))
        items, found = choose_images(self.registry, dataset, data_dir, source=source, dataset_params=values,
                                     share=share, seed=seed)
        if found != modality:
            raise UserError(f"dataset {dataset!r} holds {found} images; the acceptance set is for {modality}", 400,
                            {"dataset": f"not a {modality} dataset"})
        row = self.store.add_acceptance_set(modality, items=items, dataset=dataset, source=source, by=by, name=name,
                                            dataset_params=values, data_dir=data_dir, share=share, seed=seed)
        row.pop("items")
        return {**row, "images": len(items)}

    def record_validation(self, run_id: int, report: Mapping[str, Any], *, by: str | None,
                          dataset_params: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """Keep an evaluation on data the model never trained on (``report["external"]``) as an external
        validation of run ``run_id``, and refresh its card. ``None`` (nothing kept) for its own data."""
        if not report.get("external"):
            return None
        row = self.store.add_validation(run_id, dataset=report["dataset"], data_dir=report.get("data_dir"),
                                        dataset_params=dict(dataset_params or {}), sites=report["sites"],
                                        n=report["classification"]["n"], report=Path(report["folder"]).name, by=by)
        write_card(self.store, self.registry, run_id)
        return row

    def acceptance_from_validation(self, validation_id: int, *, by: str | None, name: str | None = None,
                                   modality: str | None = None) -> dict[str, Any]:
        """Make the data of external validation ``validation_id`` its modality's acceptance set (every image);
        ``modality``, when given, must be the validated model's."""
        found = self.store.validation(validation_id)
        if found is None:
            raise UserError(f"there is no external validation {validation_id}; `busi-web models validations` "
                            "lists them", 404)
        own = self.store.get_run(found["run_id"]).get("modality") or "ultrasound"
        if modality is not None and modality != own:
            raise UserError(f"validation {validation_id} is of a {own} model; it cannot define the {modality} "
                            "acceptance set", 400, {"validation_id": f"a {own} validation"})
        modality = own
        return self.define_acceptance(modality, source="folder", dataset=found["dataset"], data_dir=found["data_dir"],
                                      dataset_params=found["dataset_params"], by=by,
                                      name=name or f"external validation {validation_id}: {found['dataset']}")

    def refit_operating_point(self, run_id: int, *, by: str | None, sensitivity: float | None = None
                              ) -> dict[str, Any]:
        """Fit run ``run_id``'s operating point again for ``sensitivity`` (default: its modality's target), on its
        validation part; the predictor cache reloads the model, the card follows, the act is audited."""
        run = self.store.get_run(run_id)
        if run["status"] != "finished":
            raise UserError(f"run {run_id} is {run['status']}; only a finished run has a model to set", 409)
        modality = run.get("modality") or "ultrasound"
        target = sensitivity if sensitivity is not None else (
            self.store.modality_settings(modality).get("operating_sensitivity") or DEFAULT_SENSITIVITY)
        # best_model.pt is replaced atomically: the predictor cache sees a new file and reloads it.
        point = refit_operating_point(run["run_dir"], self.registry, check_sensitivity(target))
        self.store.audit("model.operating_point", user=by, run_id=run_id, threshold=point["threshold"],
                         target_sensitivity=point["target_sensitivity"])
        write_card(self.store, self.registry, run_id)
        return point

    def score_acceptance(self, run_id: int, *, by: str | None) -> dict[str, Any]:
        """Score run ``run_id``'s model on its modality's acceptance set and keep the result (409 when the
        modality has no set). Returns ``{"run_id", "set_id", "metrics", "gate_failures"}``."""
        run = self.store.get_run(run_id)
        modality = run.get("modality") or "ultrasound"
        accepted = self.store.acceptance_set(modality)
        if accepted is None:
            raise UserError(f"{modality} has no acceptance set yet; define one on the Models page (or `busi-web "
                            "models acceptance`)", 409)
        metrics = score_and_keep(self.store, self.predictor(run_id), self.registry, run, accepted, by)
        write_card(self.store, self.registry, run_id)
        return {"run_id": run_id, "set_id": accepted["id"], "metrics": metrics,
                "gate_failures": self.store.gate_failures(run_id, modality)}


def make_services(config: Mapping[str, Any], registry: PluginRegistry) -> Services:
    """Build the services of an app from its finished configuration (nothing is started)."""
    store = JobStore(config["DATABASE"], config["RUNS_DIR"])
    runner = JobRunner(store, cancel_timeout=float(config["CANCEL_TIMEOUT_SECONDS"]),
                       allowed_plugins=registry.allowed_list(), local=config["TRAINERS"] == "local")
    return Services(registry=registry, store=store, runner=runner,
                    predictors=PredictorCache(registry, device=config["DEVICE"]),
                    batcher=MicroBatcher(max_batch=int(config["BATCH_MAX_IMAGES"]),
                                         max_wait_s=float(config["BATCH_WAIT_MS"]) / 1000),
                    pacs=endpoints_from(config), handles=Handles(config["SECRET_KEY"]),
                    reports=ReportKeeper(int(float(config["REPORT_CACHE_MB"]) * 2**20)))


def services_of(app: Flask | None = None) -> Services:
    """The services of ``app`` (default: the current app)."""
    return (app or current_app).extensions[EXTENSION]


def start_services(app: Flask) -> None:
    """What a serving process (gunicorn via wsgi.py) does once at start: give the model its threads
    (``TORCH_THREADS``), recover runs whose trainer died with a previous server, start the first-start demo run
    when there is no model yet, and start the job runner."""
    services = services_of(app)
    if app.config["TORCH_THREADS"]:
        import torch  # loaded already by the predictor's modules; named here for the setting

        torch.set_num_threads(int(app.config["TORCH_THREADS"]))
    if services.runner.local:
        services.runner.recover()
    if app.config["AUTO_FIRST_RUN"] and not services.store.list_defaults() \
            and not services.store.list_runs(limit=1):
        spec = dict(FIRST_RUN)
        try:
            run = services.submit_run(spec.pop("backbone"), spec.pop("dataset"), first_start=True, **spec)
            log.info("no model yet: started first-start run %s on the phantom dataset", run["id"])
        except Exception:
            log.exception("could not start the first-start run")
    services.runner.ensure_started()
