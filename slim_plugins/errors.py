"""User-facing errors: each names the plugin, the offending value and how to fix it."""


class SlimPluginsError(Exception):
    """Base class of every error slim-plugins raises on purpose."""

    def __init__(self, message, *, plugin=None, hint=None):
        self.plugin = plugin
        self.hint = hint
        text = f"[{plugin}] {message}" if plugin else message
        if hint:
            text += f"\n  hint: {hint}"
        super().__init__(text)


class UnknownPluginError(SlimPluginsError):
    """A plugin name that no built-in module or entry point provides."""


class OptionError(SlimPluginsError):
    """A plugin option that does not exist or has a value of the wrong type."""


class AdapterError(SlimPluginsError):
    """An adapter cannot give what a plugin asked for (model, metric, input spec ...)."""


class SensitivityFileError(SlimPluginsError):
    """A sensitivity file that belongs to another model, metric or criterion, or is corrupt."""


class PruneError(SlimPluginsError):
    """Pruning a group failed; the model was restored before this was raised."""


class TraceError(SlimPluginsError):
    """PaddleSlim could not trace the model into a static graph."""


class ShapeMismatchError(SlimPluginsError):
    """Loaded weights do not fit the network's shapes (e.g. a pruned checkpoint without its plan)."""
