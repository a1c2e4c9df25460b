"""The pruning plan: what was pruned, saved as JSON next to every checkpoint, and replayed on a
freshly built model before weights are loaded (so eval, export and resume see the right shapes).

Replaying needs no tracing: the plan records the pruned shape of every parameter and, for every
layer whose weights changed shape, the attributes its forward reads (conv ``groups`` - also when
a depthwise conv drops to one channel and groups becomes 1 -, LayerNorm's normalised shape,
declared channel counts); the weights that follow overwrite the values.
"""
import os
from dataclasses import MISSING, asdict, dataclass, field
from typing import Dict, List

import numpy as np

from slim_plugins import compat
from slim_plugins.errors import PruneError
from slim_plugins.plugins.prune.sensitivity import architecture_fingerprint, read_json, write_json_atomic

FORMAT = "slim-plugins/prune-plan"
SUFFIX = ".prune.json"
_ATTR = "_slim_prune_plan"
_CHECKPOINT_EXTENSIONS = (".pdparams", ".pdopt", ".pdema", ".pdstates", ".states", ".pdmodel", ".json")


@dataclass
class PrunePlan:
    criterion: str
    ratios: Dict[str, float]
    channels: Dict[str, List[int]]  # group -> [before, after]
    shapes: Dict[str, List[int]]  # structured parameter name -> pruned shape
    layer_groups: Dict[str, int]  # structured layer name -> conv groups after pruning (every pruned conv)
    base_fingerprint: str  # the unpruned architecture
    pruned_fingerprint: str
    flops: Dict[str, int] = field(default_factory=dict)
    params: Dict[str, int] = field(default_factory=dict)
    layer_attrs: Dict[str, Dict[str, object]] = field(default_factory=dict)  # layer -> {attribute: value}

    def to_json(self):
        return {"format": FORMAT, "version": 1, **asdict(self)}

    @classmethod
    def from_json(cls, data, source="plan"):
        fix = "use the .prune.json saved with the checkpoint, or remove it for an unpruned checkpoint"
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise PruneError(f"{source} is not a slim-plugins pruning plan", plugin="prune", hint=fix)
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        required = [k for k, f in cls.__dataclass_fields__.items()
                    if f.default is MISSING and f.default_factory is MISSING]
        missing = [k for k in required if k not in fields]
        if missing:
            raise PruneError(f"{source} is incomplete: it has no {', '.join(missing)}", plugin="prune", hint=fix)
        for key in ("ratios", "channels", "shapes", "layer_groups"):
            if not isinstance(fields[key], dict):
                raise PruneError(f"{source}: {key} is {type(fields[key]).__name__}, not a mapping", plugin="prune",
                                 hint=fix)
        return cls(**fields)

    def save(self, path):
        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path):
        data = read_json(path, "a pruning plan", error=PruneError,
                         fix="use the .prune.json saved with the checkpoint, or remove it for an unpruned checkpoint")
        return cls.from_json(data, source=path)


# layer attributes a forward reads besides the weights (conv groups are kept in layer_groups; an
# LSTM/GRU tells its fused rnn op its input_size)
LAYER_ATTRS = ("_in_channels", "_out_channels", "_normalized_shape", "_num_features", "input_size")


def _plain(value):
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return int(value)


def plan_path(checkpoint):
    """``output/model_final.pdparams`` or ``output/model_final`` -> ``output/model_final.prune.json``."""
    checkpoint = str(checkpoint)
    for ext in _CHECKPOINT_EXTENSIONS:
        if checkpoint.endswith(ext) and not checkpoint.endswith(SUFFIX):
            checkpoint = checkpoint[: -len(ext)]
            break
    if checkpoint.endswith(SUFFIX):
        return checkpoint
    return checkpoint + SUFFIX


def find_plan(checkpoint):
    """The plan saved with ``checkpoint`` (a prefix, a file, or a directory), or None."""
    if checkpoint is None:
        return None
    candidates = [plan_path(checkpoint)]
    if os.path.isdir(str(checkpoint)):
        candidates += [os.path.join(str(checkpoint), n) for n in ("model" + SUFFIX, "best_model" + SUFFIX)]
    for candidate in candidates:
        if os.path.exists(candidate):  # a folder of that name is an error when read, not "no plan"
            return candidate
    return None


def attach(model, plan):
    object.__setattr__(model, _ATTR, plan)


def attached(model):
    return getattr(model, _ATTR, None)


def make_plan(prunable, ratios, base_shapes, base_fingerprint, flops=None, params=None):
    """Describe the pruning just applied to ``prunable.model``."""
    model = prunable.model
    shapes = {}
    for name, param in model.named_parameters():
        if list(param.shape) != list(base_shapes[name]):
            shapes[name] = [int(d) for d in param.shape]
    layer_groups, layer_attrs = {}, {}
    for name, layer in model.named_sublayers():
        if not any(f"{name}.{p}" in shapes for p, _ in layer.named_parameters(include_sublayers=False)):
            continue
        if getattr(layer, "_groups", None) is not None:
            layer_groups[name] = int(layer._groups)
        attrs = {a: _plain(getattr(layer, a)) for a in LAYER_ATTRS if getattr(layer, a, None) is not None}
        if attrs:
            layer_attrs[name] = attrs
    channels = {}
    after = prunable.channels_after(ratios)
    for group, ratio in ratios.items():
        channels[group] = [prunable.groups[group].channels, after[group]]
    return PrunePlan(
        criterion=prunable.criterion, ratios={g: round(float(r), 6) for g, r in ratios.items()},
        channels=channels, shapes=shapes, layer_groups=layer_groups,
        base_fingerprint=base_fingerprint, pruned_fingerprint=architecture_fingerprint(model),
        flops=flops or {}, params=params or {}, layer_attrs=layer_attrs)


def replay(model, plan):
    """Give a freshly built ``model`` the plan's shapes. Values become zeros until weights load.

    Idempotent: a model that already has the pruned shapes is left as it is.
    """
    current = architecture_fingerprint(model)
    if current == plan.pruned_fingerprint:
        attach(model, plan)
        return False
    if current != plan.base_fingerprint:
        raise PruneError(
            "the pruning plan was made for another model: its unpruned architecture "
            f"{plan.base_fingerprint} differs from this model's {current}", plugin="prune",
            hint="use the config the pruned checkpoint was trained with")
    params = dict(model.named_parameters())
    layers = dict(model.named_sublayers())
    for name, shape in plan.shapes.items():
        param = params[name]
        compat.set_value(param, np.zeros(shape, dtype=compat.numpy_of(param).dtype))
    for name, groups in plan.layer_groups.items():
        layers[name]._groups = groups
    for name, attrs in plan.layer_attrs.items():
        for attr, value in attrs.items():
            setattr(layers[name], attr, value)
    attach(model, plan)
    return True
