"""What can be pruned, and why the rest cannot: one row per conv weight.

Reasons come from the dependency graph (an op it does not understand, a model output, a
reduction over channels: each with the op and source line) and from running the model (a conv
not run in every pass - train and eval mode, two input sizes - is conditional; one missing from
the traced program never ran there).
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np
import paddle
import paddle.nn as nn

from slim_plugins import compat
from slim_plugins.plugins.prune import measure

TRANSPOSED = (nn.Conv1DTranspose, nn.Conv2DTranspose, nn.Conv3DTranspose)
CONVS = (nn.Conv1D, nn.Conv2D, nn.Conv3D) + TRANSPOSED
@dataclass
class ConvRow:
    weight: str  # structured name
    shape: list
    flops_share: float
    status: str  # "prunable", "follows", "skipped"
    group: Optional[str] = None
    reason: str = ""


@dataclass
class PassRecord:
    """One eager forward pass: which convs it ran and what each counted layer cost."""

    mode: str
    inputs: list
    calls: Optional[dict]  # conv layer -> calls; None: the pass failed
    flops: Optional[dict]  # counted layer -> FLOPs (measure's counters)
    shapes: tuple  # the parameters' shapes it ran with


def run_passes(model, passes):
    """A :class:`PassRecord` per ``(mode, inputs)`` pass, each one eager forward without
    gradients: conv calls and FLOPs come from the same forward, which costs more than anything
    else in ``show``. A pass that fails (e.g. train mode wants labels, or a fixed input size)
    records None. The parameters are restored after each train-mode pass (it moves BN
    statistics), so every pass runs with the model's own weights."""
    calls, flops = {}, {}
    handles = [layer.register_forward_post_hook(
        lambda layer, _i, _o, n=name: calls.__setitem__(n, calls.get(n, 0) + 1))
        for name, layer in model.named_sublayers() if isinstance(layer, CONVS)]
    handles += measure.flops_hooks(model, flops)
    params = dict(model.named_parameters())
    shapes = tuple((n, tuple(int(d) for d in p.shape)) for n, p in params.items())
    saved = None
    was_training = model.training
    records = []
    try:
        for mode, inputs in passes:
            calls.clear()
            flops.clear()
            if mode == "train" and saved is None:
                saved = {n: compat.numpy_of(p) for n, p in params.items()}
            model.train() if mode == "train" else model.eval()
            try:
                with paddle.no_grad():
                    model(*inputs)
                records.append(PassRecord(mode, inputs, dict(calls), dict(flops), shapes))
            except Exception:  # noqa: BLE001  recorded as a failed pass
                records.append(PassRecord(mode, inputs, None, None, shapes))
            finally:
                if mode == "train":
                    for n, value in saved.items():
                        compat.set_value(params[n], value)
    finally:
        for h in handles:
            h.remove()
        model.train() if was_training else model.eval()
    return records


def _same_inputs(a, b):
    """Equal example inputs: the same structure, and tensors of the same shape, dtype and values."""
    if a is b:
        return True
    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and all(
            _same_inputs(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b)
                and all(_same_inputs(x, y) for x, y in zip(a, b)))
    if hasattr(a, "shape") and hasattr(a, "dtype"):
        return (hasattr(b, "shape") and hasattr(b, "dtype") and list(a.shape) == list(b.shape)
                and a.dtype == b.dtype and np.array_equal(_array(a), _array(b)))
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # noqa: BLE001  incomparable values
        return False


def _array(value):
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def _records(prunable, passes):
    """A record per pass: the tracer's own (:meth:`PrunableModel._passes_that_add` ran the same
    passes: same mode, equal inputs, the parameters' shapes unchanged since) where it has one, a
    new forward where not. The tracer's passes ran inside the adapter's trace context, which by
    its contract changes nothing the network computes (only how post-processing is traced)."""
    known = list(getattr(prunable, "eager_passes", None) or ())
    if known:
        shapes = tuple((n, tuple(int(d) for d in p.shape)) for n, p in prunable.model.named_parameters())
        known = [r for r in known if r.shapes == shapes]
    found = [next((r for r in known if r.mode == mode and _same_inputs(r.inputs, inputs)), None)
             for mode, inputs in passes]
    missing = [p for p, r in zip(passes, found) if r is None]
    fresh = iter(run_passes(prunable.model, missing) if missing else ())
    return [r if r is not None else next(fresh) for r in found]


def _passes(inputs):
    passes = [("eval", inputs), ("train", inputs)]
    if len(inputs) == 1 and len(getattr(inputs[0], "shape", ())) == 4:
        n, c, h, w = inputs[0].shape
        passes.append(("eval", [paddle.zeros([n, c, 2 * h, 2 * w], dtype=inputs[0].dtype)]))
    return passes


def inventory(prunable, inputs):
    """Rows for every conv weight. A conditional conv is safe when every pass that runs it was
    traced (its couplings are in the graph); one that no traced program holds is listed with why."""
    model = prunable.model
    layers = {name: layer for name, layer in model.named_sublayers() if isinstance(layer, CONVS)}
    records = _records(prunable, _passes(inputs))
    counts = [r.calls for r in records if r.calls is not None]
    per_layer = records[0].flops  # the eval pass at ``inputs``
    if per_layer is None:  # it failed: measuring raises what broke it
        per_layer = measure.flops_by_layer(model, inputs)
    total = sum(per_layer.values()) or 1
    member_of = {}
    for gname, group in prunable.groups.items():
        for member in group.followers:
            member_of.setdefault(member, gname)
    rows = []
    for lname, layer in layers.items():
        weight = f"{lname}.weight"
        shape = [int(d) for d in layer.weight.shape]
        row = ConvRow(weight, shape, per_layer.get(lname, 0) / total, "skipped")
        groups = getattr(layer, "_groups", 1) or 1
        calls = [c.get(lname, 0) for c in counts]
        conditional = ""
        if calls and 0 < sum(1 for c in calls if c) < len(calls):
            conditional = f"conditional: run in {sum(1 for c in calls if c)} of {len(calls)} traced passes"
        global_name = prunable.global_of.get(weight)
        traced = global_name in prunable.graph.seen_params
        if weight in prunable.groups:
            row.status, row.group = "prunable", weight
            row.reason = conditional
        elif weight in member_of:
            row.status, row.group = "follows", member_of[weight]
            kind = "depthwise conv" if groups > 1 and shape[1] == 1 else "output channels coupled"
            row.reason = f"{kind}: pruned with group {member_of[weight]}" + (f"; {conditional}" if conditional else "")
        elif weight in prunable.blocked:
            row.reason = prunable.blocked[weight]
        elif prunable.producer_of.get(weight) in prunable.blocked:
            owner = prunable.producer_of[weight]
            row.reason = f"coupled with {owner}: {prunable.blocked[owner]}"
        elif not traced:
            row.reason = "not in the traced program" + (f" ({conditional})" if conditional else
                                                        " (never run by forward())" if calls and not any(calls) else "")
        elif groups > 1 and shape[1] == 1:
            row.reason = "depthwise conv following a channel set that cannot be pruned"
        elif shape[1 if isinstance(layer, TRANSPOSED) else 0] == 1:
            row.reason = "has a single output channel"
        else:
            row.reason = "its output channels belong to no prunable group"
        rows.append(row)
    return rows


def table_text(rows):
    from slim_plugins.text import table

    body = [[r.weight, "x".join(map(str, r.shape)), f"{r.flops_share:.1%}", r.status, r.reason or r.group or ""]
            for r in rows]
    return table(body, ["conv weight", "shape", "FLOPs", "status", "group / reason"])


def summary(rows):
    prunable = sum(1 for r in rows if r.status == "prunable")
    skipped = [r for r in rows if r.status == "skipped"]
    share = sum(r.flops_share for r in rows if r.status in ("prunable", "follows"))
    return (f"{len(rows)} convs: {prunable} prunable groups, "
            f"{sum(1 for r in rows if r.status == 'follows')} pruned with them, {len(skipped)} skipped; "
            f"prunable convs hold {share:.0%} of the FLOPs")
