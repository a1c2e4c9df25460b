"""User-facing errors: each names the plugin, the offending value and how to fix it.

A process that imports paddle gets :func:`install_excepthook` (from the start-up hook): an
uncaught :class:`SlimPluginsError`, wherever a suite's code let it through, ends the process
with its one line and exit status 2 instead of a traceback.
"""
import contextlib
import sys


class SlimPluginsError(Exception):
    """Base class of every error slim-plugins raises on purpose. ``str()`` is one line: the
    message, then ``hint: ...``."""

    def __init__(self, message, *, plugin=None, hint=None):
        self.plugin = plugin
        self.hint = hint
        text = f"[{plugin}] {message}" if plugin else str(message)
        if hint:
            text += f"; hint: {hint}"
        super().__init__(" ".join(text.split()))


class StopRun(SystemExit):
    """A plugin did all the user asked of this run (``--prune.action show`` or ``analyze``): the
    run ends here with status 0, without training. Raised from a lifecycle hook after the plugin
    printed its result; :func:`user_errors`, around the hook's call, is where it ends the run. A
    ``SystemExit`` so that a suite's ``except Exception`` cannot swallow it and train anyway."""

    def __init__(self, reason):
        super().__init__(0)
        self.reason = reason


@contextlib.contextmanager
def user_errors():
    """Around a lifecycle hook's call in a suite's entry point: a slim-plugins user error ends
    the process with its one line and exit 2, no traceback through the suite and pluggy; a
    :class:`StopRun` (a ``SystemExit`` with status 0) goes through as it is."""
    try:
        yield
    except SlimPluginsError as exc:
        exit_with(exc)


def report(exc, stream=None):
    """Print ``exc`` as slim-plugins prints every user error: one line on stderr."""
    stream = stream or sys.stderr
    stream.write(f"slim-plugins: error: {exc}\n")
    stream.flush()


def exit_with(exc):
    """Report ``exc`` and raise ``SystemExit(2)``: for errors where the suite's own code might
    catch an ``Exception`` (imports, configuration) and go on without the plugin."""
    report(exc)
    raise SystemExit(2) from exc


def _exit_now(code):
    """End the process as an uncaught exception would, with ``code``: atexit handlers run,
    streams are flushed."""
    import atexit
    import os

    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def install_excepthook():
    """An uncaught :class:`SlimPluginsError` prints one line and exits 2; anything else goes to
    the previous hook. The one place that turns user errors into that exit, on every path."""
    previous = sys.excepthook
    if getattr(previous, "_slim_plugins", False):
        return

    def excepthook(kind, exc, tb):
        if isinstance(exc, SlimPluginsError):
            report(exc)
            _exit_now(2)
        previous(kind, exc, tb)

    excepthook._slim_plugins = True
    sys.excepthook = excepthook


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


class FileError(SlimPluginsError):
    """A file slim-plugins must read or write cannot be (a directory, not writable, not text)."""


class SensitivityFileError(FileError):
    """A sensitivity file that belongs to another model, metric or criterion, or is corrupt."""


class PruneError(SlimPluginsError):
    """Pruning a group failed; the model was restored before this was raised."""


class TraceError(SlimPluginsError):
    """PaddleSlim could not trace the model into a static graph."""


class ShapeMismatchError(SlimPluginsError):
    """Loaded weights do not fit the network's shapes (e.g. a pruned checkpoint without its plan)."""
