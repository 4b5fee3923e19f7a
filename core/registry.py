"""The component registry and the plugin manager that fills it.

One ``Registry`` per run. ``load_registry()`` creates a pluggy manager, registers the built-in
plugins, then the ``grpo`` entry-point group (unless ``GRPO_DISABLE_PLUGIN_AUTOLOAD=1``), then any
modules a recipe names in ``[plugins] modules``, and calls every registration hook once per plugin
so that each component knows which plugin and distribution provided it. Nothing registers at
import time.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .abilities import DEFAULTS
from .errors import PluginError, UserError, unknown_name_hint
from .schema import Option, options_of
from .strategy import Preset

BUILTIN_MODULE = "grpo.plugins.builtin"
KIND_NOUNS = {"model": "a model", "sampler": "a sampler", "solver": "a solver", "topology": "a topology",
              "reward": "a reward", "advantage": "an advantage estimator", "pruner": "a pruner",
              "objective": "an objective", "backend": "a backend", "strategy": "a strategy",
              "prompts": "a prompt source"}
# what a factory may declare about itself (as class attributes, or given to ``registry.add``)
METADATA = ("requires", "sources", "bundled", "hub_patterns", "hub_companions", "noise_grid_for", "sigma_schedule_for",
            "file_options")


@dataclass(frozen=True)
class Entry:
    """One registered component, with what its factory declares about itself.

    Attributes:
        requires: the packages the component imports when built (``grpo doctor`` checks them).
        sources: option → where to get the file it names (shown with a missing file).
        bundled: option → the weights an empty value loads (``grpo doctor`` checks them).
        hub_patterns: option → what of a Hugging Face Hub repository it reads; only these options
            accept a Hub id.
        hub_companions: option → files read beside the single Hub file it names.
        noise_grid_for: a model's ``noise_grid_for(options)``: the latent grid its exploration noise
            tiles, known from its options without weights (None when it cannot say).
        sigma_schedule_for: a model's ``sigma_schedule_for(options)``: its ``sigma_schedule()``, known
            from its options and configs without weights (None: the sampler's own grid, or not known yet).
        file_options: the options that must name a regular file, never a folder (``grpo doctor``).
    """

    kind: str
    name: str
    factory: Any
    description: str
    plugin: str
    distribution: str
    requires: tuple[str, ...] = ()
    sources: Mapping[str, str] = field(default_factory=dict)
    bundled: Mapping[str, Any] = field(default_factory=dict)
    hub_patterns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    hub_companions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    noise_grid_for: Callable[[dict[str, Any]], Any] | None = None
    sigma_schedule_for: Callable[[dict[str, Any]], Any] | None = None
    file_options: tuple[str, ...] = ()

    @property
    def options(self) -> list[Option]:
        """The recipe options of the component (a strategy has none: its parts have them)."""
        return [] if isinstance(self.factory, Preset) else options_of(self.factory)


@dataclass
class Registry:
    """Components by kind and name."""

    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in hookspecs.KINDS})

    def get(self, kind: str, name: str, *, where: str | None = None) -> Entry:
        table = self.entries[kind]
        if name not in table:
            others = [k for k in hookspecs.KINDS if k != kind and name in self.entries[k]]
            if others:
                raise UserError(f"{name!r} is {KIND_NOUNS[others[0]]}, not {KIND_NOUNS[kind]}", where=where,
                                hint=f"name {KIND_NOUNS[kind]}: " + (", ".join(sorted(table)) or "(none registered)"))
            raise UserError(
                f"unknown {kind} {name!r}", where=where, hint=unknown_name_hint(name, table)
            )
        return table[name]

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def all(self) -> Iterable[Entry]:
        for kind in hookspecs.KINDS:
            yield from (self.entries[kind][n] for n in sorted(self.entries[kind]))

    def find(self, name: str) -> list[Entry]:
        return [e for e in self.all() if e.name == name]


class KindRegistrar:
    """What a registration hook receives: ``registry.add(name, factory, description=...)``."""

    def __init__(self, registry: Registry, kind: str, plugin: str, distribution: str) -> None:
        self._registry, self.kind, self._plugin, self._dist = registry, kind, plugin, distribution

    def add(self, name: str, factory: Any, *, description: str = "", **metadata: Any) -> None:
        """Register `factory` under `name`. A strategy's factory is a ``Preset``. `metadata` may give
        any of ``requires``, ``sources``, ``bundled``, ``hub_patterns``, ``hub_companions``,
        ``noise_grid_for`` and ``sigma_schedule_for``; what it leaves out is read from the factory's class attributes."""
        table = self._registry.entries[self.kind]
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {self._plugin!r} ({self._dist}) registered a {self.kind} with no name")
        if name in table:
            other = table[name]
            raise PluginError(
                f"{self.kind} {name!r} is registered twice: by {other.plugin!r} ({other.distribution}) "
                f"and by {self._plugin!r} ({self._dist}); rename one of them"
            )
        unknown = sorted(set(metadata) - set(METADATA))
        if unknown:
            raise PluginError(f"{self.kind} {name!r} from plugin {self._plugin!r} ({self._dist}): registry.add() got "
                              f"{unknown[0]!r}; it takes description= and {', '.join(METADATA)}")
        if self.kind == "strategy":
            if not isinstance(factory, Preset):
                raise PluginError(
                    f"strategy {name!r} from plugin {self._plugin!r} ({self._dist}) is a {type(factory).__name__}; "
                    "a strategy is registered as a grpo.core.strategy.Preset of its parts (docs/plugins.md)")
            description = description or factory.description
        elif not callable(factory):
            raise PluginError(f"{self.kind} {name!r} from plugin {self._plugin!r}: factory is not callable")
        else:
            try:
                options_of(factory)
            except TypeError as e:
                raise PluginError(f"{self.kind} {name!r} from plugin {self._plugin!r} ({self._dist}): {e}") from None
        if not description:
            doc = inspect.getdoc(factory) or ""
            description = " ".join(doc.strip().split("\n\n")[0].split()) if doc else ""
        declared = {key: metadata[key] if key in metadata else getattr(factory, key, None) for key in METADATA}
        try:
            table[name] = Entry(self.kind, name, factory, description, self._plugin, self._dist,
                                requires=tuple(declared["requires"] or ()), sources=dict(declared["sources"] or {}),
                                bundled=dict(declared["bundled"] or {}),
                                hub_patterns={k: tuple(v) for k, v in (declared["hub_patterns"] or {}).items()},
                                hub_companions={k: tuple(v) for k, v in (declared["hub_companions"] or {}).items()},
                                noise_grid_for=declared["noise_grid_for"],
                                sigma_schedule_for=declared["sigma_schedule_for"],
                                file_options=tuple(declared["file_options"] or ()))
        except (TypeError, ValueError) as e:
            raise PluginError(f"{self.kind} {name!r} from plugin {self._plugin!r} ({self._dist}) declares malformed "
                              f"metadata: {e}") from None


def _distribution_names(pm: pluggy.PluginManager) -> dict[int, str]:
    names = {}
    for plugin, dist in pm.list_plugin_distinfo():
        names[id(plugin)] = f"{dist.metadata['name']} {dist.version}"
    return names


def _check_hook_names(pm: pluggy.PluginManager) -> None:
    """Refuse a ``grpo_*`` function (decorated or not) that is not a hook, naming the plugin and
    the closest hook: a misspelt hook would otherwise register nothing."""
    dists = _distribution_names(pm)
    hooks = {f"grpo_register_{k}" for k in hookspecs.KINDS}
    for plugin in pm.get_plugins():
        for attr in dir(plugin):
            if attr.startswith("grpo_") and attr not in hooks and callable(getattr(plugin, attr, None)):
                raise PluginError(
                    f"plugin {pm.get_name(plugin)!r} ({dists.get(id(plugin), 'local module')}) defines {attr!r}, "
                    f"which is not a grpo hook: {unknown_name_hint(attr, hooks)}"
                )
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:  # a hook implementation pluggy refuses for another reason
        raise PluginError(str(e)) from None


def _as_plugin(obj: Any) -> tuple[Any, str]:
    """A plugin object and its name: a module or object as is; a hook function wrapped alone."""
    if inspect.isfunction(obj):
        name = f"{obj.__module__}.{obj.__name__}"
        holder = types.ModuleType(name)
        setattr(holder, obj.__name__, obj)
        return holder, name
    return obj, getattr(obj, "__name__", type(obj).__name__)


def load_registry(modules: Iterable[str] = (), *, autoload: bool | None = None,
                  plugins: Iterable[Any] = ()) -> Registry:
    """Build the registry of one run.

    Args:
        modules: extra plugin modules to import (a recipe's ``[plugins] modules``).
        autoload: load the ``grpo`` entry-point group; default: unless
            ``GRPO_DISABLE_PLUGIN_AUTOLOAD`` is set to a true value.
        plugins: plugin objects registered as they are (modules, objects with hook methods, or
            single ``@hookimpl`` functions), for tests and notebooks.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(importlib.import_module(BUILTIN_MODULE), name="grpo-builtin")
    if autoload is None:
        autoload = os.environ.get("GRPO_DISABLE_PLUGIN_AUTOLOAD", "").lower() not in ("1", "true", "yes")
    if autoload:
        try:
            pm.load_setuptools_entrypoints(hookspecs.PROJECT)
        except Exception as e:  # an entry point that fails to import
            raise PluginError(f"a plugin of the 'grpo' entry-point group failed to load: {e!r}") from e
    for obj in plugins:
        plugin, name = _as_plugin(obj)
        if not pm.is_registered(plugin):
            pm.register(plugin, name=name)
    for module in modules:
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            raise UserError(
                f"cannot import plugin module {module!r}: {e}",
                where="plugins.modules",
                hint="the module must be importable (on PYTHONPATH or installed); check its name",
            ) from None
        if pm.is_registered(mod):
            continue
        pm.register(mod, name=module)
    _check_hook_names(pm)
    dists = _distribution_names(pm)
    registry = Registry()
    for kind in hookspecs.KINDS:
        caller = getattr(pm.hook, f"grpo_register_{kind}")
        for impl in caller.get_hookimpls():
            dist = dists.get(id(impl.plugin), "grpo (built-in)" if impl.plugin_name == "grpo-builtin" else "local module")
            registrar = KindRegistrar(registry, kind, impl.plugin_name, dist)
            try:
                impl.function(registry=registrar)
            except (PluginError, UserError):
                raise
            except Exception as e:
                raise PluginError(
                    f"plugin {impl.plugin_name!r} ({dist}) failed in grpo_register_{kind}: {type(e).__name__}: {e}"
                ) from e
    return registry


def complete(component: Any, kind: str) -> Any:
    """Give `component` the default of every optional member of its `kind` it lacks
    (``grpo.core.abilities``), once, when it is built; returns it. The engine then calls every
    member directly and never asks what a component can do."""
    for name, default in DEFAULTS.get(kind, {}).items():
        if not hasattr(component, name):
            value = types.MethodType(default, component) if isinstance(default, types.FunctionType) else default
            setattr(component, name, value)
    return component


def instantiate(entry: Entry, kwargs: dict[str, Any], where: str) -> Any:
    """Build a component from its validated options, its optional members completed; a failure is
    attributed to its plugin."""
    try:
        component = entry.factory(**kwargs)
    except UserError:
        raise
    except Exception as e:
        raise PluginError(
            f"{entry.kind} {entry.name!r} from plugin {entry.plugin!r} ({entry.distribution}) failed to "
            f"build from [{where}]: {type(e).__name__}: {e}"
        ).with_traceback(sys.exc_info()[2]) from e
    return complete(component, entry.kind)


@contextmanager
def attributed(entry: Entry, doing: str, part: str = "") -> Iterator[None]:
    """Re-raise a failure inside a component as a PluginError naming its plugin and distribution.

    `part` names a sub-component built by `entry` (e.g. a pruner made by a strategy).
    """
    try:
        yield
    except (UserError, PluginError, KeyboardInterrupt):
        raise
    except Exception as e:
        what = f"{part} of " if part else ""
        raise PluginError(
            f"{what}{entry.kind} {entry.name!r} from plugin {entry.plugin!r} ({entry.distribution}) failed in "
            f"{doing}: {type(e).__name__}: {e}"
        ).with_traceback(sys.exc_info()[2]) from e
