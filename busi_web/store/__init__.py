"""The store: everything busi-web keeps, in one SQLite file beside the run folders.

Owns runs and their states, metric rows, active models and promotion, users
and API tokens, the audit trail, the schema and its migrations, and the
layout of a run's folder (:mod:`busi_web.store.run_files`). It is the source
of truth between the web process and trainer processes.

May import: the contract basics (:mod:`busi_web.errors`). Knows nothing of
training, diagnosis, the web or the command line.
"""

from busi_web.store.db import utc_now
from busi_web.store.jobstore import JobStore
from busi_web.store.runs import MAX_ID, RESUMABLE, STATES, TERMINAL, TRANSITIONS, IllegalTransition, RunNotFound

__all__ = ["JobStore", "RunNotFound", "IllegalTransition", "STATES", "TERMINAL", "RESUMABLE", "TRANSITIONS", "MAX_ID",
           "utc_now"]
