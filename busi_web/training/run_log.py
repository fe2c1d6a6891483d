"""The run's log file, written line by line as training goes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path


class RunLog:
    """``training_log.txt``: appended line by line as training goes (and echoed to ``echo``)."""

    def __init__(self, path: str | Path, echo: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.echo = echo

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {message}\n"
        # Owner-only like every file of a run folder, whatever the umask.
        with os.fdopen(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a",
                       encoding="utf-8") as fh:
            fh.write(line)
        if self.echo is not None:
            self.echo(line.rstrip("\n"))
