"""The plugin API: what a plugin provides, and the registry that resolves every installed plugin once at start-up.

A plugin is a `Plugin` value exposed through an entry point in the group `trackpoint.plugins`; the built-in
components register through that same group (`trackpoint.plugins.builtin`). Nothing here runs per request: the
registry turns plugins into flat tables that the config loader reads, runs every plugin's configuration checks, and
builds the collectors and preprocessors a worker needs at start-up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from typing import Any

from trackpoint.admin.routes import AdminHandler, AdminRoute
from trackpoint.collectors.base import Collector, CollectorContext
from trackpoint.config.load import KeyPath
from trackpoint.config.model import CollectorBase, Config, EventTypeSpec, PreprocessorBase, type_tag
from trackpoint.preprocessors import Preprocessor

log = logging.getLogger("trackpoint.plugins")

ENTRY_POINT_GROUP = "trackpoint.plugins"

CollectorFactory = Callable[[str, Any, CollectorContext], Collector]
PreprocessorFactory = Callable[[str, Any], Preprocessor]
# A configuration check: the problems it finds in a validated configuration, each a key path (`("event_types",
# "click", "fields", "url")`) and a message. Checks run at every load, `trackpoint config check` and reload, for rules
# no single struct can state (options of one section that refer to another).
ConfigCheck = Callable[[Config], Iterable[tuple[KeyPath, str]]]
# The notices the data behind a plugin's components asks to be shown where their results are shown (a licence's
# attribution, such as DB-IP's CC BY 4.0 for geo lookups), for a configuration: the dashboard's footer shows them.
AttributionSource = Callable[[Config], Iterable[str]]


@dataclass(frozen=True)
class CollectorKind:
    """A collector type: its config struct (a `CollectorBase` subclass whose tag is the `type` users write) and
    the factory that builds one instance per worker. `implicit` kinds exist under their own name with default
    options, so event types can name them without a `collectors:` entry."""

    config: type[CollectorBase]
    factory: CollectorFactory
    implicit: bool = False

    @property
    def type(self) -> str:
        return type_tag(self.config)


@dataclass(frozen=True)
class PreprocessorKind:
    """A preprocessor type: its config struct (a `PreprocessorBase` subclass) and its factory. Every preprocessor
    kind also exists under its own name with default options. With `uses_data_dir` the factory also gets the
    tracker's data directory as a third argument (for state kept there, such as generated keys)."""

    config: type[PreprocessorBase]
    factory: PreprocessorFactory | Callable[[str, Any, str], Preprocessor]
    uses_data_dir: bool = False

    @property
    def type(self) -> str:
        return type_tag(self.config)


@dataclass(frozen=True)
class Plugin:
    """What one plugin provides. Every member is optional; names must not clash with another plugin's."""

    name: str
    collectors: Sequence[CollectorKind] = ()
    preprocessors: Sequence[PreprocessorKind] = ()
    # Event-type presets: a config's event type may say `preset: NAME` and override any of the preset's keys.
    event_types: Mapping[str, EventTypeSpec] = field(default_factory=dict)
    admin_routes: Sequence[AdminRoute] = ()
    # Checks of the whole configuration (`ConfigCheck`), typically of the plugin's own components' options.
    checks: Sequence[ConfigCheck] = ()
    # Where the attributions of the plugin's components in use come from (`AttributionSource`).
    attributions: Sequence[AttributionSource] = ()


@dataclass(frozen=True)
class Registry:
    """Every installed plugin resolved into flat tables, by type name. It builds components and runs checks the
    same way for the built-in plugin and every other one."""

    plugins: tuple[str, ...]
    collectors: Mapping[str, CollectorKind]
    preprocessors: Mapping[str, PreprocessorKind]
    event_types: Mapping[str, EventTypeSpec]
    admin_routes: tuple[AdminRoute, ...]
    # Plugins that could not be loaded, with the reason: the tracker runs without them.
    failures: Mapping[str, str]
    # Every plugin's configuration checks, with the name of the plugin that registered each.
    checks: tuple[tuple[str, ConfigCheck], ...] = ()
    # Every plugin's attribution sources, with the name of the plugin that registered each.
    attributions: tuple[tuple[str, AttributionSource], ...] = ()

    def build_collector(self, name: str, config: CollectorBase, context: CollectorContext) -> Collector:
        """The collector `name` that an instance of a registered collector config stands for."""
        kind = self.collectors.get(_tag_of(config))
        if kind is None:
            raise ValueError(f"no collector for configuration {type(config).__name__}")
        return kind.factory(name, config, context)

    def build_preprocessor(self, name: str, config: PreprocessorBase, data_dir: str = ".") -> Preprocessor:
        """The preprocessor `name` that an instance of a registered preprocessor config stands for; `data_dir` is
        the tracker's, for kinds that keep state there (`uses_data_dir`)."""
        kind = self.preprocessors.get(_tag_of(config))
        if kind is None:
            raise ValueError(f"no preprocessor for configuration {type(config).__name__}")
        factory: Any = kind.factory
        built: Preprocessor = factory(name, config, data_dir) if kind.uses_data_dir else factory(name, config)
        return built

    def check(self, config: Config) -> Iterator[tuple[KeyPath, str]]:
        """The problems every registered check finds in `config`. A check that raises is reported as a problem of
        its plugin (the configuration is refused), never as a crash of the loader."""
        for plugin, config_check in self.checks:
            try:
                problems = list(config_check(config))
            except Exception as exc:  # a plugin's bug must read as a clear message, not a traceback
                check_name = getattr(config_check, "__qualname__", repr(config_check))
                yield (), f"the configuration check {check_name} of plugin {plugin} failed: {exc!r}"
                continue
            yield from problems

    def notices(self, config: Config) -> list[str]:
        """The attributions the components `config` uses ask to be shown, once each. A source that raises is
        logged and left out: a notice must not take the dashboard down."""
        notices: list[str] = []
        for plugin, source in self.attributions:
            try:
                found = list(source(config))
            except Exception:  # a plugin's bug: logged, the other notices still shown
                log.exception("the attribution source of plugin %s failed", plugin)
                continue
            notices.extend(notice for notice in found if notice and notice not in notices)
        return notices


def _tag_of(config: CollectorBase | PreprocessorBase) -> str:
    """The type tag of a config instance; "" (no kind has it) for an untagged struct."""
    try:
        return type_tag(type(config))
    except TypeError:
        return ""


def resolve(plugins: Sequence[Plugin], failures: Mapping[str, str] | None = None) -> Registry:
    """Flattens plugins into a registry; a plugin whose names clash with an earlier one is left out whole."""
    collectors: dict[str, CollectorKind] = {}
    preprocessors: dict[str, PreprocessorKind] = {}
    event_types: dict[str, EventTypeSpec] = {}
    routes: dict[tuple[str, str], AdminRoute] = {}
    checks: list[tuple[str, ConfigCheck]] = []
    attributions: list[tuple[str, AttributionSource]] = []
    loaded: list[str] = []
    failed = dict(failures or {})
    for plugin in plugins:
        try:
            clashes = _clashes(plugin, collectors, preprocessors, event_types, routes)
        except TypeError as exc:
            failed[plugin.name] = str(exc)
            continue
        if clashes:
            failed[plugin.name] = "already provided by another plugin: " + ", ".join(clashes)
            continue
        collectors.update((kind.type, kind) for kind in plugin.collectors)
        preprocessors.update((kind.type, kind) for kind in plugin.preprocessors)
        event_types.update(plugin.event_types)
        routes.update(((route.method, route.path), route) for route in plugin.admin_routes)
        checks.extend((plugin.name, config_check) for config_check in plugin.checks)
        attributions.extend((plugin.name, source) for source in plugin.attributions)
        loaded.append(plugin.name)
    for name, reason in failed.items():
        log.error("plugin %s is not loaded: %s", name, reason)
    return Registry(
        plugins=tuple(loaded),
        collectors=collectors,
        preprocessors=preprocessors,
        event_types=event_types,
        admin_routes=tuple(routes.values()),
        failures=failed,
        checks=tuple(checks),
        attributions=tuple(attributions),
    )


def _clashes(
    plugin: Plugin,
    collectors: Mapping[str, CollectorKind],
    preprocessors: Mapping[str, PreprocessorKind],
    event_types: Mapping[str, EventTypeSpec],
    routes: Mapping[tuple[str, str], AdminRoute],
) -> list[str]:
    clashes = [f"collector {k.type!r}" for k in plugin.collectors if k.type in collectors]
    clashes += [f"preprocessor {k.type!r}" for k in plugin.preprocessors if k.type in preprocessors]
    clashes += [f"event type preset {name!r}" for name in plugin.event_types if name in event_types]
    clashes += [f"admin route {r.method} {r.path}" for r in plugin.admin_routes if (r.method, r.path) in routes]
    return clashes


def discover() -> tuple[list[Plugin], dict[str, str]]:
    """Loads every entry point of the group; the built-in plugin first, then the others by name. A plugin that
    raises on import, or whose entry point is not a `Plugin` (or a function returning one), is reported and skipped."""
    found = metadata.entry_points(group=ENTRY_POINT_GROUP)
    entry_points = sorted(found, key=lambda ep: (ep.name != "builtin", ep.name))
    plugins: list[Plugin] = []
    failures: dict[str, str] = {}
    loaded_by: dict[str, tuple[str, Plugin]] = {}  # plugin name -> the entry point that loaded it, the plugin
    for entry_point in entry_points:
        try:
            value = entry_point.load()
            if callable(value) and not isinstance(value, Plugin):
                value = value()
        except Exception as exc:  # a broken plugin must not stop the tracker
            failures[entry_point.name] = f"failed to load {entry_point.value}: {exc!r}"
            continue
        if not isinstance(value, Plugin):
            failures[entry_point.name] = f"{entry_point.value} is not a trackpoint.plugins.Plugin"
            continue
        first, earlier = loaded_by.setdefault(value.name, (entry_point.name, value))
        if first != entry_point.name:
            if earlier == value:  # one package installed twice (an editable copy and a wheel, a stale dist-info)
                log.warning(
                    "plugin %s is named by two entry points, %s and %s: loaded once, from %s",
                    value.name, first, entry_point.name, first,
                )  # fmt: skip
            else:
                failures[entry_point.name] = f"{entry_point.value}: the plugin name {value.name!r} is taken by {first}"
            continue
        plugins.append(value)
    return plugins, failures


@cache
def registry() -> Registry:
    """The registry of this process, resolved on first use."""
    return resolve(*discover())


__all__ = [
    "ENTRY_POINT_GROUP",
    "AdminHandler",
    "AdminRoute",
    "AttributionSource",
    "CollectorFactory",
    "CollectorKind",
    "ConfigCheck",
    "Plugin",
    "PreprocessorFactory",
    "PreprocessorKind",
    "Registry",
    "discover",
    "registry",
    "resolve",
    "type_tag",
]
