"""The serving worker's malloc settings (busi_web/gunicorn_conf.py): glibc takes them, and trims are counted."""

import platform
import subprocess
import sys

import pytest

from busi_web import gunicorn_conf

GLIBC = platform.libc_ver()[0] == "glibc"


def _tune(*args: int) -> str:
    """tune_malloc(*args) in a fresh interpreter (the settings are process-wide): its answer."""
    code = f"from busi_web.gunicorn_conf import tune_malloc; print(tune_malloc{args!r})"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's")
def test_glibc_takes_the_default_settings_and_the_cpu_profile():
    defaults = (gunicorn_conf.MALLOC_MMAP_THRESHOLD, gunicorn_conf.MALLOC_ARENA_MAX,
                gunicorn_conf.MALLOC_TRIM_THRESHOLD)
    assert defaults == (1 << 20, 4, 0)
    assert _tune(*defaults) == "True"
    assert _tune(32 << 20, 4, 256 << 20) == "True"  # docs/scaling.md's profile for hosts with memory to spare


def test_the_worker_trims_every_so_many_requests(monkeypatch):
    trims = []
    monkeypatch.setattr(gunicorn_conf, "trim_malloc", lambda: trims.append(1) or True)
    monkeypatch.setattr(gunicorn_conf, "MALLOC_TRIM_EVERY", 16)
    monkeypatch.setitem(gunicorn_conf._served, "requests", 0)
    for _ in range(50):
        gunicorn_conf.post_request(None, None, {}, None)
    assert len(trims) == 3
    monkeypatch.setattr(gunicorn_conf, "MALLOC_TRIM_EVERY", 0)  # never
    for _ in range(50):
        gunicorn_conf.post_request(None, None, {}, None)
    assert len(trims) == 3
