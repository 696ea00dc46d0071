"""The plugin host: loads plugins from the ``gcert`` entry-point group and collects what they register.

Built-ins are entry points of the ``gcert`` distribution itself, loaded exactly like third parties.
Environment switches (read by :class:`PluginSettings.from_env`):

* ``GCERT_DISABLE_PLUGIN_AUTOLOAD=1`` loads only gcert's own built-in plugins.
* ``GCERT_PLUGINS=a,b`` loads only the named entry points (built-ins included); empty loads none.
* ``GCERT_BLOCK_PLUGINS=a,b`` never loads the named entry points.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy
from torch import nn

from gcert import hookspecs
from gcert.composite import SEPARATOR, compose
from gcert.contracts import GUARANTEES, Certifier, GeneratorSpec, Mutation
from gcert.errors import GcertError, InputError, PluginError, UnknownNameError, one_line
from gcert.transforms import ResolvableTransform

if TYPE_CHECKING:
    from gcert.generators.user import UserGenerator

PROJECT = "gcert"
# Used only when gcert runs from a source tree that was never installed (no entry points).
BUILTIN_PLUGINS = ("regions", "pixel", "interval", "sampling", "zoo", "exactline", "genprover", "deeppoly", "weather",
                   "transforms", "smoothing", "bab")


@dataclass(frozen=True)
class PluginSettings:
    """Which plugins to load; picklable so worker processes load the same set."""

    autoload: bool = True
    allow: frozenset[str] | None = None
    block: frozenset[str] = frozenset()
    extra: tuple[str, ...] = ()  # importable module names to register too (``--plugin``)
    generator: UserGenerator | None = None  # ``--generator REF --direction SPEC`` (gcert.generators.user)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, extra: Iterable[str] = (),
                 generator: UserGenerator | None = None) -> PluginSettings:
        env = os.environ if environ is None else environ
        allow = env.get("GCERT_PLUGINS")
        return cls(
            autoload=env.get("GCERT_DISABLE_PLUGIN_AUTOLOAD", "") in ("", "0"),
            allow=None if allow is None else frozenset(_split(allow)),
            block=frozenset(_split(env.get("GCERT_BLOCK_PLUGINS", ""))),
            extra=tuple(extra), generator=generator,
        )

    def admits(self, name: str, builtin: bool) -> bool:
        if name in self.block:
            return False
        if self.allow is not None:
            return name in self.allow
        return builtin or self.autoload


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@dataclass(frozen=True)
class PluginInfo:
    """One plugin as ``gcert list`` shows it."""

    name: str
    origin: str  # distribution name, "source tree", or "runtime"
    version: str
    module: str
    error: str | None = None


def get_plugin_manager(settings: PluginSettings | None = None) -> pluggy.PluginManager:
    """A fresh plugin manager with the hook specs and every admitted plugin loaded.

    Plugins that fail to import are recorded in ``pm.gcert_plugin_info`` with their error
    instead of raising, so one broken plugin never stops the others.
    """
    settings = PluginSettings.from_env() if settings is None else settings
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    infos: list[PluginInfo] = []
    pm.gcert_plugin_info = infos  # type: ignore[attr-defined]

    eps = list(md.entry_points(group=PROJECT))
    own = [ep for ep in eps if _dist_name(ep) == PROJECT]
    if own:
        candidates = [(ep.name, ep.value, _dist_name(ep), _dist_version(ep), _dist_name(ep) == PROJECT) for ep in eps]
    else:
        candidates = [(n, f"gcert_plugins.{n}", "source tree", _own_version(), True) for n in BUILTIN_PLUGINS]
        candidates += [(ep.name, ep.value, _dist_name(ep), _dist_version(ep), False) for ep in eps]
    for name, target, origin, version, builtin in candidates:
        if settings.admits(name, builtin):
            _load(pm, infos, name, target, origin, version)
    for module in settings.extra:
        _load(pm, infos, module, module, "command line", "")
    if settings.generator is not None:  # the user's own generator: a bad one is refused (InputError), not skipped
        from gcert.generators.user import PLUGIN_NAME, UserGeneratorPlugin

        pm.register(UserGeneratorPlugin(settings.generator), name=PLUGIN_NAME)
        infos.append(PluginInfo(PLUGIN_NAME, "command line", "", "gcert.generators.user"))
    return pm


def _load(pm: pluggy.PluginManager, infos: list[PluginInfo], name: str, target: str, origin: str,
          version: str) -> None:
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        if attr:
            for part in attr.split("."):
                obj = getattr(obj, part)
        if pm.get_plugin(name) is not None:
            other = next((i for i in infos if i.name == name), None)
            raise PluginError(f"plugin name {name!r} is already taken by {other.origin if other else 'another'}")
        pm.register(obj, name=name)
    except Exception as exc:  # noqa: BLE001 - any import failure of a plugin is reported, not fatal
        infos.append(PluginInfo(name, origin, version, target, error=one_line(exc)))
        return
    infos.append(PluginInfo(name, origin, version, target))


def register_plugin(pm: pluggy.PluginManager, plugin: object, name: str | None = None) -> str:
    """Register an in-process plugin object (a module or an instance with hookimpls)."""
    name = pm.register(plugin, name=name)
    if name is None:
        raise PluginError(f"plugin {plugin!r} is blocked or already registered")
    module = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__module__
    pm.gcert_plugin_info.append(PluginInfo(name, "runtime", "", module))  # type: ignore[attr-defined]
    return name


def _dist_name(ep: md.EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else "unknown"


def _dist_version(ep: md.EntryPoint) -> str:
    return ep.dist.version if ep.dist is not None else ""


def _own_version() -> str:
    from gcert import __version__

    return __version__


@dataclass
class Entry:
    """A registered generator, mutation or certifier and the plugin it came from."""

    name: str
    value: Any
    plugin: str


@dataclass
class Registry:
    """Everything the plugins registered, by kind and name, with its origin.

    Built by :func:`collect`. Problems found while collecting (a wrong type, a duplicate name,
    a plugin whose hook raised) are in ``problems``, one line each, and never stop collection.
    """

    pm: pluggy.PluginManager
    generators: dict[str, Entry] = field(default_factory=dict)
    mutations: dict[str, Entry] = field(default_factory=dict)
    certifiers: dict[str, Entry] = field(default_factory=dict)
    transforms: dict[str, Entry] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    _loaded: dict[str, nn.Module] = field(default_factory=dict, repr=False)

    @property
    def plugins(self) -> list[PluginInfo]:
        return list(self.pm.gcert_plugin_info)  # type: ignore[attr-defined]

    def mutation(self, name: str) -> Mutation:
        if name not in self.mutations and SEPARATOR in name:  # several at once: a box (gcert.composite)
            return compose(name, [self._get(self.mutations, "mutation", part) for part in name.split(SEPARATOR)])
        return self._get(self.mutations, "mutation", name)

    def certifier(self, name: str) -> Certifier:
        return self._get(self.certifiers, "certifier", name)

    def transform(self, name: str) -> ResolvableTransform:
        return self._get(self.transforms, "transform", name)

    def generator_spec(self, name: str) -> GeneratorSpec:
        return self._get(self.generators, "generator", name)

    def generator(self, name: str) -> nn.Module:
        """The loaded generator module, loaded once per registry."""
        if name not in self._loaded:
            spec = self.generator_spec(name)
            try:
                module = spec.loader()
            except GcertError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise PluginError(f"generator {name!r} failed to load: {one_line(exc)}") from exc
            self._loaded[name] = module.eval().requires_grad_(False)
        return self._loaded[name]

    def origin(self, kind: str, name: str) -> str:
        return getattr(self, kind + "s")[name].plugin

    @staticmethod
    def _get(table: dict[str, Entry], kind: str, name: str) -> Any:
        if name not in table:
            raise UnknownNameError(kind, name, table)
        return table[name].value


def collect(pm: pluggy.PluginManager) -> Registry:
    """Call every plugin's register hooks, one plugin at a time so each entry knows its origin."""
    reg = Registry(pm)
    _collect(reg, "gcert_register_generators", reg.generators, GeneratorSpec, "generator")
    _collect(reg, "gcert_register_mutations", reg.mutations, Mutation, "mutation")
    _collect(reg, "gcert_register_certifiers", reg.certifiers, Certifier, "certifier")
    _collect(reg, "gcert_register_transforms", reg.transforms, ResolvableTransform, "transform")
    for name, entry in list(reg.mutations.items()):
        if entry.value.generator not in reg.generators:
            reg.problems.append(
                f"plugin {entry.plugin!r}: mutation {name!r} needs generator {entry.value.generator!r}, "
                "which no plugin registered; the mutation is unavailable"
            )
            del reg.mutations[name]
    return reg


def _collect(reg: Registry, hook: str, table: dict[str, Entry], typ: type, kind: str) -> None:
    caller = getattr(reg.pm.hook, hook)
    # get_hookimpls() lists plugins in registration order (pluggy calls them in reverse);
    # walking it in this order means the first plugin to claim a name keeps it.
    for impl in caller.get_hookimpls():
        plugin = impl.plugin_name

        def register(obj: Any, _plugin: str = plugin) -> None:
            # A bad registration is reported and skipped; the plugin's other registrations still count.
            problem = _check(obj, typ, kind, _plugin, table)
            if problem:
                reg.problems.append(problem)
                return
            if isinstance(obj, type):
                obj = obj()
            table[obj.name] = Entry(obj.name, obj, _plugin)

        kwargs = {"register": register}
        try:
            impl.function(**{k: kwargs[k] for k in impl.argnames if k in kwargs})
        except Exception as exc:  # noqa: BLE001 - a failing plugin is reported, the rest still load
            reg.problems.append(f"plugin {plugin!r} failed in {hook}: {one_line(exc)}")


def _check(obj: Any, typ: type, kind: str, plugin: str, table: dict[str, Entry]) -> str | None:
    if typ is Certifier and isinstance(obj, type) and issubclass(obj, Certifier):
        try:
            obj = obj()
        except Exception as exc:  # noqa: BLE001
            return f"plugin {plugin!r}: certifier class {obj.__name__} cannot be built: {one_line(exc)}"
    if not isinstance(obj, typ):
        return f"plugin {plugin!r} registered {obj!r} as a {kind}; expected a {typ.__name__}"
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not name:
        return f"plugin {plugin!r} registered a {kind} without a name"
    if typ is Certifier and obj.guarantee not in GUARANTEES:
        return (f"plugin {plugin!r}: certifier {name!r} has guarantee {obj.guarantee!r}; "
                f"expected one of {', '.join(GUARANTEES)}")
    if name in table:
        return (f"{kind} {name!r} registered by both {table[name].plugin!r} and {plugin!r}; "
                f"the first one is kept (block one with GCERT_BLOCK_PLUGINS)")
    return None


def load_registry(settings: PluginSettings | None = None) -> Registry:
    """Plugin manager and registry in one step: what the CLI and the runner use.

    A name of the user's own generator or direction (``--generator``) that another plugin took already is refused
    in one line: the run would otherwise certify the other plugin's mutation under the name the user gave."""
    reg = collect(get_plugin_manager(settings))
    if settings is not None and settings.generator is not None:
        from gcert.generators.user import PLUGIN_NAME

        user = reg.pm.get_plugin(PLUGIN_NAME)
        for name in user.mutations:
            owner = reg.mutations[name].plugin if name in reg.mutations else "?"
            if owner != PLUGIN_NAME:
                raise InputError(f"mutation {name!r} registered by both {owner!r} and {PLUGIN_NAME!r}; give your "
                                 "direction or entry another name (gcert directions --save K=NAME, or the entry's "
                                 "mutation names)")
    return reg
