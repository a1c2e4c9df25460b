"""The per-process session: plugin manager, enabled plugins and their options, adapters."""
import importlib
import json
import os
import threading

from slim_plugins import _boot
from slim_plugins.config import Options
from slim_plugins.errors import OptionError, UnknownPluginError
from slim_plugins.manager import (
    DEFAULT_ADAPTERS,
    DEFAULT_PLUGINS,
    PluginInfo,
    autoload_disabled,
    entry_points,
    new_plugin_manager,
)

# Where a value came from, and which wins: later ranks override earlier ones.
SOURCE_RANK = {"default": 0, "yaml": 1, "python": 2, "command line": 3}


class Session:
    """Everything slim-plugins knows in this process.

    Created on first use: when a watched suite module is imported, or by :func:`enable`.
    """

    def __init__(self, environ=None, autoload=None):
        environ = os.environ if environ is None else environ
        self.environ = environ
        self.pm = new_plugin_manager()
        self.options = Options()
        self.infos = {}  # name -> PluginInfo
        self.enabled = {}  # plugin name -> source that switched it on
        self.blocked = set()
        self.adapters = {}  # name -> Adapter
        self._installed = set()
        self.adapters_active = False  # training patches wanted (a plugin is enabled)
        self._option_rank = {}  # (plugin, key) -> rank of the source that set it
        self._lock = threading.RLock()

        requested = [p for p in environ.get(_boot.ENV_PLUGINS, "").split(",") if p.strip()]
        self.blocked = {p[3:] for p in requested if p.startswith("no:")}
        for name in self.blocked:  # pluggy refuses to register a blocked name, and unregisters it
            self.pm.set_blocked(name)
        if autoload is None:
            autoload = not autoload_disabled(environ)
        self._load_plugins(autoload, named={p for p in requested if not p.startswith("no:")})
        self.pm.hook.slim_add_options.call_historic(kwargs=dict(register=self.options.register))
        self.pm.hook.slim_register_adapters.call_historic(kwargs=dict(register=self.register_adapter))
        self.pm.check_pending()

        config_file = environ.get(_boot.ENV_CONFIG)
        if config_file:
            self.configure_from_file(config_file)
        for name in requested:
            if not name.startswith("no:"):
                self.enable(name, source="command line")
        for plugin, values in _boot.inherited_options(environ).items():
            for key, value in values.items():
                self.give_options(plugin, {key: value}, "command line", f"--{plugin}.{key}")

    # ---------------------------------------------------------------- registration
    def _load_plugins(self, autoload, named=()):
        """Built-ins, then the ``slim_plugins`` entry points: all of them, or with autoload off
        only those named on the command line (pytest's ``-p NAME``)."""
        for name, module in DEFAULT_PLUGINS.items():
            self._register_module(name, module, "plugin", "built-in")
        for name, module in DEFAULT_ADAPTERS.items():
            self._register_module(name, module, "adapter", "built-in")
        for name, value, dist, version, load in entry_points():
            if name in self.infos or (not autoload and name not in named):
                continue
            origin = f"entry point of {dist} {version}"
            if name in self.blocked:
                self.infos[name] = PluginInfo(name, "plugin", origin, value, blocked=True)
                continue
            obj = load()
            self.pm.register(obj, name=name)
            is_adapter = hasattr(obj, "slim_register_adapters") and not self._has_lifecycle(obj)
            self.infos[name] = PluginInfo(name, "adapter" if is_adapter else "plugin", origin, value)

    @staticmethod
    def _has_lifecycle(obj):
        return any(hasattr(obj, h) for h in ("slim_before_train", "slim_add_options"))

    def _register_module(self, name, module, kind, origin):
        if self.pm.is_blocked(name):
            self.infos[name] = PluginInfo(name, kind, origin, module, blocked=True)
            return
        self.pm.register(importlib.import_module(module), name=name)
        self.infos[name] = PluginInfo(name, kind, origin, module)

    def register_adapter(self, adapter):
        """Add an adapter object (see :class:`slim_plugins.adapters.Adapter`)."""
        with self._lock:
            if adapter.name in self.adapters or adapter.name in self.blocked:
                return
            self.adapters[adapter.name] = adapter
            if self.pm.get_plugin(f"adapter:{adapter.name}") is None:
                self.pm.register(adapter, name=f"adapter:{adapter.name}")
            if adapter.name not in self.infos:
                module = type(adapter).__module__
                self.infos[adapter.name] = PluginInfo(adapter.name, "adapter", "registered", module)
            for module_name in adapter.modules:
                _boot.watcher.watch(module_name, lambda _m, a=adapter: self.install_adapter(a))

    def install_adapter(self, adapter):
        with self._lock:
            if adapter.name in self._installed:
                return
            self._installed.add(adapter.name)
        adapter.install(self)

    def activate_adapters(self):
        """Give every installed adapter its training patches (:meth:`Adapter.activate`): done when
        a plugin is enabled; until then a suite carries only the load patches. Adapters installed
        later get them at once."""
        self.adapters_active = True
        for name in sorted(self._installed):
            activate = getattr(self.adapters.get(name), "activate", None)
            if activate is not None:
                activate(self)

    def install_adapter_module(self, module_name):
        """Called when a watched suite module is imported."""
        for adapter in list(self.adapters.values()):
            if type(adapter).__module__ == module_name:
                self.install_adapter(adapter)

    # ---------------------------------------------------------------- enabling
    def known_plugins(self):
        return sorted(n for n, i in self.infos.items() if i.kind == "plugin" and n != "defaults")

    def enable(self, name, options=None, source="python"):
        if name.startswith("no:"):
            return self.disable(name[3:])
        if name not in self.infos or self.infos[name].kind != "plugin":
            raise UnknownPluginError(
                f"unknown plugin {name!r}",
                hint="known plugins: " + (", ".join(self.known_plugins()) or "none")
                + ". Check the spelling, or install the package that provides it.",
            )
        if self.infos[name].blocked:
            return
        rank = SOURCE_RANK[source if source in SOURCE_RANK else "yaml"]
        if rank >= SOURCE_RANK.get(self.enabled.get(name, "default"), 0):
            self.enabled[name] = source
        if options:
            self.give_options(name, options, source, source)
        self.activate_adapters()

    def disable(self, name):
        """Block ``name``: it is unregistered, so none of its hooks fire (plan replay included)."""
        self.enabled.pop(name, None)
        self.blocked.add(name)
        self.pm.set_blocked(name)
        if name in self.infos:
            self.infos[name].blocked = True

    def is_enabled(self, name):
        return name in self.enabled and name not in self.blocked

    def give_options(self, plugin, values, source, label):
        rank = SOURCE_RANK[source if source in SOURCE_RANK else "yaml"]
        keep = {}
        for key, value in (values or {}).items():
            key = str(key).replace("-", "_")
            if rank >= self._option_rank.get((plugin, key), 0):
                self._option_rank[(plugin, key)] = rank
                keep[key] = value
        self.options.give(plugin, keep, label)

    def plugin_config(self, plugin):
        return self.options.config(plugin)

    def stops_before_train(self):
        """Why an enabled plugin will end the run before any training step (``prune.action=show``),
        or None (see :func:`~slim_plugins.hooks.spec.slim_stops_before_train`): an adapter may then
        leave out the suite's train loader."""
        return self.pm.hook.slim_stops_before_train(session=self)

    def configure_from_mapping(self, plugins, label):
        """Apply a ``plugins:`` section: ``{name: {option: value}}``, ``{name: true}`` or ``[name]``."""
        if not plugins:
            return
        example = "write e.g. plugins: {prune: {eval_metric_loss: 0.05}} or plugins: [prune]"
        if isinstance(plugins, (list, tuple)):
            bad = [n for n in plugins if not isinstance(n, str)]
            if bad:
                raise UnknownPluginError(f"the plugins: list of {label} holds {bad[0]!r}, not a plugin name",
                                         hint=example)
            plugins = {name: {} for name in plugins}
        if not isinstance(plugins, dict):
            raise UnknownPluginError(
                f"the plugins: section of {label} must be a mapping of plugin name to options, "
                f"got {type(plugins).__name__} {plugins!r}", hint=example)
        for name, values in plugins.items():
            if values is False or (isinstance(values, dict) and values.get("enabled") is False):
                continue
            if not isinstance(name, str) or not (values is None or values is True or isinstance(values, dict)):
                raise OptionError(
                    f"plugins: {name}: in {label} must be a mapping of options, true or false, "
                    f"got {type(values).__name__} {values!r}", plugin=str(name), hint=example)
            values = dict(values) if isinstance(values, dict) else {}
            values.pop("enabled", None)
            self.enable(name, values, source="yaml")
            if values:
                self.give_options(name, values, "yaml", label)

    def configure_from_file(self, path):
        import yaml

        with open(path) as f:
            data = yaml.safe_load(f) or {}
        section = data.get("plugins") if isinstance(data, dict) else None
        self.configure_from_mapping(section, label=path)

    # ---------------------------------------------------------------- runs
    def new_run(self, adapter, handle=None, mode="train"):
        from slim_plugins.run import TrainingRun

        return TrainingRun(adapter=adapter, session=self, handle=handle, mode=mode)


_session = None
_session_lock = threading.Lock()


def get_session():
    """The process's session, created on first call."""
    global _session
    _boot.activate()
    with _session_lock:
        if _session is None:
            _session = Session()
            for adapter in list(_session.adapters.values()):
                for module_name in adapter.modules:
                    if _boot.watcher.imported(module_name):
                        _session.install_adapter(adapter)
        return _session


def reset_session(session=None):
    """Replace the process's session (tests use a fresh one each)."""
    global _session
    with _session_lock:
        _session = session


def enable(name, **options):
    """Switch a plugin on from Python, e.g. ``slim_plugins.enable("prune", eval_metric_loss=0.05)``.

    Call it before the suite's train function; activation reaches child processes too.
    """
    _boot.boot()
    session = get_session()
    session.enable(name, options, source="python")
    _boot.export_to_environment([name], {}, None, session.environ)
    if options:
        merged = _boot.inherited_options(session.environ)
        merged.setdefault(name, {}).update({k: _jsonable(v) for k, v in options.items()})
        session.environ[_boot.ENV_OPTIONS] = json.dumps(merged)
    return session


def disable(name):
    get_session().disable(name)


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)
