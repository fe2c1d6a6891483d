"""What gets installed: busi_web with every subpackage, and the built-in plugins under a name of their own."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from importlib import metadata

import tomllib

from tests.helpers import ROOT


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_subpackage_is_listed_for_installation():
    listed = set(_setuptools()["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "busi_web").rglob("__init__.py")}
    assert on_disk <= listed, f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"
    assert _setuptools()["package-dir"] == {"busi_web_plugins": "plugins"}


def test_builtin_entry_points_name_the_installed_package():
    eps = [ep for ep in metadata.entry_points(group="busi_web") if ep.dist and ep.dist.metadata["Name"] == "busi-web"]
    assert eps and all(ep.value.startswith("busi_web_plugins.") for ep in eps), [ep.value for ep in eps]
    import busi_web_plugins.backbones

    assert busi_web_plugins.backbones.__file__.startswith(str(ROOT / "plugins"))


def test_the_wheel_holds_busi_web_and_busi_web_plugins_and_no_plugins_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("busi_web-*.whl"))
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {"busi_web", "busi_web_plugins"} <= tops and "plugins" not in tops, tops
    names = zipfile.ZipFile(wheel).namelist()
    assert "busi_web_plugins/backbones.py" in names and "busi_web/store/runs.py" in names

