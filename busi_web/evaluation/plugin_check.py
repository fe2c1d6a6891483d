"""``busi-web plugins check``: load each plugin on its own and try every spec it registers, before anyone trains.

Each installed plugin is loaded in a registry of its own (busi-web's built-ins beside it, no other third party),
so one broken plugin does not hide another. Then every spec is dry-run:

* a backbone is built with its default parameters for 3 classes and 3 channels, runs one blank image forward
  (the output must be one logit per class), and its target layer (and, for a segmenting backbone, its lesion
  layer) must be a module of the model;
* an explainer makes one map for a blank image on a small built-in model (a tiny CNN): the map must be finite
  and of the image's size;
* a dataset is built (with its data folder, when it needs one and one is given) and its first samples are
  listed and read.

Every failure names the plugin, the spec, and the file and line in the plugin where it happened.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import torch

from busi_web.explain.base import complete_explanation, default_target_layer, resolve_layer
from busi_web.plugins import GROUP, PluginInfo, PluginRegistry, is_builtin, one_line, where
from busi_web.specs import CONTRACT_VERSION

INPUT = 64  # px: the blank image every backbone and explainer sees


@dataclass
class Finding:
    """One line of the check: a plugin's spec (or the plugin itself) and what came of it."""

    plugin: str
    kind: str  # backbone | explainer | dataset | plugin
    name: str
    ok: bool
    detail: str = ""

    def line(self) -> str:
        mark = "ok    " if self.ok else "FAILED"
        return f"{mark} {self.plugin}: {self.kind} {self.name}" + (f": {self.detail}" if self.detail else "")


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "findings": [f.__dict__ for f in self.findings]}


def _try(plugin: str, module: str, kind: str, name: str, work: Callable[[], str]) -> Finding:
    try:
        return Finding(plugin, kind, name, True, work())
    except Exception as exc:  # noqa: BLE001 - a plugin's code may raise anything: that is what is checked
        return Finding(plugin, kind, name, False, f"{type(exc).__name__}{where(exc, module)}: {one_line(exc)}")


def _backbone(registry: PluginRegistry, name: str) -> str:
    spec = registry.backbone(name)
    model = spec.build({}, num_classes=3, in_channels=3).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, INPUT, INPUT))
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, 3):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"one image gives an output of shape {shape}, not (1, 3): build the classifier with the "
                         "num_classes the factory is given")
    layer = default_target_layer(model, spec.target_layer)
    resolve_layer(model, layer)
    said = f"builds, runs a {INPUT} px image, target layer {layer!r}"
    if spec.segments:
        lesion = getattr(model, "lesion_layer", None)
        if not lesion or not callable(getattr(model, "segment", None)):
            raise ValueError("segments=True but the model has no segment() method or no lesion_layer attribute")
        resolve_layer(model, lesion)
        said += f", lesion layer {lesion!r}"
    return said


def _explainer(registry: PluginRegistry, name: str) -> str:
    spec = registry.explainer(name)
    model = registry.backbone("tiny_cnn").build({}, num_classes=3, in_channels=3).eval()
    images = torch.rand(1, 3, INPUT, INPUT)
    layer = default_target_layer(model, registry.backbone("tiny_cnn").target_layer)
    result = complete_explanation(spec.factory(**spec.validate({})).explain(model, images, None, layer), model,
                                  images)
    maps = result.maps
    if maps is None:
        raise ValueError("no map was made")
    if tuple(maps.shape) != (1, INPUT, INPUT):
        raise ValueError(f"the map has shape {tuple(maps.shape)}, not (1, {INPUT}, {INPUT})")
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("the map holds NaN or infinite values")
    return f"maps a {INPUT} px image on the built-in tiny_cnn"


def _dataset(registry: PluginRegistry, name: str, data_dirs: Mapping[str, str]) -> str:
    spec = registry.dataset(name)
    root = data_dirs.get(name)
    if spec.needs_data_dir and not root:
        return f"not read: it needs a data folder (--data-dir {name}=DIR); its parameters are valid"
    ds = spec.build({}, root=root)
    ds.check_usable()
    keys = [s.key for s in ds.samples[:3]]
    image = ds.load_image(0)
    return (f"{len(ds)} samples, classes {', '.join(ds.classes)}, modality {spec.modality}; first {keys}, image "
            f"{image.shape}")


def check_loaded(registry: PluginRegistry, info: PluginInfo, data_dirs: Mapping[str, str] | None = None
                 ) -> list[Finding]:
    """Dry-run every spec a plugin registered in ``registry`` (``info`` is its record there)."""
    data_dirs = dict(data_dirs or {})
    name = info.name
    if info.status != "loaded":
        return [Finding(name, "plugin", name, False, "; ".join(info.errors) or info.status)]
    findings = []
    if info.contract is None and not info.builtin:
        findings.append(Finding(name, "plugin", name, True, "loads; it declares no contract version "
                                                           f"(BUSI_WEB_CONTRACT = \"{CONTRACT_VERSION}\")"))
    checks = {"backbone": (info.registers["backbones"], _backbone),
              "explainer": (info.registers["explainers"], _explainer),
              "dataset": (info.registers["datasets"], lambda r, n: _dataset(r, n, data_dirs))}
    for kind, (spec_names, check) in checks.items():
        for spec_name in spec_names:
            findings.append(_try(name, info.module, kind, spec_name,
                                 lambda c=check, r=registry, n=spec_name: c(r, n)))
    return findings


def check_plugins(names: list[str] | None = None, data_dirs: Mapping[str, str] | None = None,
                  builtins: bool = False) -> Report:
    """Check the installed plugins named (default: every third-party one; with ``builtins`` busi-web's too)."""
    report = Report()
    eps = {ep.name: ep for ep in metadata.entry_points(group=GROUP)}
    wanted = names or [n for n, ep in sorted(eps.items()) if builtins or not is_builtin(ep)]
    for name in wanted:
        if name not in eps:
            known = ", ".join(sorted(eps)) or "none"
            report.findings.append(Finding(name, "plugin", name, False, f"no installed plugin is called {name!r} "
                                                                        f"(installed: {known})"))
            continue
        # Its own registry: the built-ins, and this plugin alone of the third parties.
        registry = PluginRegistry(allowed=[name]).load_entry_points()
        info = next(p for p in registry.plugins if p.name == name)
        report.findings.extend(check_loaded(registry, info, data_dirs))
    return report
