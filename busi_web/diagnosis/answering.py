"""Which model answers a diagnosis, and what is said about it, kept while nothing that decides it changes.

Every diagnosis needs the run whose model answers (the one asked for, or
the modality's default), its checkpoint, whether it is accepted to answer
clinicians (its verdict), and the summary of its card that the answer
carries (its provenance). Worked out afresh, that is a dozen queries and a
model card per request. It changes only through a few audited acts (a new
default, new floors, a new acceptance set or result, an external
validation, a refitted operating point), so it is kept under the store's
:meth:`~busi_web.store.models.ModelsMixin.model_generation`: one indexed
query per request says whether it still holds, on this host or any other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from busi_web.diagnosis.active import checkpoint_for, serving_run
from busi_web.store import JobStore


@dataclass(frozen=True)
class Answering:
    """The model that answers, as a diagnosis needs it."""

    run_id: int
    checkpoint: str
    verdict: dict[str, Any]
    provenance: dict[str, Any]


class AnsweringCache:
    """:class:`Answering` per (run asked for, modality), valid for one model generation. Thread-safe."""

    def __init__(self, store: JobStore, verdict: Callable[[int], dict[str, Any]],
                 provenance: Callable[[int], dict[str, Any]]):
        self.store = store
        self._verdict, self._provenance = verdict, provenance
        self._lock = threading.Lock()
        self._generation: int | None = None
        self._choices: dict[tuple[int | None, str | None], int] = {}
        self._runs: dict[int, Answering] = {}
        self.misses = 0  # how many times an answer was worked out afresh (tests and the health page)

    def get(self, run_id: int | None = None, modality: str | None = None) -> Answering:
        """The answering model for ``run_id`` (when asked for) or ``modality``'s default. Raises what
        :func:`~busi_web.diagnosis.active.serving_run` raises when there is none."""
        generation = self.store.model_generation()
        with self._lock:
            if generation != self._generation:
                self._generation, self._choices, self._runs = generation, {}, {}
            served = self._choices.get((run_id, modality))
            found = None if served is None else self._runs.get(served)
        if found is not None:
            return found
        served = serving_run(self.store, run_id, modality)
        answering = Answering(run_id=served, checkpoint=checkpoint_for(self.store, served),
                              verdict=self._verdict(served), provenance=self._provenance(served))
        finished = self.store.get_run(served)["status"] == "finished"  # a run still training changes as it goes
        with self._lock:
            self.misses += 1
            if finished and generation == self._generation:  # not replaced meanwhile by a newer generation
                self._choices[(run_id, modality)] = served
                self._runs[served] = answering
        return answering
