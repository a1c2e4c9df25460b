"""The hook spec every adapter and plugin is written against.

``hookimpl`` marks an implementation; ``spec`` holds the specifications only.
"""
import pluggy

PROJECT = "slim_plugins"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = ["PROJECT", "hookspec", "hookimpl"]
