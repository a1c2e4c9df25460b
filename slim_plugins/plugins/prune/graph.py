"""The dependency graph of coupled channels, built from the model's program.

Every axis of every parameter gets one id per index. Walking the program op by op, each value
carries the ids of the channels it holds (``Chan``: the axes along which its channel identity
varies, and an id per position); ops say how ids flow and which ids must be pruned together
(``union``): a conv's input channels with its weight's axis 1, an add's operands with each other,
a concat's inputs at their offsets, a BN/LayerNorm's parameters with the normalised channels, a
flatten into a Linear with the Linear's input rows. After the walk, every class of ids is one
prunable channel. A group is the set of classes that a conv produces; pruning one class removes
that index from every parameter axis holding it.

Ops the walker does not understand exclude only the classes that reach them, with the op, the
layer's source line and the reason; so do model outputs and reductions over channels.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

UNARY = {
    "relu", "relu6", "sigmoid", "tanh", "swish", "silu", "hardswish", "hardsigmoid", "leaky_relu", "gelu",
    "mish", "elu", "selu", "celu", "softplus", "softsign", "exp", "log", "sqrt", "rsqrt", "abs", "square",
    "pow", "scale", "cast", "dropout", "clip", "assign", "floor", "ceil", "round", "sign", "erf",
    "logsigmoid", "hardtanh", "thresholded_relu", "tanh_shrink", "hard_shrink", "isnan", "isinf",
    "isfinite", "logical_not", "full_like", "zeros_like", "ones_like", "sin", "cos", "reciprocal",
    "prelu_scalar", "increment", "stanh", "brelu", "hard_swish", "share_data", "memcpy", "contiguous",
    "nan_to_num", "bitwise_not", "log1p", "expm1", "softshrink", "tanhshrink", "swiglu_single",
}
ELEMENTWISE = {
    "add", "subtract", "multiply", "divide", "maximum", "minimum", "elementwise_pow", "where",
    "greater_than", "less_than", "greater_equal", "less_equal", "equal", "not_equal", "logical_and",
    "logical_or", "logical_xor", "fmax", "fmin", "remainder", "floor_divide", "bitwise_and", "bitwise_or",
    "add_n", "sum_n",
}
SPATIAL = {
    "pool2d", "pool3d", "max_pool2d_with_index", "nearest_interp", "bilinear_interp", "bicubic_interp",
    "linear_interp", "trilinear_interp", "pad3d", "pad", "unpool", "roi_align", "roi_pool", "pixel_unshuffle_free",
}
NORMS = {"batch_norm", "sync_batch_norm", "instance_norm", "affine_channel", "data_norm"}
CONVS = {"conv2d", "depthwise_conv2d", "conv3d", "conv1d", "fused_conv2d_add_act"}
TRANSPOSED_CONVS = {"conv2d_transpose", "depthwise_conv2d_transpose", "conv3d_transpose"}
REDUCTIONS = {"mean", "sum", "max", "min", "prod", "logsumexp", "amax", "amin", "any", "all", "p_norm",
              "frobenius_norm", "norm", "var", "std"}
SHAPE_OPS = {"reshape", "flatten", "squeeze", "unsqueeze"}
IGNORED = {"shape", "shape64", "full", "full_int_array", "arange", "feed", "fetch", "print", "assert",
           "set_value_with_tensor", "uniform", "gaussian", "randint"}


class UnionFind:
    def __init__(self):
        self.parent: List[int] = []

    def new(self, n):
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, i):
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def union(self, a, b):
        ra, rb = self.find(int(a)), self.find(int(b))
        if ra != rb:
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb

    def union_arrays(self, a, b):
        a = np.asarray(a).ravel()
        b = np.asarray(b).ravel()
        for x, y in zip(a.tolist(), b.tolist()):
            self.union(x, y)

    def roots(self, ids):
        return np.array([self.find(int(i)) for i in np.asarray(ids).ravel()], dtype=np.int64).reshape(
            np.asarray(ids).shape)


@dataclass
class Chan:
    """Which channel each position of a value holds: ``ids`` indexed by the value's ``axes``."""

    axes: Tuple[int, ...]
    ids: np.ndarray

    @property
    def single(self):
        return len(self.axes) == 1


@dataclass
class Producer:
    """A conv (or conv-transpose) whose output channels start a group."""

    param: str  # global name of the weight
    axis: int  # the weight's output-channel axis
    op_index: int
    where: str


@dataclass
class Graph:
    uf: UnionFind
    param_ids: Dict[str, List[Optional[np.ndarray]]]  # global name -> ids per axis (None for size 1)
    producers: List[Producer]
    blocked: Dict[int, str]  # id -> reason (resolved to roots by ``blocked_roots``)
    conv_groups: Dict[str, int]  # global weight name -> conv groups
    depthwise: Dict[str, int]  # global weight name -> channel multiplier of a depthwise conv
    transposed: set = field(default_factory=set)
    seen_params: set = field(default_factory=set)

    def blocked_roots(self):
        out = {}
        for i, reason in self.blocked.items():
            out.setdefault(self.uf.find(i), reason)
        return out


def _prod(shape):
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _norm_axis(axis, rank):
    axis = int(axis)
    return axis + rank if axis < 0 else axis


class Walker:
    """Walks a :class:`~slim_plugins.plugins.prune.program.ProgramView`, one rule per op kind."""

    def __init__(self, view, param_shapes):
        self.view = view
        self.uf = UnionFind()
        self.chan: Dict[str, Optional[Chan]] = {}
        self.param_ids: Dict[str, List[Optional[np.ndarray]]] = {}
        for name, shape in param_shapes.items():
            self.param_ids[name] = [self.uf.new(int(d)) if int(d) > 1 else None for d in shape]
        self.blocked: Dict[int, str] = {}
        self.producers: List[Producer] = []
        self.conv_groups: Dict[str, int] = {}
        self.depthwise: Dict[str, int] = {}
        self.transposed = set()
        self.seen_params = set()
        self.unknown: Dict[str, str] = {}

    # ------------------------------------------------------------------ values
    def shape(self, key):
        return self.view.shapes.get(key)

    def param_of(self, key):
        name = self.view.params.get(key)
        return name if name in self.param_ids else None  # PIR also lists captured tensors (eager_tmp_*)

    def get(self, key) -> Optional[Chan]:
        if key in self.chan:
            return self.chan[key]
        name = self.param_of(key)
        if name is not None and name in self.param_ids:
            self.seen_params.add(name)
            ids = self.param_ids[name]
            axes = [i for i, a in enumerate(ids) if a is not None]
            if len(axes) == 1:
                return Chan((axes[0],), ids[axes[0]])
            return None
        return None

    def block(self, chan, reason):
        if chan is None:
            return
        for i in np.asarray(chan.ids).ravel().tolist():
            self.blocked.setdefault(int(i), reason)

    def block_key(self, key, reason):
        self.block(self.get(key), reason)
        name = self.param_of(key)
        if name in self.param_ids:
            for ids in self.param_ids[name]:
                if ids is not None:
                    for i in ids.tolist():
                        self.blocked.setdefault(int(i), reason)

    def reason(self, op, text):
        where = f" at {op.where}" if op.where else ""
        return f"{text} ({op.kind}{where})"

    # ------------------------------------------------------------------ walk
    def walk(self, view=None):
        """Walk one program; a second program of the same model (another mode) adds its couplings."""
        if view is not None:
            self.view = view
            self.chan = {}
        for key in self.view.inputs:
            shape = self.shape(key)
            if shape and len(shape) >= 2 and shape[1] > 1:
                ids = self.uf.new(int(shape[1]))
                self.chan[key] = Chan((1,), ids)
                for i in ids.tolist():
                    self.blocked[int(i)] = "model input"
        families = ((UNARY, self.passthrough), (ELEMENTWISE, self.elementwise), (SPATIAL, self.spatial),
                    (NORMS, self.norm), (CONVS, self.conv), (TRANSPOSED_CONVS, self.conv_transpose),
                    (REDUCTIONS, self.reduction), (SHAPE_OPS, self.reshape), (IGNORED, lambda op: None))
        for op in self.view.ops:
            handler = getattr(self, "op_" + op.kind, None) or next(
                (rule for kinds, rule in families if op.kind in kinds), None)
            try:
                if handler is None:
                    self.unsupported(op, f"unsupported op {op.kind}")
                else:
                    handler(op)
            except _Unsupported as exc:
                self.unsupported(op, str(exc))
        for op in self.view.nested:
            for keys in op.inputs.values():
                for key in keys:
                    self.block_key(key, self.reason(op, "used inside control flow"))
        for key in self.view.outputs:
            self.block(self.get(key), "model output")
        return self

    def result(self):
        return Graph(self.uf, self.param_ids, self.producers, self.blocked, self.conv_groups, self.depthwise,
                     self.transposed, self.seen_params)

    def data_inputs(self, op):
        keys = []
        for slot, values in op.inputs.items():
            if slot in ("shape", "axis", "sections", "starts", "ends", "strides", "out_size", "size_tensor",
                        "scale_tensor", "kernel_size", "scale", "num_or_sections", "repeat_times", "shape_tensor",
                        "output_size", "index", "paddings"):
                continue
            keys.extend(values)
        return keys

    def unsupported(self, op, text):
        reason = self.reason(op, text)
        for key in self.data_inputs(op):
            self.block_key(key, reason)
        for key in op.outputs:
            if key is not None:
                self.chan[key] = None

    def set_out(self, op, chan, index=0):
        if op.outputs and len(op.outputs) > index and op.outputs[index] is not None:
            self.chan[op.outputs[index]] = chan

    # ------------------------------------------------------------------ rules
    def passthrough(self, op):
        key = op.first("x", "input", "in0")
        chan = self.get(key) if key else None
        if chan is not None and self.shape(key) != self.shape(op.outputs[0]) and self.shape(op.outputs[0]):
            if not self._same_axes(chan, self.shape(key), self.shape(op.outputs[0])):
                raise _Unsupported(f"{op.kind} changes the channel axis")
        self.set_out(op, chan)

    def op_prelu(self, op):
        x = self.get(op.first("x"))
        alpha = op.first("alpha")
        if alpha is not None and x is not None and x.single:
            aids = self.param_ids.get(self.param_of(alpha) or "", [])
            present = [a for a in aids if a is not None]
            if len(present) == 1 and len(present[0]) == len(x.ids):
                self.uf.union_arrays(present[0], x.ids)
        self.set_out(op, x)

    def _same_axes(self, chan, in_shape, out_shape):
        return all(a < len(out_shape) and in_shape[a] == out_shape[a] for a in chan.axes)

    def elementwise(self, op):
        keys = [k for k in self.data_inputs(op)]
        out_key = op.outputs[0]
        out_shape = self.shape(out_key)
        if out_shape is None:
            raise _Unsupported("unknown output shape")
        rank = len(out_shape)
        per_axis: Dict[int, List[np.ndarray]] = {}
        result_axes = None
        result = None
        for key in keys:
            shape = self.shape(key)
            if shape is None:
                continue
            offset = rank - len(shape)
            name = self.param_of(key)
            if name is not None and name in self.param_ids:
                self.seen_params.add(name)
                for axis, ids in enumerate(self.param_ids[name]):
                    if ids is not None and shape[axis] == out_shape[axis + offset]:
                        per_axis.setdefault(axis + offset, []).append(ids)
                continue
            chan = self.get(key)
            if chan is None:
                continue
            axes = tuple(a + offset for a in chan.axes)
            if any(shape[a - offset] != out_shape[a] for a in axes):
                raise _Unsupported("broadcasts a channel axis")
            if chan.single:
                per_axis.setdefault(axes[0], []).append(chan.ids)
            if result is None:
                result_axes, result = axes, chan.ids
            elif result_axes == axes and result.shape == chan.ids.shape:
                self.uf.union_arrays(result, chan.ids)
            else:
                raise _Unsupported("adds values whose channels lie on different axes")
        for axis, arrays in per_axis.items():
            for other in arrays[1:]:
                self.uf.union_arrays(arrays[0], other)
        if result is None:
            if len(per_axis) == 1:  # e.g. a parameter alone with a channel-free value
                axis, arrays = next(iter(per_axis.items()))
                self.set_out(op, Chan((axis,), arrays[0]))
                return
            self.set_out(op, None)
            return
        self.set_out(op, Chan(result_axes, result))

    def spatial(self, op):
        key = op.first("x")
        chan = self.get(key)
        if chan is not None and chan.axes != (1,):
            raise _Unsupported("pools or resizes along a channel axis")
        self.set_out(op, chan)

    def norm(self, op):
        x = self.get(op.first("x"))
        if x is not None and x.axes != (1,):
            raise _Unsupported("normalises a channel layout it does not know")
        for slot in ("scale", "bias", "mean", "variance"):
            key = op.first(slot)
            if key is None:
                continue
            name = self.param_of(key)
            if name is None:
                continue
            self.seen_params.add(name)
            ids = self.param_ids[name][0] if self.param_ids[name] else None
            if ids is not None and x is not None:
                self.uf.union_arrays(ids, x.ids)
        self.set_out(op, x)

    def op_layer_norm(self, op):
        key = op.first("x")
        x = self.get(key)
        shape = self.shape(key)
        begin = int(op.attrs.get("begin_norm_axis", 1))
        scale, bias = op.first("scale"), op.first("bias")
        params = [self.param_of(k) for k in (scale, bias) if k is not None and self.param_of(k)]
        for name in params:
            self.seen_params.add(name)
        if x is not None and shape is not None:
            last = len(shape) - 1
            if x.axes == (last,) and begin == last:
                for name in params:
                    ids = self.param_ids[name][0]
                    if ids is not None:
                        self.uf.union_arrays(ids, x.ids)
                self.set_out(op, x)
                return
            if any(a >= begin for a in x.axes):
                raise _Unsupported("normalises over channels and other axes together")
        for name in params:
            for ids in self.param_ids[name]:
                if ids is not None:
                    self.block(Chan((0,), ids), self.reason(op, "layer_norm over non-channel axes"))
        self.set_out(op, x)

    def op_group_norm(self, op):
        raise _Unsupported("group_norm ties channels to fixed groups")

    def reduction(self, op):
        key = op.first("x")
        chan = self.get(key)
        shape = self.shape(key)
        if chan is None or shape is None:
            self.set_out(op, None)
            return
        axis = op.attrs.get("axis")
        if axis is None:
            axis_key = op.first("axis")
            axis = self.view.consts.get(axis_key) if axis_key else None
        if op.attrs.get("reduce_all") or axis is None or axis == []:
            raise _Unsupported("reduces over every axis")
        axes = [axis] if isinstance(axis, (int, float)) else list(axis)
        axes = sorted(_norm_axis(a, len(shape)) for a in axes)
        if any(a in chan.axes for a in axes):
            raise _Unsupported("reduces over a channel axis")
        keep = op.attrs.get("keepdim", op.attrs.get("keep_dim", False))
        if keep:
            self.set_out(op, chan)
        else:
            self.set_out(op, Chan(tuple(a - sum(1 for r in axes if r < a) for a in chan.axes), chan.ids))

    def op_softmax(self, op):
        self._along_axis(op, "softmax over a channel axis")

    op_log_softmax = op_softmax

    def op_cumsum(self, op):
        self._along_axis(op, "cumsum over a channel axis")

    def _along_axis(self, op, text):
        key = op.first("x")
        chan = self.get(key)
        shape = self.shape(key)
        axis = op.attrs.get("axis", -1)
        if chan is not None and shape is not None and _norm_axis(axis, len(shape)) in chan.axes:
            raise _Unsupported(text)
        self.set_out(op, chan)

    def conv(self, op):
        x_key = op.first("x", "input")
        w_key = op.first("filter")
        name = self.param_of(w_key)
        if name is None:
            raise _Unsupported("conv whose filter is not a parameter")
        self.seen_params.add(name)
        w_ids = self.param_ids[name]
        w_shape = self.view.shapes.get(w_key) or ()
        if op.attrs.get("data_format", "NCHW") not in ("NCHW", "NCDHW", "AnyLayout"):
            raise _Unsupported("channel-last conv")
        groups = int(op.attrs.get("groups", 1) or 1)
        self.conv_groups[name] = groups
        x = self.get(x_key)
        out_ids = w_ids[0] if w_ids[0] is not None else None
        if x is not None and x.axes != (1,):
            raise _Unsupported("conv input channels are not on axis 1")
        in_channels = len(x.ids) if x is not None else (self.shape(x_key) or (0, 0))[1]
        if groups == 1:
            if x is not None and w_ids[1] is not None:
                self.uf.union_arrays(x.ids, w_ids[1])
        elif w_shape and w_shape[1] == 1 and groups == in_channels:  # depthwise
            mult = int(w_shape[0]) // groups
            self.depthwise[name] = mult
            if x is not None and out_ids is not None:
                for k in range(mult):
                    self.uf.union_arrays(x.ids, out_ids[k::mult] if mult > 1 else out_ids)
        else:
            per_in = int(w_shape[1])
            per_out = int(w_shape[0]) // groups
            if x is not None and w_ids[1] is not None:
                for g in range(groups):
                    self.uf.union_arrays(x.ids[g * per_in:(g + 1) * per_in], w_ids[1])
            if out_ids is not None and per_out > 1:
                for g in range(1, groups):
                    self.uf.union_arrays(out_ids[:per_out], out_ids[g * per_out:(g + 1) * per_out])
        bias = op.first("bias")
        if bias is not None and self.param_of(bias) and out_ids is not None:
            b = self.param_ids[self.param_of(bias)][0]
            if b is not None:
                self.uf.union_arrays(b, out_ids)
        self._produce(op, name, 0, out_ids)

    def conv_transpose(self, op):
        x_key = op.first("x", "input")
        name = self.param_of(op.first("filter"))
        if name is None:
            raise _Unsupported("conv-transpose whose filter is not a parameter")
        self.seen_params.add(name)
        self.transposed.add(name)
        w_ids = self.param_ids[name]
        groups = int(op.attrs.get("groups", 1) or 1)
        self.conv_groups[name] = groups
        x = self.get(x_key)
        if groups != 1:
            self.block(x, self.reason(op, "grouped conv-transpose"))
            for ids in w_ids:
                if ids is not None:
                    self.block(Chan((0,), ids), self.reason(op, "grouped conv-transpose"))
        elif x is not None and w_ids[0] is not None:
            if x.axes != (1,):
                raise _Unsupported("conv-transpose input channels are not on axis 1")
            self.uf.union_arrays(x.ids, w_ids[0])
        out_ids = w_ids[1]
        self._produce(op, name, 1, out_ids)

    def _produce(self, op, name, axis, out_ids):
        """A conv's output: channels ``out_ids`` on axis 1, produced along ``axis`` of weight ``name``."""
        if out_ids is None:
            self.set_out(op, None)
            return
        self.producers.append(Producer(name, axis, op.index, op.where))
        self.set_out(op, Chan((1,), out_ids))

    def op_matmul(self, op):
        x_key, y_key = op.first("x"), op.first("y")
        y_name = self.param_of(y_key)
        x = self.get(x_key)
        x_shape = self.shape(x_key)
        if y_name is None or op.attrs.get("transpose_x"):
            # attention and other products of two activations: their channels stay as they are
            reason = self.reason(op, "matmul of two activations")
            self.block(x, reason)
            self.block(self.get(y_key), reason)
            self.set_out(op, None)
            return
        self.seen_params.add(y_name)
        w_ids = self.param_ids[y_name]
        in_axis, out_axis = (1, 0) if op.attrs.get("transpose_y") else (0, 1)
        if x is not None:
            last = len(x_shape) - 1 if x_shape else -1
            if x.axes != (last,):
                raise _Unsupported("matmul over an axis that is not the channel axis")
            if w_ids[in_axis] is not None:
                self.uf.union_arrays(x.ids, w_ids[in_axis])
        out_shape = self.shape(op.outputs[0])
        if w_ids[out_axis] is None or out_shape is None:
            self.set_out(op, None)
            return
        self.set_out(op, Chan((len(out_shape) - 1,), w_ids[out_axis]))

    op_matmul_v2 = op_matmul

    def op_linear(self, op):
        self.op_matmul(op)

    def op_concat(self, op):
        keys = [k for k in op.inputs.get("x", [])]
        out_shape = self.shape(op.outputs[0])
        if out_shape is None:
            raise _Unsupported("unknown output shape")
        axis = op.attrs.get("axis")
        if axis is None:
            axis = self.view.consts.get(op.first("axis"))
        if isinstance(axis, list):
            axis = axis[0] if axis else 0
        axis = _norm_axis(axis if axis is not None else 0, len(out_shape))
        chans = [self.get(k) for k in keys]
        if all(c is None for c in chans):
            self.set_out(op, None)
            return
        if any(c is not None and axis in c.axes for c in chans):
            pieces = []
            for key, chan in zip(keys, chans):
                if chan is not None and chan.axes == (axis,):
                    pieces.append(chan.ids)
                elif chan is None:
                    pieces.append(self.uf.new(int(self.shape(key)[axis])))  # e.g. coordinates: no group
                else:
                    raise _Unsupported("concat along a channel axis of a value with another layout")
            self.set_out(op, Chan((axis,), np.concatenate(pieces)))
            return
        # concat along another axis: the channels of all inputs are the same ones
        self.set_out(op, self._same_channels(chans, "concat"))

    def _same_channels(self, chans, what):
        """Values joined along a non-channel axis hold the same channels: couple them."""
        first = None
        for chan in chans:
            if chan is None:
                continue
            if first is None:
                first = chan
            elif chan.axes == first.axes and chan.ids.shape == first.ids.shape:
                self.uf.union_arrays(first.ids, chan.ids)
            else:
                raise _Unsupported(f"{what} of values whose channels differ")
        return first

    def op_stack(self, op):
        keys = op.inputs.get("x", [])
        out_shape = self.shape(op.outputs[0])
        axis = _norm_axis(op.attrs.get("axis", 0), len(out_shape) if out_shape else 1)
        first = self._same_channels([self.get(k) for k in keys], "stack")
        if first is not None:
            first = Chan(tuple(a + (a >= axis) for a in first.axes), first.ids)
        self.set_out(op, first)

    def op_split(self, op):
        key = op.first("x")
        chan = self.get(key)
        shape = self.shape(key)
        outs = [o for o in op.outputs]
        if chan is None or shape is None:
            for i in range(len(outs)):
                self.set_out(op, None, i)
            return
        axis = op.attrs.get("axis")
        if axis is None:
            axis = self.view.consts.get(op.first("axis"))
        if isinstance(axis, list):
            axis = axis[0] if axis else 0
        if axis is None:
            raise _Unsupported("split without a known axis")
        axis = _norm_axis(axis, len(shape))
        if axis not in chan.axes:
            for i in range(len(outs)):
                self.set_out(op, chan, i)
            return
        if chan.axes != (axis,):
            raise _Unsupported("split of a channel layout it does not know")
        start = 0
        for i, out in enumerate(outs):
            out_shape = self.shape(out) if out is not None else None
            if out_shape is None:
                raise _Unsupported("split with an unknown output size")
            size = int(out_shape[axis])
            self.set_out(op, Chan((axis,), chan.ids[start:start + size]), i)
            start += size

    op_split_with_num = op_split

    def op_unbind(self, op):
        key = op.first("x")
        chan = self.get(key)
        axis = _norm_axis(op.attrs.get("axis", 0), len(self.shape(key) or (0,)))
        if chan is not None and axis in chan.axes:
            raise _Unsupported("unbind along a channel axis")
        for i in range(len(op.outputs)):
            self.set_out(op, None if chan is None else Chan(tuple(a - (a > axis) for a in chan.axes), chan.ids), i)

    def op_slice(self, op):
        key = op.first("x", "input")
        chan = self.get(key)
        shape = self.shape(key)
        out_shape = self.shape(op.outputs[0])
        if chan is None or shape is None or out_shape is None:
            self.set_out(op, None if chan is None else chan)
            if chan is not None and out_shape is not None and shape is not None and len(out_shape) != len(shape):
                raise _Unsupported("slice that drops axes")
            return
        axes = [_norm_axis(a, len(shape)) for a in op.attrs.get("axes", [])]
        decrease = op.attrs.get("decrease_axis") or []
        if decrease and any(_norm_axis(a, len(shape)) in chan.axes for a in decrease):
            raise _Unsupported("takes a single channel")
        if not any(a in chan.axes for a in axes):
            if decrease:
                d = sorted(_norm_axis(a, len(shape)) for a in decrease)
                chan = Chan(tuple(a - sum(1 for r in d if r < a) for a in chan.axes), chan.ids)
            self.set_out(op, chan)
            return
        if chan.axes not in [(a,) for a in axes] or op.kind == "strided_slice":
            raise _Unsupported("slice of a channel layout it does not know")
        axis = chan.axes[0]
        starts = op.attrs.get("starts")
        if starts is None:
            starts = self.view.consts.get(op.first("starts"))
        if starts is None:
            raise _Unsupported("slice with unknown bounds")
        start = int(starts[axes.index(axis)])
        start = start + shape[axis] if start < 0 else start
        start = max(0, min(start, shape[axis]))
        self.set_out(op, Chan((axis,), chan.ids[start:start + int(out_shape[axis])]))

    op_strided_slice = op_slice

    def op_transpose(self, op):
        key = op.first("x")
        chan = self.get(key)
        perm = op.attrs.get("perm")
        if chan is None or perm is None:
            self.set_out(op, None if chan is None else chan)
            if chan is not None:
                raise _Unsupported("transpose with unknown permutation")
            return
        rank = len(perm)
        perm = [_norm_axis(p, rank) for p in perm]
        new_axes = [perm.index(a) for a in chan.axes]
        order = np.argsort(new_axes)
        ids = np.transpose(chan.ids, order) if chan.ids.ndim == len(order) else chan.ids
        self.set_out(op, Chan(tuple(sorted(new_axes)), ids))

    def reshape(self, op):
        key = op.first("x")
        chan = self.get(key)
        in_shape = self.shape(key)
        out_shape = self.shape(op.outputs[0])
        if chan is None:
            self.set_out(op, None)
            return
        if in_shape is None or out_shape is None or any(d < 0 for d in in_shape) or any(d < 0 for d in out_shape):
            raise _Unsupported("reshape with dynamic shape")
        if _prod(in_shape) > 64_000_000:
            raise _Unsupported("reshape of a very large value")
        full = np.empty(in_shape, dtype=np.int64)
        index = [np.newaxis] * len(in_shape)
        view_shape = [1] * len(in_shape)
        for a, n in zip(chan.axes, chan.ids.shape):
            view_shape[a] = n
        full[...] = chan.ids.reshape(view_shape)
        out = full.reshape(out_shape)
        axes = []
        for a in range(out.ndim):
            if out.shape[a] > 1 and not np.all(out == out.take([0], axis=a)):
                axes.append(a)
        if not axes:
            self.set_out(op, None)
            return
        picker = tuple(slice(None) if a in axes else 0 for a in range(out.ndim))
        self.set_out(op, Chan(tuple(axes), np.ascontiguousarray(out[picker])))
        del index

    def op_reshape(self, op):
        """A dynamic leading dimension (batch, number of RoIs) that the reshape keeps, e.g. RoI
        features ``[-1, 256, 7, 7]`` flattened into ``[-1, 12544]`` for a Linear, moves no channel:
        read it as 1."""
        key, out = op.first("x"), op.outputs[0]
        in_shape, out_shape = self.shape(key), self.shape(out)
        chan = self.get(key)
        if (chan is None or not in_shape or not out_shape or in_shape[0] >= 0 or out_shape[0] >= 0
                or any(d < 0 for d in in_shape[1:]) or any(d < 0 for d in out_shape[1:])
                or _prod(in_shape[1:]) != _prod(out_shape[1:]) or 0 in chan.axes):
            self.reshape(op)
            return
        shapes = self.view.shapes
        shapes[key], shapes[out] = (1,) + tuple(in_shape[1:]), (1,) + tuple(out_shape[1:])
        try:
            self.reshape(op)
        finally:
            shapes[key], shapes[out] = in_shape, out_shape

    op_flatten = op_squeeze = op_unsqueeze = op_reshape

    def op_expand(self, op):
        self.passthrough_same_rank(op)

    def passthrough_same_rank(self, op):
        key = op.first("x")
        chan = self.get(key)
        in_shape, out_shape = self.shape(key), self.shape(op.outputs[0])
        if chan is not None and in_shape and out_shape:
            offset = len(out_shape) - len(in_shape)
            if any(in_shape[a] != out_shape[a + offset] for a in chan.axes):
                raise _Unsupported("expands a channel axis")
            chan = Chan(tuple(a + offset for a in chan.axes), chan.ids)
        self.set_out(op, chan)

    op_expand_as = passthrough_same_rank
    op_tile = passthrough_same_rank
    op_broadcast_to = passthrough_same_rank

    def op_gather(self, op):
        key = op.first("x")
        chan = self.get(key)
        shape = self.shape(key)
        axis = op.attrs.get("axis")
        if axis is None:
            axis = self.view.consts.get(op.first("axis"), 0)
        if isinstance(axis, list):
            axis = axis[0] if axis else 0
        if chan is not None and shape is not None and _norm_axis(axis or 0, len(shape)) in chan.axes:
            raise _Unsupported("gathers along a channel axis")
        if chan is not None and self.shape(op.outputs[0]) != shape:
            out_shape = self.shape(op.outputs[0])
            if out_shape is None or len(out_shape) != len(shape):
                raise _Unsupported("gather that changes rank")
        self.set_out(op, chan)

    # ------------------------------------------------------------------ detection post-processing
    def post_processing(self, op):
        """NMS and box decoding keep or drop whole boxes by score: the classes and box coordinates
        they read are fixed by the task (``num_classes``, anchors, 4 or ``reg_max`` bins)."""
        reason = self.reason(op, "reaches detection post-processing")
        for key in self.data_inputs(op):
            self.block_key(key, reason)
        for key in op.outputs:
            if key is not None:
                self.chan[key] = None

    op_multiclass_nms3 = op_multiclass_nms = op_multiclass_nms2 = op_matrix_nms = post_processing
    op_nms = op_box_coder = op_yolo_box = op_generate_proposals = op_generate_proposals_v2 = post_processing

    def shape_only(self, op):
        """Anchors and prior boxes read a feature map's size only, never its values."""
        for key in op.outputs:
            if key is not None:
                self.chan[key] = None

    op_prior_box = op_density_prior_box = op_anchor_generator = shape_only

    # ------------------------------------------------------------------ conditionals (inlined)
    def op_if(self, op):
        """PIR ``if``: result ``i`` is what either branch yields at ``i``."""
        true, false = op.inputs.get("true", []), op.inputs.get("false", [])
        for i in range(len(op.outputs)):
            self._merge_branches(op, [b[i] for b in (true, false) if i < len(b)], i)

    def op_select_input(self, op):
        """Old-IR ``select_input``: the result is one of the branch values in ``x``."""
        self._merge_branches(op, op.inputs.get("x", []), 0)

    def _merge_branches(self, op, keys, index):
        chans = [self.get(k) for k in keys]
        present = [c for c in chans if c is not None]
        if not present:
            self.set_out(op, None, index)
            return
        first = present[0]
        if any(c.axes != first.axes or c.ids.shape != first.ids.shape for c in present[1:]):
            for c in present:
                self.block(c, self.reason(op, "branches of a conditional give channels in different layouts"))
            self.set_out(op, None, index)
            return
        for c in present[1:]:
            self.uf.union_arrays(first.ids, c.ids)
        if len(present) < len(chans):  # the other branch gives a fixed number of channels
            self.block(first, self.reason(op, "a branch of a conditional gives a value of fixed channels"))
        self.set_out(op, first, index)
    # old-IR names of elementwise tests (DB head's ``fix_nan``: ``where(isnan(x), 0, x)``)
    op_isnan_v2 = passthrough
    op_isinf_v2 = passthrough
    op_isfinite_v2 = passthrough
    # old-IR ``zeros_like`` / ``ones_like`` / ``full_like`` (PIR: full_like)
    op_fill_any_like = passthrough
    op_fill_zeros_like = passthrough

    def op_rnn(self, op):
        """LSTM / GRU / simple RNN (Paddle's fused ``rnn`` op, both IRs). Its input's features
        (the last axis of ``[time, batch, features]``) are the columns of the first layer's
        input weights, one per direction: ``weight_list`` holds every layer's and direction's
        ``weight_ih, weight_hh`` in turn, then the biases. Hidden sizes are not pruned: the
        outputs, the states and the other weights start no group; initial states are excluded."""
        key = op.first("x", "input")
        x = self.get(key)
        shape = self.shape(key)
        weights = op.inputs.get("weight_list") or op.inputs.get("weightlist") or []
        directions = 2 if op.attrs.get("is_bidirec") else 1
        layers = int(op.attrs.get("num_layers", 1) or 1)
        reason = self.reason(op, "sets an LSTM/GRU's initial state, whose hidden size is not pruned")
        for slot in ("pre_state", "prestate"):
            for state in op.inputs.get(slot, []):
                self.block_key(state, reason)
        for i in range(len(op.outputs)):
            self.set_out(op, None, i)
        if x is None:
            return
        names = [self.param_of(k) for k in weights[:2 * directions]]
        if (len(weights) < 4 * layers * directions or None in names or shape is None
                or x.axes != (len(shape) - 1,)):
            raise _Unsupported("rnn whose input weights it cannot find, or whose input features "
                               "are not the last axis")
        for name in names[::2]:  # weight_ih of the first layer, each direction: [gates * hidden, input]
            ids = self.param_ids[name]
            if len(ids) != 2 or ids[1] is None or len(ids[1]) != len(x.ids):
                raise _Unsupported("rnn input weights that do not match its input")
            self.seen_params.add(name)
            self.uf.union_arrays(x.ids, ids[1])

    def op_pixel_shuffle(self, op):
        raise _Unsupported("pixel_shuffle mixes channels into space")

    def op_dropout(self, op):
        self.passthrough(op)


class _Unsupported(Exception):
    pass


def build_graph(view, param_shapes):
    """Walk ``view`` (a :class:`ProgramView`); ``param_shapes``: global name -> shape."""
    return Walker(view, param_shapes).walk().result()
