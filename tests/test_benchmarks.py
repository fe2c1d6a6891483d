"""Benchmarks need ../shared/data; without it they say so and exit 0 (a user's machine won't have it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT


def test_the_trust_benchmark_skips_cleanly_without_the_shared_data(tmp_path):
    result = subprocess.run([sys.executable, "benchmarks/ood_calibration.py", "--data-dir", str(tmp_path / "no-busi"),
                             "--mias-dir", str(tmp_path / "no-mias"), "--out", str(tmp_path / "out")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("skipped:"), result.stderr
    assert not (tmp_path / "out").exists()


def test_the_sites_benchmark_skips_cleanly_without_the_shared_data(tmp_path):
    result = subprocess.run([sys.executable, "benchmarks/sites.py", "--data", str(tmp_path / "no-data"),
                             "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("skipped:"), result.stderr
    assert "no-data/busi/Dataset_BUSI_with_GT" in result.stdout and not (tmp_path / "out").exists()


def test_the_site_probe_skips_cleanly_without_the_shared_data(tmp_path):
    result = subprocess.run([sys.executable, "benchmarks/site_probe.py", f"pooled={tmp_path}", "--data",
                             str(tmp_path / "no-data")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("skipped:"), result.stderr
    assert "no-data/busbra/BUSBRA" in result.stdout


def test_the_outline_benchmark_runs_and_prints_its_ratio():
    """It needs no shared data; a smoke run keeps it working (the ratio itself is for the note, not asserted)."""
    result = subprocess.run([sys.executable, "benchmarks/outline.py", "--batches", "1", "--repeats", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert "worst outline / forward ratio:" in result.stdout and "(1/1 images outlined)" in result.stdout


@pytest.mark.slow
def test_the_serving_benchmark_runs_and_prints_the_servers_cpu_beyond_the_model():
    """A smoke run on a tiny model (the figures are for the note, not asserted): it serves, breaks the server's CPU
    down per stage and per thread, and compares it with the model's own."""
    result = subprocess.run([sys.executable, "benchmarks/serve.py", "--backbone", "tiny_cnn", "--input-size", "64",
                             "--image-size", "72", "--train-epochs", "1", "--seconds", "3", "--baseline-seconds", "1",
                             "--clients", "4", "--threads", "4"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for line in ("server CPU beyond the model:", "request ", "passes ", "errors 0",
                 "system CPU and minor page faults per diagnosis: server "):
        assert line in result.stdout, result.stdout
