"""One training run from its stored parameters to its artifacts (used by :mod:`busi_web.training.trainer`)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from busi_web.data.datasets import DatasetError
from busi_web.data.fingerprints import data_hash, part_fingerprints
from busi_web.data.preprocess import PreprocessConfig, eval_transform, train_transform
from busi_web.data.scan import ScanSteps
from busi_web.data.sites import open_sources, sources_of
from busi_web.evaluation.metrics import classification_metrics
from busi_web.evaluation.plots import history_plot_png
from busi_web.explain.base import default_target_layer
from busi_web.model.checkpoint import CheckpointMeta, save_checkpoint
from busi_web.model.device import hardware, resolve_device
from busi_web.plugins import PluginRegistry
from busi_web.store import run_files as art
from busi_web.training.adversary import site_adversary
from busi_web.training.feeding import (
    TransformedImages,
    balanced_sampler,
    build_source,
    draw_weights,
    drawn_class_weights,
    ignore_signals,
    make_loader,
    resolve_workers,
)
from busi_web.training.loop import Engine, TrainingDiverged, build_optimizer, build_scheduler
from busi_web.training.params import lesion_training, validate_train_params
from busi_web.training.resume import epoch_seed, load_state, rng_state, save_state, seed_everything, set_rng_state
from busi_web.training.scoring import RunScoring
from busi_web.training.site_loss import SiteClassLoss, site_class_table
from busi_web.training.splitting import run_split


class StopRequested(Exception):
    """A stop (SIGTERM, Ctrl-C, cancel in the store) was asked for; the run ends as cancelled."""


class TrainingRun(RunScoring):
    """Builds the data, model and optimiser of a stored run, trains it and writes its artifacts."""

    def __init__(self, store: Any, run: dict[str, Any], registry: PluginRegistry,
                 progress: Callable[[dict], None] | None,
                 should_stop: Callable[[], bool] | None, log: Callable[[str], None]):
        self.store, self.run, self.run_id = store, run, run["id"]
        self.registry = registry
        self.progress, self.should_stop, self.log = progress, should_stop, log
        self.dir = Path(run["run_dir"])
        self.train: dict[str, Any] | None = None
        self.device_name = "cpu"
        self.engine: Engine | None = None
        self.scheduler: Any = None
        self.epoch = 0  # epochs completed
        self.step = 0
        self.best: float | None = None
        self.best_epoch = 0
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []
        self.left_out: dict[str, Any] | None = None  # what the acceptance set took out of this run's data
        self._stop = False

    # -- stopping ------------------------------------------------------------
    def stop_requested(self) -> bool:
        """Asked after every batch: a flag read, plus the caller's ``should_stop``."""
        if not self._stop and self.should_stop is not None and self.should_stop():
            self._stop = True
        return self._stop

    def check_store_cancel(self) -> None:
        if self.store.get_run(self.run_id).get("cancel_requested"):
            self._stop = True

    def _raise_if_stopped(self) -> None:
        if self.stop_requested():
            raise StopRequested()

    # -- setup ---------------------------------------------------------------
    def _prepare(self) -> None:
        params = self.run.get("params") or {}
        p = self.train = validate_train_params(params.get("train") or {})
        registry = self.registry
        bb_spec = registry.backbone(self.run["backbone"])
        self.bb_params = bb_spec.validate(params.get("backbone") or {})
        sources = sources_of(self.run)
        where = ", ".join(f"{s.dataset} ({s.data_dir or 'generated'})" for s in sources)
        self.log(f"run {self.run_id}: {self.run['backbone']} on {where}")
        self.sources, ds = open_sources(registry, sources)
        self.dataset = ds
        ds_params = self.ds_params = dict(self.sources[0].params) if len(self.sources) == 1 else {}
        listed = [s.to_dict() for s in self.sources]
        root = self.run.get("data_dir")
        ds.check_usable()
        self.classes = list(ds.classes)
        self.modality = getattr(ds, "modality", None) or registry.dataset(self.sources[0].dataset).modality
        self.split, self.left_out = run_split(self.dir, ds, p, self.store, self.modality, self.log)
        device = resolve_device(p["device"])
        self.device_name = str(device)
        torch.backends.cudnn.benchmark = device.type == "cuda"  # fastest kernels; GPU runs are not bit-exact
        workers = self.workers = resolve_workers(p["workers"], device)
        steps = ScanSteps(crop=p["scan_crop"], marks=p["scan_marks"], normalise=p["normalise"])
        self.cfg = PreprocessConfig(input_size=p["input_size"], resize=p["resize"], channels=ds.channels, scan=steps)
        art.write_json(self.dir / art.PARAMS_JSON, {
            "run_id": self.run_id, "name": self.run.get("name"), "backbone": self.run["backbone"],
            "dataset": self.run["dataset"], "data_dir": root, "params": {"train": p, "backbone": self.bb_params,
                                                                         "dataset": ds_params},
            "datasets": listed, "sites": self.split.site_counts(ds),
            "classes": self.classes, "modality": self.modality, "preprocess": self.cfg.to_dict(),
            "device": self.device_name, "workers": workers, "counts": self.split.counts(ds),
            "acceptance_left_out": self.left_out, "hardware": hardware(device),
            "data_hash": data_hash(ds, ds_params if len(listed) == 1 else {"datasets": listed}),
            "versions": {"torch": torch.__version__,
                         "backbone_plugin": registry.version_of("backbones", self.run["backbone"])},
        })
        seed_everything(p["seed"])
        model = bb_spec.build(self.bb_params, num_classes=len(self.classes), in_channels=ds.channels)
        self._raise_if_stopped()
        if not (self.dir / art.FINGERPRINTS_JSON).exists():  # what a later acceptance set is checked against
            art.write_json(self.dir / art.FINGERPRINTS_JSON, part_fingerprints(
                ds, {"train": self.split.train, "val": self.split.val}))
        if steps.active:
            self.log(f"scan steps: {steps.describe()}")
        source = self.source = build_source(ds, self.split.train + self.split.val + self.split.test,
                                           p["cache_mb"] * 2**20, self.log, self.stop_requested, steps)
        self._raise_if_stopped()
        labels = ds.labels
        # The dataset may draw each training sample more than once per epoch (its own augmentation/balancing).
        items = ds.training_items(self.split.train)
        train_idx, variants = [i for i, _ in items], [v for _, v in items]
        if len(items) != len(self.split.train):
            self.log(f"the dataset draws {len(items)} training items per epoch from {len(self.split.train)} "
                     f"images (its augmentation and balancing)")
        train_labels = [labels[i] for i in train_idx]
        self.generator = torch.Generator()
        by_class, by_site = p["balance"] == "oversample", p["balance_sites"]
        by_sites = p["site_classes"] or p["site_adversary"] > 0
        item_sites = [ds.site_of(i)[0] for i in train_idx] if by_site or by_sites else None
        train_sites = item_sites if by_site else None
        sampler = (balanced_sampler(train_labels, len(self.classes), self.generator, train_sites, classes=by_class)
                   if by_class or by_site else None)
        draws = draw_weights(train_labels, train_sites, classes=by_class) if sampler is not None else None
        augment = train_transform(self.cfg, p["hflip"], p["rotation"], crop_scale=p["crop_scale"],
                                  intensity=p["intensity"], scanner=p["scanner"])
        guided = p["lesion_loss"] > 0
        if guided and any(variants):
            raise DatasetError(f"lesion_loss cannot be used with dataset {self.run['dataset']!r}: it makes its own "
                               "training variants, which its masks do not follow; set lesion_loss to 0")
        if guided and not ds.has_masks():
            raise DatasetError(f"lesion_loss needs lesion masks and dataset {self.run['dataset']!r} has none; set "
                               "lesion_loss to 0")
        site_rows = self._site_rows(item_sites, train_labels) if by_sites and item_sites is not None else None
        tr = TransformedImages(source, train_idx, labels, augment, variants, masks=guided,
                               sites=None if site_rows is None else site_rows[0])
        self.train_loader = make_loader(tr, p["batch_size"], train=True, workers=workers, device=device,
                                        generator=self.generator, sampler=sampler)
        self.loaders = {part: make_loader(TransformedImages(source, self.split.part(part), labels,
                                                            eval_transform(self.cfg)),
                                          max(1, p["batch_size"] * 2), train=False, workers=workers, device=device)
                        for part in ("val", "test")}
        for loader in (self.train_loader, *self.loaders.values()):
            loader.worker_init_fn = ignore_signals
        weight = (drawn_class_weights(train_labels, len(self.classes), draws) if p["balance"] == "weighted_loss"
                  else None)
        guide, segment_loss, what = lesion_training(model, bb_spec, p, ds.channels)
        if what:
            self.log(f"{what}; {sum(source.mask(i) is not None for i in self.split.train)} of "
                     f"{len(self.split.train)} training images have masks")
        adversary = None
        if p["site_adversary"] > 0:
            assert site_rows is not None
            layer = default_target_layer(model, bb_spec.target_layer)
            adversary = site_adversary(model, layer, site_rows[1], p["input_size"], ds.channels, p["site_adversary"])
            self.log(f"site adversary on {layer} (strength up to {p['site_adversary']:g}), shown "
                     f"{', '.join(c for c, on in zip(self.classes, adversary.shared.tolist(), strict=True) if on)}")
        aids = [*(guide.parameters() if guide is not None else ()),
                *(adversary.parameters() if adversary is not None else ())]
        optimizer = build_optimizer(model, p, aids)
        criterion = (SiteClassLoss(site_rows[1], weight, p["label_smoothing"]) if p["site_classes"]
                     else torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=p["label_smoothing"]))
        self.engine = Engine(model, optimizer, criterion, device, amp=p["amp"], channels_last=p["channels_last"],
                             ema_decay=p["ema"], guide=guide, mixup=p["mixup"],
                             segment_loss=segment_loss, adversary=adversary)
        self.scheduler = build_scheduler(optimizer, p)
        if p["mixup"] > 0:
            self.log(f"mixup: every training image blended with another of its batch, shares from "
                     f"Beta({p['mixup']:g}, {p['mixup']:g})")
        self.log(f"classes {self.classes}; train/val/test {len(self.split.train)}/{len(self.split.val)}/"
                 f"{len(self.split.test)} images; device {device}, {workers} loader workers")

    def _site_rows(self, item_sites: list[str], train_labels: list[int]) -> tuple[list[int], torch.Tensor]:
        """For the per-site class loss and the adversary: each training item's site index, and each site's classes."""
        names, rows, table = site_class_table(item_sites, train_labels, len(self.classes))
        for name, has in zip(names, table.tolist(), strict=True):
            self.log(f"site {name} has {', '.join(c for c, on in zip(self.classes, has, strict=True) if on)}")
        if self.train is not None and self.train["site_classes"]:
            self.log("each image's loss compares only the classes its site has")
        return rows, table

    def _resume(self) -> None:
        path = self.dir / art.LAST_PT
        state = load_state(path) if path.exists() else None
        if path.exists() and state is None:
            self.log(f"{art.LAST_PT} is unreadable; starting from the first epoch")
        if state is not None:
            eng = self.engine
            assert eng is not None
            eng.model.load_state_dict(state["model"])
            eng.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state.get("scheduler"):
                self.scheduler.load_state_dict(state["scheduler"])
            if eng.scaler is not None and state.get("scaler"):
                eng.scaler.load_state_dict(state["scaler"])
            if eng.guide is not None and state.get("lesion_head"):
                eng.guide.load_state_dict(state["lesion_head"])
            if eng.adversary is not None and state.get("site_adversary"):
                eng.adversary.load_state_dict(state["site_adversary"])
            if eng.ema is not None:
                if state.get("ema"):
                    eng.ema.load_state_dict(state["ema"])
                else:  # a state written without averaging: start the average from the resumed weights
                    eng.ema.model.load_state_dict(eng.model.state_dict())
            set_rng_state(state["rng"])
            self.epoch, self.step = int(state["epoch"]), int(state["step"])
            self.best, self.best_epoch = state["best"], int(state["best_epoch"])
            self.bad_epochs, self.history = int(state["bad_epochs"]), list(state["history"])
            self.log(f"resuming after epoch {self.epoch} (kept so far: {self._metric_name()} {self.best})")
        # Rows of epochs after the saved state (a partly done epoch) would be duplicated: drop them.
        self.store.delete_metrics(self.run_id, from_epoch=self.epoch + 1)

    # -- the loop --------------------------------------------------------------
    def execute(self) -> tuple[str, dict[str, Any]]:
        """Train and evaluate; returns ``(outcome, fields for the store)``."""
        self._prepare()
        self._resume()
        p = self.train
        assert p is not None and self.engine is not None
        if self.progress is not None:
            self.progress({"type": "start", "epoch": self.epoch, "epochs": p["epochs"], "step": self.step,
                           "batches": len(self.train_loader)})
        while self.epoch < p["epochs"]:
            self._raise_if_stopped()
            if self._epoch(self.epoch + 1):
                break
        return "finished", self._final()

    def _epoch(self, epoch: int) -> bool:
        """Train and validate one epoch; returns True when early stopping ends the run."""
        p, eng = self.train, self.engine
        assert p is not None and eng is not None
        start = time.perf_counter()
        seed = epoch_seed(p["seed"], epoch)
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        self.generator.manual_seed(seed + 1)
        lr = float(eng.optimizer.param_groups[0]["lr"])
        if eng.adversary is not None:
            eng.adversary.set_progress((epoch - 1) / p["epochs"])
        res = eng.train_epoch(self.train_loader, epoch=epoch, step=self.step, on_log=self._on_batch,
                              should_stop=self.stop_requested)
        self.step += res.steps
        if res.stopped:
            raise StopRequested()
        y, probs, val_loss = eng.predict(self.loaders["val"])
        if not np.isfinite(val_loss):
            raise TrainingDiverged(f"the validation loss became {val_loss} in epoch {epoch}")
        m = classification_metrics(y, probs, self.classes)
        row: dict[str, Any] = {"epoch": epoch, "train_loss": res.loss, "train_acc": res.acc, "val_loss": val_loss,
                               "val_acc": m["accuracy"], "val_macro_f1": m["macro_f1"]}
        row.update({f"val_recall_{c}": m["per_class"][c]["recall"] for c in self.classes})
        row.update(val_auc=m["auc"], lr=lr, images_per_s=res.images / max(res.seconds, 1e-9))
        last = p["monitor"] == "last"
        value = row["val_macro_f1" if last else p["monitor"]]
        if self.scheduler is not None:
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(value)
            else:
                self.scheduler.step()
        improved = last or self.best is None or (value < self.best if p["monitor"] == "val_loss"
                                                 else value > self.best)
        if improved:
            self.best, self.best_epoch, self.bad_epochs = float(value), epoch, 0
            self._save_best(epoch, m)
        else:
            self.bad_epochs += 1
        self.epoch = epoch
        row["epoch_time"] = time.perf_counter() - start
        self.history.append(row)
        self.store.add_metrics(self.run_id, [{"epoch": epoch, "step": self.step, "key": k, "value": float(v)}
                                             for k, v in row.items() if k != "epoch" and v is not None])
        self.store.update_run(self.run_id, epochs_done=epoch, best_metric=self.best,
                              best_metric_name=self._metric_name())
        self.save_last()
        art.write_atomic(self.dir / art.HISTORY_PNG, history_plot_png(self.history))
        self.log(f"epoch {epoch}/{p['epochs']}: " + ", ".join(
            f"{k} {v:.4g}" for k, v in row.items() if k != "epoch" and v is not None)
            + ((" (kept)" if last else " (best)") if improved else ""))
        if self.progress is not None:
            self.progress({"type": "epoch", "epoch": epoch, "epochs": p["epochs"], "metrics": dict(row)})
        self.check_store_cancel()
        if p["patience"] and self.bad_epochs >= p["patience"]:
            self.log(f"early stop: no improvement of {p['monitor']} for {self.bad_epochs} epochs")
            return True
        return False

    def _on_batch(self, row: dict[str, Any]) -> None:
        self.store.add_metrics(self.run_id, [
            {"epoch": row["epoch"], "step": row["step"], "key": k, "value": float(row[k])}
            for k in ("batch_loss", "batch_acc")])
        self.check_store_cancel()
        if self.progress is not None:
            self.progress({"type": "batch", **row})

    # -- artifacts -------------------------------------------------------------
    def _metric_name(self) -> str:
        """What ``best_metric`` holds: the monitored metric, or with monitor 'last' the last epoch's macro-F1."""
        assert self.train is not None
        return "val_macro_f1 (last epoch)" if self.train["monitor"] == "last" else self.train["monitor"]

    def _kept_text(self) -> str:
        assert self.train is not None
        which = "model of the last epoch," if self.train["monitor"] == "last" else "best model of epoch"
        return f"{which} {self.best_epoch} ({self._metric_name()} {self.best:.4f})"

    def _meta(self, epoch: int, metrics: dict[str, Any]) -> CheckpointMeta:
        p = self.train
        assert p is not None
        return CheckpointMeta(
            backbone=self.run["backbone"], classes=self.classes, backbone_params=dict(self.bb_params),
            in_channels=self.cfg.channels, input_size=self.cfg.input_size, resize=self.cfg.resize,
            scan=self.cfg.scan.to_dict(),
            mean=list(self.cfg.mean), std=list(self.cfg.std), modality=self.modality, dataset=self.run["dataset"],
            extra={"run_id": self.run_id, "epoch": epoch, "monitor": p["monitor"], "monitor_value": self.best,
                   "val_accuracy": metrics["accuracy"], "val_macro_f1": metrics["macro_f1"],
                   "val_auc": metrics["auc"], "train_params": dict(p), "dataset_params": dict(self.ds_params),
                   "datasets": [s.to_dict() for s in self.sources]})

    def _save_best(self, epoch: int, metrics: dict[str, Any]) -> None:
        assert self.engine is not None
        save_checkpoint(self.dir / art.BEST_PT, self.engine.eval_model, self._meta(epoch, metrics),
                        registry=self.registry)

    def save_last(self, partial: bool = False) -> None:
        """Write ``last.pt``: everything needed to continue after the last completed epoch."""
        eng = self.engine
        if eng is None:
            return
        save_state(self.dir / art.LAST_PT, {
            "run_id": self.run_id, "epoch": self.epoch, "step": self.step, "partial": partial,
            "model": {k: v.detach().to("cpu") for k, v in eng.model.state_dict().items()},
            "optimizer": eng.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": eng.scaler.state_dict() if eng.scaler is not None else None,
            "ema": eng.ema.state_dict() if eng.ema is not None else None,
            "lesion_head": eng.guide.state_dict() if eng.guide is not None else None,
            "site_adversary": eng.adversary.state_dict() if eng.adversary is not None else None,
            "best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
            "history": self.history, "rng": rng_state(),
        })
