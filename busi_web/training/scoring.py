"""Scoring the kept model of a run on its test part: the metrics, the report and the confusion matrix, the
calibration, the out-of-distribution reference and the operating point (saved into ``best_model.pt``), and the
results per site. :class:`RunScoring` is the part of :class:`busi_web.training.run.TrainingRun` that runs
after the last epoch."""

from __future__ import annotations

from typing import Any

import numpy as np

from busi_web.data.preprocess import eval_transform
from busi_web.evaluation.metrics import classification_metrics, classification_report_text
from busi_web.evaluation.plots import confusion_plot_png, reliability_plot_png
from busi_web.evaluation.sites import per_site
from busi_web.explain.base import default_target_layer
from busi_web.model.calibration import apply_temperature
from busi_web.model.checkpoint import CheckpointMeta, read_checkpoint, save_checkpoint
from busi_web.model.operating_point import DEFAULT_SENSITIVITY
from busi_web.store import run_files as art
from busi_web.training.feeding import TransformedImages, ignore_signals, make_loader
from busi_web.training.trust import checkpoint_extras, fit_trust, operating_point


class RunScoring:
    """The test part's scoring (see the module docstring); it reads the attributes that
    :class:`~busi_web.training.run.TrainingRun` sets while it prepares and trains."""

    def _final(self) -> dict[str, Any]:
        """Test the best model; write metrics.json, the report and the confusion matrix."""
        eng = self.engine
        assert eng is not None
        meta, state = read_checkpoint(self.dir / art.BEST_PT)
        eng.eval_model.load_state_dict(state)
        y, probs, test_loss = eng.predict(self.loaders["test"])
        m = classification_metrics(y, probs, self.classes)
        title = (f"run {self.run_id}: {self.run['backbone']} on {self.run['dataset']}, test part, "
                 f"{self._kept_text()}")
        calibration, ood, point, flagged = self._calibrate_and_reference(meta, probs, y)
        sites = self._sites_report(y, apply_temperature(probs, calibration["temperature"]), flagged, point)
        art.write_json(self.dir / art.METRICS_JSON, {
            "run_id": self.run_id, "part": "test", "loss": test_loss, **m, "best_epoch": self.best_epoch,
            "monitor": self.train["monitor"], "best_value": self.best, "epochs_done": self.epoch,
            "counts": self.split.counts(self.dataset), "calibration": calibration, "ood": ood,
            "operating_point": point, "sites": sites,
            "validation": self._kept_validation(), "train_seconds": self._train_seconds()})
        art.write_atomic(self.dir / art.REPORT_TXT, classification_report_text(m, title))
        art.write_atomic(self.dir / art.CONFUSION_PNG, confusion_plot_png(m["confusion_matrix"], self.classes,
                                                                            "test part"))
        rows = {"test_loss": test_loss, "test_acc": m["accuracy"], "test_macro_f1": m["macro_f1"],
                "test_auc": m["auc"]}
        self.store.add_metrics(self.run_id, [{"epoch": self.epoch, "step": self.step, "key": k, "value": float(v)}
                                             for k, v in rows.items() if v is not None])
        auc = "n/a" if m["auc"] is None else f"{m['auc']:.4f}"
        self.log(f"test: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, AUC {auc} ({m['n']} images)")
        return {"test_macro_f1": m["macro_f1"], "test_accuracy": m["accuracy"], "error": None}

    def _kept_validation(self) -> dict[str, Any] | None:
        """The validation metrics of the kept epoch (what chose it; the test part never does)."""
        row = next((h for h in self.history if h["epoch"] == self.best_epoch), None)
        if row is None:
            return None
        return {"epoch": self.best_epoch, "accuracy": row.get("val_acc"), "macro_f1": row.get("val_macro_f1"),
                "auc": row.get("val_auc"), "loss": row.get("val_loss")}

    def _train_seconds(self) -> float:
        return float(sum(h.get("epoch_time") or 0.0 for h in self.history))

    def _sites_report(self, y: np.ndarray, probs: np.ndarray, flagged: np.ndarray,
                      point: dict[str, Any] | None) -> dict[str, Any]:
        """The test part's results per site (:func:`busi_web.evaluation.sites.per_site`), from calibrated
        probabilities."""
        ds, idx = self.dataset, self.split.test
        where = [ds.site_of(i) for i in idx]
        return per_site(y, probs, self.classes, [s for s, _ in where], [ds.samples[i].group for i in idx],
                        [d for _, d in where], flagged=list(flagged),
                        threshold=None if point is None else point["threshold"])

    def _calibrate_and_reference(self, meta: CheckpointMeta, test_probs: np.ndarray, test_y: np.ndarray
                                 ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None, np.ndarray]:
        """Fit the temperature, the out-of-distribution reference (:mod:`busi_web.training.trust`) and the
        operating point; save them into ``best_model.pt`` and draw the test part's reliability diagram. Returns
        ``(calibration, ood report, operating point, each test image's out-of-distribution verdict)``."""
        eng = self.engine
        assert eng is not None
        train_eval = make_loader(TransformedImages(self.source, self.split.train, self.dataset.labels,
                                                   eval_transform(self.cfg)),
                                 self.loaders["val"].batch_size, train=False, workers=self.workers, device=eng.device)
        train_eval.worker_init_fn = ignore_signals
        val_y, val_probs, _ = eng.predict(self.loaders["val"])
        layer = meta.target_layer or default_target_layer(eng.eval_model, "")
        calibration, reference, ood, flagged = fit_trust(
            eng.eval_model, layer, eng.device, {"train": train_eval, **self.loaders}, (val_y, val_probs),
            (test_y, test_probs))
        target = self.store.modality_settings(self.modality).get("operating_sensitivity") or DEFAULT_SENSITIVITY
        point = operating_point(self.classes, (val_y, val_probs), calibration["temperature"], float(target))
        art.write_atomic(self.dir / art.RELIABILITY_PNG, reliability_plot_png(
            calibration["test"], f"run {self.run_id}: reliability on the test part"))
        meta.extra.update(checkpoint_extras(calibration, reference, point))
        save_checkpoint(self.dir / art.BEST_PT, eng.eval_model, meta, registry=self.registry)
        self.log(f"calibration: temperature {calibration['temperature']:.3f} (validation); test ECE "
                 f"{calibration['test']['ece_before']:.3f} -> {calibration['test']['ece_after']:.3f}; "
                 f"out-of-distribution threshold {reference.threshold:.3f} on {layer} "
                 f"({100 * (ood['test_flagged_share'] or 0):.1f}% of the test part above it)")
        if point is not None:
            self.log(f"operating point: p(malignant) >= {point['threshold']:.3f} keeps sensitivity "
                     f"{point['sensitivity']:.3f} (target {point['target_sensitivity']:g}) on validation")
        return calibration, ood, point, flagged
