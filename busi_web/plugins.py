"""Plugin manager: loads built-in and third-party plugins through one entry-point group.

Every plugin, built-in or not, is an entry point in the group ``busi_web``.
Loading never raises: a plugin that fails to import, that implements a hook
the contract does not have (a misspelled name, found by pluggy's
``check_pending``), whose hook raises or returns something that is not a
list of specs, or that registers a name already taken, is recorded with its
error and skipped; the log gets one line for it (the traceback at debug level).

There is no process-wide registry: :func:`load_plugins` builds one, and
whoever needs it is handed it (the app keeps one in its services, a trainer
process builds its own).
"""

from __future__ import annotations

import inspect
import logging
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from busi_web import hookspecs
from busi_web.errors import UserError
from busi_web.specs import CONTRACT_VERSION, BackboneSpec, DatasetSpec, ExplainerSpec, Spec

log = logging.getLogger(__name__)

GROUP = "busi_web"
OWN_DISTRIBUTION = "busi-web"
BUILTIN_PACKAGE = "busi_web_plugins"  # the plugins/ folder, installed under this name
_KINDS: dict[str, tuple[str, type[Spec]]] = {
    "register_backbones": ("backbones", BackboneSpec),
    "register_explainers": ("explainers", ExplainerSpec),
    "register_datasets": ("datasets", DatasetSpec),
}


class UnknownPlugin(UserError, KeyError):
    """A backbone, explainer or dataset name that no loaded plugin registers."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        self.kind, self.name = kind, name
        known = sorted(known)
        message = f"unknown {kind} {name!r}; available: {', '.join(known) or 'none'}"
        super().__init__(message, 400, {kind: message})


class PluginFailure(RuntimeError):
    """A plugin's code failed while it was being used: a bug in the plugin, not in the user's input.

    The message names the plugin, what it was doing and the error, so the page, the API and the command line
    can say which plugin to fix or remove.
    """

    def __init__(self, plugin: str | None, what: str, error: BaseException, module: str = ""):
        self.plugin, self.what, self.error = plugin, what, error
        super().__init__(f"plugin {plugin or '(unknown)'!r} failed in {what}{where(error, module)}: "
                         f"{type(error).__name__}: {one_line(error)}")


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
    entry_point: bool = False  # loaded through an installed entry point (else registered in-process, by a test)
    contract: str | None = None  # the contract version the plugin says it was written for
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
            "contract": self.contract,
        }


class PluginRegistry:
    """The loaded specs by kind and name, plus a report on every plugin."""

    def __init__(self, allowed: Iterable[str] | None = None) -> None:
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.allowed = None if allowed is None else {a.strip() for a in allowed if a and a.strip()}
        self.plugins: list[PluginInfo] = []
        self.backbones: dict[str, BackboneSpec] = {}
        self.explainers: dict[str, ExplainerSpec] = {}
        self.datasets: dict[str, DatasetSpec] = {}

    # -- loading ---------------------------------------------------------
    def load_entry_points(self) -> PluginRegistry:
        eps = sorted(metadata.entry_points(group=GROUP), key=lambda ep: (not is_builtin(ep), ep.name))
        for ep in eps:
            self._load_one(ep)
        return self

    def _load_one(self, ep: metadata.EntryPoint) -> None:
        dist = getattr(ep, "dist", None)
        builtin = is_builtin(ep)
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
            info.fail(f"import failed{where(exc, ep.value)}: {type(exc).__name__}: {one_line(exc)}")
            _report(info.name, "failed to import", exc)
            return
        info.entry_point = True
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
        problem = contract_problem(obj)
        if problem is not None:
            info.fail(problem)
            log.warning("plugin %s refused: %s", info.name, problem)
            return info
        info.contract = getattr(obj, "BUSI_WEB_CONTRACT", None)
        try:
            self.pm.register(obj, name=info.name)
        except pluggy.PluginValidationError as exc:  # a hook with arguments the contract's hook does not have
            info.fail(f"{one_line(exc)}{where_hook(obj, exc)}")
            _report(info.name, "implements a hook wrongly", exc)
            return info
        except Exception as exc:
            info.fail(f"registration failed: {type(exc).__name__}: {one_line(exc)}")
            _report(info.name, "could not be registered", exc)
            return info
        try:
            self.pm.check_pending()  # a hook name the contract does not have (a typo) is an error, not a no-op
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(obj)
            known = ", ".join(sorted(n for n, f in vars(hookspecs).items() if hasattr(f, f"{GROUP}_spec")))
            info.fail(f"{one_line(exc)}{where_hook(obj, exc)}; the hooks are: {known}")
            _report(info.name, "implements an unknown hook", exc)
            return info
        staged: dict[str, dict[str, Spec]] = {k: {} for k, _ in _KINDS.values()}
        for hook_name, (kind, spec_type) in _KINDS.items():
            impls = [i for i in getattr(self.pm.hook, hook_name).get_hookimpls() if i.plugin is obj]
            if not impls:
                continue
            try:
                specs = impls[0].function()
            except Exception as exc:
                info.fail(f"{hook_name}() raised{where(exc, getattr(obj, '__name__', ''))} "
                          f"{type(exc).__name__}: {one_line(exc)}")
                _report(info.name, f"{hook_name}() failed", exc)
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
                    info.fail(f"{kind[:-1]} name {spec.name!r} is already registered by plugin {owner!r}")
                    continue
                for problem in spec.problems():
                    info.fail(f"{kind[:-1]} {spec.name!r}: {problem}")
                staged[kind][spec.name] = spec
        if info.status == "failed":
            # All or nothing: a plugin with a fault registers none of its specs (half a plugin is worse).
            self.pm.unregister(obj)
            info.errors.append("nothing of this plugin was registered; fix the errors above")
            return info
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
        """Call every plugin's ``startup(app)``; one that raises is reported and the others still run."""
        for impl in self.pm.hook.startup.get_hookimpls():
            try:
                impl.function(app)
            except Exception as exc:
                for p in self.plugins:
                    if p.name == impl.plugin_name:
                        p.fail(f"startup(app) raised {type(exc).__name__}: {exc}")
                _report(impl.plugin_name, "startup(app) failed", exc)

    def unknown_allowed(self) -> list[str]:
        """Names in ``ALLOWED_PLUGINS`` that no installed plugin answers to (a typo disables the plugin it meant)."""
        if self.allowed is None:
            return []
        known = {p.name for p in self.plugins} | {p.distribution for p in self.plugins if p.distribution}
        return sorted(self.allowed - known)

    def in_process_only(self, kind: str, name: str) -> bool:
        """Whether spec ``name`` comes from a plugin registered in this process only (``busi_web.testing``), not
        through an installed entry point: a trainer process, which loads the installed plugins, lacks it."""
        owner = self.owner_of(kind, name)
        return any(p.name == owner and not p.entry_point for p in self.plugins)

    def allowed_list(self) -> list[str] | None:
        """The allow-list this registry was loaded with (``None``: every installed plugin)."""
        return None if self.allowed is None else sorted(self.allowed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "plugins": [p.to_dict() for p in self.plugins],
            "backbones": [s.to_dict() for s in self.backbones.values()],
            "explainers": [s.to_dict() for s in self.explainers.values()],
            "datasets": [s.to_dict() for s in self.datasets.values()],
        }


def owner_module(registry: PluginRegistry, plugin: str) -> str:
    """The module a plugin was loaded from (for :func:`where`), empty when unknown."""
    return next((p.module for p in registry.plugins if p.name == plugin), "")


def contract_problem(obj: object) -> str | None:
    """Why a plugin's declared contract version (``BUSI_WEB_CONTRACT``) rules it out, or ``None``."""
    declared = getattr(obj, "BUSI_WEB_CONTRACT", None)
    if declared is None:
        return None
    major = str(declared).split(".")[0]
    if major != CONTRACT_VERSION.split(".")[0]:
        return (f"it was written for plugin contract {declared}, and this busi-web has contract {CONTRACT_VERSION}; "
                "see docs/CHANGELOG.md for what changed, and update the plugin")
    return None


def one_line(exc: BaseException) -> str:
    """An error's message on one line (pluggy's messages span several)."""
    return " ".join(str(exc).split())


def where(exc: BaseException, module: str) -> str:
    """`` at FILE:LINE``: the deepest frame of ``exc``'s traceback in the plugin's own package (``module`` names
    it, ``pkg.mod:attr`` accepted), else the deepest frame outside busi-web's; empty when there is none."""
    package = module.split(":")[0].split(".")[0]
    frames = traceback.extract_tb(exc.__traceback__)
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" at {exc.filename}:{exc.lineno}"
    own = [f for f in frames if package and f"/{package}/" in f.filename.replace("\\", "/")]
    outside = [f for f in frames if "/busi_web/" not in f.filename and "importlib" not in f.filename]
    frame = (own or outside or [None])[-1]
    return "" if frame is None else f" at {frame.filename}:{frame.lineno}"


def where_hook(obj: object, exc: BaseException) -> str:
    """`` at FILE:LINE`` of the hook function a pluggy validation error is about (its name is in the message)."""
    text = str(exc)
    for name in dir(obj):  # a module's functions, or a plugin object's methods (on its class)
        fn = getattr(obj, name, None)
        if callable(fn) and hasattr(fn, f"{GROUP}_impl") and (repr(name) in text or f"{name}(" in text):
            try:
                return f" at {inspect.getsourcefile(fn)}:{inspect.getsourcelines(fn)[1]}"
            except (OSError, TypeError):
                return ""
    return ""


def is_builtin(ep: metadata.EntryPoint) -> bool:
    dist = getattr(ep, "dist", None)
    return bool(dist and dist.metadata["Name"] == OWN_DISTRIBUTION and ep.value.startswith(BUILTIN_PACKAGE + "."))


def _report(plugin: str, what: str, exc: BaseException) -> None:
    """One warning line naming the plugin and the error; the traceback only at debug level."""
    log.warning("plugin %s %s (skipped): %s: %s", plugin, what, type(exc).__name__, exc)
    log.debug("plugin %s: %s", plugin, "".join(traceback.format_exception(exc)))


def load_plugins(allowed: Iterable[str] | None = None) -> PluginRegistry:
    """A new registry with every installed plugin (or those ``allowed``) loaded through the entry points."""
    return PluginRegistry(allowed).load_entry_points()
