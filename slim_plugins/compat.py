"""Paddle-version compatibility, in one place (see docs/STACK.md).

* Paddle 2.6's ``libpaddle.so`` exports an old zlib: Python's ``zlib`` must be loaded first
  (done by the start-up hook and here).
* Paddle 3.x traces dygraph models into PIR programs, which PaddleSlim 2.6 cannot read:
  :func:`tracing` switches the old IR on only while PaddleSlim traces, and adds the one alias
  PaddleSlim needs, and swaps the Paddle 3 functions that only take PIR values (sigmoid,
  multiply, matmul ...) for ones that also build old-IR ops. The user's own training and
  export never run under it.
"""
import contextlib
import logging
import warnings
import zlib  # noqa: F401  must precede the first `import paddle` on Paddle 2.6

import paddle


def paddle_version():
    parts = []
    for piece in paddle.__version__.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


PADDLE_3 = paddle_version()[0] >= 3 or paddle.__version__.startswith("0.0")


def _alias_static_mode_guard():
    base = paddle.base.dygraph.base
    if not hasattr(base, "_to_static_mode_guard_") and hasattr(base, "to_static_mode_guard"):
        base._to_static_mode_guard_ = base.to_static_mode_guard


@contextlib.contextmanager
def quiet_paddleslim():
    """PaddleSlim logs every pruned variable at INFO; keep our own progress readable."""
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith("paddleslim")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# Paddle 3's BatchNorm warns at every training forward (paddle/nn/layer/norm.py), and anything that
# touches the warning filters makes Python show it again: twice per epoch of a hapi fit.
BATCH_NORM_WARNING = "When training, we now always track global mean and variance"


@contextlib.contextmanager
def quiet_batch_norm_warning():
    """Hide that one BatchNorm warning (by message and module) while our training runs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=BATCH_NORM_WARNING, category=UserWarning,
                                module=r"paddle\.nn\.layer\.norm")
        yield


# Paddle 3 functions that call a PIR-only kernel directly, with the old-IR op that does the same
# (unary: X -> Out; binary: X, Y -> Out). PaddleOCR's models call them (DB head: sigmoid;
# MobileNetV3 SE: multiply; SVTR: matmul).
_OLD_IR_UNARY = {"sigmoid": "sigmoid", "tanh": "tanh", "exp": "exp", "sqrt": "sqrt", "abs": "abs"}
_OLD_IR_BINARY = {"multiply": "elementwise_mul", "subtract": "elementwise_sub", "divide": "elementwise_div",
                  "maximum": "elementwise_max", "minimum": "elementwise_min"}
_OLD_IR_HOMES = ("paddle", "paddle.nn.functional", "paddle.nn.functional.activation", "paddle.tensor",
                 "paddle.tensor.math", "paddle.tensor.ops", "paddle.tensor.linalg")


def _old_ir_variable(value):
    from paddle.base import framework

    return isinstance(value, framework.Variable) and not framework.in_dygraph_mode()


def _append_old_ir_op(op_type, inputs, dtype, attrs=None):
    from paddle.base.layer_helper import LayerHelper

    helper = LayerHelper(op_type)
    out = helper.create_variable_for_type_inference(dtype)
    helper.append_op(type=op_type, inputs=inputs, outputs={"Out": [out]}, attrs=attrs or {})
    return out


def _old_ir_versions():
    """``{name: (original, replacement)}``: each replacement builds the old-IR op when given an
    old-IR ``Variable`` and calls the original otherwise."""
    import functools

    versions = {}
    for name, op_type in _OLD_IR_UNARY.items():
        original = getattr(paddle, name, None)
        if original is None:
            continue

        def unary(x, *args, _original=original, _op=op_type, **kwargs):
            if _old_ir_variable(x):
                return _append_old_ir_op(_op, {"X": [x]}, x.dtype)
            return _original(x, *args, **kwargs)

        versions[name] = (original, functools.wraps(original)(unary))
    for name, op_type in _OLD_IR_BINARY.items():
        original = getattr(paddle, name, None)
        if original is None:
            continue

        def binary(x, y, *args, _original=original, _op=op_type, **kwargs):
            if _old_ir_variable(x) or _old_ir_variable(y):
                return _append_old_ir_op(_op, {"X": [x], "Y": [y]}, x.dtype, {"axis": -1})
            return _original(x, y, *args, **kwargs)

        versions[name] = (original, functools.wraps(original)(binary))
    matmul = paddle.matmul

    def old_ir_matmul(x, y, transpose_x=False, transpose_y=False, name=None):
        if _old_ir_variable(x) or _old_ir_variable(y):
            return _append_old_ir_op("matmul_v2", {"X": [x], "Y": [y]}, x.dtype,
                                     {"trans_x": bool(transpose_x), "trans_y": bool(transpose_y)})
        return matmul(x, y, transpose_x, transpose_y, name)

    versions["matmul"] = (matmul, functools.wraps(matmul)(old_ir_matmul))
    return versions


@contextlib.contextmanager
def _old_ir_functions():
    """Swap the PIR-only functions for old-IR-capable ones where they are looked up, and back."""
    import importlib

    swapped = []
    versions = _old_ir_versions()
    for home in _OLD_IR_HOMES:
        try:
            module = importlib.import_module(home)
        except ImportError:
            continue
        for name, (original, replacement) in versions.items():
            if getattr(module, name, None) is original:
                setattr(module, name, replacement)
                swapped.append((module, name, original))
    variable = paddle.base.framework.Variable  # old-IR methods: `q.matmul(k)` in SVTR's attention
    for name, (_original, replacement) in versions.items():
        if name in vars(variable):
            swapped.append((variable, name, vars(variable)[name]))
            setattr(variable, name, replacement)
    try:
        yield
    finally:
        for module, name, original in reversed(swapped):
            setattr(module, name, original)


@contextlib.contextmanager
def traceable_buffers(model):
    """Paddle 3 cannot turn an uninitialised buffer (an LSTM's ``_dropout_state``) into a static
    variable: give such buffers a placeholder while PaddleSlim traces, and put them back."""
    filled = []
    if PADDLE_3:
        for layer in model.sublayers(include_self=True):
            for name, buffer in list(layer._buffers.items()):
                if buffer is not None and hasattr(buffer, "_is_initialized") and not buffer._is_initialized():
                    layer._buffers[name] = paddle.zeros([1], dtype=buffer.dtype)
                    filled.append((layer, name, buffer))
    try:
        yield
    finally:
        for layer, name, buffer in filled:
            layer._buffers[name] = buffer


@contextlib.contextmanager
def tracing():
    """Context for PaddleSlim's dygraph-to-static tracing on any supported Paddle."""
    was_dynamic = paddle.in_dynamic_mode()
    try:
        if not PADDLE_3:
            with quiet_paddleslim():
                yield
            return
        _alias_static_mode_guard()
        with paddle.pir_utils.OldIrGuard(), _old_ir_functions(), quiet_paddleslim():
            yield
    finally:
        # PaddleSlim switches to static mode while tracing and leaves it on when tracing fails
        if was_dynamic and not paddle.in_dynamic_mode():
            paddle.disable_static()


def import_paddleslim_pruners():
    """PaddleSlim's dygraph filter pruners, imported quietly."""
    import io
    import sys

    saved, sys.stdout = sys.stdout, io.StringIO()  # paddleslim prints on import on some versions
    try:
        with quiet_paddleslim():
            from paddleslim.dygraph import FPGMFilterPruner, L1NormFilterPruner, L2NormFilterPruner
    finally:
        sys.stdout = saved
    return {"l1_norm": L1NormFilterPruner, "l2_norm": L2NormFilterPruner, "fpgm": FPGMFilterPruner}


def place_of(tensor):
    p = tensor._place()
    if p.is_cpu_place():
        return paddle.CPUPlace()
    if p.is_cuda_pinned_place():
        return paddle.CUDAPinnedPlace()
    generic = paddle.framework.core.Place()
    generic.set_place(p)
    return paddle.CUDAPlace(generic.gpu_device_id())


def set_value(param, array):
    """Replace a parameter's value in place, shape included (the Parameter object stays)."""
    tensor = param.value().get_tensor()
    tensor.set(array, place_of(tensor))


def numpy_of(param):
    import numpy as np

    return np.array(param.value().get_tensor())


def dummy_inputs(input_spec, batch_size=1):
    """Zero tensors matching ``input_spec`` (a list of InputSpec or of shapes)."""
    if input_spec is None:
        return None
    if not isinstance(input_spec, (list, tuple)) or (input_spec and isinstance(input_spec[0], int)):
        input_spec = [input_spec]
    inputs = []
    for spec in input_spec:
        shape = list(getattr(spec, "shape", spec))
        dtype = getattr(spec, "dtype", "float32")
        shape = [batch_size if (i == 0 and (d is None or d < 0)) else (1 if d is None or d < 0 else d)
                 for i, d in enumerate(shape)]
        dtype = str(dtype).replace("paddle.", "")
        inputs.append(paddle.zeros(shape, dtype=dtype))
    return inputs


def trace_shapes(input_spec):
    """Shapes for PaddleSlim's tracer: a batch of 1."""
    shapes = []
    several = isinstance(input_spec, (list, tuple)) and not isinstance(input_spec[0], int)
    for spec in input_spec if several else [input_spec]:
        shape = list(getattr(spec, "shape", spec))
        shapes.append([1 if (d is None or d < 0) else int(d) for d in shape])
    return shapes[0] if len(shapes) == 1 else shapes


def set_num_threads(n):
    try:
        paddle.base.core.set_num_threads(int(n))
    except Exception:  # not every build exposes it
        pass


@contextlib.contextmanager
def restored_forwards(model):
    """Every layer's ``forward`` as it was: Paddle 2.6's dy2st leaves each sublayer it converted
    with its converted ``forward``, which later dygraph calls run (and fail in: Faster R-CNN's
    training branch, ``'UndefinedVar' object has no attribute 'stop_gradient'``; PaddleOCR's SAR
    decoder, an ``assert``; PaddleX's ``evaluate`` after its export, ``paddle_set_eval_frame_fn``)."""
    saved = [(layer, "forward" in layer.__dict__, layer.__dict__.get("forward"))
             for layer in model.sublayers(include_self=True)]
    try:
        yield
    finally:
        for layer, had, forward in saved:
            if had:
                layer.__dict__["forward"] = forward
            else:
                layer.__dict__.pop("forward", None)
