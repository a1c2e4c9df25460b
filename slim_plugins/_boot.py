"""Start-up hook, run by ``slim_plugins.pth`` in every interpreter of the environment.

At start-up it only installs an import watcher: every other program keeps its arguments and
environment. When the process first imports ``paddle`` (or a watched suite module), before
the module runs, :func:`activate` takes the slim-plugins options out of ``sys.argv`` (every
suite script imports paddle before its own parser runs), records them in the environment (so
child processes, e.g. the workers of ``paddle.distributed.launch``, are activated too), checks
the activation it inherited and installs the excepthook that turns slim-plugins errors into one
line and exit 2. Nothing heavier (pluggy, paddle) is imported here.
"""
import json
import os
import sys

ENV_PLUGINS = "SLIM_PLUGINS"  # comma list: "prune,no:other"
ENV_OPTIONS = "SLIM_PLUGINS_OPTIONS"  # JSON: {"prune": {"eval_metric_loss": "0.05"}}
ENV_CONFIG = "SLIM_PLUGINS_CONFIG"  # path of a YAML file with a `plugins:` section
ENV_DISABLE = "SLIM_PLUGINS_DISABLE"  # "1": the start-up hook does nothing at all
ENV_NO_AUTOLOAD = "SLIM_PLUGINS_DISABLE_AUTOLOAD"  # "1": entry points are not loaded

# Suite modules whose import brings in the adapter that drives them. Third-party adapters add
# theirs through `Adapter.modules` once the session exists.
WATCHED = {
    "paddle.hapi.model": "slim_plugins.adapters.builtin",
    "paddlex": "slim_plugins.adapters.paddlex",
    "ppdet.engine.trainer": "slim_plugins.adapters.ppdet",
    "ppocr.utils.save_load": "slim_plugins.adapters.ppocr",
    "ppocr.data": "slim_plugins.adapters.ppocr",
}

# Shims a suite needs before its first line runs: "module:function", called just before the
# watched module executes (PaddleX 2.1 imports `paddle.fluid`, gone since Paddle 2.6).
WATCHED_BEFORE = {
    "paddlex": "slim_plugins.adapters.paddlex:install_import_shims",
}

# The first of these imported activates slim-plugins (just before it executes).
ACTIVATING = ("paddle",)
# A script that imports one of these (anywhere in it) is claimed by an adapter: it is activated
# at start-up, since it may parse its arguments before importing the suite (PaddleX scripts do).
SUITE_PACKAGES = frozenset({"paddle", "paddlex", "ppdet", "ppocr"})

_booted = False
_activated = False
_pending = None  # an activation error found at start-up, raised at the paddle import


def _truthy(value):
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


def split_argv(argv, plugin_names=()):
    """Take slim-plugins options out of ``argv``.

    Returns ``(rest, plugins, options, config)``: ``plugins`` the ``--plugin`` values in order
    (``no:NAME`` kept as is), ``options`` ``{plugin: {key: raw string}}`` from ``--NAME.KEY VALUE``
    or ``--NAME.KEY=VALUE`` for the plugins named, ``config`` the ``--plugin-config`` path.
    """
    rest, plugins, options, config = [], [], {}, None
    argv = list(argv)
    named = set(plugin_names)
    # first pass: plugin names, so that `--prune.x` before `--plugin prune` is understood too
    for i, token in enumerate(argv):
        if token == "--plugin" and i + 1 < len(argv):
            named.add(argv[i + 1].split(":")[-1])
        elif token.startswith("--plugin="):
            named.add(token.split("=", 1)[1].split(":")[-1])
    i = 0
    while i < len(argv):
        token = argv[i]
        value_next = i + 1 < len(argv)
        # `--prune.plot --eval`: a flag followed by another option is a boolean, not its value
        option_value_next = value_next and not argv[i + 1].startswith("--")
        if token in ("--plugin", "--plugin-config") and value_next:
            if token == "--plugin":
                plugins.append(argv[i + 1])
            else:
                config = argv[i + 1]
            i += 2
            continue
        if token.startswith("--plugin="):
            plugins.append(token.split("=", 1)[1])
        elif token.startswith("--plugin-config="):
            config = token.split("=", 1)[1]
        elif token.startswith("--") and "." in token.split("=", 1)[0]:
            head = token[2:].split("=", 1)
            plugin, _, key = head[0].partition(".")
            if plugin in named and key:
                if len(head) == 2:
                    value = head[1]
                elif option_value_next:
                    value = argv[i + 1]
                    i += 1
                else:
                    value = "true"
                options.setdefault(plugin, {})[key.replace("-", "_")] = value
            else:
                rest.append(token)
        else:
            rest.append(token)
        i += 1
    return rest, plugins, options, config


def inherited_options(environ):
    """``SLIM_PLUGINS_OPTIONS`` as ``{plugin: {key: value}}``; a value that is not that is an
    :class:`~slim_plugins.errors.OptionError` (the activation must not be dropped silently)."""
    raw = environ.get(ENV_OPTIONS)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        value, problem = None, f"is not valid JSON ({exc})"
    else:
        problem = "is not a JSON object of objects"
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        from slim_plugins.errors import OptionError

        raise OptionError(f"{ENV_OPTIONS}={raw!r} {problem}",
                          hint='write it as {"prune": {"eval_metric_loss": 0.05}}, or unset it')
    return value


def export_to_environment(plugins, options, config, environ=None):
    """Record an activation so child processes inherit it."""
    environ = os.environ if environ is None else environ
    if plugins:
        known = [p for p in environ.get(ENV_PLUGINS, "").split(",") if p]
        environ[ENV_PLUGINS] = ",".join(known + [p for p in plugins if p not in known])
    if options:
        merged = inherited_options(environ)
        for plugin, values in options.items():
            merged.setdefault(plugin, {}).update(values)
        environ[ENV_OPTIONS] = json.dumps(merged)
    if config:
        environ[ENV_CONFIG] = os.path.abspath(config)


class _Watcher:
    """A meta-path finder that calls back after a watched module has executed."""

    def __init__(self):
        self.callbacks = {}  # run after the module executed
        self.before = {}  # run just before it executes (compatibility shims the module needs)
        self.executing = set()  # in sys.modules already, but not finished

    def imported(self, module_name):
        """Has ``module_name`` finished executing? (A module is in sys.modules while it runs.)"""
        return module_name in sys.modules and module_name not in self.executing

    def watch(self, module_name, callback):
        if self.imported(module_name):
            callback(sys.modules[module_name])
        else:
            self.callbacks.setdefault(module_name, []).append(callback)

    def watch_before(self, module_name, callback):
        """``callback()`` right before ``module_name`` first executes (at once if imported)."""
        if module_name in sys.modules:
            callback()
        else:
            self.before.setdefault(module_name, []).append(callback)

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.callbacks and fullname not in self.before:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        watcher = self
        original = loader.exec_module

        class _Loader:
            def __getattr__(self, name):
                return getattr(loader, name)

            def create_module(self, spec):
                return loader.create_module(spec)

            def exec_module(self, module):
                # taken here, not in find_spec: importlib.util.find_spec() finds without executing
                watcher.executing.add(fullname)
                try:
                    for callback in watcher.before.pop(fullname, []):
                        callback()
                    original(module)
                finally:
                    watcher.executing.discard(fullname)
                for callback in watcher.callbacks.pop(fullname, []):
                    callback(module)

        spec.loader = _Loader()
        return spec


watcher = _Watcher()


def _requested(environ=None):
    environ = os.environ if environ is None else environ
    return bool(environ.get(ENV_PLUGINS) or environ.get(ENV_CONFIG) or environ.get(ENV_OPTIONS))


def _has_options(argv):
    return any(t.startswith("--plugin") or (t.startswith("--") and "." in t) for t in argv[1:])


def activate(argv=None, environ=None, at_start=False):
    """Act on this process's request, once: take ``--plugin``, ``--plugin-config`` and
    ``--NAME.KEY`` out of ``argv`` (``sys.argv``), export them, and check what was inherited.

    Runs when the process first imports paddle or a watched suite module, or at start-up for a
    script that imports a suite (:func:`claimed_script`), so a program that does neither keeps
    its arguments and environment. An activation that cannot be read stops the process (one
    line, exit 2) instead of training without the plugin; found at start-up (where exiting
    would be a fatal error of site.py) it stops the process at the paddle import.
    """
    global _activated, _pending
    environ = os.environ if environ is None else environ
    if _activated or _truthy(environ.get(ENV_DISABLE, "")):
        return
    _activated = True
    argv = sys.argv if argv is None else argv
    from slim_plugins.errors import SlimPluginsError, exit_with, install_excepthook

    install_excepthook()
    try:
        if _has_options(argv):
            rest, plugins, options, config = split_argv(argv[1:])
            if plugins or options or config:
                argv[1:] = rest  # first: the script's parser must not see them, whatever follows
                export_to_environment(plugins, options, config, environ)
        inherited_options(environ)
    except SlimPluginsError as exc:
        if not at_start:
            exit_with(exc)
        _pending = exc


def claimed_script(path):
    """Does the script ``path`` import paddle or a suite anywhere (read, not run)?"""
    if not (isinstance(path, str) and path.endswith(".py") and os.path.isfile(path)):
        return False
    import ast

    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        else:
            continue
        if any(n.split(".")[0] in SUITE_PACKAGES for n in names):
            return True
    return False


def _activate_now():
    global _pending
    activate()
    if _pending is not None:
        from slim_plugins.errors import exit_with

        exc, _pending = _pending, None
        exit_with(exc)


def _on_suite_import(adapter_module):
    def callback(_module):
        _activate_now()
        try:
            from slim_plugins.session import get_session

            get_session().install_adapter_module(adapter_module)
        except Exception as exc:
            # Asked for: fail loudly. Not asked for: never break an unrelated paddle program.
            if _requested():
                from slim_plugins.errors import SlimPluginsError, exit_with

                if isinstance(exc, SlimPluginsError):  # a user error: one line, not a traceback
                    exit_with(exc)
                raise
            sys.stderr.write(f"slim-plugins: not active in this process ({type(exc).__name__}: {exc})\n")

    return callback


def _before_suite_import(target):
    def callback():
        module_name, _, function = target.partition(":")
        try:
            import importlib

            getattr(importlib.import_module(module_name), function)()
        except Exception as exc:  # the suite's own import error will follow and say more
            sys.stderr.write(f"slim-plugins: compatibility shim {target} failed ({type(exc).__name__}: {exc})\n")

    return callback


def boot(environ=None):
    """Entry of the start-up hook: installs the import watcher, nothing else (see
    :func:`activate`); safe to call more than once."""
    global _booted
    environ = os.environ if environ is None else environ
    if _booted or _truthy(environ.get(ENV_DISABLE, "")):
        return
    _booted = True
    import zlib  # noqa: F401  Paddle 2.6's libpaddle exports an old zlib: load Python's first.

    if _has_options(sys.argv) and claimed_script(sys.argv[0]):
        activate(environ=environ, at_start=True)
    for module_name in ACTIVATING:
        watcher.watch_before(module_name, _activate_now)
    for module_name, target in WATCHED_BEFORE.items():
        watcher.watch_before(module_name, _before_suite_import(target))
    for module_name, adapter_module in WATCHED.items():
        watcher.watch(module_name, _on_suite_import(adapter_module))
    if watcher not in sys.meta_path:
        sys.meta_path.insert(0, watcher)
