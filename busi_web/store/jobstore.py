"""The job store: one object over the SQLite file with every part of the store's contract.

Each part lives in its own module (:mod:`~busi_web.store.runs`,
:mod:`~busi_web.store.metrics`, :mod:`~busi_web.store.models`,
:mod:`~busi_web.store.users`, :mod:`~busi_web.store.audit`,
:mod:`~busi_web.store.workers`) on top of
:class:`~busi_web.store.db.StoreBase`; :class:`JobStore` puts them together.
"""

from __future__ import annotations

from busi_web.store.metrics import MetricsMixin
from busi_web.store.models import ModelsMixin
from busi_web.store.users import UsersMixin
from busi_web.store.validations import ValidationsMixin
from busi_web.store.workers import WorkersMixin


class JobStore(ModelsMixin, WorkersMixin, UsersMixin, MetricsMixin, ValidationsMixin):
    """All persistent state of busi-web: runs, metrics, active models, users, API tokens and the audit trail.

    Safe to share between threads; open one per process (see :mod:`busi_web.store.db`).
    """
