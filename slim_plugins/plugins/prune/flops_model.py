"""The FLOPs a choice of ratios leaves, from data the sensitivity file carries (no model needed).

At analysis time each group is pruned alone at two ratios and every counted layer's FLOPs are
measured. When a group keeps the fraction ``k`` of its channels, a layer's FLOPs scale by
``f(k) = a*k*k + b*k + (1 - a - b)``: ``k`` for a conv or norm whose output channels it prunes,
``(k*K + 1) / (K + 1)`` where it prunes the input channels of a conv with a bias (``K`` weights per
output), ``k * (k*K + 1) / (K + 1)`` where it prunes both (a conv inside a residual group). Two
probes give ``a`` and ``b``, so the model is exact for convs, linears and norms; a plan's FLOPs are
``sum(flops * prod(f_g(k_g)))`` over layers, except that groups pruning only a layer's input
channels (the parts of a concat feeding one conv) remove FLOPs additively:
``flops * prod(f_out) * (1 - sum(1 - f_in))``, exact for such convs too (``inputs`` in the data names
those layers per group). ``slim-plugins sens ratios`` uses it; the prune plugin itself measures the
pruned model.
"""
from slim_plugins.plugins.prune import measure

PROBE_RATIOS = (0.5, 0.75)


def kept_fraction(channels, ratio):
    """Fraction of ``channels`` a group keeps at ``ratio`` (PaddleSlim's rounding)."""
    pruned = min(channels - 1, int(round(channels * float(ratio))))
    return (channels - pruned) / channels


def _weight_shapes(model):
    return {name: list(layer.weight.shape) for name, layer in model.named_sublayers()
            if getattr(layer, "weight", None) is not None and len(layer.weight.shape) >= 1}


def _side(layer, before, after):
    """Which channels of ``layer`` a probe pruned: ``in``, ``out`` or ``both`` (None: neither).
    Conv weights are ``[out, in, ...]``; Linear and conv-transpose weights ``[in, out, ...]``."""
    changed = {axis for axis, (b, a) in enumerate(zip(before, after)) if b != a}
    if not changed:
        return None
    input_first = type(layer).__name__ == "Linear" or "Transpose" in type(layer).__name__
    sides = {("in" if input_first else "out") if axis == 0 else ("out" if input_first else "in")
             for axis in changed if axis < 2}
    if len(before) < 2 or getattr(layer, "_groups", 1) not in (1, None):  # norms, depthwise: one channel set
        sides = {"out"}
    return "both" if len(sides) == 2 else next(iter(sides), None)


def _probe(prunable, inputs, name, ratio, workload=None):
    """FLOPs per layer with group ``name`` alone pruned at ``ratio``, and which side of each
    layer's channels it pruned."""
    model = prunable.model
    before = _weight_shapes(model)
    applied = prunable.apply({name: ratio})
    try:
        after = _weight_shapes(model)
        layers = dict(model.named_sublayers())
        sides = {n: _side(layers[n], before[n], after[n]) for n in before if before[n] != after.get(n)}
        return measure.flops_by_layer(model, inputs, workload), sides
    finally:
        applied.restore()


def _coefficients(points):
    """``[a, b]`` of ``f(k) = a*k*k + b*k + 1 - a - b`` through ``(k, f)`` points (k < 1)."""
    # (f - 1) / (k - 1) = a*(k + 1) + b
    rows = [(k + 1, (f - 1) / (k - 1)) for k, f in points]
    if len(rows) == 2 and abs(rows[0][0] - rows[1][0]) > 1e-9:
        (x0, y0), (x1, y1) = rows
        a = (y1 - y0) / (x1 - x0)
        return [round(a, 6) + 0.0, round(y0 - a * x0, 6) + 0.0]  # no -0.0 in the file
    return [0.0, round(rows[0][1], 6)]  # one distinct probe: affine


def record(prunable, inputs, groups, workload=None):
    """``{"total", "layers": {layer: flops}, "groups": {group: {layer: [a, b]}}}`` for one batch
    of ``inputs``; groups that cannot be pruned alone, or keep every channel, are left out."""
    base = measure.flops_by_layer(prunable.model, inputs, workload)
    out = {"total": int(sum(base.values())), "layers": base, "groups": {}, "inputs": {}}
    for name in groups:
        channels = prunable.groups[name].channels
        probes, sides = {}, {}
        for ratio in PROBE_RATIOS:
            k = kept_fraction(channels, ratio)
            if k < 1 and k not in probes:
                try:
                    probes[k], sides = _probe(prunable, inputs, name, ratio, workload)
                except Exception:  # a group that breaks the model alone is never chosen
                    break
        else:
            if probes:
                layers = {layer for after in probes.values() for layer, f in after.items() if f != base.get(layer)}
                out["groups"][name] = {
                    layer: _coefficients([(k, after.get(layer, 0) / base[layer]) for k, after in probes.items()])
                    for layer in sorted(layers) if base.get(layer)}
                inputs_only = sorted(layer for layer in out["groups"][name] if sides.get(layer) == "in")
                if inputs_only:
                    out["inputs"][name] = inputs_only
    return out


def estimate(data, channels, ratios):
    """FLOPs after ``ratios`` (``{group: ratio}``) from :func:`record`'s ``data``; ``channels`` maps
    each group to its channel count. Groups the data lacks count as unchanged."""
    factor = {layer: 1.0 for layer in data["layers"]}
    removed_inputs = {layer: 0.0 for layer in data["layers"]}
    inputs = data.get("inputs") or {}  # files written before it: every factor multiplies
    for group, ratio in ratios.items():
        coefficients = data["groups"].get(group)
        if not coefficients or not channels.get(group):
            continue
        k = kept_fraction(channels[group], ratio)
        only_inputs = set(inputs.get(group, ()))
        for layer, (a, b) in coefficients.items():
            f = a * k * k + b * k + 1 - a - b
            if layer in only_inputs:  # input channels of several groups (concat) remove additively
                removed_inputs[layer] += 1 - f
            else:
                factor[layer] *= f
    return int(round(sum(f * factor[layer] * max(0.0, 1 - removed_inputs[layer])
                         for layer, f in data["layers"].items())))
