"""What follows a finished run, in the trainer process: the model's score on its modality's acceptance set
(when one is defined), the first-start demo becoming the default of an instance that has none,
auto-promotion (which the store refuses unless an admin switched it on and the model passes the gate), and
the model card. None of it can fail the finished run: a problem is logged and the next step still runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from busi_web.evaluation.acceptance import score_and_keep
from busi_web.evaluation.card import write_card
from busi_web.model.predictor import Predictor
from busi_web.plugins import PluginRegistry
from busi_web.store import JobStore
from busi_web.store.run_files import BEST_PT

FIRST_START_REASON = ("first-start demo, trained on synthetic phantoms so that a new instance can be tried; "
                      "not for clinical use: replace it with a model trained and accepted on real images")


def after_run(store: JobStore, registry: PluginRegistry, run: dict[str, Any], log: Callable[[str], None]) -> None:
    """Every step after run ``run`` finished (see the module docstring)."""
    steps: list[tuple[str, Callable[[], None]]] = [
        ("acceptance", lambda: _score_acceptance(store, registry, run, log)),
        ("default", lambda: _maybe_default(store, run, log)),
        ("model card", lambda: write_card(store, registry, run["id"])),
    ]
    for name, step in steps:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - the run itself is finished and stays so
            log(f"after the run, {name}: {type(exc).__name__}: {exc}")


def _score_acceptance(store: JobStore, registry: PluginRegistry, run: dict[str, Any],
                      log: Callable[[str], None]) -> None:
    modality = run.get("modality") or "ultrasound"
    accepted = store.acceptance_set(modality)
    if accepted is None:
        return
    predictor = Predictor.from_checkpoint(Path(run["run_dir"]) / BEST_PT, registry)
    metrics = score_and_keep(store, predictor, registry, run, accepted, by="trainer")
    log(f"acceptance set {accepted['id']} ({metrics['n']} {modality} images): macro-F1 {metrics['macro_f1']:.4f}, "
        f"accuracy {metrics['accuracy']:.4f}")


def _maybe_default(store: JobStore, run: dict[str, Any], log: Callable[[str], None]) -> None:
    modality = run.get("modality") or "ultrasound"
    if (run.get("params") or {}).get("first_start") and store.default_model(modality) is None:
        store.set_default(run["id"], by="system", reason=FIRST_START_REASON, gate=False)
        log(f"the first-start demo is the {modality} default until an admin sets another")
        return
    promoted, why = store.auto_promote(run["id"])
    log(("promoted: " if promoted else "not promoted: ") + why)
