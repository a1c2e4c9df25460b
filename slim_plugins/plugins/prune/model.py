"""A model as groups of coupled channels, and fast structural masking.

The groups come from our own dependency graph (:mod:`.graph`, built from the program
``paddle.jit.to_static`` makes of the model, on Paddle 2.6 and 3.x alike). Channel importance
follows PaddleSlim's criteria (l1_norm, l2_norm, fpgm) so the kept channels are the same where
PaddleSlim can trace. Applying and undoing a pruning is vectorised and leaves no ``*_backup``
buffers in the model.
"""
import contextlib
import fnmatch
import os
import time
import types
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np
import paddle
import paddle.nn as nn

from slim_plugins import compat
from slim_plugins.errors import OptionError, PruneError, TraceError, exception_line

CRITERIA = ("l1_norm", "l2_norm", "fpgm")


@dataclass
class Group:
    """Parameters pruned together; named by the structured name of its master conv weight."""

    name: str
    master: str  # the master weight's global (PaddleSlim) name, e.g. conv2d_3.w_0
    channels: int
    members: List[str] = field(default_factory=list)  # structured names
    followers: List[str] = field(default_factory=list)  # other conv weights losing output channels
    classes: List[int] = field(default_factory=list, repr=False)  # graph classes, master's order
    master_axis: int = 0


class Applied:
    """Undo record of one masking: restores values, layer attributes and optimizer state."""

    def __init__(self):
        self.values = {}
        self.attrs = []  # (layer, attribute, old value)
        self.optimizer = []  # (holder dict or tensor, key, old value)

    def restore(self):
        for param, value in self.values.items():
            compat.set_value(param, value)
        for layer, attr, value in reversed(self.attrs):
            setattr(layer, attr, value)
        for holder, key, value in reversed(self.optimizer):
            if isinstance(holder, dict):
                holder[key] = value
            else:
                compat.set_value(holder, value)
        self.values.clear()
        self.attrs.clear()
        self.optimizer.clear()

    def set_attr(self, layer, attr, value):
        self.attrs.append((layer, attr, getattr(layer, attr)))
        setattr(layer, attr, value)


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
    """Wraps a ``paddle.nn.Layer`` with its dependency graph of coupled channels.

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
        self.mode = mode  # "train", "eval" or None: the mode traced first (see slim_trace_mode)
        self._index_parameters()
        started = time.perf_counter()
        self.graph = self._trace(example_inputs(inputs))
        self.trace_seconds = time.perf_counter() - started
        self.originals = {g: compat.numpy_of(p) for g, p in self.params.items()}
        self._index_classes()
        self.skip_patterns = list(skip)
        self.unsafe = {}  # group -> reason (set by the inventory: conditionals)

    def _index_parameters(self):
        """Each parameter by its global (program) name: its structured name, its layer and that
        layer's name."""
        self.structured = OrderedDict()  # global -> structured
        self.params = {}  # global -> Parameter
        for sname, param in self.model.named_parameters():
            self.structured.setdefault(param.name, sname)
            self.params[param.name] = param
        self.global_of = {s: g for g, s in self.structured.items()}
        self.layer_of = {}
        self.layer_name = {}
        for lname, layer in self.model.named_sublayers(include_self=True):
            for param in layer.parameters(include_sublayers=False):
                self.layer_of.setdefault(param.name, layer)
                self.layer_name.setdefault(param.name, lname)

    # ------------------------------------------------------------------ tracing
    def _trace(self, examples):
        """The coupled-channel graph of every program that can add couplings (see :meth:`_passes`)."""
        graph = self._walk(self._passes_that_add(self._passes(examples)))
        self._blame_opaque(graph)
        return graph

    def _passes(self, examples):
        """``(mode, inputs)`` to trace: the first mode, the other modes, and a larger input size
        (code that depends on the input size shows at another size)."""
        first = self.mode or ("train" if self.model.training else "eval")
        passes = [(first, examples)] + [(m, examples) for m in ("eval", "train") if m != first]
        larger = _larger(examples)
        if larger is not None:
            passes.append(("eval", larger))
        return passes

    def _walk(self, passes):
        """One walker over the programs of ``passes``: the first must trace, the others may not."""
        from slim_plugins.plugins.prune.graph import Walker

        param_shapes = {g: [int(d) for d in p.shape] for g, p in self.params.items()}
        walker = None
        self.traced_modes = []
        self.opaque = {}  # parameter-free sublayers to_static cannot convert (post-processing, NMS)
        for index, (mode, inputs) in enumerate(passes):
            try:
                view = self._read(mode, inputs, retry=index == 0)
            except Exception as exc:  # noqa: BLE001  the first pass must trace; the others may not
                if index == 0:
                    self._trace_error(exc, inputs, mode)
                continue
            if walker is None:
                walker = Walker(view, param_shapes)
            walker.walk(view)  # same parameters, same ids: every program adds its couplings
            self.traced_modes.append(mode if index < 2 else f"{mode} at {list(inputs[0].shape)[2:]}")
        return walker.result()

    def _blame_opaque(self, graph):
        """Channels blocked at an opaque stand-in's reduction: the reason names the layers it replaced."""
        if not self.opaque:
            return
        marker = f"{os.path.basename(__file__)}:{_sink.__code__.co_firstlineno + 2}"
        why = "; ".join(self.opaque.values())
        for i, reason in graph.blocked.items():
            if marker in reason:
                graph.blocked[i] = why

    def _passes_that_add(self, passes):
        """The first pass, and each other pass whose eager run calls a conv the first does not,
        or calls one another number of times: only those can add couplings, and building a
        program costs far more than running the model (PP-OCRv4 det: ~30 s against ~1 s). The
        records (:attr:`eager_passes`) serve the inventory too: its passes are these."""
        from slim_plugins.plugins.prune.inventory import run_passes

        self.eager_passes = run_passes(self.model, passes)
        counts = [r.calls for r in self.eager_passes]
        first = counts[0] or {}
        keep = [passes[0]]
        for extra, seen in zip(passes[1:], counts[1:]):
            if seen is not None and any(n and first.get(name) != n for name, n in seen.items()):
                keep.append(extra)
        return keep

    def _read(self, mode, inputs, retry):
        """The program in ``mode``. A parameter-free sublayer that to_static cannot convert (a
        detector's post-processing or NMS) is traced as an opaque stand-in: its inputs count as
        model outputs, so only the channels that reach it are excluded, with the reason."""
        from slim_plugins.plugins.prune.program import read_program

        for _attempt in range(6):
            try:
                with self.trace_mode(mode), _quiet_dy2st(), _opaque(self.model, self.opaque, inputs):
                    return read_program(self.model, inputs)
            except Exception as exc:  # noqa: BLE001
                if not retry:
                    raise
                with self.trace_mode(mode), _opaque(self.model, self.opaque, inputs):
                    layer = failing_layer(self.model, lambda: _static_call(self.model, inputs))
                sublayers = dict(self.model.named_sublayers())
                if not layer or layer[0] not in sublayers or layer[0] in self.opaque:
                    raise
                if list(sublayers[layer[0]].parameters()):
                    raise
                self.opaque[layer[0]] = (f"feeds {layer[0]} ({layer[1]}), which paddle.jit.to_static cannot "
                                         f"convert: {_dy2st_error(exc)[1][:160]}")
        raise TraceError("too many untraceable sublayers", plugin="prune")

    def _trace_error(self, exc, examples, mode):
        layer = None
        with self.trace_mode(mode), _opaque(self.model, self.opaque, examples):
            layer = failing_layer(self.model, lambda: _static_call(self.model, examples))
        where = ""
        source, message = _dy2st_error(exc)
        if layer:
            name, cls, line = layer
            line = source or line
            where = f" in layer {name} ({cls}, {line})" if line else f" in layer {name} ({cls})"
        elif source:
            where = f" at {source}"
        raise TraceError(
            f"paddle.jit.to_static could not turn {type(self.model).__name__} into a program{where} "
            f"on Paddle {compat.paddle.__version__}: " + message,
            plugin="prune",
            hint="the suite's export (paddle.jit.to_static) must work for the model in "
                 f"{mode} mode with these inputs; check the input shape, or export the model first to see the error",
        ) from exc

    @contextlib.contextmanager
    def trace_mode(self, mode=None):
        """The model in the mode it is traced in, its own mode restored afterwards."""
        mode = mode or self.mode
        was_training = self.model.training
        if mode == "train":
            self.model.train()
        elif mode == "eval":
            self.model.eval()
        try:
            yield
        finally:
            self.model.train() if was_training else self.model.eval()

    def _index_classes(self):
        graph = self.graph
        uf = graph.uf
        self.param_roots = {}
        self.class_members = {}  # root -> [(global name, axis)]
        for name, axes in graph.param_ids.items():
            if name not in graph.seen_params:
                continue
            roots = []
            for axis, ids in enumerate(axes):
                if ids is None:
                    roots.append(None)
                    continue
                r = uf.roots(ids)
                roots.append(r)
                for root in set(r.tolist()):
                    self.class_members.setdefault(root, []).append((name, axis))
            self.param_roots[name] = roots
        blocked = graph.blocked_roots()
        self.blocked = {}  # structured weight -> reason
        self.groups: Dict[str, Group] = OrderedDict()
        self.producer_of = {}  # structured conv weight -> group it belongs to
        owner = {}
        for producer in graph.producers:
            roots = self.param_roots[producer.param][producer.axis]
            if roots is None:
                continue
            classes = list(dict.fromkeys(roots.tolist()))
            sname = self.structured.get(producer.param, producer.param)
            known = [owner[c] for c in classes if c in owner]
            if known:
                self.producer_of.setdefault(sname, known[0])
                continue
            gname = sname
            for c in classes:
                owner[c] = gname
            self.producer_of[sname] = gname
            reason = next((blocked[c] for c in classes if c in blocked), None)
            if reason is not None:
                self.blocked[gname] = reason
                continue
            if len(classes) < 2:
                self.blocked[gname] = "has a single channel"
                continue
            members, followers = set(), set()
            for c in classes:
                for pname, axis in self.class_members.get(c, ()):
                    members.add(self.structured.get(pname, pname))
                    if pname != producer.param and axis == self._out_axis(pname):
                        followers.add(self.structured.get(pname, pname))
            self.groups[gname] = Group(gname, producer.param, len(classes),
                                       sorted(members), sorted(f for f in followers if f.endswith("weight")
                                                               and len(self.params[self.global_of[f]].shape) >= 3),
                                       classes, producer.axis)

        for pname in graph.conv_groups:  # convs with one output channel produce no group
            roots = self.param_roots.get(pname)
            if roots is not None and roots[self._out_axis(pname)] is None:
                self.blocked.setdefault(self.structured.get(pname, pname), "has a single output channel")

    def _out_axis(self, pname):
        return 1 if pname in self.graph.transposed else 0

    # ------------------------------------------------------------------ names
    def resolve(self, pattern_or_name):
        """Structured group names matching a glob on the structured or PaddleSlim global name of a
        group's master conv. An exact (glob-free) name of a conv whose outputs a group prunes
        (a residual partner) resolves to that group."""
        out = [g.name for g in self.groups.values() if matches(g.name, [pattern_or_name], g.master)]
        if not out and not any(c in pattern_or_name for c in "*?["):
            name = self.structured.get(pattern_or_name, pattern_or_name)
            group = self.producer_of.get(name)
            if group in self.groups:
                out.append(group)
        return out

    def selected_groups(self):
        return [name for name, g in self.groups.items()
                if name not in self.unsafe and not matches(name, self.skip_patterns, g.master)]

    # ------------------------------------------------------------------ masking
    def scores(self, group):
        """Importance of each class of ``group`` (PaddleSlim's criteria on the master weight)."""
        value = self.originals[group.master]
        axis = group.master_axis
        w = np.moveaxis(value, axis, 0)
        if self.criterion == "l1_norm":
            per_slice = np.mean(np.abs(w), axis=tuple(range(1, w.ndim)))
        elif self.criterion == "l2_norm":
            per_slice = np.sqrt(np.sum(np.square(w), axis=tuple(range(1, w.ndim))))
        else:  # fpgm: distance sum to every other filter
            flat = w.reshape(w.shape[0], -1)
            per_slice = np.array([np.sqrt(np.sum((flat - flat[i]) ** 2, -1)).sum() for i in range(flat.shape[0])])
        roots = self.param_roots[group.master][axis].tolist()
        if len(roots) == len(group.classes):
            return per_slice
        index = {c: i for i, c in enumerate(group.classes)}
        sums = np.zeros(len(group.classes))
        counts = np.zeros(len(group.classes))
        for r, s in zip(roots, per_slice):
            sums[index[r]] += s
            counts[index[r]] += 1
        return sums / np.maximum(counts, 1)

    def removed_classes(self, name, ratio):
        group = self.groups[name]
        n = len(group.classes)
        pruned = min(n - 1, int(round(n * float(ratio))))
        if pruned <= 0:
            return []
        order = self.scores(group).argsort()
        return [group.classes[i] for i in order[:pruned]]

    def masks(self, ratios):
        """``{global parameter name: [(axis, keep)]}`` for ``{group: ratio}``."""
        removed = set()
        for name, ratio in ratios.items():
            if ratio > 0:
                removed.update(self.removed_classes(name, ratio))
        touched = {}
        for c in removed:
            for pname, axis in self.class_members.get(c, ()):
                touched.setdefault(pname, set()).add(axis)
        out = {}
        if not removed:
            return out
        removed_arr = np.fromiter(removed, dtype=np.int64)
        for pname, axes in touched.items():
            out[pname] = [(axis, ~np.isin(self.param_roots[pname][axis], removed_arr)) for axis in sorted(axes)]
        return out

    def apply(self, ratios, optimizer=None):
        """Prune structurally; returns an :class:`Applied` that undoes it."""
        applied = Applied()
        try:
            for gname, masks in self.masks(ratios).items():
                param = self.params[gname]
                value = self.originals.get(gname)
                if value is None or tuple(value.shape) != tuple(param.shape):
                    value = compat.numpy_of(param)
                applied.values[param] = value
                for axis, keep in masks:
                    if optimizer is not None:
                        _prune_accumulators(optimizer, gname, keep, axis, applied)
                    value = np.compress(keep, value, axis=axis)
                compat.set_value(param, value)
                self._fix_layer(gname, value.shape, applied)
                if not param.stop_gradient:
                    param.clear_gradient()
        except Exception:
            applied.restore()
            raise
        return applied

    def _fix_layer(self, gname, shape, applied):
        """Layer attributes that must follow a new weight shape (depthwise ``groups``, LayerNorm's
        normalised shape, declared channel counts)."""
        layer = self.layer_of.get(gname)
        if layer is None:
            return
        if isinstance(layer, nn.layer.rnn.RNNBase):  # the fused rnn op is told its input size
            if len(shape) == 2 and any(getattr(layer, f"weight_ih_l0{s}", None) is self.params[gname]
                                       for s in ("", "_reverse")):
                applied.set_attr(layer, "input_size", int(shape[1]))
            return
        weight = getattr(layer, "weight", None)
        if weight is None or weight.name != gname:
            if isinstance(layer, nn.LayerNorm) and hasattr(layer, "_normalized_shape"):
                applied.set_attr(layer, "_normalized_shape", [int(shape[0])])
            return
        if gname in self.graph.depthwise:
            mult = self.graph.depthwise[gname]
            applied.set_attr(layer, "_groups", int(shape[0]) // mult)
            if hasattr(layer, "_in_channels"):
                applied.set_attr(layer, "_in_channels", int(shape[0]) // mult)
        elif isinstance(layer, (nn.Conv1D, nn.Conv2D, nn.Conv3D)):
            groups = getattr(layer, "_groups", 1) or 1
            if hasattr(layer, "_in_channels"):
                applied.set_attr(layer, "_in_channels", int(shape[1]) * groups)
        if isinstance(layer, (nn.Conv1D, nn.Conv2D, nn.Conv3D)) and hasattr(layer, "_out_channels"):
            applied.set_attr(layer, "_out_channels", int(shape[0]))
        if getattr(layer, "_num_features", None) is not None and len(shape) == 1:
            applied.set_attr(layer, "_num_features", int(shape[0]))
        if isinstance(layer, nn.LayerNorm) and hasattr(layer, "_normalized_shape"):
            applied.set_attr(layer, "_normalized_shape", [int(shape[0])])

    def breaking_groups(self, groups, forward, ratio=0.5):
        """Groups whose pruning at ``ratio`` makes ``forward`` (a training forward on a real batch)
        fail: branches no traced program showed. Bisection: one call when none breaks it.
        Returns ``{group: error line}``; the model's values are as before afterwards."""
        saved = {g: compat.numpy_of(p) for g, p in self.params.items()}  # train mode moves BN stats
        found = {}

        def failure(subset):
            applied = self.apply({g: ratio for g in subset})
            try:
                with self.trace_mode("train"), paddle.no_grad():
                    forward()
                return None
            except Exception as exc:  # noqa: BLE001  any failure names the group
                return exc
            finally:
                applied.restore()

        def search(subset):
            error = failure(subset)
            if error is None:
                return
            if len(subset) == 1:
                found[subset[0]] = exception_line(error)
                return
            middle = len(subset) // 2
            search(subset[:middle])
            search(subset[middle:])

        try:
            if groups:
                search(list(groups))
        finally:
            for g, value in saved.items():
                if tuple(self.params[g].shape) == tuple(value.shape):
                    compat.set_value(self.params[g], value)
        return found

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


def example_inputs(inputs):
    """Example tensors from what adapters give: shapes, a list of shapes, or tensors/dicts."""
    import paddle

    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(d, int) for d in inputs):
        return [paddle.zeros([int(d) for d in inputs], dtype="float32")]
    out = []
    for item in inputs:
        if isinstance(item, (list, tuple)) and item and all(isinstance(d, int) for d in item):
            out.append(paddle.zeros([int(d) for d in item], dtype="float32"))
        else:
            out.append(item)
    return out


def _larger(examples):
    """The inputs at twice the spatial size, for a model fed one NCHW image tensor."""
    import paddle

    if len(examples) == 1 and hasattr(examples[0], "shape") and len(examples[0].shape) == 4:
        n, c, h, w = examples[0].shape
        return [paddle.zeros([n, c, 2 * h, 2 * w], dtype=examples[0].dtype)]
    return None


def _dy2st_error(exc):
    """``(file:line, one-line message)`` of a dy2st error, whose text starts with the user's code
    ("In transformed code: File "x.py", line 12 ...") and ends with the real error."""
    import re

    text = str(exc)
    frames = re.findall(r'File "([^"]+)", line (\d+)[^\n]*\n((?:(?!    File ").*\n?)*)', text)
    marked = [f for f in frames if "<--- HERE" in f[2]] or [
        f for f in frames if f"{os.sep}paddle{os.sep}" not in f[0] and f"{os.sep}numpy{os.sep}" not in f[0]]
    source = f"{os.path.basename(marked[-1][0])}:{marked[-1][1]}" if marked else ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    last = next((ln for ln in reversed(lines) if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", ln)), None)
    if "In transformed code" in text and last:
        return source, last[:300]
    return source, exception_line(exc)


@contextlib.contextmanager
def _opaque(model, names, inputs):
    """Replace the sublayers ``names`` with stand-ins that return zeros shaped like their real
    outputs (recorded by one eager forward) and reduce every input they get, so the graph sees
    their inputs end there."""
    import paddle

    if not names:
        yield
        return
    layers = dict(model.named_sublayers())
    outputs = {}
    from slim_plugins.plugins.prune.measure import forward_once

    forward_once(model, inputs, [layers[n].register_forward_post_hook(
        lambda layer, _i, out, n=n: outputs.setdefault(n, out)) for n in names])

    def stand_in(name):
        recorded = outputs.get(name)

        @paddle.jit.not_to_static  # run as it is while tracing (dy2st cannot convert its closure)
        def forward(_layer, *args, **kwargs):
            sink = None
            for t in _tensors((args, kwargs)):
                if t.dtype in (paddle.float32, paddle.float64, paddle.float16):
                    part = _sink(t)
                    sink = part if sink is None else sink + part
            return _zeros_like(recorded, sink)

        return forward

    saved = {}
    for name in names:
        layer = layers[name]
        saved[name] = layer.__dict__.get("forward")
        layer.__dict__["forward"] = types.MethodType(stand_in(name), layer)  # a method, as dy2st expects
    try:
        yield
    finally:
        for name, forward in saved.items():
            if forward is None:
                layers[name].__dict__.pop("forward", None)
            else:
                layers[name].__dict__["forward"] = forward


def _sink(tensor):
    """One reduction over everything: the graph reads it as the end of these channels."""
    return paddle.sum(tensor.astype("float32"))


def _tensors(value):
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif hasattr(value, "shape") and hasattr(value, "dtype"):
        yield value


def _zeros_like(value, sink):
    import paddle

    if isinstance(value, dict):
        return {k: _zeros_like(v, sink) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_zeros_like(v, sink) for v in value)
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        zeros = paddle.zeros(list(value.shape), dtype=value.dtype)
        if sink is not None and value.dtype in (paddle.float32, paddle.float64):
            zeros = zeros + sink.astype(value.dtype) * 0
        return zeros
    return value


def _static_call(model, examples):
    from slim_plugins.plugins.prune.program import read_program

    read_program(model, examples)


@contextlib.contextmanager
def _quiet_dy2st():
    """dy2st logs every converted function at INFO/WARNING on some versions."""
    import logging
    import warnings

    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if "dy2static" in n]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _prune_accumulators(optimizer, param_name, keep, axis, applied=None):
    """Optimizer state of ``param_name`` follows its pruning: created accumulators, and state
    loaded with ``set_state_dict`` but not yet applied (``_accumulators_holder``)."""
    for accumulators in getattr(optimizer, "_accumulators", {}).values():
        var = accumulators.get(param_name)
        if var is None or list(var.shape) in ([1], []):
            continue
        value = compat.numpy_of(var)
        if value.ndim > axis and value.shape[axis] == keep.shape[0]:
            if applied is not None:
                applied.optimizer.append((var, None, value))
            compat.set_value(var, np.compress(keep, value, axis=axis))
    holder = getattr(optimizer, "_accumulators_holder", None)
    if isinstance(holder, dict):
        prefix = param_name + "_"
        for key in [k for k in holder if isinstance(k, str) and k.startswith(prefix)]:
            value = holder[key]
            array = compat.numpy_of(value) if hasattr(value, "shape") and not isinstance(value, np.ndarray) else value
            if not isinstance(array, np.ndarray) or array.ndim <= axis or array.shape[axis] != keep.shape[0]:
                continue
            if applied is not None:
                applied.optimizer.append((holder, key, value))
            holder[key] = np.compress(keep, array, axis=axis)
