"""The command line's help: fast (no app, no torch), every option explained, bad option values refused."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT, run_cli

HELP_WITHOUT_TORCH = """
import sys
from busi_web.console import main
try:
    main(["--help"])
except SystemExit as done:
    assert done.code == 0
print("torch" in sys.modules, "busi_web.app" in sys.modules)
"""


def test_help_builds_no_app_and_imports_no_torch():
    out = subprocess.run([sys.executable, "-c", HELP_WITHOUT_TORCH], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False False"
    assert "train" in out.stdout and "evaluate" in out.stdout


def _options_without_help(command) -> list[str]:
    import click

    missing = [f"{command.name} {p.name}" for p in command.params if isinstance(p, click.Option) and not p.help]
    for sub in getattr(command, "commands", {}).values():
        missing += _options_without_help(sub)
    return missing


def test_every_option_of_every_command_has_help():
    from busi_web.cli import COMMANDS

    missing = [m for c in COMMANDS for m in _options_without_help(c)]
    assert not missing, missing


@pytest.mark.slow
def test_train_help_lists_the_installed_backbones_and_datasets(tmp_path):
    out = run_cli("train", "--help", env={"BUSI_WEB_INSTANCE_PATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "Backbones:" in out.stdout and "resnet50_cbam" in out.stdout and "tiny_cnn" in out.stdout
    assert "Datasets:" in out.stdout and "phantom" in out.stdout and "busi" in out.stdout


@pytest.mark.slow
def test_a_bad_option_value_is_refused_as_the_api_refuses_it(tmp_path):
    out = run_cli("runs", "--status", "bogus", env={"BUSI_WEB_INSTANCE_PATH": str(tmp_path)})
    assert out.returncode == 2 and "'bogus' is not one of" in out.stderr and "queued" in out.stderr
    out = run_cli("runs", "show", "99999999999999999999999", env={"BUSI_WEB_INSTANCE_PATH": str(tmp_path)})
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
