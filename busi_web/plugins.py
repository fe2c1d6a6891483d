"""Plugin manager: loads built-in and third-party plugins through one entry-point group.

Every plugin, built-in or not, is an entry point in the group ``busi_web``.
Loading never raises: a plugin that fails to import, whose hook raises or
returns something that is not a list of specs, or that registers a name
already taken, is recorded with its error and skipped.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any
from collections.abc import Iterable

import pluggy

from . import hookspecs
from .specs import BackboneSpec, DatasetSpec, ExplainerSpec, Spec

log = logging.getLogger(__name__)

GROUP = "busi_web"
OWN_DISTRIBUTION = "busi-web"
_KINDS: dict[str, tuple[str, type[Spec]]] = {
    "register_backbones": ("backbones", BackboneSpec),
    "register_explainers": ("explainers", ExplainerSpec),
    "register_datasets": ("datasets", DatasetSpec),
}


class UnknownPlugin(KeyError):
    """A backbone, explainer or dataset name that no loaded plugin registers."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        self.kind, self.name = kind, name
        known = sorted(known)
        super().__init__(f"unknown {kind} {name!r}; available: {', '.join(known) or 'none'}")

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return self.args[0]


@dataclass
class PluginInfo:
    """What the plugins page, ``busi-web plugins`` and ``/api/plugins`` show."""

    name: str
    module: str
    distribution: str | None
    version: str | None
    builtin: bool
    status: str = "loaded"  # loaded | failed | disabled
    errors: list[str] = field(default_factory=list)
    registers: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k, _ in _KINDS.values()})

    def fail(self, message: str) -> None:
        self.status = "failed"
        self.errors.append(message)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "builtin": self.builtin,
            "status": self.status,
            "errors": list(self.errors),
            "registers": {k: list(v) for k, v in self.registers.items()},
        }


class PluginRegistry:
    """The loaded specs by kind and name, plus a report on every plugin."""

    def __init__(self, allowed: Iterable[str] | None = None):
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.allowed = None if allowed is None else {a.strip() for a in allowed if a and a.strip()}
        self.plugins: list[PluginInfo] = []
        self.backbones: dict[str, BackboneSpec] = {}
        self.explainers: dict[str, ExplainerSpec] = {}
        self.datasets: dict[str, DatasetSpec] = {}

    # -- loading ---------------------------------------------------------
    def load_entry_points(self) -> PluginRegistry:
        eps = sorted(metadata.entry_points(group=GROUP), key=lambda ep: (not _is_builtin(ep), ep.name))
        for ep in eps:
            self._load_one(ep)
        return self

    def _load_one(self, ep: metadata.EntryPoint) -> None:
        dist = getattr(ep, "dist", None)
        builtin = _is_builtin(ep)
        info = PluginInfo(
            name=ep.name,
            module=ep.value,
            distribution=dist.metadata["Name"] if dist else None,
            version=dist.version if dist else None,
            builtin=builtin,
        )
        self.plugins.append(info)
        if not builtin and self.allowed is not None and not ({ep.name, info.distribution} & self.allowed):
            info.status = "disabled"
            info.errors.append("not in the ALLOWED_PLUGINS setting; add its name there to load it")
            return
        if any(p.name == ep.name and p.status == "loaded" for p in self.plugins[:-1]):
            info.fail(f"another plugin is already registered under the name {ep.name!r}")
            return
        try:
            obj = ep.load()
        except BaseException as exc:  # a plugin's import may raise anything, even SystemExit
            if isinstance(exc, KeyboardInterrupt):
                raise
            info.fail(f"import failed: {type(exc).__name__}: {exc}")
            log.warning("plugin %s failed to import:\n%s", ep.name, traceback.format_exc())
            return
        self.register(obj, info)

    def register(self, obj: Any, info: PluginInfo | None = None) -> PluginInfo:
        """Register a plugin object (module or instance) and collect its specs."""
        if info is None:
            info = PluginInfo(
                name=getattr(obj, "__name__", type(obj).__name__),
                module=getattr(obj, "__name__", repr(obj)),
                distribution=None,
                version=None,
                builtin=False,
            )
            self.plugins.append(info)
        try:
            self.pm.register(obj, name=info.name)
        except Exception as exc:
            info.fail(f"registration failed: {type(exc).__name__}: {exc}")
            return info
        staged: dict[str, dict[str, Spec]] = {k: {} for k, _ in _KINDS.values()}
        for hook_name, (kind, spec_type) in _KINDS.items():
            impls = [i for i in getattr(self.pm.hook, hook_name).get_hookimpls() if i.plugin is obj]
            if not impls:
                continue
            try:
                specs = impls[0].function()
            except Exception as exc:
                info.fail(f"{hook_name}() raised {type(exc).__name__}: {exc}")
                log.warning("plugin %s: %s failed:\n%s", info.name, hook_name, traceback.format_exc())
                continue
            if specs is None:
                continue
            if not isinstance(specs, (list, tuple)):
                info.fail(f"{hook_name}() must return a list of {spec_type.__name__}, got {type(specs).__name__}")
                continue
            for spec in specs:
                if not isinstance(spec, spec_type):
                    info.fail(f"{hook_name}() returned {spec!r}, which is not a {spec_type.__name__}")
                    continue
                table: dict[str, Spec] = getattr(self, kind)
                if spec.name in table or spec.name in staged[kind]:
                    owner = self.owner_of(kind, spec.name) or info.name
                    info.fail(f"{kind[:-1]} name {spec.name!r} is already registered by plugin {owner!r}; skipped")
                    continue
                staged[kind][spec.name] = spec
        for kind, specs in staged.items():
            getattr(self, kind).update(specs)
            info.registers[kind].extend(specs)
        return info

    def unregister(self, name: str) -> None:
        """Remove a plugin and everything it registered (used by tests)."""
        for info in [p for p in self.plugins if p.name == name]:
            for kind, names in info.registers.items():
                for n in names:
                    getattr(self, kind).pop(n, None)
            self.plugins.remove(info)
        if self.pm.get_plugin(name) is not None:
            self.pm.unregister(name=name)

    # -- lookup ----------------------------------------------------------
    def owner_of(self, kind: str, name: str) -> str | None:
        for p in self.plugins:
            if name in p.registers.get(kind, ()):
                return p.name
        return None

    def backbone(self, name: str) -> BackboneSpec:
        return self._get("backbone", self.backbones, name)  # type: ignore[return-value]

    def explainer(self, name: str) -> ExplainerSpec:
        return self._get("explainer", self.explainers, name)  # type: ignore[return-value]

    def dataset(self, name: str) -> DatasetSpec:
        return self._get("dataset", self.datasets, name)  # type: ignore[return-value]

    def version_of(self, kind: str, name: str) -> str | None:
        owner = self.owner_of(kind, name)
        for p in self.plugins:
            if p.name == owner:
                return p.version
        return None

    @staticmethod
    def _get(kind: str, table: dict[str, Spec], name: str) -> Spec:
        try:
            return table[name]
        except KeyError:
            raise UnknownPlugin(kind, name, table) from None

    def call_startup(self, app: Any) -> None:
        for impl in self.pm.hook.startup.get_hookimpls():
            try:
                impl.function(app)
            except Exception as exc:
                for p in self.plugins:
                    if p.name == impl.plugin_name:
                        p.fail(f"startup(app) raised {type(exc).__name__}: {exc}")
                log.warning("plugin %s: startup failed:\n%s", impl.plugin_name, traceback.format_exc())

    def to_dict(self) -> dict[str, Any]:
        return {
            "plugins": [p.to_dict() for p in self.plugins],
            "backbones": [s.to_dict() for s in self.backbones.values()],
            "explainers": [s.to_dict() for s in self.explainers.values()],
            "datasets": [s.to_dict() for s in self.datasets.values()],
        }


def _is_builtin(ep: metadata.EntryPoint) -> bool:
    dist = getattr(ep, "dist", None)
    return bool(dist and dist.metadata["Name"] == OWN_DISTRIBUTION and ep.value.startswith("plugins."))


_cache: dict[frozenset[str] | None, PluginRegistry] = {}


def load_plugins(allowed: Iterable[str] | None = None, *, fresh: bool = False) -> PluginRegistry:
    """Return the registry for an allow-list, loading entry points once per process."""
    key = None if allowed is None else frozenset(allowed)
    if fresh or key not in _cache:
        _cache[key] = PluginRegistry(allowed).load_entry_points()
    return _cache[key]
