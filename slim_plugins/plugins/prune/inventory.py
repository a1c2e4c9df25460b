"""What can be pruned, and why the rest cannot: one row per conv weight.

Reasons come from the dependency graph (an op it does not understand, a model output, a
reduction over channels: each with the op and source line) and from running the model (a conv
not run in every pass - train and eval mode, two input sizes - is conditional; one missing from
the traced program never ran there).
"""
from dataclasses import dataclass
from typing import Optional

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


def _call_counts(model, passes, keep_failed=False):
    """Calls of every conv layer in each forward pass that succeeds (with ``keep_failed``, None
    stands for a pass that failed)."""
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
                if keep_failed:
                    counts.append(None)
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


def inventory(prunable, inputs):
    """Rows for every conv weight. A conditional conv is safe when every pass that runs it was
    traced (its couplings are in the graph); one that no traced program holds is listed with why."""
    model = prunable.model
    layers, counts = _call_counts(model, _passes(inputs))
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
