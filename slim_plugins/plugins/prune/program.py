"""Paddle's own view of a model: the program ``paddle.jit.to_static`` builds, read op by op.

The same reader serves both IRs: the old-IR ``Program`` of Paddle 2.6 and the PIR program of
Paddle 3.x. Each op becomes an :class:`OpRecord` with a normalised kind (``conv2d``, ``add``,
``concat`` ...), its inputs by lower-case slot name, its data outputs, its attributes and the
user's source line. Nothing here knows about pruning.

Why the program and not the autograd graph: on both Paddle versions a dygraph grad node exposes
only its name and its predecessors (``input_meta`` cannot be read from Python), so the concat axis,
split sections, slice bounds and which output of a split a consumer took are lost; the program
keeps all of them, with static shapes.
"""
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import paddle

from slim_plugins.compat import restored_forwards

# old-IR op types -> the PIR names (without the ``pd_op.`` prefix and inplace ``_``)
_OLD_NAMES = {
    "elementwise_add": "add", "elementwise_sub": "subtract", "elementwise_mul": "multiply",
    "elementwise_div": "divide", "elementwise_max": "maximum", "elementwise_min": "minimum",
    "elementwise_pow": "elementwise_pow", "matmul_v2": "matmul", "reshape2": "reshape",
    "transpose2": "transpose", "flatten_contiguous_range": "flatten", "squeeze2": "squeeze",
    "unsqueeze2": "unsqueeze", "nearest_interp_v2": "nearest_interp", "bilinear_interp_v2": "bilinear_interp",
    "bicubic_interp_v2": "bicubic_interp", "linear_interp_v2": "linear_interp", "reduce_mean": "mean",
    "reduce_sum": "sum", "reduce_max": "max", "reduce_min": "min", "hard_swish": "hardswish",
    "hard_sigmoid": "hardsigmoid", "fill_constant": "full", "lookup_table_v2": "embedding",
}
_OLD_ATTRS = {"trans_x": "transpose_x", "trans_y": "transpose_y", "keep_dim": "keepdim"}
_MAIN_OUTPUTS = ("out", "output", "y")


@dataclass
class OpRecord:
    kind: str
    inputs: Dict[str, List[str]]  # slot -> value keys
    outputs: List[str]  # data outputs in order
    attrs: Dict[str, Any]
    where: str = ""  # user source file:line
    index: int = 0

    def first(self, *slots):
        for slot in slots:
            keys = self.inputs.get(slot)
            if keys:
                return keys[0]
        return None


@dataclass
class ProgramView:
    ops: List[OpRecord] = field(default_factory=list)
    shapes: Dict[str, tuple] = field(default_factory=dict)
    params: Dict[str, str] = field(default_factory=dict)  # value key -> parameter's global name
    consts: Dict[str, Any] = field(default_factory=dict)  # value key -> python constant
    inputs: List[str] = field(default_factory=list)
    outputs: List[str] = field(default_factory=list)
    nested: List[OpRecord] = field(default_factory=list)  # control-flow ops: their outer operands
    ir: str = ""


def _where(callstack):
    """The innermost frame of the user's (or the suite's) code, not Paddle's."""
    if not callstack:
        return ""
    lines = [str(s) for s in callstack]
    for line in reversed(lines):
        text = line.strip()
        if text.startswith("File ") and f"{os.sep}paddle{os.sep}" not in text and (
                f"{os.sep}slim_plugins{os.sep}adapters{os.sep}" not in text):  # an adapter's stand-in
            try:
                path = text.split('"')[1]
                lineno = text.split("line ")[1].split(",")[0]
                return f"{os.path.basename(path)}:{lineno}"
            except IndexError:
                continue
    return ""


def _plain(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------- old IR
def _read_old_ir(program, outputs, param_names):
    view = ProgramView(ir="old")
    block = program.global_block()

    def shape_of(name):
        var = block._find_var_recursive(name) or _sub_block_var(program, name)
        if var is None:
            return None
        try:
            return tuple(int(d) for d in var.shape)
        except Exception:
            return None

    for index, op in enumerate(_inline_old_ir_conditionals(program, block.ops)):
        kind = _OLD_NAMES.get(op.type, op.type)
        inputs = {}
        for slot in op.input_names:
            names = [n for n in op.input(slot)]
            if names:
                inputs[slot.lower()] = names
        if "input" in inputs and "x" not in inputs:
            inputs["x"] = inputs.pop("input")
        outs = []
        for slot in sorted(op.output_names, key=lambda s: (s.lower() not in _MAIN_OUTPUTS, _MAIN_OUTPUTS.index(
                s.lower()) if s.lower() in _MAIN_OUTPUTS else 0)):
            if slot.lower() in _MAIN_OUTPUTS:
                outs = list(op.output(slot))
                break
        attrs = {}
        for name in op.attr_names:
            if name.startswith(("op_", "use_", "mkldnn", "with_quant")):
                continue
            try:
                attrs[_OLD_ATTRS.get(name, name)] = _plain(op.attr(name))
            except Exception:
                pass
        if kind == "transpose" and "axis" in attrs:
            attrs["perm"] = attrs.pop("axis")
        if kind in ("mean", "sum", "max", "min") and "dim" in attrs:
            attrs["axis"] = attrs.pop("dim")
        if kind == "full":
            for name in outs:
                view.consts[name] = attrs.get("value")
        where = ""
        if op.has_attr("op_callstack"):
            where = _where(op.attr("op_callstack"))
        for names in list(inputs.values()) + [outs]:
            for name in names:
                if name not in view.shapes:
                    view.shapes[name] = shape_of(name)
                if name in param_names:
                    view.params[name] = name
        if op.type in ("feed", "fetch"):
            continue
        if op.type == "conditional_block" and _inlinable(program, op):
            continue  # its ops came before it; select_input merges what the branches give
        if op.has_attr("sub_block"):
            view.nested.append(OpRecord(kind, inputs, outs, {}, where, index))
            continue
        view.ops.append(OpRecord(kind, inputs, outs, attrs, where, index))
    for var in block.vars.values():
        if getattr(var, "is_data", False):
            view.inputs.append(var.name)
            view.shapes.setdefault(var.name, shape_of(var.name))
    view.outputs = [getattr(o, "name", None) for o in outputs if getattr(o, "name", None)]
    return view


# ---------------------------------------------------------------------------------------- PIR
def _pir_key(value):
    return value.id


def _pir_shape(value):
    try:
        if value.is_dense_tensor_type():
            return tuple(int(d) for d in value.shape)
    except Exception:
        pass
    return None


def _read_pir(program, outputs):
    view = ProgramView(ir="pir")
    vectors = {}  # key of a builtin.combine result -> member keys
    producers = {}  # key of a vector result -> the OpRecord that made it
    block = program.global_block()
    for index, op in enumerate(_inline_pir_ifs(block.ops)):
        name = op.name()
        attrs = {}
        try:
            raw = op.attrs()
        except Exception:
            raw = {}
        callstack = raw.get("op_callstack")
        for k, v in raw.items():
            if k in ("op_callstack", "struct_name", "place", "is_distributed", "need_clip", "persistable",
                     "trainable", "is_parameter", "stop_gradient"):
                continue
            attrs[k] = _plain(v)
        results = list(op.results())
        if name == "builtin.parameter":
            key = _pir_key(results[0])
            view.params[key] = attrs["parameter_name"]
            view.shapes[key] = _pir_shape(results[0])
            continue
        if name == "pd_op.data":
            key = _pir_key(results[0])
            view.inputs.append(key)
            view.shapes[key] = _pir_shape(results[0])
            continue
        if name in ("pd_op.full", "pd_op.full_int_array", "pd_op.assign_value", "pd_op.assign_value_"):
            key = _pir_key(results[0])
            view.consts[key] = attrs.get("value", attrs.get("values"))
            view.shapes[key] = _pir_shape(results[0])
            continue
        operands = list(op.operands_source())
        if name == "cf.yield":  # the end of an inlined branch: its ``if`` reads the operands
            continue
        if name == "builtin.combine":
            vectors[_pir_key(results[0])] = [_pir_key(v) for v in operands]
            continue
        if name in ("builtin.split", "builtin.slice"):
            source = _pir_key(operands[0])
            keys = [_pir_key(r) for r in results]
            for key, r in zip(keys, results):
                view.shapes[key] = _pir_shape(r)
            record = producers.get(source)
            if record is not None:
                if name == "builtin.split":
                    record.outputs = keys
                else:
                    at = int(attrs.get("index", 0))
                    slots = record.attrs.setdefault("_slots", {})
                    slots[at] = keys[0]
                    record.outputs = [slots.get(i) for i in range(max(slots) + 1)]
            elif source in vectors:  # a combine split again: alias each member
                for key, member in zip(keys, vectors[source]):
                    view.ops.append(OpRecord("assign", {"x": [member]}, [key], {}, "", index))
            continue
        kind = name.split(".", 1)[1] if "." in name else name
        if kind.endswith("_") and not kind.endswith("__"):
            kind = kind[:-1]
        try:
            slots = op.get_input_names()
        except Exception:
            slots = [f"in{i}" for i in range(len(operands))]
        inputs = {}
        for slot, value in zip(slots, operands):
            try:
                if not value.initialized():
                    continue
            except Exception:
                continue
            key = _pir_key(value)
            inputs[slot.lower()] = list(vectors.get(key, [key]))
        outs = [_pir_key(r) for r in results]
        for key, r in zip(outs, results):
            view.shapes[key] = _pir_shape(r)
        record = OpRecord(kind, inputs, outs, attrs, _where(callstack), index)
        if name == "pd_op.if" and _pir_branches(op) is not None:  # its branches' ops came before it
            true, false = _pir_branches(op)
            record.inputs = {"cond": [k for keys in inputs.values() for k in keys], "true": true, "false": false}
            view.ops.append(record)
            continue
        if hasattr(op, "num_regions") and op.num_regions():
            record.inputs.update(_nested_operands(op, vectors))
            view.nested.append(record)
            continue
        for key, r in zip(outs, results):
            if _pir_shape(r) is None:  # a vector result: builtin.split gives its members
                producers[key] = record
        view.ops.append(record)
    view.outputs = [_pir_key(o) for o in outputs if hasattr(o, "id")]
    return view


def _nested_operands(op, vectors):
    """Values a control-flow op's blocks read from outside: they count as the op's inputs."""
    outer = {}
    seen_defined = set()
    try:
        blocks = list(op.blocks())
    except Exception:
        blocks = []
    for block in blocks:
        for inner in block.ops:
            for r in inner.results():
                seen_defined.add(_pir_key(r))
            for v in inner.operands_source():
                try:
                    key = _pir_key(v)
                except Exception:
                    continue
                if key not in seen_defined:
                    outer.setdefault("nested", []).append(key)
    return outer


# ------------------------------------------------------------------------------ conditionals
# A Python ``if`` on a tensor (``if self.alpha:`` in PP-YOLOE's RepVGG blocks) becomes a
# conditional op whose branches are blocks of their own. Their ops are read as if they ran one
# after the other, before the conditional; the conditional's results then hold what either branch
# gives (old IR: ``select_input``; PIR: the ``if`` op with the ``cf.yield`` operands of each branch).
def _sub_block_var(program, name):
    for sub in program.blocks[1:]:
        var = sub.vars.get(name)
        if var is not None:
            return var
    return None


def _inlinable(program, op):
    try:
        sub = op.attr("sub_block")
        return program.block(sub.id if hasattr(sub, "id") else int(sub)) is not None
    except Exception:
        return False


def _inline_old_ir_conditionals(program, ops):
    for op in ops:
        if op.type == "conditional_block" and _inlinable(program, op):
            sub = op.attr("sub_block")
            block = program.block(sub.id if hasattr(sub, "id") else int(sub))
            yield from _inline_old_ir_conditionals(program, block.ops)
        yield op


def _pir_branches(op):
    """The keys each branch of a PIR ``if`` yields, as ``(true, false)``; None if unreadable."""
    try:
        blocks = list(op.blocks())
        yields = []
        for block in blocks:
            last = list(block.ops)[-1]
            if last.name() != "cf.yield":
                return None
            yields.append([_pir_key(v) for v in last.operands_source()])
    except Exception:
        return None
    return tuple(yields) if len(yields) == 2 else None


def _inline_pir_ifs(ops):
    for op in ops:
        if op.name() == "pd_op.if" and _pir_branches(op) is not None:
            for block in op.blocks():
                yield from _inline_pir_ifs(block.ops)
        yield op


# ---------------------------------------------------------------------------------------- tracing
def spec_of(value, name, dynamic_batch=False):
    """``InputSpec``s shaped like ``value`` (a tensor, or dicts and lists of them), named after
    their place; ``dynamic_batch``: the first dimension left open (an export timed at any batch)."""
    from paddle.static import InputSpec

    if isinstance(value, dict):
        return {k: spec_of(v, k, dynamic_batch) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [spec_of(v, f"{name}_{i}", dynamic_batch) for i, v in enumerate(value)]
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        shape = list(value.shape)
        return InputSpec([None] + shape[1:] if dynamic_batch and shape else shape, value.dtype, name)
    return value


def read_program(model, inputs):
    """The program of ``model(*inputs)`` (``inputs``: example tensors or dicts of them) in the
    model's current mode; the model itself is left as it was."""
    specs = [spec_of(v, f"input_{i}") for i, v in enumerate(inputs)]
    param_names = {p.name for p in model.parameters()}
    kwargs = {"input_spec": specs, "full_graph": True}  # the AST route: a whole program, as export uses
    with restored_forwards(model):
        static = paddle.jit.to_static(model, **kwargs)
        function = static.forward if hasattr(static, "forward") else model.forward
        concrete, _layer = function.get_concrete_program(*specs)
        program = concrete.main_program
        outputs = _flat(concrete.outputs)
        if hasattr(program, "global_block") and hasattr(program.global_block().ops[0] if program.global_block().ops
                                                         else None, "type"):
            return _read_old_ir(program, outputs, param_names)
        if hasattr(program, "global_block") and program.global_block().ops and hasattr(
                program.global_block().ops[0], "name") and callable(program.global_block().ops[0].name):
            return _read_pir(program, outputs)
        return _read_old_ir(program, outputs, param_names)


def _flat(outputs):
    if outputs is None:
        return []
    if isinstance(outputs, (list, tuple)):
        out = []
        for o in outputs:
            out.extend(_flat(o))
        return out
    if isinstance(outputs, dict):
        return _flat(list(outputs.values()))
    return [outputs]


def mode_of(model) -> Optional[str]:
    return "train" if model.training else "eval"
