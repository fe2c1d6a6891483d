"""The acceptance gate's records: per-modality settings (auto-promotion, floors), acceptance sets (images
recorded by content hash) and the results of models on them.

What an acceptance result holds is computed elsewhere
(:mod:`busi_web.evaluation.acceptance`); here it is plain data: a dict of
metric name to value, plus confidence intervals. Floors name metrics of that
dict: ``macro_f1``, ``accuracy``, ``auc``, ``ece`` (a ceiling: lower is
better) and ``sensitivity_<class>`` (the recall of one class, e.g.
``sensitivity_malignant``).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from sqlalchemy import func, select

from busi_web.errors import UserError
from busi_web.store.audit import AuditMixin
from busi_web.store.db import utc_now
from busi_web.store.tables import acceptance_results, acceptance_sets, modality_settings

SOURCES = ("folder", "share")  # where an acceptance set's images come from
# Floors on these are upper limits (lower is better); every other metric must reach its floor.
CEILINGS = frozenset({"ece"})
_FLOOR_NAME = re.compile(r"^(macro_f1|accuracy|auc|ece|sensitivity_[\w-]+)$")
MODALITY = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")


def check_modality(modality: Any) -> str:
    """A modality name as the contract spells them (lower case, e.g. ``ultrasound``); 400 otherwise."""
    if not isinstance(modality, str) or not MODALITY.match(modality):
        raise UserError(f"modality must be a lower-case name such as ultrasound or mammography, got {modality!r}",
                        400, {"modality": "a lower-case name"})
    return modality


def check_floors(floors: Any) -> dict[str, float]:
    """Floors as ``{metric: value in [0, 1]}``; 400 naming the bad entry otherwise."""
    if not isinstance(floors, dict):
        raise UserError('floors must be an object of metric names to values in [0, 1], e.g. '
                        '{"macro_f1": 0.7, "sensitivity_malignant": 0.85}', 400, {"floors": "an object"})
    out = {}
    for name, value in floors.items():
        if not isinstance(name, str) or not _FLOOR_NAME.match(name):
            raise UserError(f"unknown floor {name!r}: use macro_f1, accuracy, auc, ece or sensitivity_<class>",
                            400, {"floors": f"unknown metric {name!r}"})
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not 0 <= value <= 1:
            raise UserError(f"floor {name} must be a number from 0 to 1, got {value!r}", 400,
                            {"floors": f"{name}: a number from 0 to 1"})
        out[name] = float(value)
    return out


def check_sensitivity(value: Any) -> float:
    """A target sensitivity for malignancy: a number above 0.5 and at most 1; 400 otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.5 < value <= 1:
        raise UserError(f"operating_sensitivity must be a number above 0.5 and at most 1 (e.g. 0.90), got {value!r}",
                        400, {"operating_sensitivity": "above 0.5, at most 1"})
    return float(value)


def floor_failures(metrics: dict[str, Any], floors: dict[str, float]) -> list[str]:
    """What fails ``floors`` in ``metrics`` (a result's metric dict), one phrase each; empty when all pass."""
    failures = []
    for name, floor in sorted(floors.items()):
        value = metrics.get(name)
        if not isinstance(value, (int, float)):
            failures.append(f"{name} is not measured (floor {floor:g})")
        elif name in CEILINGS and value > floor:
            failures.append(f"{name} {value:.3f} is above the ceiling {floor:g}")
        elif name not in CEILINGS and value < floor:
            failures.append(f"{name} {value:.3f} is below the floor {floor:g}")
    return failures


class AcceptanceMixin(AuditMixin):
    """Modality settings, acceptance sets and acceptance results."""

    # -- settings ----------------------------------------------------------------------------------------
    def modality_settings(self, modality: str) -> dict[str, Any]:
        """``{"modality", "auto_promote", "floors", "operating_sensitivity", "updated_at", "updated_by"}`` (off, no
        floors and no target sensitivity until set; the trainer then keeps 0.90)."""
        rows = self._rows(select(modality_settings).where(modality_settings.c.modality == modality))
        if not rows:
            return {"modality": modality, "auto_promote": False, "floors": {}, "operating_sensitivity": None,
                    "updated_at": None, "updated_by": None}
        row = rows[0]
        row["auto_promote"] = bool(row["auto_promote"])
        row["floors"] = json.loads(row["floors"] or "{}")
        return row

    def list_modality_settings(self) -> list[dict[str, Any]]:
        return [self.modality_settings(r["modality"])
                for r in self._rows(select(modality_settings.c.modality).order_by(modality_settings.c.modality))]

    def update_modality_settings(self, modality: str, *, by: str | None, auto_promote: bool | None = None,
                                 floors: dict[str, Any] | None = None, operating_sensitivity: float | None = None
                                 ) -> dict[str, Any]:
        """Change auto-promotion, the floors and/or the sensitivity for malignancy that models of ``modality``
        keep at their operating point (audited)."""
        check_modality(modality)
        clean = None if floors is None else check_floors(floors)
        sensitivity = None if operating_sensitivity is None else check_sensitivity(operating_sensitivity)
        with self.transaction() as conn:
            now = self.modality_settings(modality)
            row = {"modality": modality, "updated_at": utc_now(), "updated_by": by,
                   "auto_promote": int(now["auto_promote"] if auto_promote is None else bool(auto_promote)),
                   "floors": json.dumps(now["floors"] if clean is None else clean, sort_keys=True),
                   "operating_sensitivity": now["operating_sensitivity"] if sensitivity is None else sensitivity}
            self._upsert(conn, modality_settings, row)
            self.audit("modality.settings", user=by, modality=modality, auto_promote=bool(row["auto_promote"]),
                       floors=json.loads(row["floors"]), operating_sensitivity=row["operating_sensitivity"])
        return self.modality_settings(modality)

    # -- acceptance sets ---------------------------------------------------------------------------------
    def add_acceptance_set(self, modality: str, *, items: list[dict[str, Any]], dataset: str, source: str,
                           by: str | None, name: str | None = None, dataset_params: dict[str, Any] | None = None,
                           data_dir: str | None = None, share: float | None = None, seed: int | None = None
                           ) -> dict[str, Any]:
        """Record the acceptance set of ``modality``: ``items`` are ``{"key", "label", "sha256", "phash"}``.

        A modality has one set at a time; a new one replaces it for every later check (results on the old set
        are kept, and no longer count).
        """
        check_modality(modality)
        if source not in SOURCES:
            raise UserError(f"source must be one of {', '.join(SOURCES)}, got {source!r}", 400, {"source": source})
        if not items:
            raise UserError("an acceptance set needs at least one image", 400, {"items": "empty"})
        with self.transaction() as conn:
            set_id = conn.execute(acceptance_sets.insert().values(
                modality=modality, name=name or f"{modality} acceptance set", source=source, dataset=dataset,
                dataset_params=json.dumps(dataset_params or {}, sort_keys=True), data_dir=data_dir, share=share,
                seed=seed, items=json.dumps(items), created_at=utc_now(), created_by=by
            ).returning(acceptance_sets.c.id)).scalar_one()
            self.audit("acceptance.define", user=by, modality=modality, set_id=set_id, images=len(items),
                       source=source, dataset=dataset)
        found = self.acceptance_set(modality)
        assert found is not None
        return found

    def acceptance_set(self, modality: str, set_id: int | None = None) -> dict[str, Any] | None:
        """The current acceptance set of ``modality`` (or set ``set_id``), with its items; ``None`` if none."""
        a = acceptance_sets.c
        if set_id is None:
            rows = self._rows(select(acceptance_sets).where(a.modality == modality).order_by(a.id.desc()).limit(1))
        else:
            rows = self._rows(select(acceptance_sets).where(a.id == int(set_id)))
        if not rows:
            return None
        row = rows[0]
        row["items"] = json.loads(row["items"])
        row["dataset_params"] = json.loads(row["dataset_params"] or "{}")
        return row

    def acceptance_sets(self) -> list[dict[str, Any]]:
        """The current set of every modality, without items (their count as ``images``)."""
        newest = select(func.max(acceptance_sets.c.id)).group_by(acceptance_sets.c.modality)
        rows = self._rows(select(acceptance_sets).where(acceptance_sets.c.id.in_(newest))
                          .order_by(acceptance_sets.c.modality))
        out = []
        for row in rows:
            row["images"] = len(json.loads(row.pop("items")))
            row["dataset_params"] = json.loads(row["dataset_params"] or "{}")
            out.append(row)
        return out

    # -- results -----------------------------------------------------------------------------------------
    def record_acceptance(self, run_id: int, set_id: int, metrics: dict[str, Any], by: str | None) -> None:
        """Keep a model's result on an acceptance set (replacing an earlier evaluation on the same set)."""
        with self.transaction() as conn:
            self._upsert(conn, acceptance_results, {"run_id": int(run_id), "set_id": int(set_id),
                                                    "metrics": json.dumps(metrics, sort_keys=True),
                                                    "evaluated_at": utc_now(), "evaluated_by": by})
            self.audit("acceptance.evaluate", user=by, run_id=int(run_id), set_id=int(set_id),
                       macro_f1=metrics.get("macro_f1"), n=metrics.get("n"))

    def acceptance_result(self, run_id: int, set_id: int) -> dict[str, Any] | None:
        r = acceptance_results.c
        rows = self._rows(select(acceptance_results).where(r.run_id == int(run_id), r.set_id == int(set_id)))
        if not rows:
            return None
        row = rows[0]
        row["metrics"] = json.loads(row["metrics"])
        return row

    def gate_failures(self, run_id: int, modality: str) -> list[str]:
        """Why run ``run_id`` may not be the default of ``modality``: empty when it passes (or no floors are
        set: then the admin's reason is the only gate)."""
        floors = self.modality_settings(modality)["floors"]
        if not floors:
            return []
        accepted = self.acceptance_set(modality)
        if accepted is None:
            return [f"{modality} has floors but no acceptance set; define one first"]
        result = self.acceptance_result(run_id, accepted["id"])
        if result is None:
            return [f"run {run_id} has not been evaluated on the {modality} acceptance set {accepted['id']}; "
                    "evaluate it first"]
        return floor_failures(result["metrics"], floors)
