"""Where a run's folder is on this host: the one place every reader and writer of run folders asks.

Run folders live under ``RUNS_DIR``, a path every host sees (the web hosts
and the trainer workers; NFS or any shared file system). A run's row records
its folder as the host that created it saw it; another host may mount the
same share elsewhere, so the folder is found by its name under this host's
``RUNS_DIR``. This is also the seam where object storage would come in: a
store of run folders that is not a file system would answer here.
"""

from __future__ import annotations

from pathlib import Path


class RunFolders:
    """Run folders under one root (this host's ``RUNS_DIR``)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def new(self, name: str) -> Path:
        """The path of a new run's folder called ``name`` (created by the caller)."""
        return self.root / name

    def local(self, recorded: str | None) -> str | None:
        """The folder a row records, as this host sees it: the same path when it is under this host's root,
        else the folder of the same name under the root."""
        if not recorded:
            return recorded
        path = Path(recorded)
        if path.parent == self.root:
            return recorded
        return str(self.root / path.name)
