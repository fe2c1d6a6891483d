"""Which model answers: the default model of each modality, set or cleared by an admin with a reason, and
promotion through the acceptance gate.

A training run never makes itself a default. The only automatic path is
:meth:`ModelsMixin.auto_promote`, and only for a modality whose admin switched
auto-promotion on: the run must then pass the gate (every floor, on the
modality's acceptance set) and beat the current default on that same set.
Every change writes an audit row with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select

from busi_web.errors import UserError
from busi_web.store.acceptance import AcceptanceMixin
from busi_web.store.db import utc_now
from busi_web.store.run_files import BEST_PT
from busi_web.store.runs import IllegalTransition, RunsMixin
from busi_web.store.tables import audit, defaults, runs

# What an answering model is, and what is said about it, can change only through these acts (each audited).
MODEL_ACTIONS = ("model.default.set", "model.default.clear", "modality.settings", "acceptance.define",
                 "acceptance.evaluate", "model.validate", "model.operating_point")

# A default with its run's folder (where its checkpoint is).
_DEFAULTS = select(defaults, runs.c.run_dir).join(runs, runs.c.id == defaults.c.run_id)


class GateRefused(UserError):
    """A model does not pass its modality's acceptance gate (409); the message lists what fails."""

    status = 409


def _reason(reason: str | None) -> str:
    text = (reason or "").strip()
    if not text:
        raise UserError("give a reason for changing a default model (it is kept in the audit log)", 400,
                        {"reason": "required"})
    if len(text) > 500:
        raise UserError("the reason is longer than 500 characters; shorten it", 400, {"reason": "too long"})
    return text


class ModelsMixin(AcceptanceMixin, RunsMixin):
    """Default models per modality, and promotion."""

    def set_default(self, run_id: int, *, by: str | None, reason: str | None, gate: bool = True
                    ) -> dict[str, Any]:
        """Make a finished run's model the default of its modality (what Diagnose serves for that modality).

        With ``gate`` (always, except the first-start demo) the run must pass the modality's floors on its
        acceptance set: :class:`GateRefused` (409) lists the failures otherwise.
        """
        why = _reason(reason)
        with self.transaction() as conn:
            run = self.get_run(run_id)
            if run["status"] != "finished":
                raise IllegalTransition(f"run {run_id} is {run['status']}; only a finished run can be a default")
            if not (Path(run["run_dir"]) / BEST_PT).exists():
                raise IllegalTransition(f"run {run_id} has no {BEST_PT}; it cannot be a default")
            modality = run.get("modality") or "ultrasound"
            if gate:
                failures = self.gate_failures(int(run_id), modality)
                if failures:
                    raise GateRefused(f"run {run_id} does not pass the {modality} acceptance gate: "
                                      + "; ".join(failures))
            previous = self.default_model(modality)
            self._upsert(conn, defaults, {"modality": modality, "run_id": int(run_id), "set_at": utc_now(),
                                          "set_by": by, "reason": why})
            self.audit("model.default.set", user=by, run_id=int(run_id), modality=modality, reason=why,
                       previous_run_id=None if previous is None else previous["run_id"])
        result = self.default_model(modality)
        assert result is not None
        return result

    def clear_default(self, modality: str, *, by: str | None, reason: str | None) -> None:
        """Remove the default of ``modality``: Diagnose then refuses that modality until a new one is set."""
        why = _reason(reason)
        with self.transaction() as conn:
            previous = self.default_model(modality)
            if previous is None:
                raise UserError(f"{modality} has no default model to clear", 404, {"modality": "no default"})
            conn.execute(delete(defaults).where(defaults.c.modality == modality))
            self.audit("model.default.clear", user=by, run_id=previous["run_id"], modality=modality, reason=why)

    def default_model(self, modality: str) -> dict[str, Any] | None:
        """The default of ``modality`` (``modality``, ``run_id``, ``checkpoint``, ``set_at``, ``set_by``,
        ``reason``), or ``None``."""
        rows = self._rows(_DEFAULTS.where(defaults.c.modality == modality))
        return self._default_row(rows[0]) if rows else None

    def list_defaults(self) -> list[dict[str, Any]]:
        """Every modality's default, by modality."""
        rows = self._rows(_DEFAULTS.order_by(defaults.c.modality))
        return [self._default_row(r) for r in rows]

    def model_generation(self) -> int:
        """A number that changes whenever something that decides which model answers, or what its card and
        verdict say, changes (the newest audit row of :data:`MODEL_ACTIONS`; 0 before any): what a serving
        process keeps its answers about models under, on any host."""
        return int(self._scalar(select(func.max(audit.c.id)).where(audit.c.action.in_(MODEL_ACTIONS))) or 0)

    def default_ids(self) -> dict[int, str]:
        """Run id -> the modality it is the default of."""
        return {d["run_id"]: d["modality"] for d in self.list_defaults()}

    def _default_row(self, row: Any) -> dict[str, Any]:
        out = dict(row)
        out["checkpoint"] = str(Path(self.folders.local(out.pop("run_dir")) or "") / BEST_PT)
        return out

    def auto_promote(self, run_id: int, by: str = "auto") -> tuple[bool, str]:
        """Promote a finished run when its modality allows auto-promotion, it passes the gate, and it beats the
        current default's macro-F1 on the same acceptance set. Returns ``(promoted, why)``.

        Read and write happen in one immediate transaction, so two trainers finishing at once cannot both win.
        """
        with self.transaction():
            run = self.get_run(run_id)
            modality = run.get("modality") or "ultrasound"
            settings = self.modality_settings(modality)
            if not settings["auto_promote"]:
                return False, f"auto-promotion is off for {modality}; an admin sets defaults on the Models page"
            if not settings["floors"]:
                return False, f"auto-promotion needs floors for {modality}; none are set"
            failures = self.gate_failures(int(run_id), modality)
            if failures:
                return False, "it does not pass the gate: " + "; ".join(failures)
            accepted = self.acceptance_set(modality)
            assert accepted is not None  # gate_failures says so otherwise
            mine = self.acceptance_result(int(run_id), accepted["id"])
            current = self.default_model(modality)
            if current is not None and current["run_id"] == int(run_id):
                return False, "it is the default already"
            theirs = None if current is None else self.acceptance_result(current["run_id"], accepted["id"])
            score = mine["metrics"]["macro_f1"] if mine else None
            if theirs is not None and score is not None and score <= theirs["metrics"]["macro_f1"]:
                return False, (f"its acceptance macro-F1 {score:.4f} does not beat the default's "
                               f"{theirs['metrics']['macro_f1']:.4f} (run {current['run_id']})")
            self.set_default(run_id, by=by, reason=f"auto-promotion: passed the {modality} gate with acceptance "
                                                   f"macro-F1 {score:.4f}")
            return True, f"passed the gate with acceptance macro-F1 {score:.4f}"
