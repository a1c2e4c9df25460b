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


def exception_line(exc, last=False, with_type=True, limit=300):
    """One line of ``exc`` for a message: its first line, or its last (where Paddle's dy2st puts
    the cause under "In transformed code:"), after the exception's type unless ``with_type`` is
    false."""
    text = str(exc).strip()
    line = text.splitlines()[-1 if last else 0].strip()[:limit] if text else ""
    if with_type:
        return f"{type(exc).__name__}: {line}"
    return line or type(exc).__name__


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
