"""The plugin manager: built-in plugins and adapters, entry points, blocking."""
import os
from dataclasses import dataclass

import pluggy

from slim_plugins import _boot
from slim_plugins.hooks import PROJECT, spec

ENTRY_POINT_GROUP = PROJECT

# Loaded like any other plugin (datasette's DEFAULT_PLUGINS): the defaults answer the query
# hooks no adapter answered; the adapters answer for their own runs.
DEFAULT_PLUGINS = {
    "defaults": "slim_plugins.defaults",
    "prune": "slim_plugins.plugins.prune",
}
DEFAULT_ADAPTERS = {
    "builtin": "slim_plugins.adapters.builtin",
    "paddlex": "slim_plugins.adapters.paddlex",
    "ppdet": "slim_plugins.adapters.ppdet",
    "ppocr": "slim_plugins.adapters.ppocr",
}


@dataclass
class PluginInfo:
    name: str
    kind: str  # "plugin" or "adapter"
    origin: str  # "built-in" or "entry point <dist> <version>"
    module: str
    blocked: bool = False


def new_plugin_manager():
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(spec)
    return pm


def entry_points():
    """Entry points of the ``slim_plugins`` group, as ``(name, value, dist, version, load)``."""
    from importlib import metadata

    found = []
    for dist in metadata.distributions():
        for ep in dist.entry_points:
            if ep.group == ENTRY_POINT_GROUP:
                found.append((ep.name, ep.value, dist.metadata["Name"], dist.version, ep.load))
    return found


def autoload_disabled(environ=None):
    environ = os.environ if environ is None else environ
    return _boot._truthy(environ.get(_boot.ENV_NO_AUTOLOAD, ""))
