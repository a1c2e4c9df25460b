"""What can be pruned, and why the rest cannot: one row per conv weight.

Reasons come from three places: the layer itself (transposed, depthwise, grouped), running the
model (a conv called more than once per forward sits in a loop or is shared; one not run in
every traced pass - train and eval mode, two input sizes - is conditional) and PaddleSlim's graph
(a conv feeding concat, or the model's output, gets no group).
"""
from dataclasses import dataclass
from typing import Optional

import paddle
import paddle.nn as nn

from slim_plugins import compat
from slim_plugins.plugins.prune import measure

TRANSPOSED = (nn.Conv1DTranspose, nn.Conv2DTranspose, nn.Conv3DTranspose)
CONVS = (nn.Conv1D, nn.Conv2D, nn.Conv3D) + TRANSPOSED
# ops a conv's output passes through before reaching what decides its fate
_PASS_THROUGH = {"batch_norm", "sync_batch_norm", "relu", "relu6", "hard_swish", "hardswish", "swish", "silu",
                 "sigmoid", "leaky_relu", "hard_sigmoid", "mish", "gelu", "dropout", "scale", "elementwise_add",
                 "cast", "tanh"}


@dataclass
class ConvRow:
    weight: str  # structured name
    shape: list
    flops_share: float
    status: str  # "prunable", "follows", "skipped"
    group: Optional[str] = None
    reason: str = ""


def _call_counts(model, passes):
    """Calls of every conv layer in each forward pass that succeeds."""
    layers = {name: layer for name, layer in model.named_sublayers() if isinstance(layer, CONVS)}
    counts = []
    current = {}
    handles = [layer.register_forward_post_hook(
        lambda layer, _i, _o, n=name: current.__setitem__(n, current.get(n, 0) + 1))
        for name, layer in layers.items()]
    saved = {n: compat.numpy_of(p) for n, p in model.named_parameters()}
    was_training = model.training
    try:
        for mode, inputs in passes:
            current.clear()
            model.train() if mode == "train" else model.eval()
            try:
                with paddle.no_grad():
                    model(*inputs)
            except Exception:  # e.g. train mode wants labels, or a fixed input size
                continue
            counts.append(dict(current))
    finally:
        for h in handles:
            h.remove()
        params = dict(model.named_parameters())
        for n, value in saved.items():  # train-mode passes moved BN statistics
            compat.set_value(params[n], value)
        model.train() if was_training else model.eval()
    return layers, counts


def _passes(inputs):
    passes = [("eval", inputs), ("train", inputs)]
    if len(inputs) == 1 and len(getattr(inputs[0], "shape", ())) == 4:
        n, c, h, w = inputs[0].shape
        passes.append(("eval", [paddle.zeros([n, c, 2 * h, 2 * w], dtype=inputs[0].dtype)]))
    return passes


def _graph_reasons(prunable, weights):
    """Why PaddleSlim made no group for these conv weights (global names)."""
    from paddleslim.core import GraphWrapper, dygraph2program

    try:
        with prunable.trace_mode(), compat.tracing():
            graph = GraphWrapper(dygraph2program(prunable.model, prunable.inputs))
    except Exception as exc:
        return {w: f"PaddleSlim could not trace the model ({type(exc).__name__})" for w in weights}
    reasons = {}
    for op in graph.ops():
        if op.type() not in ("conv2d", "depthwise_conv2d", "conv3d", "conv1d"):
            continue
        filters = [v.name() for v in op.inputs("Filter")]
        hit = [w for w in filters if w in weights]
        if not hit:
            continue
        seen, frontier, found = set(), [op], set()
        for _ in range(6):
            nxt = []
            for o in frontier:
                for consumer in graph.next_ops(o):
                    if consumer.idx() in seen:
                        continue
                    seen.add(consumer.idx())
                    if consumer.type() in _PASS_THROUGH:
                        nxt.append(consumer)
                    else:
                        found.add(consumer.type())
            frontier = nxt
        if "concat" in found:
            reason = "feeds concat (PaddleSlim cannot prune through concat)"
        elif not found and not frontier:
            reason = "model output (PaddleSlim keeps the last convs)"
        else:
            reason = "PaddleSlim found no prunable coupling (feeds " + ", ".join(sorted(found) or ["?"]) + ")"
        for w in hit:
            reasons[w] = reason
    return reasons


def inventory(prunable, inputs):
    """Rows for every conv weight; marks unsafe PaddleSlim groups in ``prunable.unsafe``."""
    model = prunable.model
    layers, counts = _call_counts(model, _passes(inputs))
    per_layer = measure.flops_by_layer(model, inputs)
    total = sum(per_layer.values()) or 1
    member_of = {}
    for gname, group in prunable.groups.items():
        for member in group.followers:
            member_of.setdefault(member, gname)
    rows, unexplained = [], {}
    for lname, layer in layers.items():
        weight = f"{lname}.weight"
        shape = [int(d) for d in layer.weight.shape]
        row = ConvRow(weight, shape, per_layer.get(lname, 0) / total, "skipped")
        groups = getattr(layer, "_groups", 1) or 1
        calls = [c.get(lname, 0) for c in counts]
        if isinstance(layer, TRANSPOSED):
            row.reason = "transposed conv"
        elif groups > 1 and shape[1] == 1:
            row.reason = "depthwise conv"
        elif groups > 1:
            row.reason = f"grouped conv (groups={groups})"
        elif calls and max(calls) > 1:
            row.reason = f"called {max(calls)} times in one forward (loop or shared layer)"
        elif calls and 0 < sum(1 for c in calls if c) < len(calls):
            row.reason = f"conditional: run in {sum(1 for c in calls if c)} of {len(calls)} traced passes"
        elif calls and not any(calls):
            row.reason = "never run by forward()"
        if weight in prunable.groups:
            if row.reason and not row.reason.startswith("depthwise"):
                prunable.unsafe[weight] = row.reason
            else:
                row.status, row.group = "prunable", weight
        elif weight in member_of and not row.reason.startswith(("called", "conditional")):
            row.status, row.group = "follows", member_of[weight]
            row.reason = (row.reason + "; " if row.reason else "") + f"pruned with group {member_of[weight]}"
        elif not row.reason:
            unexplained[prunable.global_of.get(weight, weight)] = row
        rows.append(row)
    if unexplained:
        for global_name, reason in _graph_reasons(prunable, set(unexplained)).items():
            unexplained[global_name].reason = reason
        for row in unexplained.values():
            row.reason = row.reason or "PaddleSlim made no group for it"
    for weight, reason in prunable.unsafe.items():
        for row in rows:
            if row.weight == weight:
                row.reason = f"{reason} (PaddleSlim would prune it: skipped as unsafe)"
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
