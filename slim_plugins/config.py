"""Plugin options: declared by plugins, given by users on the command line, in YAML or Python."""
import copy
import json
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable, Dict, Optional, Sequence

from slim_plugins.errors import OptionError


def to_bool(value):
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{value!r} is not a boolean (use true or false)")


def _from_text(value, opener):
    """A string as JSON when it starts with ``opener`` (``[`` or ``{``), else split at commas
    (empty parts dropped); anything else as it is. Returns ``(value, split)``."""
    if not isinstance(value, str):
        return value, False
    text = value.strip()
    if text.startswith(opener):
        return json.loads(text), False
    return [part for part in text.split(",") if part.strip()], True


def to_list(item_type=str):
    """Converter for lists: accepts a list, JSON/YAML ``[a, b]`` or ``a,b``."""

    def convert(value):
        value, _ = _from_text(value, "[")
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [item_type(v.strip() if isinstance(v, str) else v) for v in value]

    convert.__name__ = f"list[{getattr(item_type, '__name__', item_type)}]"
    return convert


def to_mapping(value_type=float):
    """Converter for ``{glob: value}``: a dict, JSON, or ``glob=value,glob=value``."""

    def convert(value):
        value, split = _from_text(value, "{")
        if split:
            pairs, value = value, {}
            for pair in pairs:
                if "=" not in pair and ":" not in pair:
                    raise ValueError(f"{pair!r} is not 'name=value'")
                key, _, val = pair.replace(":", "=", 1).partition("=")
                value[key.strip()] = val.strip()
        if not isinstance(value, dict):
            raise ValueError(f"{value!r} is not a mapping of name to value")
        return {str(k): value_type(v) for k, v in value.items()}

    convert.__name__ = f"dict[str, {getattr(value_type, '__name__', value_type)}]"
    return convert


def bounded(convert, low=None, high=None, low_open=False, high_open=False):
    """``convert``, then a range check: ``bounded(float, 0, 1, low_open=True, high_open=True)``
    takes 0 < value < 1 and names that range when it refuses a value."""
    interval = (("(" if low_open else "[") + ("-inf" if low is None else f"{low:g}") + ", "
                + ("inf" if high is None else f"{high:g}") + (")" if high_open else "]"))

    def wrapped(value):
        converted = convert(value)
        ok = converted == converted  # NaN is in no range
        if ok and low is not None:
            ok = converted > low if low_open else converted >= low
        if ok and high is not None:
            ok = converted < high if high_open else converted <= high
        if not ok:
            raise ValueError(f"{converted!r} is outside {interval}")
        return converted

    wrapped.__name__ = f"{getattr(convert, '__name__', convert)} in {interval}"
    return wrapped


def non_empty(convert):
    """``convert`` for lists, refusing an empty one."""

    def wrapped(value):
        converted = convert(value)
        if not converted:
            raise ValueError("the list is empty")
        return converted

    wrapped.__name__ = f"non-empty {getattr(convert, '__name__', convert)}"
    return wrapped


def optional(convert):
    def wrapped(value):
        if value is None or (isinstance(value, str) and value.strip().lower() in {"", "none", "null"}):
            return None
        return convert(value)

    wrapped.__name__ = f"{getattr(convert, '__name__', convert)} | None"
    return wrapped


def option(default, type, help, *, choices=None, shown=None):
    """One field of a plugin's options dataclass: its converter ``type`` (which checks the
    range), ``help`` (Markdown: backticks are dropped on the terminal), the ``choices`` it takes,
    and ``shown``, what the docs say the default is when ``default`` is None (``all``,
    ``<save_dir>/report.json``; Markdown too)."""
    metadata = {"type": type, "help": help, "choices": choices, "shown": shown}
    if isinstance(default, (list, dict)):  # a fresh copy for each instance
        return field(default_factory=lambda: copy.copy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def declared_options(cls):
    """The :class:`Option` of each field of ``cls``, an options dataclass made of :func:`option`."""
    found = []
    for f in fields(cls):
        meta = f.metadata
        default = f.default if f.default_factory is MISSING else f.default_factory()
        found.append(Option("", f.name, meta["type"], default, meta["help"], meta["choices"], meta["shown"]))
    return found


def register_options(plugin, cls, register):
    """Declare the options dataclass ``cls`` of ``plugin`` through ``slim_add_options``'s ``register``."""
    for o in declared_options(cls):
        register(plugin, o.name, o.type, o.default, o.help, o.choices, shown=o.shown)


def default_text(value):
    """A default as the terminal and the docs show it."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) or "[]"
    return str(value)


def options_markdown(cls):
    """The README's option table of the options dataclass ``cls``."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for o in declared_options(cls):
        lines.append(f"| `{o.name}` | {o.shown_default(markdown=True)} | {o.help} |")
    return "\n".join(lines)


@dataclass
class Option:
    plugin: str
    name: str
    type: Callable[[Any], Any]
    default: Any
    help: str
    choices: Optional[Sequence[Any]] = None
    shown: Optional[str] = None

    @property
    def plain_help(self):
        """``help`` for a terminal: without Markdown's backticks."""
        return self.help.replace("`", "")

    def shown_default(self, markdown=False):
        """The default as the docs (``markdown``) or the terminal show it."""
        if self.shown is not None and self.default is None:
            return self.shown if markdown else self.shown.replace("`", "")
        text = default_text(self.default)
        return f"`{text}`" if markdown and text != "-" else text

    def convert(self, value, source):
        try:
            converted = self.type(value) if value is not None or self.default is not None else None
        except (TypeError, ValueError) as exc:
            raise OptionError(
                f"option {self.name}={value!r} (from {source}) is invalid: {exc}",
                plugin=self.plugin,
                hint=f"{self.name} takes {getattr(self.type, '__name__', self.type)}: {self.plain_help}",
            ) from None
        if self.choices is not None and converted not in self.choices:
            raise OptionError(
                f"option {self.name}={value!r} (from {source}) is not one of {list(self.choices)}",
                plugin=self.plugin,
                hint=f"choose one of {', '.join(map(str, self.choices))}",
            )
        return converted


class Options:
    """Declared options of every plugin, and the values users gave."""

    def __init__(self):
        self.declared: Dict[str, Dict[str, Option]] = {}
        # plugin -> key -> (value, source); later sources override earlier ones
        self.given: Dict[str, Dict[str, tuple]] = {}

    def register(self, plugin, name, type=str, default=None, help="", choices=None, shown=None):
        self.declared.setdefault(plugin, {})[name] = Option(plugin, name, type, default, help, choices, shown)

    def give(self, plugin, values, source):
        """Record user values, checked at once (name, type and range), so that a wrong value
        stops the run before any tracing, evaluation or training."""
        if values is not None and not isinstance(values, dict):
            raise OptionError(f"the options of plugin {plugin!r} (from {source}) must be a mapping of option "
                              f"to value, got {type(values).__name__} {values!r}", plugin=plugin,
                              hint=f"write e.g. plugins: {{{plugin}: {{OPTION: VALUE}}}}, or {plugin}: true")
        declared = self.declared.get(plugin, {})
        slot = self.given.setdefault(plugin, {})
        for key, value in (values or {}).items():
            key = str(key).replace("-", "_")
            option = declared.get(key)
            if option is None and plugin in self.declared:  # a blocked plugin declares nothing
                raise OptionError(f"unknown option {key!r} (from {source})", plugin=plugin,
                                  hint="valid options: " + (", ".join(sorted(declared)) or "none"))
            if option is not None:
                option.convert(value, source)
            slot[key] = (value, source)

    def config(self, plugin):
        declared = self.declared.get(plugin, {})
        given = self.given.get(plugin, {})
        unknown = sorted(set(given) - set(declared))
        if unknown:
            key = unknown[0]
            raise OptionError(
                f"unknown option {key!r} (from {given[key][1]})",
                plugin=plugin,
                hint="valid options: " + (", ".join(sorted(declared)) or "none"),
            )
        values = {}
        for name, option in declared.items():
            if name in given:
                value, source = given[name]
                values[name] = option.convert(value, source)
            else:
                values[name] = option.default
        return PluginConfig(plugin, values, {k: v[1] for k, v in given.items()})


class PluginConfig:
    """Read-only typed view of one plugin's options: ``config.eval_metric_loss``."""

    def __init__(self, plugin, values, sources):
        object.__setattr__(self, "_plugin", plugin)
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "_sources", dict(sources))

    def __getattr__(self, name):
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"plugin {self._plugin!r} has no option {name!r}") from None

    def __setattr__(self, name, value):
        raise AttributeError("plugin configs are read-only")

    def source(self, name):
        """Where a value came from (``--prune.x``, ``config.yml``, ``python``), or ``default``."""
        return self._sources.get(name, "default")

    def as_dict(self):
        return dict(self._values)

    def typed(self, cls):
        """The values as ``cls``, the plugin's options dataclass (see :func:`option`)."""
        return cls(**self._values)

    def __repr__(self):
        return f"PluginConfig({self._plugin!r}, {self._values!r})"
