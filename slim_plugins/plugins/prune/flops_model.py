"""The FLOPs a choice of ratios leaves, from data the sensitivity file carries (no model needed).

At analysis time each group is pruned alone at two ratios and every counted layer's FLOPs are
measured. When a group keeps the fraction ``k`` of its channels, a layer's FLOPs scale by
``f(k) = a*k*k + b*k + (1 - a - b)``: ``k`` for a conv or norm whose output channels it prunes,
``(k*K + 1) / (K + 1)`` where it prunes the input channels of a conv with a bias (``K`` weights per
output), ``k * (k*K + 1) / (K + 1)`` where it prunes both (a conv inside a residual group). Two
probes give ``a`` and ``b``, so the model is exact for convs, linears and norms; a plan's FLOPs are
``sum(flops * prod(f_g(k_g)))`` over layers. ``slim-plugins sens ratios`` uses it; the prune plugin
itself measures the pruned model.
"""
from slim_plugins.plugins.prune import measure

PROBE_RATIOS = (0.5, 0.75)


def kept_fraction(channels, ratio):
    """Fraction of ``channels`` a group keeps at ``ratio`` (PaddleSlim's rounding)."""
    pruned = min(channels - 1, int(round(channels * float(ratio))))
    return (channels - pruned) / channels


def _probe(prunable, inputs, name, ratio):
    applied = prunable.apply({name: ratio})
    try:
        return measure.flops_by_layer(prunable.model, inputs)
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


def record(prunable, inputs, groups):
    """``{"total", "layers": {layer: flops}, "groups": {group: {layer: [a, b]}}}`` for one batch
    of ``inputs``; groups that cannot be pruned alone, or keep every channel, are left out."""
    base = measure.flops_by_layer(prunable.model, inputs)
    out = {"total": int(sum(base.values())), "layers": base, "groups": {}}
    for name in groups:
        channels = prunable.groups[name].channels
        probes = {}
        for ratio in PROBE_RATIOS:
            k = kept_fraction(channels, ratio)
            if k < 1 and k not in probes:
                try:
                    probes[k] = _probe(prunable, inputs, name, ratio)
                except Exception:  # a group that breaks the model alone is never chosen
                    break
        else:
            if probes:
                layers = {layer for after in probes.values() for layer, f in after.items() if f != base.get(layer)}
                out["groups"][name] = {
                    layer: _coefficients([(k, after.get(layer, 0) / base[layer]) for k, after in probes.items()])
                    for layer in sorted(layers) if base.get(layer)}
    return out


def estimate(data, channels, ratios):
    """FLOPs after ``ratios`` (``{group: ratio}``) from :func:`record`'s ``data``; ``channels`` maps
    each group to its channel count. Groups the data lacks count as unchanged."""
    factor = {layer: 1.0 for layer in data["layers"]}
    for group, ratio in ratios.items():
        coefficients = data["groups"].get(group)
        if not coefficients or not channels.get(group):
            continue
        k = kept_fraction(channels[group], ratio)
        for layer, (a, b) in coefficients.items():
            factor[layer] *= a * k * k + b * k + 1 - a - b
    return int(round(sum(f * factor[layer] for layer, f in data["layers"].items())))
