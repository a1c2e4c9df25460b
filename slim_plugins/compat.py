"""Paddle-version compatibility, in one place (see docs/STACK.md).

* Paddle 2.6's ``libpaddle.so`` exports an old zlib: Python's ``zlib`` must be loaded first
  (done by the start-up hook and here).
* Paddle 3.x traces dygraph models into PIR programs, which PaddleSlim 2.6 cannot read:
  :func:`tracing` switches the old IR on only while PaddleSlim traces, and adds the one alias
  PaddleSlim needs. The user's own training and export never run under it.
"""
import contextlib
import logging

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
        with paddle.pir_utils.OldIrGuard(), quiet_paddleslim():
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
    for spec in input_spec if isinstance(input_spec, (list, tuple)) and not isinstance(input_spec[0], int) else [input_spec]:
        shape = list(getattr(spec, "shape", spec))
        shapes.append([1 if (d is None or d < 0) else int(d) for d in shape])
    return shapes[0] if len(shapes) == 1 else shapes


def set_num_threads(n):
    try:
        paddle.base.core.set_num_threads(int(n))
    except Exception:  # not every build exposes it
        pass
