"""slim-plugins: one model-pruning workflow for the PaddlePaddle training suites.

Imported at every interpreter start by the ``slim_plugins.pth`` hook, so this module stays
import-free: the public names below load on first use.
"""
__version__ = "0.1.0"

_LAZY = {
    "hookimpl": ("slim_plugins.hooks", "hookimpl"),
    "hookspec": ("slim_plugins.hooks", "hookspec"),
    "enable": ("slim_plugins.session", "enable"),
    "disable": ("slim_plugins.session", "disable"),
    "get_session": ("slim_plugins.session", "get_session"),
    "TrainingRun": ("slim_plugins.run", "TrainingRun"),
    "Metric": ("slim_plugins.run", "Metric"),
    "Adapter": ("slim_plugins.adapters", "Adapter"),
    "SlimPluginsError": ("slim_plugins.errors", "SlimPluginsError"),
}

__all__ = ["__version__"] + sorted(_LAZY)


def __getattr__(name):
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'slim_plugins' has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value
