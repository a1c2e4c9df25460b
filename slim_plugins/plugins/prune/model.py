"""A model as PaddleSlim sees it: groups of coupled parameters, and fast masking.

PaddleSlim traces the model, groups coupled parameters (a conv, its BN, the next conv's input
channels, residual partners) and picks the channels to drop. Applying and undoing a pruning is
done here, vectorised and without the ``*_backup`` buffers PaddleSlim leaves in the model.
"""
import contextlib
import fnmatch
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np

from slim_plugins import compat
from slim_plugins.errors import OptionError, PruneError, TraceError, exception_line

CRITERIA = ("l1_norm", "l2_norm", "fpgm")


@dataclass
class Group:
    """Parameters pruned together; named by the structured name of its master conv weight."""

    name: str
    master: str  # PaddleSlim's global parameter name, e.g. conv2d_3.w_0
    channels: int
    members: List[str] = field(default_factory=list)  # structured names
    followers: List[str] = field(default_factory=list)  # other conv weights losing output channels


class Applied:
    """Undo record of one masking: restores values and conv groups."""

    def __init__(self, model):
        self.model = model
        self.values = {}
        self.groups = {}

    def restore(self):
        for param, value in self.values.items():
            compat.set_value(param, value)
        for layer, groups in self.groups.items():
            layer._groups = groups
        self.values.clear()
        self.groups.clear()


def _pop(stack):
    """Forward post-hook body: returns None, so the layer's output stays what it was."""
    if stack:
        stack.pop()


def failing_layer(model, trace):
    """Run ``trace`` again and find where it breaks: the innermost frame of the traceback that runs
    a sublayer's method names the layer and the source line. Layers whose forward is entered but
    not left (forward hooks) answer when no such frame exists. Returns ``(name, class, where)``,
    ``where`` being ``file:line`` or ``""``; None if ``trace`` succeeds."""
    names = {id(layer): name for name, layer in model.named_sublayers(include_self=True)}
    stack, handles = [], []
    for name, layer in model.named_sublayers():
        handles.append(layer.register_forward_pre_hook(lambda l, i, n=name: stack.append((n, type(l).__name__))))
        handles.append(layer.register_forward_post_hook(lambda l, i, o: _pop(stack)))
    try:
        with compat.tracing():
            trace()
    except Exception as exc:
        found, tb = None, exc.__traceback__
        while tb is not None:
            owner = tb.tb_frame.f_locals.get("self")
            if owner is not None and id(owner) in names:
                code = tb.tb_frame.f_code
                found = (names[id(owner)] or "(the model)", type(owner).__name__,
                         f"{os.path.basename(code.co_filename)}:{tb.tb_lineno}")
            tb = tb.tb_next
        if found:
            return found
        return stack[-1] + ("",) if stack else None
    finally:
        for h in handles:
            h.remove()
    return None


def matches(name, patterns, global_name=None):
    return any(fnmatch.fnmatchcase(name, p) or (global_name and fnmatch.fnmatchcase(global_name, p))
               for p in patterns)


class PrunableModel:
    """Wraps a ``paddle.nn.Layer`` with a PaddleSlim filter pruner.

    Build it right after the weights the analysis must see are loaded: channel importance is
    computed from the weights at construction time.
    """

    def __init__(self, model, inputs, criterion="l1_norm", skip=(), mode=None):
        if criterion not in CRITERIA:
            raise OptionError(f"criterion {criterion!r} is not supported", plugin="prune",
                              hint=f"use one of {', '.join(CRITERIA)}")
        self.model = model
        self.inputs = inputs
        self.criterion = criterion
        self.mode = mode  # "train", "eval" or None: the mode PaddleSlim traces in (see slim_trace_mode)
        pruner_cls = compat.import_paddleslim_pruners()[criterion]
        was_training = model.training
        try:
            with self.trace_mode(), compat.tracing():
                self.pruner = pruner_cls(model, inputs)
        except Exception as exc:  # PaddleSlim's tracer fails deep inside; say what and where
            with self.trace_mode():
                layer = failing_layer(model, lambda: pruner_cls(model, inputs))
            where = ""
            if layer:
                name, cls, line = layer
                where = f" in layer {name} ({cls}, {line})" if line else f" in layer {name} ({cls})"
            raise TraceError(
                f"PaddleSlim could not trace {type(model).__name__}{where} on Paddle {compat.paddle.__version__}: "
                + exception_line(exc),
                plugin="prune",
                hint="check the input shape; on Paddle 3 some ops cannot be traced into PaddleSlim's old-IR "
                     "program: try Paddle 2.6, or give fixed ratios that avoid that part of the model",
            ) from exc
        finally:
            model.train() if was_training else model.eval()
        self.structured = OrderedDict()  # global -> structured
        self.params = {}  # global -> Parameter
        for sname, param in model.named_parameters():
            self.structured.setdefault(param.name, sname)
            self.params[param.name] = param
        self.global_of = {s: g for g, s in self.structured.items()}
        self.layer_of = {}
        for layer in model.sublayers(include_self=True):
            for param in layer.parameters(include_sublayers=False):
                self.layer_of.setdefault(param.name, layer)
        collections = list(self.pruner.collections)
        self.originals = collections[0].values if collections else {
            g: compat.numpy_of(p) for g, p in self.params.items()}
        self.groups: Dict[str, Group] = OrderedDict()
        for coll in collections:
            if coll.master_axis != 0 or coll.master_name not in self.structured:
                continue
            if coll.master_name in self.pruner.skip_vars:
                continue
            name = self.structured[coll.master_name]
            members = [self.structured[v] for v in coll.variables() if v in self.structured]
            channels = int(self.params[coll.master_name].shape[0])
            followers = sorted({self.structured[d.name] for d in coll.all_pruning_details()
                                if d.axis == 0 and d.name in self.structured and d.name != coll.master_name
                                and len(self.params[d.name].shape) == 4})
            self.groups[name] = Group(name, coll.master_name, channels, members, followers)
        self.skip_patterns = list(skip)
        self.unsafe = {}  # group -> reason (set by the inventory: loops, conditionals)

    @contextlib.contextmanager
    def trace_mode(self):
        """The model in the mode it is traced in, its own mode restored afterwards."""
        was_training = self.model.training
        if self.mode == "train":
            self.model.train()
        elif self.mode == "eval":
            self.model.eval()
        try:
            with compat.traceable_buffers(self.model):
                yield
        finally:
            self.model.train() if was_training else self.model.eval()

    # ------------------------------------------------------------------ names
    def resolve(self, pattern_or_name):
        """Structured group names matching a glob on structured or PaddleSlim global names."""
        return [g.name for g in self.groups.values() if matches(g.name, [pattern_or_name], g.master)]

    def selected_groups(self):
        return [name for name, g in self.groups.items()
                if name not in self.unsafe and not matches(name, self.skip_patterns, g.master)]

    # ------------------------------------------------------------------ masking
    def masks(self, ratios):
        """PaddleSlim's masks for ``{group: ratio}``, merged as its ``prune_vars`` merges them."""
        from paddleslim.dygraph.prune.pruning_plan import PruningPlan

        plan = PruningPlan(self.model.full_name)
        for name, ratio in ratios.items():
            group = self.groups[name]
            if ratio <= 0 or plan.contains(group.master, 0):
                continue
            try:
                with compat.quiet_paddleslim():
                    sub = self.pruner.prune_var(group.master, 0, float(ratio), apply=None)
            except Exception as exc:  # PaddleSlim asserts on couplings it cannot follow
                raise PruneError(
                    f"PaddleSlim cannot prune group {name} at ratio {ratio:g} "
                    f"({type(exc).__name__}: {str(exc)[:300]}); the model was not changed",
                    plugin="prune", hint=f"add {name!r} to prune.skip") from exc
            if sub is not None:
                plan.extend(sub)
        return plan.masks

    def apply(self, ratios, optimizer=None):
        """Prune structurally; returns an :class:`Applied` that undoes it."""
        applied = Applied(self.model)
        try:
            for gname, masks in self.masks(ratios).items():
                param = self.params.get(gname)
                if param is None:  # an activation PaddleSlim listed in the group
                    continue
                value = self.originals.get(gname)
                if value is None or tuple(value.shape) != tuple(param.shape):
                    value = compat.numpy_of(param)
                applied.values[param] = value
                layer = self.layer_of.get(gname)
                for mask in masks:
                    keep = np.asarray(mask.mask).astype(bool)
                    groups = mask._op.attr("groups") if mask._op is not None else None
                    if groups is not None and groups > 1 and value.ndim == 4 and layer is not None:
                        applied.groups.setdefault(layer, layer._groups)
                        layer._groups = int(keep.sum() // value.shape[1])
                    if optimizer is not None:
                        _prune_accumulators(optimizer, gname, keep, mask.dims)
                    value = np.compress(keep, value, axis=mask.dims)
                compat.set_value(param, value)
                if not param.stop_gradient:
                    param.clear_gradient()
        except Exception:
            applied.restore()
            raise
        return applied

    def channels_after(self, ratios):
        """Output channels each group keeps under ``ratios`` (PaddleSlim's rounding)."""
        out = {}
        for name, ratio in ratios.items():
            n = self.groups[name].channels
            pruned = min(n - 1, int(round(n * float(ratio))))
            out[name] = n - pruned
        return out

    def check_forward(self, inputs):
        import paddle

        was_training = self.model.training
        self.model.eval()
        try:
            with paddle.no_grad():
                self.model(*inputs)
        finally:
            if was_training:
                self.model.train()

    def prune(self, ratios, optimizer=None, check_inputs=None):
        """Prune for good. A failure restores the model and names the group that broke it."""
        applied = self.apply(ratios, optimizer=optimizer)
        if check_inputs is None:
            return applied
        try:
            self.check_forward(check_inputs)
            return applied
        except Exception as first:
            applied.restore()
            culprit = None
            for name in ratios:
                trial = self.apply({name: ratios[name]})
                try:
                    self.check_forward(check_inputs)
                except Exception:
                    culprit = name
                finally:
                    trial.restore()
                if culprit:
                    break
            raise PruneError(
                f"pruning group {culprit or '?'} at ratio {ratios.get(culprit, '?')} breaks the forward pass "
                f"({type(first).__name__}: {first}); the model was restored",
                plugin="prune", hint=f"add {culprit!r} to prune.skip",
            ) from first


def _prune_accumulators(optimizer, param_name, keep, axis):
    for accumulators in getattr(optimizer, "_accumulators", {}).values():
        var = accumulators.get(param_name)
        if var is None or list(var.shape) in ([1], []):
            continue
        value = compat.numpy_of(var)
        if value.ndim > axis and value.shape[axis] == keep.shape[0]:
            compat.set_value(var, np.compress(keep, value, axis=axis))
